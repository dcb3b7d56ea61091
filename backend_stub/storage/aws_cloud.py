"""A user's cloud items on DynamoDB, written all at once however many there are.

A migration may write millions of cloud items, and a reader must never see half of them.
One DynamoDB transaction holds 100 items, so the commit does not try to write them all
together. It works like a write-ahead log with a single commit record:

1. **Set aside.** Each new version is written under the unit's transaction id
   (``pk = TX#{tx}#{user}``), with the version it replaces (``base``). Nobody reads there
   yet, so this may take as long as it takes. They carry no TTL: once flipped, the
   committed state depends on them until the roll-forward copied them; a crash before
   the flip leaves garbage that the commit's next try (or a sweeper) deletes.
2. **Flip.** One transaction writes the session's new state (``completed``, with its
   result, under the session's optimistic lock), the outbox event, and the *pointer* on
   the user's profile: ``rolling = tx``, only if no other commit is rolling and the
   profile's commit generation ``gen`` is still the one the unit read the items at (an
   optimistic lock on the user's items: a commit in between makes this one lose, and the
   service retries from fresh reads, as a SQL transaction would have waited). This is the
   commit point: before it the migration did not happen, after it it did, entirely.
3. **Roll forward.** Each set-aside version is copied onto its cloud item, conditionally:
   only if the item still holds ``base`` (a later write by another device wins). Then the
   pointer is cleared and the set-aside rows deleted.

Readers resolve through the pointer: they read the items, and, while a commit is rolling,
its set-aside versions too, which win wherever the item still holds their ``base``; a
seqlock on the profile (``gen`` changes at every flip and every clear; a reader whose
pointer changed while it read starts again) makes each read one consistent view. A
crash during the roll-forward therefore changes nothing for readers, and it resumes: the
next writer of the user's items (or ``AwsStorage.settle``) finishes it first, and the
condition on ``base`` makes copying twice harmless.

Sync rides on the same commit (:mod:`backend_stub.storage.aws_sync`): every set-aside
row carries the commit's ``seq`` (one per user and commit) and its item digest; the
flip moves the user's sync head (seq, multiset checksum, item count) with the pointer,
conditioned on the seq it replaces, so the head moves exactly once per commit however
often the roll-forward resumes; the roll-forward copies ``seq`` and ``digest`` onto the
items and then writes their entries in the user's sync log::

    >>> applies(None, None), applies(3, 3), applies(4, 3), applies(None, 3)
    (True, True, False, False)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from backend_stub.storage.aws_rows import (
    Row,
    aside_pk,
    b,
    cloud_attrs,
    cloud_of,
    cloud_pk,
    get_n,
    get_s,
    item_key,
    key,
    log_pk,
    log_sk,
    n,
    opt_n,
    opt_s,
    s,
    split_item_key,
    user_pk,
)
from backend_stub.storage.aws_table import Table
from backend_stub.storage.aws_unit import Op, chunked, expression_names
from backend_stub.storage.records import (
    CloudItem,
    CommitRolling,
    Key,
    SyncHead,
    VersionConflict,
)
from sdk.contract import multiset_hex

__all__ = ["CloudItems", "applies"]

logger = logging.getLogger(__name__)

PROFILE = "PROFILE"
# A reader racing commit after commit of the same user gives up after this many views.
_SEQLOCK_ROUNDS = 20
_CLOUD_ATTRS = (
    "collection",
    "key",
    "updatedAt",
    "deleted",
    "version",
    "deviceId",
    "writtenAt",
    "data",
    "dataRef",
    "seq",
    "digest",
)


def applies(current_version: int | None, base: int | None) -> bool:
    """Whether a set-aside version still applies to an item holding ``current_version``
    (``None``: no item): the item must still be the one the commit replaced.

    >>> applies(2, 2), applies(3, 2)
    (True, False)
    """
    return current_version == base


class CloudItems:
    """Reads and commits of cloud items in ``table`` (see the module docs).

    >>> CloudItems.__name__
    'CloudItems'
    """

    def __init__(self, table: Table, *, retention_s: int) -> None:
        self.table = table
        self.retention_s = retention_s

    # ------------------------------------------------------------------ reads

    def read(self, user_id: str, keys: Sequence[Key]) -> dict[Key, CloudItem]:
        """The user's items among ``keys``, as of one moment (no commit half seen)."""
        return self.read_at(user_id, keys)[0]

    def read_at(self, user_id: str, keys: Sequence[Key]) -> tuple[dict[Key, CloudItem], int]:
        """:meth:`read`, and the commit generation the items were read at."""
        rows, generation = self.rows_at(user_id, keys)
        found = {k: cloud_of(row, self.table.unpack(row, "data")) for k, row in rows.items()}
        return found, generation

    def rows_at(self, user_id: str, keys: Sequence[Key]) -> tuple[dict[Key, Row], int]:
        """The rows of :meth:`read_at` (data still packed, with ``seq`` and ``digest``)."""
        if not keys:
            return {}, self.generation(user_id)
        for _ in range(_SEQLOCK_ROUNDS):
            before = self._pointer(user_id)
            rows = self.effective(user_id, keys, before[1])
            if self._pointer(user_id) == before:
                break
        else:
            raise VersionConflict(f"the cloud items of {user_id} kept changing while read")
        # With a commit rolling, the view is the one its clear makes physical (+1).
        return rows, before[0] + (1 if before[1] is not None else 0)

    def effective(self, user_id: str, keys: Sequence[Key], rolling: str | None) -> dict[Key, Row]:
        """The rows a reader sees among ``keys`` while commit ``rolling`` (``None``: no
        commit) rolls forward: its set-aside versions win where the item still holds
        their ``base``. One consistent view only inside the caller's seqlock."""
        wanted = [key(cloud_pk(user_id, c, k), "ITEM") for c, k in keys]
        found = {(get_s(r, "collection"), get_s(r, "key")): r for r in self.table.batch_get(wanted)}
        if rolling is not None:
            pk = aside_pk(rolling, user_id)
            for row in self.table.batch_get([key(pk, item_key(c, k)) for c, k in keys]):
                address = split_item_key(row["sk"]["S"])
                current = found.get(address)
                if applies(opt_n(current, "version") if current else None, opt_n(row, "base")):
                    found[address] = row
        return found

    def digest_of(self, row: Row) -> bytes:
        """The item digest of a cloud row (computed for rows written before sync)."""
        if "digest" in row:
            return bytes(row["digest"]["B"])
        return cloud_of(row, self.table.unpack(row, "data")).digest()

    def generation(self, user_id: str) -> int:
        """The user's commit generation now (it grows at every flip and every clear)."""
        generation, rolling = self._pointer(user_id)
        return generation + (1 if rolling is not None else 0)

    def rolling(self, user_id: str) -> str | None:
        """The commit whose roll-forward the user's pointer names (``None``: none)."""
        return self._pointer(user_id)[1]

    def _pointer(self, user_id: str) -> tuple[int, str | None]:
        row = self.table.get(user_pk(user_id), PROFILE, projection="#gen, #rolling")
        if row is None:
            return 0, None
        return opt_n(row, "gen") or 0, opt_s(row, "rolling")

    # ------------------------------------------------------------------ commits

    def set_aside(
        self,
        tx: str,
        user_id: str,
        items: Sequence[CloudItem],
        now: int,
        *,
        seq: int,
        digests: Sequence[bytes],
        replaced: Mapping[Key, Row],
    ) -> list[str]:
        """Write the new versions of a commit where readers do not look yet, at sync
        ``seq``; ``replaced`` holds the rows they replace, as the commit read them."""
        pk = aside_pk(tx, user_id)
        rows: list[Row] = []
        for item, digest in zip(items, digests, strict=True):
            row = key(pk, item_key(item.collection, item.key))
            row.update(cloud_attrs(item, now))
            row.update(self.table.pack("data", item.data)[0])
            row["userId"] = s(user_id)
            row.update({"seq": n(seq), "digest": b(digest)})
            old = replaced.get((item.collection, item.key))
            if old is not None:
                # The version the commit replaces, and its place in the sync log.
                row["base"] = n(get_n(old, "version"))
                if opt_n(old, "seq"):
                    row["baseSeq"] = old["seq"]
            rows.append(row)
        self.table.batch_write(puts=rows)
        return [row["sk"]["S"] for row in rows]

    def forget_aside(self, tx: str, user_id: str, item_keys: Sequence[str]) -> None:
        """Delete set-aside rows (a nested block that wrote them failed)."""
        pk = aside_pk(tx, user_id)
        self.table.batch_write(deletes=[key(pk, sk) for sk in item_keys])

    def flip(
        self,
        tx: str,
        user_id: str,
        session_id: str | None,
        generation: int,
        head: tuple[int, SyncHead] | None = None,
        *,
        job: str | None = None,
    ) -> Op:
        """The pointer write of a commit (goes in the commit's transaction): only if no
        commit is rolling and none happened since ``generation``. ``head`` is the sync
        head's move, ``(seq it replaces, new head)``: once, with the commit point.
        ``job`` names the session whose worker jobs roll the commit forward slice by
        slice: a writer then waits for them (:class:`CommitRolling`) instead of
        finishing it."""
        expression = "SET #rolling = :tx, #gen = if_not_exists(#gen, :zero) + :one"
        values: Row = {":tx": s(tx), ":zero": n(0), ":one": n(1)}
        if session_id is not None:
            expression += ", #rollingSession = :sid"
            values[":sid"] = s(session_id)
        if job is not None:
            expression += ", #rollingJob = :job"
            values[":job"] = s(job)
        if generation:
            condition = "attribute_not_exists(#rolling) AND #gen = :gen"
            values[":gen"] = n(generation)
        else:
            condition = "attribute_not_exists(#rolling) AND attribute_not_exists(#gen)"
        if head is not None:
            prior, new = head
            expression += (
                ", #syncSeq = :sseq, #syncSum = :ssum, #syncCount = :scount, #rollingSeq = :sseq"
            )
            values.update(
                {
                    ":sseq": n(new.seq),
                    ":ssum": s(multiset_hex(new.checksum)),
                    ":scount": n(new.item_count),
                }
            )
            # Implied by the generation; stated so that the head can never move twice.
            if prior:
                condition += " AND #syncSeq = :prior"
                values[":prior"] = n(prior)
            else:
                condition += " AND attribute_not_exists(#syncSeq)"
        return Op(
            {
                "Update": {
                    "Key": key(user_pk(user_id), PROFILE),
                    "UpdateExpression": expression,
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": expression_names(expression, condition),
                    "ExpressionAttributeValues": values,
                }
            },
            (user_pk(user_id), PROFILE),
            last=True,
        )

    def settle(self, user_id: str, finish: Callable[[str], None]) -> None:
        """Finish the user's pending roll-forward, if a crash left one: a unit's, as
        large as one request's writes. A migration's, rolled by its jobs, is never
        finished here (it may hold millions of rows): :class:`CommitRolling`."""
        row = self.table.get(
            user_pk(user_id), PROFILE, projection="#rolling, #rollingSession, #rollingJob"
        )
        rolling = opt_s(row, "rolling") if row else None
        job = opt_s(row, "rollingJob") if row else None
        if job is not None:
            raise CommitRolling(user_id, job)
        if row is not None and rolling is not None:
            logger.info("user %s: finishing the roll-forward of commit %s", user_id, rolling)
            self.roll_forward(user_id, rolling, opt_s(row, "rollingSession"), finish)

    def roll_forward(
        self, user_id: str, tx: str, session_id: str | None, finish: Callable[[str], None]
    ) -> int:
        """Copy a flipped commit onto the cloud items, then clear the pointer. Idempotent.

        ``finish(session_id)`` runs before the pointer is cleared (the snapshot of a
        completed migration is stored there), so it resumes with the rest.
        """
        pk = aside_pk(tx, user_id)
        copied = 0
        page: list[Row] = []
        for row in self.table.query(pk):
            page.append(row)
            if len(page) == 100:
                copied += self._copy_page(user_id, page)
                page = []
        copied += self._copy_page(user_id, page)
        if session_id is not None:
            finish(session_id)
        self.clear(user_id, tx)
        keys = [key(pk, row["sk"]["S"]) for row in self.table.query(pk, projection="#pk, #sk")]
        self.table.batch_write(deletes=keys + self.registrations(user_id, tx))
        return copied

    def registrations(self, user_id: str, tx: str) -> list[Row]:
        """The keys of commit ``tx``'s registrations (:mod:`~backend_stub.storage.aws_sweep`)."""
        rows = self.table.query(user_pk(user_id), prefix="ASIDE#", projection="#pk, #sk")
        return [key(r["pk"]["S"], r["sk"]["S"]) for r in rows if r["sk"]["S"].endswith(f"#{tx}")]

    def clear(self, user_id: str, tx: str) -> None:
        """Clear the pointer of commit ``tx`` once its rows are copied (its set-aside
        rows are garbage from then on)."""
        self.table.update(
            user_pk(user_id),
            PROFILE,
            "REMOVE #rolling, #rollingSession, #rollingSeq, #rollingJob SET #gen = #gen + :one",
            condition="#rolling = :tx",
            values={":one": n(1), ":tx": s(tx)},
        )

    def aside_page(self, tx: str, user_id: str, *, after: str | None, limit: int) -> list[Row]:
        """Up to ``limit`` set-aside rows of commit ``tx`` past item key ``after``."""
        rows: list[Row] = []
        for row in self.table.query(aside_pk(tx, user_id), after=after, limit=limit):
            rows.append(row)
            if len(rows) == limit:
                break
        return rows

    def copy_page(self, user_id: str, rows: list[Row]) -> int:
        """Copy set-aside ``rows`` onto the cloud items (a slice of a roll-forward), a
        transaction's worth at a time."""
        return sum(self._copy_page(user_id, rows[i : i + 100]) for i in range(0, len(rows), 100))

    def _copy_page(self, user_id: str, rows: list[Row]) -> int:
        copied = self._apply([self._copy(user_id, row) for row in rows])
        # Then the items' places in the sync log, the old ones dropped. Readers check every
        # entry against its item, and read the rolling commit's entries from its set-aside
        # rows until the pointer is cleared: these writes may lag, repeat or be cut short.
        puts: list[Row] = []
        deletes: list[Row] = []
        for row in rows:
            seq = opt_n(row, "seq")
            if seq is None:
                continue
            collection, item = split_item_key(row["sk"]["S"])
            puts.append(key(log_pk(user_id), log_sk(seq, collection, item)))
            old = opt_n(row, "baseSeq")
            if old is not None:
                deletes.append(key(log_pk(user_id), log_sk(old, collection, item)))
        self.table.batch_write(puts=puts, deletes=deletes)
        return copied

    def _copy(self, user_id: str, row: Row) -> Op:
        collection, item = split_item_key(row["sk"]["S"])
        target = key(cloud_pk(user_id, collection, item), "ITEM")
        target.update({name: row[name] for name in _CLOUD_ATTRS if name in row})
        base = opt_n(row, "base")
        values: Row = {}
        if base is None:
            condition = "attribute_not_exists(#pk)"
        else:
            condition = "#version = :base"
            values[":base"] = n(base)
        body: dict[str, object] = {
            "Item": target,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": expression_names(condition),
        }
        if values:
            body["ExpressionAttributeValues"] = values
        size = sum(len(str(v)) for v in target.values())
        return Op({"Put": body}, (target["pk"]["S"], "ITEM"), size=size)

    def _apply(self, ops: list[Op]) -> int:
        copied = 0
        for chunk in chunked(ops, 100):
            try:
                self.table.transact(chunk)
                copied += len(chunk)
                continue
            except VersionConflict:
                pass
            # Some items were written since the commit (or copied by an earlier attempt):
            # copy the others one by one.
            for op in chunk:
                body = op.item["Put"]
                try:
                    self.table.put(
                        body["Item"],
                        condition=body["ConditionExpression"],
                        values=body.get("ExpressionAttributeValues"),
                    )
                    copied += 1
                except VersionConflict:
                    pass
        return copied
