"""The plan: what a migration would do, predicted before any item leaves the device.

:func:`make_plan` reads the store page by page, sends only ``{collection, key, digest}``
of each item (``POST /plan``), and learns for each one whether the cloud has nothing
under that key (new), the same item (unchanged) or another version (a conflict, with the
cloud's version). It then runs the conflict policy on the conflicts, exactly as the
migration will, so the plan says per collection what the policy would do::

    plan = client.plan()
    for name, collection in plan.collections.items():
        print(name, collection.new, collection.unchanged, collection.conflicts,
              collection.resolutions)
    if plan.pending_conflicts:
        print(plan.pending_conflicts, "conflicts will wait for the user")

The prediction matches what the migration then reports as long as neither the store nor
the cloud changes in between, and no ``newest_wins`` comparison sits right at the edge
of the clock's uncertainty (the offset is measured again when migrating).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from .._conflicts.policy import ClockEstimate, Conflict, ConflictPolicy, FlaggedItem, decide
from .._errors import InvalidRequestError, ProtocolError
from .._store.detect import LocalState, check_local, detect_local
from .._store.local import now_ms
from .._store.schema import connect_read_only, store_error
from .._transport.http import Transport
from .._wire.canonical import Item, item_digest
from .._wire.models import PlanEntry, PlanResponse

__all__ = ["CollectionPlan", "MigrationPlan", "make_plan"]

logger = logging.getLogger(__name__)

#: Entries per ``POST /plan`` page: within the default ``max_batch_items`` and, with keys
#: of any length, well within the default body limit.
PAGE_SIZE = 1000
_READ_PAGE = 1000


@dataclasses.dataclass(frozen=True, kw_only=True)
class CollectionPlan:
    """The prediction for one collection.

    ``resolutions`` counts conflicts by the kind the summary will report
    (``server_wins``, ``local_wins``, ``newest_wins``, ``newest_wins_fallback``,
    ``field_merge``, ``callback``, ``manual``); ``choices`` by outcome: ``local``,
    ``server``, ``merged``, or ``pending`` (waits for the app).

    >>> CollectionPlan(items=3, new=1, unchanged=1, conflicts=1,
    ...                resolutions={"server_wins": 1}, choices={"server": 1}).items
    3
    """

    items: int = 0
    new: int = 0
    unchanged: int = 0
    conflicts: int = 0
    resolutions: dict[str, int] = dataclasses.field(default_factory=dict)
    choices: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MigrationPlan:
    """What a migration of the store would do now, per collection, and which items
    ``newest_wins`` would flag. The totals mirror :class:`sdk.MigrationResult`'s.

    >>> plan = MigrationPlan(collections={
    ...     "cards": CollectionPlan(items=2, new=2),
    ...     "prefs": CollectionPlan(items=1, conflicts=1, resolutions={"manual": 1},
    ...                             choices={"pending": 1})})
    >>> plan.item_count, plan.new_items, plan.pending_conflicts, plan.resolutions_by_kind
    (3, 2, 1, {'manual': 1})
    """

    collections: dict[str, CollectionPlan]
    flagged: list[FlaggedItem] = dataclasses.field(default_factory=list)
    #: The device clock minus the server's, as measured while planning (``None``: no
    #: page was sent).
    clock_offset_ms: int | None = None
    clock_uncertainty_ms: int | None = None

    @property
    def item_count(self) -> int:
        """Items the migration would upload, tombstones included."""
        return sum(c.items for c in self.collections.values())

    @property
    def new_items(self) -> int:
        """Items the cloud does not hold yet."""
        return sum(c.new for c in self.collections.values())

    @property
    def unchanged_items(self) -> int:
        """Items the cloud already holds exactly."""
        return sum(c.unchanged for c in self.collections.values())

    @property
    def conflicts(self) -> int:
        """Items whose cloud version differs."""
        return sum(c.conflicts for c in self.collections.values())

    @property
    def resolutions_by_kind(self) -> dict[str, int]:
        """Conflicts by the kind of resolution the summary will count."""
        return _total(c.resolutions for c in self.collections.values())

    @property
    def pending_conflicts(self) -> int:
        """Conflicts that will wait for the app (``manual``, deferred, flagged)."""
        return sum(c.choices.get("pending", 0) for c in self.collections.values())


def make_plan(
    store_path: Path,
    transport: Transport,
    policy: ConflictPolicy,
    *,
    page_size: int = PAGE_SIZE,
    clock: Callable[[], int] = now_ms,
) -> MigrationPlan:
    """Predict the migration of the store at ``store_path`` (see the module's example).

    Nothing is written anywhere: the store is only read, and the server only compares.
    ``clock`` is the device's wall clock in ms (for ``newest_wins``).
    """
    local = detect_local(store_path)
    if local.state in (LocalState.NO_STORE, LocalState.EMPTY):
        return MigrationPlan(collections={})
    check_local(local)
    counts: dict[str, collections.Counter[str]] = {}
    conflicts: list[Conflict] = []
    estimate: ClockEstimate | None = None
    page: list[Item] = []
    limit = page_size

    def send() -> None:
        nonlocal limit
        while page:
            chunk = page[:limit]
            try:
                answer = transport.plan(
                    [
                        PlanEntry(
                            collection=i["collection"], key=i["key"], digest=item_digest(i).hex()
                        )
                        for i in chunk
                    ]
                )
            except InvalidRequestError as exc:
                # A server with a smaller page limit names it: plan in pages that size.
                smaller = exc.problem.get("maxEntries")
                if exc.status != 413 or type(smaller) is not int or not 0 < smaller < len(chunk):
                    raise
                limit = smaller
                continue
            del page[: len(chunk)]
            record(chunk, answer)

    def record(chunk: list[Item], answer: PlanResponse) -> None:
        nonlocal estimate
        measured = ClockEstimate.measure(transport.last_exchange, answer.server_time)
        if measured is not None:
            estimate = measured.better(estimate)
        for item, outcome in zip(chunk, answer.outcomes, strict=True):
            counts.setdefault(item["collection"], collections.Counter())[outcome] += 1
        if answer.conflicts:
            by_key = {(i["collection"], i["key"]): i for i in chunk}
            for found in answer.conflicts:
                ours = by_key.get((found.collection, found.key))
                if ours is None:
                    raise ProtocolError(
                        f"plan: the server reported a conflict on {found.collection}/"
                        f"{found.key}, which this page did not ask about; check that client "
                        "and server versions match"
                    )
                conflicts.append(
                    Conflict(
                        conflict_id="",
                        collection=found.collection,
                        key=found.key,
                        local=ours,
                        server=Item(
                            collection=found.collection,
                            key=found.key,
                            data=found.server.data,
                            updatedAt=found.server.updated_at,
                            deleted=found.server.deleted,
                        ),
                        server_version=found.server.version,
                        server_device_id=found.server.device_id,
                    )
                )

    for item in _read_items(store_path):
        page.append(item)
        if len(page) >= page_size:
            send()
    if page:
        send()
    clock_estimate = estimate or ClockEstimate()
    now = clock()
    resolutions: dict[str, collections.Counter[str]] = {}
    choices: dict[str, collections.Counter[str]] = {}
    flagged: list[FlaggedItem] = []
    for conflict in conflicts:
        decision = decide(conflict, policy, clock_estimate, now_ms=now)
        resolutions.setdefault(conflict.collection, collections.Counter())[decision.kind] += 1
        choices.setdefault(conflict.collection, collections.Counter())[decision.choice] += 1
        if decision.flag is not None:
            flagged.append(decision.flag)
    plan = MigrationPlan(
        collections={
            name: CollectionPlan(
                items=sum(outcomes.values()),
                new=outcomes["new"],
                unchanged=outcomes["unchanged"],
                conflicts=outcomes["conflict"],
                resolutions=dict(sorted(resolutions.get(name, {}).items())),
                choices=dict(sorted(choices.get(name, {}).items())),
            )
            for name, outcomes in sorted(counts.items())
        },
        flagged=flagged,
        clock_offset_ms=estimate.offset_ms if estimate else None,
        clock_uncertainty_ms=estimate.uncertainty_ms if estimate else None,
    )
    logger.info(
        "plan: %d items, %d new, %d unchanged, %d conflicts (%d would wait for the app)",
        plan.item_count,
        plan.new_items,
        plan.unchanged_items,
        plan.conflicts,
        plan.pending_conflicts,
    )
    return plan


def _read_items(path: Path) -> Iterator[Item]:
    """The store's items in (collection, key) order, read-only and a page per query (so
    the app's writers are never held up); a plan writes nothing, not even a schema step."""
    after: tuple[str, str] = ("", "")
    while True:
        try:
            conn = connect_read_only(path)
            try:
                rows = conn.execute(
                    "SELECT collection, key, data, updated_at, deleted FROM items"
                    " WHERE (collection, key) > (?, ?) ORDER BY collection, key LIMIT ?",
                    (*after, _READ_PAGE),
                ).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise store_error(exc, path, "read the store for the plan") from exc
        for collection, key, data, updated_at, deleted in rows:
            yield Item(
                collection=collection,
                key=key,
                data=json.loads(data),
                updatedAt=updated_at,
                deleted=bool(deleted),
            )
        if len(rows) < _READ_PAGE:
            return
        after = (rows[-1][0], rows[-1][1])


def _total(counters: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: collections.Counter[str] = collections.Counter()
    for counter in counters:
        total.update(counter)
    return dict(sorted(total.items()))
