"""Applying a unit of work of the ``aws`` backend, and what follows a commit.

:func:`commit` turns what a unit buffered into transactions: one when it fits (the usual
case: a batch's ledger flip, the session's update with its counters, the events, the
cloud pointer), or version-chained chunks when it does not (see
:mod:`backend_stub.storage.aws_unit`). Once it committed, :func:`after` does what may lag
without breaking anything, each step resumable if the process dies: it purges cancelled
sessions, rolls cloud commits forward (with the snapshot of a completed migration), and
publishes the outbox's events on the bus. The version arithmetic of a chain::

    >>> [(expected, bumps) for expected, bumps in chain(7, chunks=3, bumps=1)]
    [(7, 1), (8, 1), (9, 1)]
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from backend_stub.events import Event
from backend_stub.monitoring import metric
from backend_stub.storage.aws_resources import EVENT_SOURCE
from backend_stub.storage.aws_rows import (
    OPTIONAL_SESSION_ATTRS,
    Row,
    conflicts_pk,
    get_s,
    key,
    n,
    session_pk,
    session_sk,
    staged_pk,
    user_pk,
)
from backend_stub.storage.aws_unit import (
    MAX_TRANSACTION_ITEMS,
    Op,
    SessionWrite,
    Unit,
    chunked,
    update_op,
)

if TYPE_CHECKING:
    from backend_stub.storage.aws import AwsStorage

__all__ = ["chain", "commit"]

logger = logging.getLogger(__name__)


def commit(storage: AwsStorage, unit: Unit) -> None:
    """Apply ``unit``: its transactions, then :func:`after` (an exception means that
    nothing of the unit is visible, or, past a chunk of a chained unit, a prefix that the
    caller's retry completes).

    >>> from backend_stub.settings import AwsSettings
    >>> from backend_stub.storage.aws import AwsStorage
    >>> storage = AwsStorage.open(AwsSettings(endpoint_url="http://127.0.0.1:1"))
    >>> commit(storage, Unit())  # nothing buffered: not a single call
    >>> storage.close()
    """
    started = time.monotonic()
    body = list(unit.ops.values())
    completing = {w.user_id: w.session_id for w in unit.sessions.values() if w.completing}
    for user in completing:
        # A completion flips the pointer even with nothing to copy: its snapshot resumes.
        if user not in unit.cloud:
            storage.settle(user)
            unit.cloud[user] = 0
            unit.generations.setdefault(user, storage.cloud.generation(user))
    body += [
        storage.cloud.flip(
            unit.tx, user, completing.get(user), unit.generations[user], unit.sync.get(user)
        )
        for user in unit.cloud
    ]
    for transaction in transactions(unit, body):
        storage.table.transact(transaction)
    after(storage, unit, completing, started)


def transactions(unit: Unit, body: list[Op]) -> list[list[Op]]:
    """The transactions that apply ``body`` and the unit's session writes."""
    writes = list(unit.sessions.values())
    counted = {op.counted for op in body if op.counted and op.delta != (0, 0)}
    counted |= {c for c, d in unit.deltas.items() if d != (0, 0)}
    others = sorted(c for c in counted if c is not None and c[1] not in unit.sessions)
    session_ops = [
        session_op(w, w.expected, w.bumps, unit.delta_of(w.session_id), unit, final=True)
        for w in writes
    ]
    session_ops += [_counters(user, sid, unit.delta_of(sid)) for user, sid in others]
    if len(body) + len(session_ops) <= MAX_TRANSACTION_ITEMS or len(writes) != 1 or others:
        # One transaction; or, past its size without one session to chain, plain chunks
        # (direct storage use only; the service layer never gets there).
        return list(chunked([*body, *session_ops], MAX_TRANSACTION_ITEMS))
    write = writes[0]
    groups = list(chunked([op for op in body if not op.last], MAX_TRANSACTION_ITEMS - 1))
    final = [op for op in body if op.last]
    if not groups or len(groups[-1]) + len(final) > MAX_TRANSACTION_ITEMS - 1:
        groups.append([])
    groups[-1].extend(final)
    planned = []
    for i, (group, (expected, bumps)) in enumerate(
        zip(groups, chain(write.expected, chunks=len(groups), bumps=write.bumps), strict=True)
    ):
        last = i == len(groups) - 1
        total = sum(op.delta[0] for op in group if op.counted)
        unresolved = sum(op.delta[1] for op in group if op.counted)
        if last:
            extra = unit.deltas.get((write.user_id, write.session_id), (0, 0))
            total, unresolved = total + extra[0], unresolved + extra[1]
        op = session_op(write, expected, bumps, (total, unresolved), unit, final=last)
        planned.append([*group, op])
    return planned


def chain(expected: int, *, chunks: int, bumps: int) -> Iterator[tuple[int, int]]:
    """``(expected version, bumps)`` of each chunk of a chained unit: each chunk moves the
    session's version by one, the last by the unit's own number of updates.

    >>> list(chain(3, chunks=2, bumps=2))
    [(3, 1), (4, 2)]
    """
    for i in range(chunks):
        yield expected + i, bumps if i == chunks - 1 else 1


def session_op(
    write: SessionWrite,
    expected: int,
    bumps: int,
    delta: tuple[int, int],
    unit: Unit,
    *,
    final: bool,
) -> Op:
    """The session row's update in one transaction: its version moves from ``expected`` by
    ``bumps``, its counters by ``delta``; the final one also sets the new state."""
    sets: Row = {"version": n(expected + bumps)}
    removes: list[str] = []
    adds: Row = {}
    if final:
        sets.update(write.attrs)
        removes = [a for a in OPTIONAL_SESSION_ATTRS if a not in write.attrs]
    if final and write.session_id in unit.purges:
        sets.update({"conflictTotal": n(0), "conflictUnresolved": n(0)})
    elif delta != (0, 0):
        adds = {"conflictTotal": n(delta[0]), "conflictUnresolved": n(delta[1])}
    values: Row = {f":{name}": value for name, value in {**sets, **adds}.items()}
    values[":expected"] = n(expected)
    expression = "SET " + ", ".join(f"#{name} = :{name}" for name in sets)
    if removes:
        expression += " REMOVE " + ", ".join(f"#{name}" for name in removes)
    if adds:
        expression += " ADD " + ", ".join(f"#{name} :{name}" for name in adds)
    op = update_op(
        user_pk(write.user_id),
        session_sk(write.session_id),
        expression,
        "#version = :expected",
        values,
    )
    op.size = sum(len(k) + len(str(v)) for k, v in write.attrs.items()) if final else 256
    return op


def _counters(user: str, session_id: str, delta: tuple[int, int]) -> Op:
    return update_op(
        user_pk(user),
        session_sk(session_id),
        "ADD #conflictTotal :t, #conflictUnresolved :u",
        "attribute_exists(#pk)",
        {":t": n(delta[0]), ":u": n(delta[1])},
    )


def after(storage: AwsStorage, unit: Unit, completing: dict[str, str], started: float) -> None:
    """What follows a commit. It committed: a failure here is logged and resumed later
    (the roll-forward by the next writer, events by the outbox sweeper, a purge by TTL)."""
    if unit.claim is not None:
        claim = unit.claim
        storage.ledger.processed(claim.session_id, claim.seq, claim.attempt, claim.round)
    for session_id in unit.purges:
        try:
            purge(storage, session_id)
        except Exception:
            logger.exception("purging session %s failed; TTL will remove its data", session_id)
    for user, count in unit.cloud.items():
        try:
            storage.cloud.roll_forward(
                user, unit.tx, completing.get(user), lambda sid: store_snapshot(storage, sid)
            )
        except Exception:
            logger.exception("the roll-forward of %s stopped; the next writer finishes it", user)
        if user in completing:
            metric(
                logger,
                "MigrationCommitted",
                {"ItemsWritten": count, "CommitMs": (time.monotonic() - started) * 1000},
                f"session {completing[user]} committed {count} cloud item(s)",
                sessionId=completing[user],
                userId=user,
            )
    if unit.events:
        try:
            publish(storage, unit.events)
        except Exception:
            logger.exception("publishing events failed; the outbox sweeper retries")


def publish(storage: AwsStorage, events: list[tuple[Event, tuple[str, str]]]) -> int:
    """Put events on the bus; each one published leaves the outbox index."""
    resources = storage.resources
    published = 0
    for start in range(0, len(events), 10):
        chunk = events[start : start + 10]
        answer = resources.events.put_events(
            Entries=[
                {
                    "Source": EVENT_SOURCE,
                    "DetailType": event.type.value,
                    "Detail": json.dumps(event.wire(), separators=(",", ":")),
                    "EventBusName": resources.event_bus,
                }
                for event, _ in chunk
            ]
        )
        for (_, (pk, sk)), result in zip(chunk, answer.get("Entries", []), strict=False):
            if result.get("EventId") and not result.get("ErrorCode"):
                storage.table.update(pk, sk, "REMOVE #obx")
                published += 1
    return published


def purge(storage: AwsStorage, session_id: str) -> None:
    """Delete a session's staged items, conflicts, ledger and S3 objects."""
    table = storage.table
    for pk, prefix in (
        (staged_pk(session_id), None),
        (conflicts_pk(session_id), None),
        (session_pk(session_id), "BATCH#"),
    ):
        rows = table.query(pk, prefix=prefix, projection="#pk, #sk")
        table.batch_write(deletes=[key(pk, get_s(r, "sk")) for r in rows])
    table.delete_prefix(f"sessions/{session_id}/")
    storage.ledger.forget(session_id)


def store_snapshot(storage: AwsStorage, session_id: str) -> None:
    """Store the migrated snapshot: every staged item, canonical JSON lines in
    (collection, key) order, encrypted, with its SHA-256 (idempotent)."""
    from backend_stub.storage import iter_staged

    resources = storage.resources
    digest = hashlib.sha256()
    count = 0
    with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
        for page in iter_staged(storage, session_id):
            for staged in page:
                line = staged.item.encode("utf-8") + b"\n"
                digest.update(line)
                spool.write(line)
                count += 1
        spool.seek(0)
        resources.s3.upload_fileobj(
            spool,
            resources.bucket,
            f"sessions/{session_id}/snapshot.jsonl",
            ExtraArgs={
                "ChecksumAlgorithm": "SHA256",
                "Metadata": {"sha256": digest.hexdigest(), "items": str(count)},
                **resources.sse_args(),
            },
        )
