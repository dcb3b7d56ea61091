"""The scale-out storage backend: DynamoDB, S3, SQS and EventBridge.

:class:`AwsStorage` implements :class:`~backend_stub.storage.Storage` on one DynamoDB
table (layout: :mod:`backend_stub.storage.aws_rows`), keeps batch bodies, snapshots and
large values in S3 (server-side encrypted, SHA-256 checked on the way in and out), and
publishes events on an EventBridge bus through a transactional outbox. Batches are
processed by a worker reading SQS (:mod:`backend_stub.worker`).

Writes that must land together go through a unit of work
(:mod:`backend_stub.storage.aws_unit`): small writes are applied in one transaction at the
end of ``atomic()``, bulk writes are set aside and made visible by that transaction.

* **Sessions** use optimistic locking: every update is conditional on the ``version`` it
  read. A user's profile holds the id of the last session started; a new session may take
  it only from a session that is no longer active, so two concurrent starts cannot both
  open one.
* **Batches** go through a ledger row (:mod:`backend_stub.storage.aws_ledger`):
  ``pending`` (stored in S3, queued), then ``processed``, or ``failed``. Processing leases
  the row; every staged item and conflict it writes carries its attempt, in transactions
  that also check the lease still holds (a fence), and the final transaction flips the
  ledger to ``processed`` with that attempt, together with the session's update. A
  staged row counts only when its attempt is the one the ledger recorded, so a crashed or
  duplicate attempt leaves nothing visible, two workers on one message apply the batch
  once, and an item staged by another batch is found by a conditional write.
* **Cloud items** are committed by set-aside, flip and roll-forward
  (:mod:`backend_stub.storage.aws_cloud`): no reader ever sees half a migration, and a
  commit interrupted after its flip is finished by the next writer.
* **Sync** rides on those commits (:mod:`backend_stub.storage.aws_sync`): the flip moves
  the user's head (seq, checksum, count) once per commit, every item carries its seq and
  digest, and pulls walk a per-user log in (seq, collection, key) order.

Modules: :mod:`~backend_stub.storage.aws_rows` (layout), ``aws_table`` (calls),
``aws_unit`` and ``aws_commit`` (units of work), ``aws_ledger`` (batches),
``aws_cloud`` (cloud items), ``aws_sync`` (sync head, log, pushes), ``aws_resources``
(clients, provisioning). Everything here
talks to AWS (or moto), so the examples are in the tests; offline:

    >>> AwsStorage.open(AwsSettings(endpoint_url="http://127.0.0.1:1")).ledger.__class__
    <class 'backend_stub.storage.aws_ledger.Ledger'>
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator, Sequence

from backend_stub.events import Event
from backend_stub.settings import AwsSettings
from backend_stub.storage import aws_slices, aws_sweep, aws_sync, iter_staged, tally_staged_pages
from backend_stub.storage.aws_blob_urls import S3BlobUrls
from backend_stub.storage.aws_blobs import S3Blobs
from backend_stub.storage.aws_cloud import PROFILE, CloudItems
from backend_stub.storage.aws_commit import commit, store_snapshot
from backend_stub.storage.aws_ledger import (
    FAILED,
    PENDING,
    PROCESSED,
    BatchBusy,
    HeldBatch,
    Ledger,
)
from backend_stub.storage.aws_resources import AwsResources
from backend_stub.storage.aws_rows import (
    Row,
    aside_pk,
    b,
    batch_of,
    cloud_of,
    conflict_attrs,
    conflict_body,
    conflict_of,
    conflicts_pk,
    event_of,
    event_row,
    get_b,
    get_flag,
    get_n,
    get_s,
    item_key,
    key,
    key_of_conflict_id,
    ledger_sk,
    n,
    opt_n,
    opt_s,
    push_sk,
    s,
    session_attrs,
    session_of,
    session_pk,
    session_sk,
    split_item_key,
    staged_pk,
    user_pk,
)
from backend_stub.storage.aws_table import DamagedObject, Table
from backend_stub.storage.aws_unit import Claim, Op, SessionWrite, Unit, put_op, update_op
from backend_stub.storage.blobs import BlobStore, BlobUrls
from backend_stub.storage.records import (
    Backlog,
    Batch,
    CloudItem,
    CommitRolling,
    Conflict,
    DuplicateItem,
    DuplicateSession,
    Key,
    PullPage,
    PushRecord,
    Session,
    StagedItem,
    StagedTally,
    StorageError,
    SyncedItem,
    SyncHead,
    VersionConflict,
)
from sdk.contract import SessionStatus, multiset_add

__all__ = ["AwsStorage", "BatchBusy", "DamagedObject", "HeldBatch"]

logger = logging.getLogger(__name__)


class AwsStorage:
    """The :class:`~backend_stub.storage.Storage` backend on DynamoDB, S3 and EventBridge.

    Build it with :meth:`open` (or from :class:`AwsResources`); it is shared by all the
    threads of a process. Opening makes no call; the first read does:

    >>> storage = AwsStorage.open(AwsSettings(table="mig", endpoint_url="http://127.0.0.1:1"))
    >>> storage.table.name
    'mig'
    >>> storage.close()
    """

    supports_sync = True

    def __init__(self, resources: AwsResources, *, owns_clients: bool = False) -> None:
        self.resources = resources
        self._owns_clients = owns_clients
        self.settings = resources.settings
        self.table = Table(resources)
        self._retention_s = self.settings.retention_days * 24 * 3600
        self.cloud = CloudItems(self.table, retention_s=self._retention_s)
        self.ledger = Ledger(self.table, self.settings, retention_s=self._retention_s)
        #: Attachments: S3 multipart uploads, held records in the table.
        s3_blobs = S3Blobs(self.table)
        self.blobs: BlobStore = s3_blobs
        #: Presigned S3 URLs for attachments, with ``MIGRATION_AWS_BLOB_DIRECT`` only.
        self.blob_urls: BlobUrls | None = (
            S3BlobUrls(s3_blobs, seconds=self.settings.blob_url_seconds)
            if self.settings.blob_direct
            else None
        )
        self._local = threading.local()
        self._owners: dict[str, str] = {}

    @classmethod
    def open(cls, settings: AwsSettings) -> AwsStorage:
        """The backend on the resources that ``settings`` name (no call is made yet)."""
        return cls(AwsResources(settings), owns_clients=True)

    def close(self) -> None:
        """Close the clients' connection pools (when :meth:`open` made them)."""
        if not self._owns_clients:
            return
        for client in (
            self.resources.dynamodb,
            self.resources.s3,
            self.resources.sqs,
            self.resources.events,
        ):
            client.close()

    # ------------------------------------------------------------------ units of work

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Buffer the writes inside; apply them when the outermost block ends (see the
        module docs). A nested block that fails forgets its own writes only."""
        unit: Unit | None = getattr(self._local, "unit", None)
        if unit is not None:
            mark = unit.mark()
            try:
                yield
            except BaseException:
                self._forget_aside(unit, int(mark[6]))
                unit.restore(mark)
                raise
            return
        unit = Unit()
        self._local.unit = unit
        try:
            yield
        except BaseException:
            self._local.unit = None
            self._drop_unflipped(unit)
            raise
        self._local.unit = None
        try:
            commit(self, unit)
        except StorageError:
            # Its transaction was refused (a lost race, a failed condition): nothing
            # flipped. Anything else may have applied: the sweep decides later.
            self._drop_unflipped(unit)
            raise

    def _drop_unflipped(self, unit: Unit) -> None:
        for user in unit.cloud:
            try:
                aws_sweep.forget(self, unit.tx, user)
            except Exception:
                logger.exception("the set-aside rows of %s stay for the sweep", unit.tx)

    def _unit(self) -> Unit:
        unit: Unit | None = getattr(self._local, "unit", None)
        assert unit is not None, "only inside atomic()"
        return unit

    # ------------------------------------------------------------------ sessions

    def get_session(self, session_id: str) -> Session | None:
        user_id = self._owner(session_id)
        if user_id is None:
            return None
        row = self.table.get(user_pk(user_id), session_sk(session_id))
        return session_of(row) if row else None

    def session_for_migration(self, user_id: str, migration_id: str) -> Session | None:
        claim = self.table.get(user_pk(user_id), f"MIGRATIONID#{migration_id}")
        return self.get_session(get_s(claim, "sessionId")) if claim else None

    def latest_session(self, user_id: str) -> Session | None:
        rows = self._session_rows(user_id)
        return session_of(rows[-1]) if rows else None

    def active_session(self, user_id: str, now: int) -> Session | None:
        active = [s for s in map(session_of, self._session_rows(user_id)) if s.is_active(now)]
        return active[-1] if active else None

    def has_completed(self, user_id: str, device_id: str) -> bool:
        return any(
            get_s(row, "deviceId") == device_id
            and get_s(row, "status") == SessionStatus.COMPLETED.value
            for row in self._session_rows(user_id)
        )

    def insert_session(self, session: Session) -> None:
        with self.atomic():
            unit = self._unit()
            user = session.user_id
            profile = self.table.get(user_pk(user), PROFILE, projection="#active")
            seen = opt_s(profile, "active") if profile else None
            if seen is not None and seen != session.id:
                other = self.get_session(seen)
                if other is not None and other.is_active(session.created_at):
                    raise VersionConflict(f"{user} started session {seen} meanwhile")
            row = key(user_pk(user), session_sk(session.id))
            row.update(session_attrs(session, retention_s=self._retention_s))
            row.update(
                {
                    "version": n(session.version),
                    "createdSeq": n(time.time_ns()),
                    "conflictTotal": n(0),
                    "conflictUnresolved": n(0),
                }
            )
            unit.add(put_op(row, "attribute_not_exists(#pk)", failure=DuplicateSession))
            claim = key(user_pk(user), f"MIGRATIONID#{session.migration_id}")
            claim["sessionId"] = s(session.id)
            unit.add(put_op(claim, "attribute_not_exists(#pk)", failure=DuplicateSession))
            pointer = key(session_pk(session.id), "SESSION")
            pointer["userId"] = s(user)
            unit.add(put_op(pointer, "attribute_not_exists(#pk)", failure=DuplicateSession))
            condition = "attribute_not_exists(#active)"
            values: Row = {":sid": s(session.id)}
            if seen is not None:
                condition += " OR #active = :seen"
                values[":seen"] = s(seen)
            unit.add(update_op(user_pk(user), PROFILE, "SET #active = :sid", condition, values))
        self._owners[session.id] = user

    def update_session(self, session: Session) -> Session:
        with self.atomic():
            unit = self._unit()
            attrs = session_attrs(session, retention_s=self._retention_s)
            completing = session.status is SessionStatus.COMPLETED
            earlier = unit.sessions.get(session.id)
            if earlier is None:
                write = SessionWrite(
                    session.user_id, session.id, session.version, attrs, completing
                )
            elif session.version == earlier.expected + earlier.bumps:
                write = dataclasses.replace(
                    earlier, attrs=attrs, completing=completing, bumps=earlier.bumps + 1
                )
            else:
                raise VersionConflict(session.id)
            unit.sessions[session.id] = write
        return dataclasses.replace(session, version=session.version + 1)

    def _owner(self, session_id: str) -> str | None:
        user = self._owners.get(session_id)
        if user is None:
            row = self.table.get(session_pk(session_id), "SESSION", projection="#userId")
            if row is None:
                return None
            user = self._owners[session_id] = get_s(row, "userId")
        return user

    def _session_rows(self, user_id: str) -> list[Row]:
        rows = list(self.table.query(user_pk(user_id), prefix="MIGRATION#"))
        rows.sort(key=lambda r: (get_n(r, "createdAt"), opt_n(r, "createdSeq") or 0))
        return rows

    # ------------------------------------------------------------------ batches

    def get_batch(self, session_id: str, seq: int) -> Batch | None:
        row = self.table.get(session_pk(session_id), ledger_sk(seq))
        if row is None or get_s(row, "state") != PROCESSED:
            return None
        return batch_of(session_id, row)

    def received_batches(self, session_id: str) -> list[int]:
        return [
            seq
            for seq, row in sorted(self.ledger.rows(session_id).items())
            if get_s(row, "state") in (PENDING, PROCESSED)
        ]

    def backlog(self, session_id: str) -> Backlog:
        pending: list[int] = []
        failures: list[str] = []
        for seq, row in sorted(self.ledger.rows(session_id).items()):
            state = get_s(row, "state")
            if state == PENDING:
                pending.append(seq)
            elif state == FAILED:
                failures.append(
                    f"batch {seq} could not be processed ({opt_s(row, 'error') or 'no detail'});"
                    " it is no longer held: upload it again"
                )
        return Backlog(pending, failures)

    def insert_batch(self, batch: Batch, items: Sequence[StagedItem]) -> None:
        with self.atomic():
            # The ledger refuses a key another live attempt holds; a key of a batch
            # already processed is looked up first (SQLite's primary key does both).
            if self.staged_keys(batch.session_id, [(i.collection, i.key) for i in items]):
                raise DuplicateItem(batch.session_id)
            unit = self._unit()
            attempt, round_ = self.ledger.claim(batch)
            expires = n(int(time.time()) + self._retention_s)
            rows: list[tuple[Row, int]] = []
            for item in items:
                row = key(staged_pk(batch.session_id), item_key(item.collection, item.key))
                packed, size = self.table.pack("item", item.item)
                row.update(packed)
                row.update(
                    {
                        "seq": n(batch.seq),
                        "attempt": s(attempt),
                        "digest": b(item.digest),
                        "outcome": s(item.outcome),
                        "ttl": expires,
                    }
                )
                if item.cloud_version is not None:
                    row["cloudVersion"] = n(item.cloud_version)
                rows.append((row, size + 128))
            self.ledger.write_fenced(batch.session_id, batch.seq, attempt, rows, claim=True)
            unit.claim = Claim(batch.session_id, batch.seq, attempt, round_)
            unit.add(self.ledger.flip(batch, attempt, round_))

    def staged_keys(self, session_id: str, keys: Sequence[Key]) -> list[Key]:
        pk = staged_pk(session_id)
        rows = self.table.batch_get(
            [key(pk, item_key(c, k)) for c, k in keys], projection="#sk, #seq, #attempt"
        )
        return sorted(split_item_key(get_s(r, "sk")) for r in self.ledger.visible(session_id, rows))

    def staged_items(self, session_id: str, *, after: Key | None, limit: int) -> list[StagedItem]:
        found: list[StagedItem] = []
        start = item_key(*after) if after is not None else None
        rows = self.table.query(staged_pk(session_id), after=start, limit=limit)
        for page in _pages(rows, limit):
            for row in self.ledger.visible(session_id, page):
                collection, item = split_item_key(get_s(row, "sk"))
                found.append(
                    StagedItem.from_text(
                        collection,
                        item,
                        get_n(row, "seq"),
                        self.table.unpack(row, "item"),
                        get_b(row, "digest"),
                        get_s(row, "outcome"),
                        opt_n(row, "cloudVersion"),
                    )
                )
                if len(found) == limit:
                    return found
        return found

    def tally_staged(self, session_id: str, user_id: str) -> StagedTally | None:
        return tally_staged_pages(self, session_id, user_id)

    def put_new_staged_items(
        self, session_id: str, user_id: str, *, device_id: str, now: int
    ) -> int:
        written = 0
        with self.atomic():
            unit = self._unit()
            # The commit takes its seq even with nothing new (as on SQLite).
            self._writing(unit, user_id)
            for page in iter_staged(self, session_id):
                new = [s for s in page if s.outcome == "new"]
                if new:
                    # No read of what they replace: the commit's walk found no cloud item
                    # for any of them at the generation its flip is conditioned on.
                    self._set_aside(
                        unit,
                        user_id,
                        [s.as_cloud(version=1, device_id=device_id) for s in new],
                        [s.digest for s in new],
                        {},
                        {},
                        now,
                    )
                    written += len(new)
        return written

    def outcome_counts(self, session_id: str) -> dict[str, int]:
        rows = self.table.query(staged_pk(session_id), projection="#seq, #attempt, #outcome")
        counts: collections.Counter[str] = collections.Counter()
        for page in _pages(rows, 1000):
            counts.update(get_s(r, "outcome") for r in self.ledger.visible(session_id, page))
        return dict(counts)

    def set_staged_outcome(
        self, session_id: str, key_: Key, outcome: str, cloud_version: int | None
    ) -> None:
        with self.atomic():
            expression = "SET #outcome = :outcome"
            values: Row = {":outcome": s(outcome)}
            if cloud_version is None:
                expression += " REMOVE #cloudVersion"
            else:
                expression += ", #cloudVersion = :cv"
                values[":cv"] = n(cloud_version)
            self._unit().add(
                update_op(
                    staged_pk(session_id),
                    item_key(*key_),
                    expression,
                    "attribute_exists(#pk)",
                    values,
                )
            )

    def purge_session(self, session_id: str) -> None:
        with self.atomic():
            user = self._owner(session_id)
            if user is not None:
                self._unit().purges[session_id] = user

    # ------------------------------------------------------------------ conflicts

    def save_conflicts(self, conflicts: Sequence[Conflict]) -> None:
        with self.atomic():
            unit = self._unit()
            by_session: dict[str, list[Conflict]] = collections.defaultdict(list)
            for conflict in conflicts:
                by_session[conflict.session_id].append(conflict)
            for session_id, group in by_session.items():
                user = self._owner(session_id)
                if user is None:
                    continue
                claim = unit.claim
                if claim is not None and claim.session_id == session_id:
                    self._save_batch_conflicts(claim, user, group)
                else:
                    self._save_decided_conflicts(user, session_id, group)

    def _save_batch_conflicts(self, claim: Claim, user: str, group: list[Conflict]) -> None:
        # The conflicts a batch found: new rows, fenced, tagged with the try's round.
        expires = n(int(time.time()) + self._retention_s)
        rows: list[tuple[Row, int]] = []
        for conflict in group:
            row = self._conflict_row(conflict)
            row.update({"seq": n(claim.seq), "round": s(claim.round), "ttl": expires})
            rows.append((row, _size(row)))
        self.ledger.write_fenced(claim.session_id, claim.seq, claim.attempt, rows, claim=False)
        unresolved = sum(1 for c in group if not c.resolved)
        self._unit().add_delta((user, claim.session_id), len(group), unresolved)

    def _save_decided_conflicts(self, user: str, session_id: str, group: list[Conflict]) -> None:
        # Resolutions and reclassifications: buffered, counted against what is visible.
        pk = conflicts_pk(session_id)
        existing = self.table.batch_get(
            [key(pk, item_key(c.collection, c.key)) for c in group],
            projection="#sk, #seq, #round, #resolved",
        )
        old = {get_s(r, "sk"): r for r in self.ledger.visible(session_id, existing)}
        expires = n(int(time.time()) + self._retention_s)
        for conflict in group:
            row = self._conflict_row(conflict)
            row["ttl"] = expires
            before = old.get(get_s(row, "sk"))
            delta = _subtract(_weight(conflict.resolved), _weight_of(before))
            op = put_op(row)
            op.counted, op.delta, op.size = (user, session_id), delta, _size(row)
            self._unit().add(op)

    def _conflict_row(self, conflict: Conflict) -> Row:
        row = key(conflicts_pk(conflict.session_id), item_key(conflict.collection, conflict.key))
        row.update(conflict_attrs(conflict))
        row.update(self.table.pack("body", conflict_body(conflict))[0])
        return row

    def delete_conflict(self, conflict_id: str) -> None:
        address = key_of_conflict_id(conflict_id)
        if address is None:
            return
        session_id, collection, item = address
        with self.atomic():
            user = self._owner(session_id)
            pk, sk = conflicts_pk(session_id), item_key(collection, item)
            row = self.table.get(pk, sk, projection="#sk, #seq, #round, #resolved")
            if user is None or row is None:
                return
            visible = self.ledger.visible(session_id, [row])
            op = Op({"Delete": {"Key": key(pk, sk)}}, (pk, sk))
            op.counted = (user, session_id)
            op.delta = _subtract((0, 0), _weight_of(visible[0] if visible else None))
            self._unit().add(op)

    def get_conflicts(self, session_id: str, conflict_ids: Sequence[str]) -> list[Conflict]:
        pk = conflicts_pk(session_id)
        wanted = []
        for conflict_id in conflict_ids:
            address = key_of_conflict_id(conflict_id)
            if address is not None and address[0] == session_id:
                wanted.append(key(pk, item_key(address[1], address[2])))
        rows = self.ledger.visible(session_id, self.table.batch_get(wanted))
        found = [conflict_of(session_id, r, self.table.unpack(r, "body")) for r in rows]
        return sorted(found, key=lambda c: (c.collection, c.key))

    def list_conflicts(self, session_id: str, *, after: Key | None, limit: int) -> list[Conflict]:
        found: list[Conflict] = []
        start = item_key(*after) if after is not None else None
        rows = self.table.query(conflicts_pk(session_id), after=start, limit=limit)
        for page in _pages(rows, limit):
            for row in self.ledger.visible(session_id, page):
                found.append(conflict_of(session_id, row, self.table.unpack(row, "body")))
                if len(found) == limit:
                    return found
        return found

    def conflict_counts(self, session_id: str) -> tuple[int, int]:
        user = self._owner(session_id)
        row = (
            self.table.get(
                user_pk(user),
                session_sk(session_id),
                projection="#conflictTotal, #conflictUnresolved",
            )
            if user
            else None
        )
        total = (opt_n(row, "conflictTotal") or 0) if row else 0
        unresolved = (opt_n(row, "conflictUnresolved") or 0) if row else 0
        unit: Unit | None = getattr(self._local, "unit", None)
        if unit is not None:
            # Inside a unit, its own buffered changes count, as in a SQL transaction.
            if session_id in unit.purges:
                return 0, 0
            delta = unit.delta_of(session_id)
            total, unresolved = total + delta[0], unresolved + delta[1]
        return total, unresolved

    # ------------------------------------------------------------------ cloud items

    def cloud_items(self, user_id: str, keys: Sequence[Key]) -> dict[Key, CloudItem]:
        found, generation = self.cloud.read_at(user_id, keys)
        unit: Unit | None = getattr(self._local, "unit", None)
        if unit is not None:
            # What a unit read, it may commit upon only if no commit came in between.
            unit.generations.setdefault(user_id, generation)
        return found

    def put_cloud_items(self, user_id: str, items: Sequence[CloudItem], now: int) -> int:
        if not items:
            return self.sync_head(user_id).seq
        with self.atomic():
            unit = self._unit()
            seq = self._writing(unit, user_id)
            keys = [(i.collection, i.key) for i in items]
            current, generation = self.cloud.rows_at(user_id, keys)
            if generation != unit.generations[user_id]:
                raise VersionConflict(f"the cloud items of {user_id} changed during this unit")
            again = [k for k in keys if (user_id, item_key(*k)) in unit.aside_keys]
            mine: dict[Key, Row] = {}
            if again:
                # Written earlier in this unit: that version is the one replaced.
                pk = aside_pk(unit.tx, user_id)
                rows = self.table.batch_get([key(pk, item_key(*k)) for k in again])
                mine = {split_item_key(get_s(r, "sk")): r for r in rows}
            self._set_aside(unit, user_id, items, [i.digest() for i in items], current, mine, now)
        return seq

    def _writing(self, unit: Unit, user_id: str) -> int:
        """Start writing the user's items in ``unit``; the seq they are written at."""
        if user_id not in unit.cloud:
            # Only one commit rolls forward per user at a time: finish a stalled one.
            self.settle(user_id)
            profile = aws_sync.read_profile(self.table, user_id)
            if unit.generations.setdefault(user_id, profile.view) != profile.view:
                raise VersionConflict(f"the cloud items of {user_id} changed during this unit")
            unit.cloud[user_id] = 0
            head = profile.head
            unit.sync[user_id] = (head.seq, head._replace(seq=head.seq + 1))
        return unit.sync[user_id][1].seq

    def _set_aside(
        self,
        unit: Unit,
        user_id: str,
        items: Sequence[CloudItem],
        digests: Sequence[bytes],
        current: dict[Key, Row],
        mine: dict[Key, Row],
        now: int,
    ) -> None:
        """Set ``items`` aside and move the unit's head: ``current`` holds the cloud
        rows they replace, ``mine`` the rows this unit set aside for them before."""
        if not unit.cloud[user_id]:
            # Registered before its first row: if the unit dies, the sweep finds them.
            aws_sweep.register(self, unit.tx, user_id)
        prior, head = unit.sync[user_id]
        total, count = head.checksum, head.item_count
        for item, digest in zip(items, digests, strict=True):
            total = multiset_add(total, digest)
            address = (item.collection, item.key)
            old = mine.get(address) or current.get(address)
            if old is None:
                count += 1
            else:
                total = multiset_add(total, self.cloud.digest_of(old), sign=-1)
        written = self.cloud.set_aside(
            unit.tx, user_id, items, now, seq=head.seq, digests=digests, replaced=current
        )
        unit.sync[user_id] = (prior, head._replace(checksum=total, item_count=count))
        unit.cloud[user_id] += len(written)
        unit.aside.extend((user_id, sk) for sk in written)
        unit.aside_keys.update((user_id, sk) for sk in written)

    # ------------------------------------------------------------------ sync

    def sync_head(self, user_id: str) -> SyncHead:
        unit: Unit | None = getattr(self._local, "unit", None)
        if unit is not None and user_id in unit.sync:
            return unit.sync[user_id][1]  # this unit's writes count, as in a transaction
        profile = aws_sync.read_profile(self.table, user_id)
        if unit is not None and unit.generations.setdefault(user_id, profile.view) != (
            profile.view
        ):
            raise VersionConflict(f"the cloud items of {user_id} changed during this unit")
        return profile.head

    def synced_items(self, user_id: str, keys: Sequence[Key]) -> dict[Key, SyncedItem]:
        rows, generation = self.cloud.rows_at(user_id, keys)
        unit: Unit | None = getattr(self._local, "unit", None)
        if unit is not None:
            unit.generations.setdefault(user_id, generation)
        return {
            address: SyncedItem(
                cloud_of(row, self.table.unpack(row, "data")), opt_n(row, "seq") or 0
            )
            for address, row in rows.items()
        }

    def pull_page(
        self,
        user_id: str,
        *,
        after: tuple[int, str, str] | None,
        until: int | None,
        limit: int,
        skip_device: str | None = None,
    ) -> PullPage:
        # The log holds every item: the device's own are left out here, page after page
        # until ``limit`` others are found (or the log ends), so that a short page still
        # means the end and the caller's cursor skips nothing.
        found: list[SyncedItem] = []
        position = after
        while True:
            page = aws_sync.pull_page(self.cloud, user_id, after=position, until=until, limit=limit)
            found.extend(
                s for s in page.items if skip_device is None or s.item.device_id != skip_device
            )
            if len(page.items) < limit or len(found) >= limit:
                return PullPage(found[:limit], page.head)
            last = page.items[-1]
            position = (last.seq, last.item.collection, last.item.key)

    def count_changes(
        self, user_id: str, *, after: tuple[int, str, str] | None, skip_device: str | None
    ) -> int:
        count = 0
        position = after
        while True:
            page = aws_sync.pull_page(self.cloud, user_id, after=position, until=None, limit=1000)
            count += sum(
                1 for s in page.items if skip_device is None or s.item.device_id != skip_device
            )
            if len(page.items) < 1000:
                return count
            last = page.items[-1]
            position = (last.seq, last.item.collection, last.item.key)

    def full_checksum(self, user_id: str) -> tuple[int, int]:
        return aws_sync.full_checksum(self.cloud, user_id)

    def get_push(self, user_id: str, push_id: str) -> PushRecord | None:
        row = self.table.get(user_pk(user_id), push_sk(push_id))
        return aws_sync.push_of(self.table, row) if row else None

    def save_push(self, user_id: str, push_id: str, record: PushRecord, now: int) -> None:
        with self.atomic():
            row = aws_sync.push_row(
                self.table, user_id, push_id, record, now, retention_s=self._retention_s
            )
            # With the push's writes and head: a concurrent twin loses, retries, replays.
            self._unit().add(put_op(row, "attribute_not_exists(#pk)"))

    def settle(self, user_id: str) -> None:
        """Finish the user's commit if a crash stopped it after its flip (idempotent).

        Readers never need it (they resolve through the pointer); writers call it first.
        A migration's roll-forward is left to its jobs (:class:`CommitRolling`), which
        are queued again if they stalled.
        """
        try:
            self.cloud.settle(user_id, self._snapshot)
        except CommitRolling as rolling:
            aws_slices.nudge(self, rolling.user_id, rolling.session_id)
            raise

    def commit_progress(self, session: Session) -> tuple[float, str] | None:
        """How far a session's sliced commit is (``GET /status``); a commit whose jobs
        stopped (a lost message, the dead-letter queue) is queued again."""
        return aws_slices.progress(self, session)

    def _snapshot(self, session_id: str) -> None:
        store_snapshot(self, session_id)

    # ------------------------------------------------------------------ users and events

    def mark_candidate(self, user_id: str, registered_at: int) -> None:
        with self.atomic():
            self._unit().add(
                update_op(
                    user_pk(user_id),
                    PROFILE,
                    "SET #registeredAt = if_not_exists(#registeredAt, :at)",
                    None,
                    {":at": n(registered_at)},
                )
            )

    def is_candidate(self, user_id: str) -> bool:
        row = self.table.get(user_pk(user_id), PROFILE, projection="#registeredAt")
        return bool(row and "registeredAt" in row)

    def record_event(self, event: Event) -> None:
        with self.atomic():
            unit = self._unit()
            row = event_row(event, time.time_ns())
            op = put_op(row)
            op.last = True
            unit.add(op)
            unit.events.append((event, op.target))

    def events(self, *, user_id: str | None = None, type: str | None = None) -> list[Event]:
        if user_id is not None:
            rows = list(self.table.query(f"USER#{user_id}#EVENTS"))
        else:
            # A debugging aid: a scan reads the whole table.
            rows = list(self.table.scan("#kind = :event", {":event": s("event")}))
            rows.sort(key=lambda r: get_s(r, "sk"))
        events = [event_of(r) for r in rows]
        return [e for e in events if type is None or e.type.value == type]

    def publish_outbox(self, *, limit: int = 100) -> int:
        """Publish events whose publication failed after their commit (the sweeper)."""
        return aws_sweep.sweep_outbox(self, limit=limit)

    # ------------------------------------------------------------------ internals

    def _forget_aside(self, unit: Unit, size: int) -> None:
        by_user: dict[str, list[str]] = collections.defaultdict(list)
        for user, sk in unit.aside[size:]:
            by_user[user].append(sk)
        for user, sks in by_user.items():
            self.cloud.forget_aside(unit.tx, user, sks)


def _weight(resolved: bool) -> tuple[int, int]:
    return 1, 0 if resolved else 1


def _weight_of(row: Row | None) -> tuple[int, int]:
    return (0, 0) if row is None else _weight(get_flag(row, "resolved"))


def _subtract(a: tuple[int, int], c: tuple[int, int]) -> tuple[int, int]:
    return a[0] - c[0], a[1] - c[1]


def _size(row: Row) -> int:
    return sum(len(name) + len(str(value)) for name, value in row.items())


def _pages(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    page: list[Row] = []
    for row in rows:
        page.append(row)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page
