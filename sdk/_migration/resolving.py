"""The conflict phase of a migration: decide each conflict the server lists with the
integrator's policy (or the user's earlier decision), journal the decisions, write them
into the local store, then post them. Nothing is confirmed while one waits for the app.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from .._conflicts.policy import ClockEstimate, Conflict, FlaggedItem, decide
from .._errors import ConflictError, NotFoundError
from .._events import DataConflictDetected, Progress, ProgressPhase
from .._failpoints import failpoint
from .._store.local import LocalStore, now_ms
from .._store.snapshot import Snapshot
from .._wire import models as c
from .._wire.canonical import ProblemCode, canonical_json
from .journal import JournalRecord, PendingRecord, Phase, ResolutionRecord, decision_key
from .run import Restart, Run, session_id_of, session_status

__all__ = ["resolve_conflicts"]

logger = logging.getLogger(__name__)


def resolve_conflicts(run: Run, record: JournalRecord, snapshot: Snapshot) -> JournalRecord:
    """Decide every conflict the server lists with the policy, write the outcome into the
    store, post it. Returns the record in ``RESOLVED``, or still in ``UPLOADED`` while
    conflicts wait for the app (nothing is confirmed before they are decided)."""
    session_id = session_id_of(record)
    session_status(run, session_id)  # an expired session starts over, it does not wait
    listing = list(run.transport.iter_conflicts(session_id))
    clock = _clock(run, record)
    unresolved = [x for x in listing if not x.resolved]
    known = {r.conflict_id: r for r in run.journal.resolutions()}
    waiting = {p.conflict_id: p for p in run.journal.pending()}
    carried = run.journal.carried_decisions()  # the app's, from before a start-over
    run.conflicts_seen = max(run.conflicts_seen, len(listing))
    if any(x.conflict_id not in known and x.conflict_id not in waiting for x in unresolved):
        run.hooks.emit(DataConflictDetected(session_id=session_id, count=len(unresolved)))
    if unresolved:
        run.hooks.progress(Progress(ProgressPhase.RESOLVING, 0, len(unresolved)))
    listed = {x.conflict_id for x in listing}
    # Conflicts the server dropped (the cloud came to hold this device's item): forget
    # their decisions, and undo them in the store.
    obsolete = [r for r in known.values() if r.conflict_id not in listed]
    previous: dict[tuple[str, str], Any] = {(r.collection, r.key): r.item for r in obsolete}
    resolutions: list[ResolutionRecord] = []
    pending: list[PendingRecord] = []
    flags: dict[str, dict[str, Any] | None] = {}
    now = now_ms()
    for found in unresolved:
        old = known.get(found.conflict_id)
        if old is not None and not old.posted:
            continue  # decided before a restart: post it as it was decided
        conflict = Conflict.from_wire(found)
        row = waiting.get(found.conflict_id)
        if row is not None and row.choice is not None and _same(row.conflict, conflict):
            continue  # the app decided it; the journal turns that into a resolution
        if old is not None:
            # Posted, yet unresolved again: the cloud changed meanwhile. Decide anew, and
            # replace the earlier outcome in the store.
            previous[(old.collection, old.key)] = old.item
        reused = carried.get((conflict.collection, conflict.key))
        if old is None and reused is not None and reused[0] == decision_key(conflict.to_json()):
            # The user decided this very conflict before the session expired: not again.
            _, choice, item = reused
            resolutions.append(_resolution(conflict, choice, "manual", item))
            continue
        decision = decide(conflict, run.options.conflicts, clock, now_ms=now)
        flags[found.conflict_id] = None if decision.flag is None else _as_dict(decision.flag)
        if decision.item is None:
            waiting_for = dataclasses.replace(conflict, reason=decision.reason)
            pending.append(
                PendingRecord(
                    conflict_id=conflict.conflict_id,
                    collection=conflict.collection,
                    key=conflict.key,
                    conflict=waiting_for.to_json(),
                )
            )
        else:
            resolutions.append(
                _resolution(conflict, decision.choice, decision.kind, dict(decision.item))
            )
    # Journaled before anything is written locally or posted.
    run.journal.save_decisions(
        resolutions=resolutions,
        pending=pending,
        flags=flags,
        drop=[r.conflict_id for r in obsolete],
        listed=[x.conflict_id for x in unresolved],
    )
    decided = run.journal.resolutions()
    _apply_locally(run, snapshot, decided, previous)
    _post(run, session_id, [r for r in decided if not r.posted])
    still_waiting = sum(1 for p in run.journal.pending() if p.choice is None)
    if still_waiting:
        logger.info("%d conflict(s) wait for the app's decision", still_waiting)
        return record
    overrides = {(r.collection, r.key): r.item for r in decided if r.choice != "local"}
    # With nothing overridden the expected state is the snapshot itself: skip a full pass.
    expected = (
        snapshot.dataset_checksum_with(overrides)  # type: ignore[arg-type]
        if overrides
        else snapshot.dataset_checksum
    )
    return run.journal.advance(Phase.RESOLVED, expected_checksum=expected)


def _resolution(
    conflict: Conflict, choice: str, strategy: str, item: dict[str, Any]
) -> ResolutionRecord:
    return ResolutionRecord(
        conflict_id=conflict.conflict_id,
        collection=conflict.collection,
        key=conflict.key,
        choice=choice,
        strategy=strategy,
        item=item,
    )


def _post(run: Run, session_id: str, pending: list[ResolutionRecord]) -> None:
    """Post decided resolutions in chunks; each chunk is journaled as posted once the
    server recorded it (posting it again changes nothing)."""
    chunk = 500
    for start in range(0, len(pending), chunk):
        part = pending[start : start + chunk]
        failpoint("resolve.before")
        try:
            run.transport.resolve(
                c.ResolveConflictsRequest(
                    session_id=session_id, resolutions=[_wire(r) for r in part]
                )
            )
        except NotFoundError as exc:
            raise Restart(f"the server no longer knows session {session_id}") from exc
        except ConflictError as exc:
            if exc.code == ProblemCode.SESSION_EXPIRED.value:
                raise Restart(f"session {session_id} expired while resolving") from exc
            raise
        failpoint("resolve.after")
        run.journal.mark_posted(r.conflict_id for r in part)
        run.hooks.progress(Progress(ProgressPhase.RESOLVING, start + len(part), len(pending)))


def _wire(record: ResolutionRecord) -> c.Resolution:
    if record.choice == "merged":
        return c.Resolution(
            conflict_id=record.conflict_id,
            choice="merged",
            strategy=record.strategy,
            data=record.item["data"],
            updated_at=record.item["updatedAt"],
            deleted=record.item["deleted"],
        )
    return c.Resolution(
        conflict_id=record.conflict_id,
        choice="local" if record.choice == "local" else "server",
        strategy=record.strategy,
    )


def _apply_locally(
    run: Run,
    snapshot: Snapshot,
    decided: Iterable[ResolutionRecord],
    previous: Mapping[tuple[str, str], Any] | None = None,
) -> None:
    """Write the decided versions into the store, where the app has not edited the item
    since the snapshot (or since an earlier decision, in ``previous``, that this one
    replaces; a key in ``previous`` without a decision goes back to the snapshot's)."""
    previous = previous or {}
    targets: dict[tuple[str, str], Any] = dict.fromkeys(previous)
    for r in decided:
        key = (r.collection, r.key)
        if r.choice != "local" or key in previous:
            targets[key] = r.item
    if not targets:
        return
    originals = snapshot.get_items(list(targets))
    pairs: list[tuple[Any, Any]] = []
    for key, target in targets.items():
        original = originals.get(key)
        if original is None:
            continue
        new = original if target is None else target
        for expected in (original, previous.get(key)):
            if expected is not None and canonical_json(expected) != canonical_json(new):
                pairs.append((expected, new))
    if not pairs:
        return
    with LocalStore(run.store_path, create=False) as store:
        replaced = store.replace_if_unchanged(pairs)
    logger.info("applied %d of %d conflict resolutions to the local store", replaced, len(pairs))


def _clock(run: Run, record: JournalRecord) -> ClockEstimate:
    """The clock estimate for ``newest_wins``: measured in this process, journaled at
    start, or (a journal without one) the ``Date`` header of the last answer."""
    if run.clock is not None:
        return run.clock
    if record.clock_offset_ms is not None:
        return ClockEstimate(record.clock_offset_ms, record.clock_uncertainty_ms or 0)
    estimate = ClockEstimate.from_date(run.transport.last_exchange)
    if estimate is None:
        logger.warning("no measure of the server's clock: comparing timestamps uncorrected")
        return ClockEstimate()
    return estimate


def _same(stored: Mapping[str, Any], conflict: Conflict) -> bool:
    """Whether a journaled conflict is the one listed now (the reason aside)."""
    return {**stored, "reason": None} == conflict.to_json()


def _as_dict(flag: FlaggedItem) -> dict[str, Any]:
    return dataclasses.asdict(flag)
