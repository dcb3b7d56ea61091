"""The sync: after the migration, the store and the cloud stay in step, both ways.

One sync is three steps, each resumable after a kill at any point:

1. **Push.** Pending local changes (:mod:`sdk._store.changes` records them with every write)
   go up in batches. Each batch is written to the store's outbox before it is sent and
   sent again byte for byte after a crash: the server applies a push id once. The answer
   is applied in one transaction with the outbox row's removal: ``applied`` and
   ``unchanged`` changes stop being pending (unless the app wrote them again meanwhile),
   a ``conflict`` is decided by the same :class:`~sdk.ConflictPolicy` as the migration's,
   and its outcome is pushed by the next batch (or waits for the app, ``manual``).
2. **Pull.** Pages of the user's changes since the store's cursor, each written in one
   transaction together with the new cursor; a row with an unpushed local change is never
   overwritten (the next push meets the conflict and the policy decides). After a
   migration, the items the cloud held before it (another device's) are pulled once, up
   to the seq the migration started from; a new device pulls everything.
3. **Proof.** When the last page is applied and nothing is pending, the store's running
   multiset checksum must equal the cloud's: "verified" means the device holds exactly
   what the cloud holds, now.

Use it through :meth:`sdk.MigrationClient.sync`; this module is the engine behind it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import _fastjson as fastjson
from .. import contract as c
from .._conflicts.policy import (
    ClockEstimate,
    Conflict,
    ConflictPolicy,
    Decision,
    decide,
    resolved_item,
)
from .._errors import (
    CorruptStoreError,
    MigrationBlockedError,
    ProtocolError,
    VerificationError,
)
from .._events import Hooks, Progress, ProgressPhase, RemoteChangesApplied, SyncCompleted
from .._failpoints import failpoint
from .._stopping import Stopped
from .._store import changes
from .._store.local import LocalStore, check_item, now_ms
from ..contract import KEY_PATTERN, NAME_PATTERN

__all__ = [
    "SyncResult",
    "SyncStatus",
    "decide_waiting",
    "run_sync",
    "sync_status",
    "waiting_conflicts",
]

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(NAME_PATTERN)
_KEY_RE = re.compile(KEY_PATTERN)
#: Changes per push, and items per pull page.
PUSH_BATCH = 500
PULL_PAGE = 2000
#: Push batches one sync sends at most: an app that writes faster than the network
#: takes them still sees the sync end (its writes stay pending for the next one).
_MAX_PUSH_ROUNDS = 100


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyncResult:
    """What one sync did, and where the device stands.

    ``verified`` is true only when nothing is pending on the device and its checksum
    equals the cloud's as of the last page read: the device holds what the cloud holds.

    >>> SyncResult().verified, SyncResult().pending_changes
    (False, 0)
    """

    pushed: int = 0
    pulled: int = 0
    #: Conflicts the policy decided in this sync, by strategy.
    resolutions_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Local writes not yet in the cloud (written during the sync, or waiting on a
    #: conflict the app must decide).
    pending_changes: int = 0
    #: Conflicts waiting for the app (``manual``, or a callback's deferral).
    pending_conflicts: int = 0
    #: The cloud's seq and checksum as of the last page read.
    seq: int = 0
    cloud_checksum: str | None = None
    local_checksum: str | None = None
    verified: bool = False
    #: Whether both checksums were recomputed from every item (``full=True``).
    full: bool = False
    stopped: bool = False
    round_trips: int = 0
    duration_s: float = 0.0
    #: The migration this sync began with, when the store had never been migrated (the
    #: migration is the first sync); see its outcome when it waits for the app.
    migration: Any = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyncStatus:
    """Where the device stands against the cloud, read without changing anything.

    ``verified`` is true when nothing waits either way and both checksums are equal: the
    device holds what the cloud holds, now. The cloud's side is ``None`` offline.

    >>> SyncStatus(pending_changes=0, pending_conflicts=0, local_checksum="0" * 64,
    ...            local_item_count=0).verified
    False
    """

    pending_changes: int
    pending_conflicts: int
    local_checksum: str
    local_item_count: int
    #: Items a pull would bring (changed in the cloud since the last sync).
    changes_to_pull: int | None = None
    cloud_checksum: str | None = None
    cloud_item_count: int | None = None
    cloud_seq: int | None = None
    #: The cloud's seq as of the last page this device read.
    synced_seq: int | None = None
    #: When a sync last proved the device in step (ms since the epoch).
    last_sync_at: int | None = None
    verified: bool = False
    full: bool = False


def sync_status(store: LocalStore, transport: Any | None, *, full: bool = False) -> SyncStatus:
    """Compare the store with the cloud (``transport=None``: the device's side only).
    ``full`` recomputes both checksums from every item."""
    if transport is not None:
        with store._reading("read the store's user") as conn:
            owner = changes.meta(conn, "sync_user").get("sync_user")
        if owner is not None and owner != transport.user_id:
            raise MigrationBlockedError(
                f"the store at {store.path} keeps the data of user {owner!r}, not "
                f"{transport.user_id!r}'s: verify it as {owner!r}",
                reason="another-user",
            )
    with store._writing("settle writes made around the SDK") as conn:
        changes.repair(conn)
    with store._reading("read the sync state") as conn:
        pending = _pending(conn)
        waiting = conn.execute(
            "SELECT count(*) FROM sync_conflicts WHERE choice IS NULL"
        ).fetchone()[0]
        if full:
            local, count = changes.full_checksum(conn)
        else:
            local = changes.local_checksum(conn)
            (count,) = conn.execute("SELECT count(*) FROM items").fetchone()
        state = changes.meta(conn, "sync_cursor", "sync_seq", "last_sync_at")
    base = SyncStatus(
        pending_changes=pending,
        pending_conflicts=waiting,
        local_checksum=c.multiset_hex(local),
        local_item_count=count,
        synced_seq=int(state["sync_seq"]) if "sync_seq" in state else None,
        last_sync_at=int(state["last_sync_at"]) if "last_sync_at" in state else None,
        full=full,
    )
    if transport is None:
        return base
    cloud = transport.sync_state(
        full=full, since=state.get("sync_cursor", "0"), device_id=store.device_id
    )
    return dataclasses.replace(
        base,
        changes_to_pull=cloud.changes_since,
        cloud_checksum=cloud.checksum,
        cloud_item_count=cloud.item_count,
        cloud_seq=cloud.seq,
        verified=pending == 0
        and waiting == 0
        and not cloud.changes_since
        and cloud.checksum == base.local_checksum,
    )


@dataclasses.dataclass
class _Sync:
    store: LocalStore
    transport: Any  # sdk._transport.http.Transport (a Protocol would only restate it)
    policy: ConflictPolicy
    hooks: Hooks
    stop: threading.Event | None
    started: float = dataclasses.field(default_factory=time.monotonic)
    pushed: int = 0
    pulled: int = 0
    round_trips: int = 0
    kinds: Counter[str] = dataclasses.field(default_factory=Counter)

    def check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Stopped("stop requested")


def run_sync(
    *,
    store_path: Path,
    transport: Any,
    policy: ConflictPolicy,
    hooks: Hooks,
    stop: threading.Event | None = None,
    full: bool = False,
) -> SyncResult:
    """Push, pull and prove, once. Creates the store when there is none (a new device
    then bootstraps the user's data). The caller holds the store's migration lock."""
    try:
        return _sync_once(store_path, transport, policy, hooks, stop, full)
    except CorruptStoreError:
        # Rows that a snapshot or a sync reads whole can still sit behind a damaged index
        # (quick_check does not compare indexes with their tables): indexes are derived,
        # so rebuild them and try once more; damage in the rows themselves raises again.
        logger.warning("rebuilding the indexes of %s: one was damaged", store_path)
        with LocalStore(store_path) as store, store._writing("rebuild the indexes") as conn:
            conn.execute("REINDEX")
        return _sync_once(store_path, transport, policy, hooks, stop, full)


def _sync_once(
    store_path: Path,
    transport: Any,
    policy: ConflictPolicy,
    hooks: Hooks,
    stop: threading.Event | None,
    full: bool,
) -> SyncResult:
    with LocalStore(store_path) as store:
        run = _Sync(store, transport, policy, hooks, stop)
        _claim(store, transport.user_id)
        try:
            _resend_outbox(run)
            _apply_app_decisions(run)
            for _round in range(_MAX_PUSH_ROUNDS):
                run.check_stop()
                if not _push_batch(run):
                    break
            page = _pull(run)
            return _prove(run, page, full=full)
        except Stopped:
            logger.info("sync stopped at a safe point; the next sync resumes")
            return dataclasses.replace(_result(run), stopped=True)


def _claim(store: LocalStore, user_id: str) -> None:
    """A store keeps one user's data in step: the first sync (or the migration) names the
    user; another user is refused before anything is sent or written."""
    with store._writing("name the store's user") as conn:
        owner = changes.meta(conn, "sync_user").get("sync_user")
        if owner is None:
            changes.set_meta(conn, sync_user=user_id)
        if owner is None or owner == user_id:
            changes.repair(conn)  # writes made around the SDK: pending, and counted
    if owner is not None and owner != user_id:
        raise MigrationBlockedError(
            f"the store at {store.path} keeps the data of user {owner!r} in step with the "
            f"cloud, not {user_id!r}'s: give each user a store of their own (a store_path or "
            "app_name per user); nothing was sent",
            reason="another-user",
        )


# --------------------------------------------------------------------------- push


def _resend_outbox(run: _Sync) -> None:
    """A push sent before a crash, answered or not: send it again (applied once)."""
    with run.store._reading("read the sync outbox") as conn:
        row = conn.execute("SELECT push_id, body, sent FROM sync_outbox").fetchone()
    if row is None:
        return
    push_id, body, sent = row
    logger.info("sending push %s again: a crash interrupted it", push_id)
    _send(run, push_id, body.encode("utf-8"), json.loads(sent))


_PENDING_ROWS = (
    "SELECT collection, key, data, updated_at, deleted, base_seq, pending FROM items"
    " WHERE pending > 0 AND NOT EXISTS (SELECT 1 FROM sync_conflicts s WHERE"
    " s.collection = items.collection AND s.key = items.key)"
    " ORDER BY pending LIMIT ?"
)


def _push_batch(run: _Sync) -> bool:
    """Send one batch of pending changes; False when none was pending."""
    with run.store._reading("read pending changes") as conn:
        rows = conn.execute(_PENDING_ROWS, (PUSH_BATCH,)).fetchall()
    if not rows:
        with run.store._writing("check the pending index") as conn:
            (waiting,) = conn.execute("SELECT count(*) FROM sync_conflicts").fetchone()
            if _pending(conn) > waiting:
                # The index lost rows (damage quick_check cannot see): rebuild it.
                logger.warning("the store's index of pending changes was damaged; rebuilt")
                conn.execute("REINDEX items_pending")
                rows = conn.execute(_PENDING_ROWS, (PUSH_BATCH,)).fetchall()
    if not rows:
        return False
    push_id = uuid.uuid4().hex
    body = _push_body(push_id, run.store.device_id, rows)
    sent = [[r[0], r[1], r[6]] for r in rows]
    with run.store._writing("record a push") as conn:
        conn.execute(
            "INSERT INTO sync_outbox (push_id, body, sent) VALUES (?, ?, ?)",
            (push_id, body, json.dumps(sent)),
        )
    failpoint("sync.push.journaled")
    _send(run, push_id, body.encode("utf-8"), sent)
    return True


def _push_body(push_id: str, device_id: str, rows: list[tuple[Any, ...]]) -> str:
    """The push's JSON, built around each row's stored canonical data (no re-encoding)."""
    changes_json = ",".join(
        '{{"baseSeq":{},"collection":{},"data":{},"deleted":{},"key":{},"updatedAt":{:d}}}'.format(
            "null" if base is None else int(base),
            json.dumps(collection, ensure_ascii=False),
            data,
            "true" if deleted else "false",
            json.dumps(key, ensure_ascii=False),
            updated_at,
        )
        for collection, key, data, updated_at, deleted, base, _pending in rows
    )
    tail = f'"deviceId":{json.dumps(device_id)},"pushId":{json.dumps(push_id)}'
    return f'{{"changes":[{changes_json}],{tail}}}'


def _send(run: _Sync, push_id: str, body: bytes, sent: list[list[Any]]) -> None:
    run.hooks.progress(Progress(ProgressPhase.PUSHING, 0, len(sent)))
    answer = run.transport.push(body)
    run.round_trips += 1
    failpoint("sync.push.answered")
    if len(answer.results) != len(sent) or any(
        (r.collection, r.key) != (s[0], s[1]) for r, s in zip(answer.results, sent, strict=False)
    ):
        raise ProtocolError(
            f"the server's answer to push {push_id} does not list the changes sent, in order;"
            " the server and the SDK disagree on the wire contract, update whichever is older"
        )
    locals_ = _local_items(run, [(s[0], s[1]) for s in sent])
    clock = ClockEstimate.from_date(run.transport.last_exchange) or ClockEstimate()
    now = now_ms()
    with run.store._writing("apply a push's answer") as conn:
        acks: list[tuple[str, str, int, int]] = []
        for result, (collection, key, pending) in zip(answer.results, sent, strict=True):
            if result.outcome == "applied":
                acks.append((collection, key, pending, result.seq))
                continue
            assert result.server is not None
            server = _row(collection, key, result.server)
            if result.outcome == "unchanged":
                # Equal data: the device takes the cloud's item (its updatedAt may differ).
                changes.take_remote(
                    conn, [(server, result.seq)], only_if_pending={(collection, key): pending}
                )
                acks.append((collection, key, pending, result.seq))
                continue
            local = locals_.get((collection, key))
            if local is None:  # the row cannot vanish (deletes are tombstones)
                continue
            decision = _decide(run, local, server, result, clock, now)
            _apply_decision(run, conn, decision, local, server, result, pending)
        changes.acknowledge(conn, acks)
        conn.execute("DELETE FROM sync_outbox WHERE push_id = ?", (push_id,))
    run.pushed += sum(1 for r in answer.results if r.outcome != "conflict")
    run.hooks.progress(Progress(ProgressPhase.PUSHING, len(sent), len(sent)))


def _local_items(run: _Sync, keys: list[tuple[str, str]]) -> dict[tuple[str, str], c.Item]:
    found: dict[tuple[str, str], c.Item] = {}
    for collection, key in keys:
        item = run.store.get(collection, key)
        if item is not None:
            found[(collection, key)] = item
    return found


def _row(collection: str, key: str, version: c.ItemVersion) -> changes.Row:
    text = check_item(collection, key, version.data, version.updated_at, version.deleted)
    return (collection, key, text, version.updated_at, int(version.deleted))


def _decide(
    run: _Sync,
    local: c.Item,
    server: changes.Row,
    result: c.PushResult,
    clock: ClockEstimate,
    now: int,
) -> Decision:
    conflict = _conflict(local, server, result)
    decision = decide(conflict, run.policy, clock, now_ms=now)
    run.kinds[decision.kind] += 1
    return decision


def _conflict(local: c.Item, server: changes.Row, result: c.PushResult) -> Conflict:
    collection, key = local["collection"], local["key"]
    ident = hashlib.sha256(
        c.canonical_json(["sync", collection, key, result.seq]).encode()
    ).hexdigest()[:24]
    return Conflict(
        conflict_id=f"sync-{ident}",
        collection=collection,
        key=key,
        local=local,
        server=_item(server),
        server_version=result.server.version if result.server else None,
        server_device_id=result.server.device_id if result.server else None,
    )


def _item(row: changes.Row) -> c.Item:
    return c.Item(
        collection=row[0],
        key=row[1],
        data=json.loads(row[2]),
        updatedAt=row[3],
        deleted=bool(row[4]),
    )


def _apply_decision(
    run: _Sync,
    conn: Any,
    decision: Decision,
    local: c.Item,
    server: changes.Row,
    result: c.PushResult,
    pending: int,
) -> None:
    """Write a conflict's outcome, in the transaction that applies the push's answer."""
    collection, key = local["collection"], local["key"]
    rebase = [(collection, key, -1, result.seq)]  # a base only: the change stays pending
    if decision.item is None:  # the app decides (manual, or deferred)
        conflict = _conflict(local, server, result)
        conn.execute(
            "INSERT INTO sync_conflicts (collection, key, conflict, server_seq, pending)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (collection, key) DO UPDATE SET"
            " conflict = excluded.conflict, server_seq = excluded.server_seq,"
            " pending = excluded.pending, choice = NULL, item = NULL",
            (
                collection,
                key,
                json.dumps(dataclasses.replace(conflict, reason=decision.reason).to_json()),
                result.seq,
                pending,
            ),
        )
        return
    _log(conn, decision, local, server, result.seq)
    if decision.choice == "server":
        taken = changes.take_remote(
            conn, [(server, result.seq)], only_if_pending={(collection, key): pending}
        )
        if not taken:  # the app wrote it again meanwhile: its newer write goes up next
            changes.acknowledge(conn, rebase)
    elif decision.choice == "local":
        changes.acknowledge(conn, rebase)
    else:
        item = decision.item
        text = check_item(collection, key, item["data"], item["updatedAt"], item["deleted"])
        changes.record_writes(
            conn, [(collection, key, text, item["updatedAt"], int(item["deleted"]))]
        )
        changes.acknowledge(conn, rebase)


def waiting_conflicts(store: LocalStore) -> list[Conflict]:
    """The sync's conflicts that wait for the app, in (collection, key) order."""
    with store._reading("read waiting conflicts") as conn:
        rows = conn.execute(
            "SELECT conflict FROM sync_conflicts WHERE choice IS NULL ORDER BY collection, key"
        ).fetchall()
    return [Conflict.from_json(json.loads(text)) for (text,) in rows]


def decide_waiting(
    store: LocalStore, conflict_id: str, choice: str, data: dict[str, Any] | None
) -> bool:
    """Record the app's decision on a waiting sync conflict (the next sync applies and
    pushes it). False when no waiting sync conflict has this id."""
    with store._writing("record a decision") as conn:
        for collection, key, text in conn.execute(
            "SELECT collection, key, conflict FROM sync_conflicts"
        ).fetchall():
            conflict = Conflict.from_json(json.loads(text))
            if conflict.conflict_id != conflict_id:
                continue
            decision = resolved_item(conflict, choice, data)
            conn.execute(
                "UPDATE sync_conflicts SET choice = ?, item = ? WHERE collection = ? AND key = ?",
                (decision.choice, c.canonical_json(decision.item), collection, key),
            )
            return True
    return False


def _apply_app_decisions(run: _Sync) -> None:
    """Write the app's decisions on waiting conflicts; the push that follows sends them."""
    with run.store._writing("apply the app's decisions") as conn:
        rows = conn.execute(
            "SELECT conflict, server_seq, pending, choice, item FROM sync_conflicts"
            " WHERE choice IS NOT NULL"
        ).fetchall()
        for text, seq, pending, choice, item_text in rows:
            conflict = Conflict.from_json(json.loads(text))
            item = json.loads(item_text)
            decision = Decision(choice, "manual", item)
            server = _row_of(conflict.server)
            version = c.ItemVersion(
                data=conflict.server["data"],
                updated_at=conflict.server["updatedAt"],
                deleted=conflict.server["deleted"],
            )
            result = c.PushResult(
                collection=conflict.collection,
                key=conflict.key,
                outcome="conflict",
                seq=seq,
                server=version,
            )
            run.kinds["manual"] += 1
            _apply_decision(run, conn, decision, conflict.local, server, result, pending)
            conn.execute(
                "DELETE FROM sync_conflicts WHERE collection = ? AND key = ?",
                (conflict.collection, conflict.key),
            )


def _row_of(item: c.Item) -> changes.Row:
    text = check_item(
        item["collection"], item["key"], item["data"], item["updatedAt"], item["deleted"]
    )
    return (item["collection"], item["key"], text, item["updatedAt"], int(item["deleted"]))


def _log(conn: Any, decision: Decision, local: c.Item, server: changes.Row, seq: int) -> None:
    conn.execute(
        "INSERT INTO sync_decisions (decided_at, collection, key, choice, strategy, local,"
        " server, server_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            now_ms(),
            local["collection"],
            local["key"],
            decision.choice,
            decision.kind,
            c.canonical_json(local),
            c.canonical_json(_item(server)),
            seq,
        ),
    )


# --------------------------------------------------------------------------- pull


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

    def fetch(since: str | None) -> dict[str, Any]:
        return run.transport.pull(  # type: ignore[no-any-return]
            since=since, until=until, limit=PULL_PAGE, device_id=run.store.device_id
        )

    run.check_stop()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdk-pull") as ahead:
        upcoming: Future[dict[str, Any]] = ahead.submit(fetch, _sync_meta(run).get(since_key))
        try:
            while True:
                page = upcoming.result()
                run.round_trips += 1
                done = not page["hasMore"]
                if not done:
                    upcoming = ahead.submit(fetch, page["cursor"])
                failpoint("sync.pull.answered")
                _apply_page(run, page, since_key=since_key, until=until)
                if done:
                    return _Page(page["seq"], page["checksum"], page["itemCount"])
                run.check_stop()
        except BaseException:
            upcoming.cancel()
            raise


def _apply_page(run: _Sync, page: dict[str, Any], *, since_key: str, until: int | None) -> None:
    items, digests = _pulled_page(page["changes"])
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


def _pulled_page(page: list[Any]) -> tuple[list[tuple[changes.Row, int]], list[bytes]]:
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


# --------------------------------------------------------------------------- proof


def _prove(run: _Sync, page: _Page, *, full: bool) -> SyncResult:
    with run.store._writing("record the sync") as conn:
        pending = _pending(conn)
        waiting = conn.execute(
            "SELECT count(*) FROM sync_conflicts WHERE choice IS NULL"
        ).fetchone()[0]
        local = changes.local_checksum(conn)
        count = page.item_count  # counting the rows would cost O(items); needed on failure
        if full:
            local, count = changes.full_checksum(conn)
        verified_now = pending == 0 and c.multiset_hex(local) == page.checksum
        if pending == 0 and not verified_now:
            # Before crying wolf: the running checksum trusts the stored digests, which
            # damage the SDK could not see may have changed. Recount from the rows.
            recounted, count = changes.full_checksum(conn)
            if c.multiset_hex(recounted) == page.checksum:
                logger.warning("the store's running checksum was off; rebuilt from its rows")
                local = changes.rebuild(conn)
                verified_now = True
        if verified_now:
            changes.set_meta(conn, last_sync_at=str(now_ms()))
    cloud = page.checksum
    if full:
        state = run.transport.sync_state(full=True)
        run.round_trips += 1
        cloud = state.checksum
        verified_now = verified_now and state.checksum == c.multiset_hex(local)
    if pending == 0 and not verified_now:
        raise VerificationError(
            f"after the sync the device holds {count} items with checksum "
            f"{c.multiset_hex(local)} and the cloud {page.item_count} with {cloud}, though "
            "nothing is pending on the device; the local store was left as it is: run "
            "verify --full, and contact support if it still differs"
        )
    result = dataclasses.replace(
        _result(run),
        pending_changes=pending,
        pending_conflicts=waiting,
        seq=page.seq,
        cloud_checksum=cloud,
        local_checksum=c.multiset_hex(local),
        verified=verified_now,
        full=full,
    )
    run.hooks.emit(
        SyncCompleted(
            pushed=result.pushed,
            pulled=result.pulled,
            pending_changes=pending,
            pending_conflicts=waiting,
            verified=result.verified,
            seq=page.seq,
        )
    )
    run.hooks.progress(Progress(ProgressPhase.DONE, count, count))
    return result


def _pending(conn: Any) -> int:
    (n,) = conn.execute("SELECT count(*) FROM items WHERE pending > 0").fetchone()
    return int(n)


def _result(run: _Sync) -> SyncResult:
    return SyncResult(
        pushed=run.pushed,
        pulled=run.pulled,
        resolutions_by_kind=dict(sorted(run.kinds.items())),
        round_trips=run.round_trips,
        duration_s=time.monotonic() - run.started,
    )
