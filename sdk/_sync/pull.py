"""The sync's pull: pages of the user's changes since the store's cursor, each written
with the new cursor in one transaction, never over an unpushed local change; after a
migration, the cloud's items from before it are pulled once (the backfill).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .. import _fastjson as fastjson
from .._errors import ProtocolError
from .._events import Progress, ProgressPhase, RemoteChangesApplied
from .._failpoints import failpoint
from .._store import changes
from .._store.local import check_item
from .._wire.canonical import KEY_PATTERN, NAME_PATTERN
from .page import PulledPage
from .run import PULL_PAGE, _Sync

__all__: list[str] = []  # the engine calls _pull; nothing here is for others

_NAME_RE = re.compile(NAME_PATTERN)
_KEY_RE = re.compile(KEY_PATTERN)


@dataclasses.dataclass(frozen=True)
class _Page:
    seq: int
    checksum: str
    item_count: int


def _pull(run: _Sync) -> _Page:
    """Pull the backfill (if a migration left one), then everything since the cursor.
    Returns the head described by the last page."""
    state = _sync_meta(run)
    until = state.get("sync_backfill_until")
    if until is not None:
        _pull_range(run, since_key="sync_backfill_cursor", until=int(until))
    return _pull_range(run, since_key="sync_cursor", until=None)


def _pull_range(run: _Sync, *, since_key: str, until: int | None) -> _Page:
    """Pull pages until the last one. The next page is asked for (from the cursor the page
    in hand gave) while this one is written into the store, so the server's work and the
    device's overlap; each page is written with its cursor, so a kill resumes from the
    last page written."""

    def fetch(since: str | None) -> bytes:
        return run.transport.pull(  # type: ignore[no-any-return]
            since=since, until=until, limit=PULL_PAGE, device_id=run.store.device_id
        )

    run.check_stop()
    with (
        run.store._bulk_writes(),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdk-pull") as ahead,
    ):
        upcoming: Future[bytes] = ahead.submit(fetch, _sync_meta(run).get(since_key))
        try:
            while True:
                # Parsed here, not on the fetching thread: the items are parsed one at a
                # time as they are checked (sdk/_sync/page.py says why).
                pulled = PulledPage(upcoming.result())
                page = pulled.envelope
                run.round_trips += 1
                done = not page["hasMore"]
                if not done:
                    upcoming = ahead.submit(fetch, page["cursor"])
                failpoint("sync.pull.answered")
                _apply_page(run, pulled, since_key=since_key, until=until)
                if done:
                    return _Page(page["seq"], page["checksum"], page["itemCount"])
                run.check_stop()
        except BaseException:
            upcoming.cancel()
            raise


def _apply_page(run: _Sync, pulled: PulledPage, *, since_key: str, until: int | None) -> None:
    items, digests = pulled.rows(_pulled_page)
    page = pulled.envelope
    with run.store._writing("apply pulled changes") as conn:
        written = changes.take_remote(conn, items, digests=digests)
        if until is not None and not page["hasMore"]:
            changes.set_meta(conn, sync_backfill_until=None, sync_backfill_cursor=None)
        else:
            changes.set_meta(conn, **{since_key: page["cursor"]})
        if until is None:
            changes.set_meta(conn, sync_seq=str(page["seq"]))
    failpoint("sync.pull.applied")
    run.pulled += written
    if written:
        counts = Counter(row[0] for row, _seq in items)
        run.hooks.emit(RemoteChangesApplied(count=written, collections=dict(counts)))
    # The total is unknown until the last page: one more page is the honest guess.
    expected = run.pulled + (PULL_PAGE if page["hasMore"] else 0)
    run.hooks.progress(Progress(ProgressPhase.PULLING, run.pulled, expected))


def _pulled_page(page: Iterable[Any]) -> tuple[list[tuple[changes.Row, int]], list[bytes]]:
    """A page's items as rows with their seqs, and their digests. The common case costs
    one orjson call per item (the data's canonical text and the item's canonical bytes
    together); anything unusual goes through the full checks of :func:`_pulled`."""
    items: list[tuple[changes.Row, int]] = []
    digests: list[bytes] = []
    name_ok, key_ok = _NAME_RE.fullmatch, _KEY_RE.fullmatch
    sha256, encode = hashlib.sha256, fastjson.encode_item
    for raw in page:
        try:
            seq = raw["seq"]
            collection, key, updated_at, deleted = (
                raw["collection"],
                raw["key"],
                raw["updatedAt"],
                raw["deleted"],
            )
            usual = (
                len(raw) == 6
                and type(seq) is int
                and seq >= 0
                and type(collection) is str
                and type(key) is str
                and type(raw["data"]) is dict
                and type(updated_at) is int
                and updated_at >= 0
                and type(deleted) is bool
                and name_ok(collection) is not None
                and key_ok(key) is not None
            )
        except (KeyError, TypeError):
            usual = False
        if usual:
            del raw["seq"]
            try:
                text, canonical = encode(raw)  # refuses text that is not valid Unicode
            except (TypeError, ValueError, RecursionError):
                raw["seq"] = seq
            else:
                items.append(((collection, key, text, updated_at, int(deleted)), seq))
                digests.append(sha256(canonical).digest())
                continue
        row, seq, digest = _pulled(raw)
        items.append((row, seq))
        digests.append(digest)
    return items, digests


def _pulled(raw: Any) -> tuple[changes.Row, int, bytes]:
    """One pulled item, checked as any write to the store is, with its digest."""
    try:
        seq = raw.pop("seq")
        collection, key = raw["collection"], raw["key"]
        updated_at, deleted = raw["updatedAt"], raw["deleted"]
        if len(raw) != 5:
            raise KeyError(sorted(raw))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(
            f"a pulled item is not a wire item ({exc!r}); the server and the SDK disagree on "
            "the wire contract, update whichever is older"
        ) from exc
    if type(seq) is not int or seq < 0:
        raise ProtocolError(f"a pulled item has no valid seq ({seq!r}); update the server")
    text = check_item(collection, key, raw["data"], updated_at, deleted, encode=fastjson.canonical)
    # One more C call gives the item's canonical bytes (what the checksum hashes).
    _, canonical = fastjson.encode_item(raw)
    row = (collection, key, text, updated_at, int(deleted))
    return row, seq, hashlib.sha256(canonical).digest()


def _sync_meta(run: _Sync) -> dict[str, str]:
    with run.store._reading("read the sync state") as conn:
        return changes.meta(
            conn, "sync_cursor", "sync_backfill_until", "sync_backfill_cursor", "sync_seq"
        )
