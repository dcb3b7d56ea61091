"""The sync's push: pending local changes go up in batches through the store's outbox
(sent again byte for byte after a crash: the server applies a push id once), and the
answer is applied in one transaction; a conflict is decided by the migration's
:class:`~sdk.ConflictPolicy`, or waits for the app (``manual``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import uuid
from typing import Any

from .._conflicts.policy import ClockEstimate, Conflict, Decision, decide, resolved_item
from .._errors import ProtocolError
from .._events import Progress, ProgressPhase
from .._failpoints import failpoint
from .._store import changes
from .._store.local import LocalStore, check_item, now_ms
from .._wire import models as c
from .._wire.canonical import Item, canonical_json
from .run import PUSH_BATCH, _pending, _Sync

__all__ = ["decide_waiting", "waiting_conflicts"]

logger = logging.getLogger(__name__)


def _resend_outbox(run: _Sync) -> None:
    """A push sent before a crash, answered or not: send it again (applied once)."""
    with run.store._reading("read the sync outbox") as conn:
        row = conn.execute("SELECT push_id, body, sent FROM sync_outbox").fetchone()
    if row is None:
        return
    push_id, body, sent = row
    logger.info("sending push %s again: a crash interrupted it", push_id)
    _send(run, push_id, body.encode("utf-8"), json.loads(sent))


# "AND pending > 0" lets SQLite use the partial index items_pending (WHERE pending > 0):
# a bound "pending > ?" alone cannot be proved to imply it, and the query scans every
# row. The bound comes first: SQLite seeks the index on the first of the two.
_PENDING_ROWS = (
    "SELECT collection, key, data, updated_at, deleted, base_seq, pending FROM items"
    " WHERE pending > ? AND pending > 0 AND NOT EXISTS (SELECT 1 FROM sync_conflicts s WHERE"
    " s.collection = items.collection AND s.key = items.key)"
    " ORDER BY pending LIMIT ?"
)


def _push_batch(run: _Sync) -> bool:
    """Send one batch of pending changes; False when none was pending."""
    with run.store._reading("read pending changes") as conn:
        rows = conn.execute(_PENDING_ROWS, (changes.settled(conn), PUSH_BATCH)).fetchall()
    if not rows:
        with run.store._writing("check the pending index") as conn:
            (waiting,) = conn.execute("SELECT count(*) FROM sync_conflicts").fetchone()
            if _pending(conn) > waiting:
                # The index lost rows (damage quick_check cannot see): rebuild it.
                logger.warning("the store's index of pending changes was damaged; rebuilt")
                conn.execute("REINDEX items_pending")
                rows = conn.execute(_PENDING_ROWS, (changes.settled(conn), PUSH_BATCH)).fetchall()
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


def _local_items(run: _Sync, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Item]:
    found: dict[tuple[str, str], Item] = {}
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
    local: Item,
    server: changes.Row,
    result: c.PushResult,
    clock: ClockEstimate,
    now: int,
) -> Decision:
    conflict = _conflict(local, server, result)
    decision = decide(conflict, run.policy, clock, now_ms=now)
    run.kinds[decision.kind] += 1
    return decision


def _conflict(local: Item, server: changes.Row, result: c.PushResult) -> Conflict:
    collection, key = local["collection"], local["key"]
    ident = hashlib.sha256(
        canonical_json(["sync", collection, key, result.seq]).encode()
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


def _item(row: changes.Row) -> Item:
    return Item(
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
    local: Item,
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
                (decision.choice, canonical_json(decision.item), collection, key),
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


def _row_of(item: Item) -> changes.Row:
    text = check_item(
        item["collection"], item["key"], item["data"], item["updatedAt"], item["deleted"]
    )
    return (item["collection"], item["key"], text, item["updatedAt"], int(item["deleted"]))


def _log(conn: Any, decision: Decision, local: Item, server: changes.Row, seq: int) -> None:
    conn.execute(
        "INSERT INTO sync_decisions (decided_at, collection, key, choice, strategy, local,"
        " server, server_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            now_ms(),
            local["collection"],
            local["key"],
            decision.choice,
            decision.kind,
            canonical_json(local),
            canonical_json(_item(server)),
            seq,
        ),
    )
