"""The batch ledger of the ``aws`` backend, and how a batch is processed exactly once.

Each batch of a session has a ledger row (``pk = SESSION#{session}``,
``sk = BATCH#{seq}``). Its life:

``pending``
    stored in S3 and queued (:meth:`Ledger.receive`); the row pins the body's SHA-256.
``processed``
    a worker staged its items and conflicts (the row records the counts and the
    *attempt* whose rows count).
``failed``
    processing refused its content, or gave up after the queue's last receive; the
    batch is no longer held and ``status`` reports why until it is uploaded again.

SQS delivers at least once and a worker may stall past its visibility timeout, so two
attempts at one batch can overlap. Processing therefore:

1. **claims** the row: a lease (``leaseUntil``) that no other worker run can take until it
   expires, recorded as the row's ``attempt`` (the worker run's id);
2. writes every staged item tagged with that attempt, and every conflict tagged with a
   ``round`` (fresh for each try of the run: a retry after a lost optimistic-lock race
   may find other conflicts), in transactions that each also check that the row still
   names this attempt (a **fence**: a worker that lost its lease cannot write any more);
3. flips the row to ``processed`` with that attempt and round, in the same transaction as
   the session's update (its optimistic lock) and the events.

Readers count a staged row only if its attempt is the one the ledger recorded as
processed (a conflict, its round), so rows of a crashed, stale or duplicate attempt never
count, and a retry simply takes over their keys. A key held by another batch's live
attempt is a duplicate item. Whether a row counts::

    >>> counts({"state": {"S": "processed"}, "attempt": {"S": "a1"}}, "a1")
    True
    >>> counts({"state": {"S": "pending"}, "attempt": {"S": "a2"}}, "a1")
    False
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import time
import uuid
from collections.abc import Iterator, Sequence

from backend_stub.settings import AwsSettings
from backend_stub.storage.aws_rows import (
    Row,
    get_n,
    get_s,
    key,
    ledger_sk,
    n,
    opt_n,
    opt_s,
    s,
    session_pk,
)
from backend_stub.storage.aws_table import Table
from backend_stub.storage.aws_unit import (
    MAX_TRANSACTION_ITEMS,
    Op,
    check_op,
    chunked,
    put_op,
    update_op,
)
from backend_stub.storage.records import (
    Batch,
    DuplicateBatch,
    DuplicateItem,
    StorageError,
    VersionConflict,
)
from sdk.contract import BatchReceipt

__all__ = ["FAILED", "PENDING", "PROCESSED", "BatchBusy", "HeldBatch", "Ledger", "counts"]

PENDING, PROCESSED, FAILED = "pending", "processed", "failed"

# The worker run that owns the leases of the batches it processes (see Ledger.lease). A
# run handles one message at a time: its tries of one batch follow each other.
_RUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("aws_run", default=None)


class BatchBusy(StorageError):
    """Another worker holds the lease of this batch (or its state changed): try later.

    >>> BatchBusy("s/0", retry_in=30).retry_in
    30
    """

    def __init__(self, message: str, *, retry_in: int) -> None:
        super().__init__(message)
        self.retry_in = retry_in


class _Taken(StorageError):
    """A staged row's key is held by another attempt (the put's condition failed)."""


class _LostClaim(StorageError):
    """The attempt no longer holds the batch's row."""


@dataclasses.dataclass(frozen=True)
class HeldBatch:
    """A batch the server holds: its ledger row, whatever its state.

    >>> HeldBatch("s", 0, "c" * 64, 2, "pending", 0, "k").receipt(replayed=True).replayed
    True
    """

    session_id: str
    seq: int
    checksum: str
    item_count: int
    state: str
    received_at: int
    body_key: str
    error: str | None = None
    lease_until: int | None = None

    def receipt(self, *, replayed: bool = False) -> BatchReceipt:
        """The answer to its upload: stored, counts to come with processing."""
        return BatchReceipt(
            seq=self.seq,
            item_count=self.item_count,
            checksum=self.checksum,
            new_count=0,
            unchanged_count=0,
            conflict_count=0,
            replayed=replayed,
        )


def counts(ledger_row: Row | None, attempt: str | None) -> bool:
    """Whether rows written by ``attempt`` count, given their batch's ledger row.

    >>> counts(None, "a1")
    False
    """
    return (
        ledger_row is not None
        and get_s(ledger_row, "state") == PROCESSED
        and opt_s(ledger_row, "attempt") == attempt
    )


class Ledger:
    """The ledger rows of ``table`` (see the module docs).

    >>> Ledger.__name__
    'Ledger'
    """

    def __init__(self, table: Table, settings: AwsSettings, *, retention_s: int) -> None:
        self.table = table
        self.settings = settings
        self.retention_s = retention_s
        # (session, seq) -> (attempt, round) that processed it: immutable until a purge.
        self._processed: dict[tuple[str, int], tuple[str, str]] = {}
        # (session, seq, attempt) -> staged rows written, by sort key: a retry of the same
        # attempt rewrites only the rows whose classification changed.
        self._written: dict[tuple[str, int, str], dict[str, Row]] = {}

    # ------------------------------------------------------------------ reads

    def rows(self, session_id: str) -> dict[int, Row]:
        """Every ledger row of a session, by seq."""
        rows = {
            get_n(row, "seq"): row
            for row in self.table.query(session_pk(session_id), prefix="BATCH#")
        }
        for seq, row in rows.items():
            if get_s(row, "state") == PROCESSED and "attempt" in row:
                tags = (get_s(row, "attempt"), opt_s(row, "round") or "")
                self._processed[(session_id, seq)] = tags
        return rows

    def visible(self, session_id: str, rows: Sequence[Row]) -> list[Row]:
        """The rows that count: untagged ones, staged items of a batch's processed attempt,
        conflicts of its processed round."""
        found: list[Row] = []
        refreshed = False
        for row in rows:
            if "attempt" not in row and "round" not in row:
                found.append(row)
                continue
            slot = (session_id, get_n(row, "seq"))
            if slot not in self._processed and not refreshed:
                self.rows(session_id)
                refreshed = True
            tags = self._processed.get(slot)
            if tags is None:
                continue
            if ("round" in row and get_s(row, "round") == tags[1]) or (
                "round" not in row and get_s(row, "attempt") == tags[0]
            ):
                found.append(row)
        return found

    def held(self, session_id: str, seq: int) -> HeldBatch | None:
        """The ledger row of batch ``seq``, whatever its state."""
        row = self.table.get(session_pk(session_id), ledger_sk(seq))
        return _held(session_id, row) if row else None

    def pending(self, session_id: str) -> list[HeldBatch]:
        """The batches stored and not processed yet."""
        rows = self.rows(session_id).values()
        return [_held(session_id, row) for row in rows if get_s(row, "state") == PENDING]

    def forget(self, session_id: str) -> None:
        """Drop what is cached about a purged session."""
        for slot in [slot for slot in self._processed if slot[0] == session_id]:
            del self._processed[slot]

    def processed(self, session_id: str, seq: int, attempt: str, round_: str) -> None:
        """Remember a processing that just committed."""
        self._processed[(session_id, seq)] = (attempt, round_)
        self._written.pop((session_id, seq, attempt), None)

    # ------------------------------------------------------------------ the intake

    def receive(
        self,
        session_id: str,
        seq: int,
        checksum: str,
        body: bytes,
        item_count: int,
        now: int,
        *,
        replacing: HeldBatch | None = None,
    ) -> HeldBatch:
        """Store a batch body in S3 and hold it as ``pending``.

        :class:`DuplicateBatch` when the seq was taken meanwhile (or, with ``replacing``,
        the failed batch it replaces changed).
        """
        body_key = f"sessions/{session_id}/batches/{seq:010d}-{checksum}.json"
        self.table.put_object(body_key, body, checksum)
        row = key(session_pk(session_id), ledger_sk(seq))
        row.update(
            {
                "seq": n(seq),
                "checksum": s(checksum),
                "itemCount": n(item_count),
                "state": s(PENDING),
                "receivedAt": n(now),
                "bodyKey": s(body_key),
                "ttl": n(int(time.time()) + self.retention_s),
            }
        )
        condition = "attribute_not_exists(#pk)"
        values: Row = {}
        if replacing is not None:
            condition += " OR (#state = :failed AND #checksum = :old)"
            values = {":failed": s(FAILED), ":old": s(replacing.checksum)}
        try:
            self.table.put(row, condition=condition, values=values or None)
        except VersionConflict as exc:
            raise DuplicateBatch(f"{session_id}/{seq}") from exc
        return HeldBatch(session_id, seq, checksum, item_count, PENDING, now, body_key)

    def load(self, held: HeldBatch) -> bytes:
        """The stored body of a held batch (``DamagedObject`` if it does not match)."""
        return self.table.get_object(held.body_key, held.checksum)

    def fail(self, session_id: str, seq: int, checksum: str, reason: str, now: int) -> bool:
        """Give up on a pending batch; False if it was no longer pending."""
        updated = self.table.update(
            session_pk(session_id),
            ledger_sk(seq),
            "SET #state = :failed, #error = :reason, #failedAt = :now REMOVE #leaseUntil",
            condition="#state = :pending AND #checksum = :sum",
            values={
                ":failed": s(FAILED),
                ":reason": s(reason[:1000]),
                ":now": n(now),
                ":pending": s(PENDING),
                ":sum": s(checksum),
            },
        )
        return updated is not None

    @contextlib.contextmanager
    def lease(self, run_id: str) -> Iterator[None]:
        """Process batches inside as worker run ``run_id`` (the owner of their leases)."""
        token = _RUN.set(run_id)
        try:
            yield
        finally:
            _RUN.reset(token)

    # ------------------------------------------------------------------ processing

    def claim(self, batch: Batch) -> tuple[str, str]:
        """Lease the batch's row for this worker run: ``(attempt, round)`` of this try.

        :class:`DuplicateBatch` if it was processed meanwhile, :class:`BatchBusy` if
        another run holds a live lease (or the row changed).
        """
        attempt = _RUN.get() or uuid.uuid4().hex
        now_s = int(time.time())
        updated = self.table.update(
            session_pk(batch.session_id),
            ledger_sk(batch.seq),
            # Without a pending row (direct use of the storage), the claim creates one.
            "SET #attempt = :attempt, #leaseUntil = :until,"
            " #state = if_not_exists(#state, :pending),"
            " #checksum = if_not_exists(#checksum, :sum), #seq = if_not_exists(#seq, :seq),"
            " #itemCount = if_not_exists(#itemCount, :count),"
            " #receivedAt = if_not_exists(#receivedAt, :at), #ttl = if_not_exists(#ttl, :ttl)",
            condition="(attribute_not_exists(#pk) OR (#state = :pending AND #checksum = :sum))"
            " AND (attribute_not_exists(#attempt) OR #attempt = :attempt OR #leaseUntil < :now)",
            values={
                ":attempt": s(attempt),
                ":until": n(now_s + self.settings.visibility_timeout),
                ":pending": s(PENDING),
                ":sum": s(batch.checksum),
                ":seq": n(batch.seq),
                ":count": n(batch.item_count),
                ":at": n(batch.received_at),
                ":ttl": n(now_s + self.retention_s),
                ":now": n(now_s),
            },
        )
        if updated is not None:
            return attempt, uuid.uuid4().hex
        held = self.held(batch.session_id, batch.seq)
        if held is not None and held.state == PROCESSED and held.checksum == batch.checksum:
            raise DuplicateBatch(f"{batch.session_id}/{batch.seq}")
        wait = max(1, (held.lease_until or now_s) - now_s) if held else 1
        raise BatchBusy(
            f"batch {batch.seq} of {batch.session_id} is being processed", retry_in=wait
        )

    def flip(self, batch: Batch, attempt: str, round_: str) -> Op:
        """The write that makes a try's rows count (in the unit's transaction)."""
        return update_op(
            session_pk(batch.session_id),
            ledger_sk(batch.seq),
            "SET #state = :processed, #round = :round, #newCount = :new,"
            " #unchangedCount = :unchanged, #conflictCount = :conflicts, #processedAt = :at"
            " REMOVE #leaseUntil, #error",
            "#attempt = :attempt AND #state = :pending",
            {
                ":processed": s(PROCESSED),
                ":round": s(round_),
                ":new": n(batch.new_count),
                ":unchanged": n(batch.unchanged_count),
                ":conflicts": n(batch.conflict_count),
                ":at": n(batch.received_at),
                ":attempt": s(attempt),
                ":pending": s(PENDING),
            },
        )

    def write_fenced(
        self,
        session_id: str,
        seq: int,
        attempt: str,
        rows: list[tuple[Row, int]],
        *,
        claim: bool,
    ) -> None:
        """Write a try's rows (with their sizes), fenced by its claim on the batch.

        ``claim`` (staged items): each row's key must be free, or already this attempt's,
        or left by an attempt that no longer counts (then taken over); a key held by
        another batch is :class:`DuplicateItem`. A row this attempt already wrote alike is
        not written again.
        """
        fence = check_op(
            session_pk(session_id), ledger_sk(seq), "#attempt = :attempt", {":attempt": s(attempt)}
        )
        fence.failure = _LostClaim
        written = self._written.setdefault((session_id, seq, attempt), {}) if claim else {}
        fresh = [(r, size) for r, size in rows if written.get(get_s(r, "sk")) != _sans_ttl(r)]
        ops = [_fenced_put(row, size, attempt if claim else None) for row, size in fresh]
        for chunk in chunked(ops, MAX_TRANSACTION_ITEMS - 1):
            for _round in range(4):
                try:
                    self.table.transact([fence, *chunk])
                    break
                except _LostClaim as exc:
                    raise VersionConflict(f"batch {seq} was taken over by another worker") from exc
                except _Taken:
                    chunk = self._take_over(session_id, attempt, chunk)
            else:
                raise VersionConflict(f"batch {seq}: staged keys kept changing")
            if claim:
                for op in chunk:
                    row = op.item["Put"]["Item"]
                    written[get_s(row, "sk")] = _sans_ttl(row)

    def _take_over(self, session_id: str, attempt: str, chunk: list[Op]) -> list[Op]:
        """The chunk again, each put conditioned on who holds its key now."""
        holders = {
            get_s(row, "sk"): row
            for row in self.table.batch_get(
                [key(*op.target) for op in chunk], projection="#sk, #seq, #attempt"
            )
        }
        retried = []
        for op in chunk:
            row, size = op.item["Put"]["Item"], op.size
            holder = holders.get(get_s(row, "sk"))
            owner = opt_s(holder, "attempt") if holder else None
            if holder is None or owner == attempt:
                retried.append(_fenced_put(row, size, attempt))
                continue
            owner_seq = opt_n(holder, "seq")
            if owner_seq is not None and self._live(session_id, owner_seq, owner):
                raise DuplicateItem(session_id)
            # Left by an attempt that will never count: take the key over.
            retried.append(_fenced_put(row, size, attempt, owner))
        return retried

    def _live(self, session_id: str, seq: int, attempt: str | None) -> bool:
        """Whether rows of batch ``seq`` by ``attempt`` count or may still come to count."""
        row = self.rows(session_id).get(seq)
        return (
            row is not None
            and get_s(row, "state") in (PENDING, PROCESSED)
            and opt_s(row, "attempt") == attempt
        )


def _fenced_put(row: Row, size: int, attempt: str | None, taken_from: str | None = None) -> Op:
    """A staged row's put: the key must be free or this attempt's, or still held by
    ``taken_from`` (an attempt that no longer counts); no condition without ``attempt``."""
    if attempt is None:
        op = put_op(row)
    elif taken_from is None:
        op = put_op(
            row, "attribute_not_exists(#pk) OR #attempt = :attempt", {":attempt": s(attempt)}
        )
    else:
        op = put_op(row, "#attempt = :old", {":old": s(taken_from)})
    op.failure = _Taken
    op.size = size
    return op


def _sans_ttl(row: Row) -> Row:
    return {name: value for name, value in row.items() if name != "ttl"}


def _held(session_id: str, row: Row) -> HeldBatch:
    return HeldBatch(
        session_id=session_id,
        seq=get_n(row, "seq"),
        checksum=get_s(row, "checksum"),
        item_count=get_n(row, "itemCount"),
        state=get_s(row, "state"),
        received_at=get_n(row, "receivedAt"),
        body_key=opt_s(row, "bodyKey") or "",
        error=opt_s(row, "error"),
        lease_until=opt_n(row, "leaseUntil"),
    )
