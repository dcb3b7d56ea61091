"""The steps of a sliced commit on the ``aws`` backend, one slice each (see
:mod:`backend_stub.committing` for the job, :mod:`backend_stub.storage.aws_slices` for
the record). Each returns the record after its slice; ``flip`` writes it itself, in the
transaction of the commit point::

    >>> sorted(STEPS)
    ['aside', 'cleanup', 'roll', 'snapshot', 'sweep']
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable

from backend_stub.completion import _ChecksumFailed, _fail, _refresh, _target
from backend_stub.events import Event, EventType
from backend_stub.failpoints import failpoint
from backend_stub.monitoring import metric
from backend_stub.settings import Settings
from backend_stub.storage import CloudItem, Session, StagedItem
from backend_stub.storage.aws import AwsStorage
from backend_stub.storage.aws_commit import commit, publish
from backend_stub.storage.aws_rows import (
    cloud_of,
    conflict_id,
    event_of,
    event_row,
    item_key,
    session_attrs,
    split_item_key,
)
from backend_stub.storage.aws_slices import (
    CommitRecord,
    drop_aside,
    record_op,
    save_record,
)
from backend_stub.storage.aws_snapshot import snapshot_part, start_snapshot
from backend_stub.storage.aws_sync import read_profile
from backend_stub.storage.aws_unit import SessionWrite, Unit, put_op
from backend_stub.storage.records import SyncHead, VersionConflict
from backend_stub.storage.running_sha256 import START, RunningSha256
from sdk.contract import CompleteMigrationResponse, SessionStatus, multiset_add

__all__ = ["STEPS", "flip", "fresh", "restart"]

logger = logging.getLogger(__name__)

Step = Callable[[AwsStorage, Settings, Session, CommitRecord, int, int], CommitRecord]


def fresh(storage: AwsStorage, session: Session, previous: CommitRecord | None) -> CommitRecord:
    """A new try at the commit, from the user's head now; an earlier try's set-aside
    rows are swept first.

    >>> fresh(storage, session, None).step  # doctest: +SKIP
    'aside'
    """
    stale = None
    if previous is not None and previous.step != "done":
        # A record still sweeping has no rows of its own yet, only its stale ones.
        stale = previous.stale if previous.step == "sweep" else previous.tx
    profile = read_profile(storage.table, session.user_id)
    head = profile.head
    return CommitRecord(
        tx=uuid.uuid4().hex,
        step="sweep" if stale else "aside",
        part=(previous.part + 1) if previous else 0,
        total=session.manifest.item_count,
        generation=profile.view,
        prior=head.seq,
        checksum=head.checksum,
        count=head.item_count,
        stale=stale,
        updated_at=time.time(),
    )


def _sweep(
    storage: AwsStorage,
    settings: Settings,
    session: Session,
    record: CommitRecord,
    limit: int,
    now: int,
) -> CommitRecord:
    if record.stale is not None:
        if not drop_aside(storage, record.stale, session.user_id, limit):
            return record.next()
        storage.table.delete_prefix(f"sessions/{session.id}/commit/{record.stale}/")
    return record.next(step="done" if record.then == "end" else record.then, stale=None)


def _aside(
    storage: AwsStorage,
    settings: Settings,
    session: Session,
    record: CommitRecord,
    limit: int,
    now: int,
) -> CommitRecord:
    user = session.user_id
    page = storage.staged_items(session.id, after=record.after, limit=limit)
    keys = [(s.collection, s.key) for s in page]
    rows, generation = storage.cloud.rows_at(user, keys)
    if generation != record.generation:
        logger.info("session %s: the cloud moved under the commit; starting over", session.id)
        return restart(storage, session, record)
    wanted = [conflict_id(session.id, s.collection, s.key) for s in page if s.outcome == "conflict"]
    decisions = {(c.collection, c.key): c for c in storage.get_conflicts(session.id, wanted)}
    drifted: list[tuple[StagedItem, CloudItem | None]] = []
    writes: list[CloudItem] = []
    staged_digests: list[bytes] = []
    cloud_digests: list[bytes] = []
    outcomes: Counter[str] = Counter()
    kinds = Counter(record.kinds)
    checksum, count = record.checksum, record.count
    for staged, address in zip(page, keys, strict=True):
        row = rows.get(address)
        current = cloud_of(row, storage.table.unpack(row, "data")) if row else None
        if (current.version if current else None) != staged.cloud_version:
            drifted.append((staged, current))
            continue
        staged_digests.append(staged.digest)
        outcomes[staged.outcome] += 1
        if staged.outcome == "new":
            target: CloudItem | None = staged.as_cloud(version=1, device_id=session.device_id)
        else:
            decision = decisions.get(address)
            if decision is not None:
                kinds[decision.strategy or decision.choice or "unknown"] += 1
            target, _ = _target(staged, current, decision, session.device_id)
        if target is None:
            # Kept as the cloud holds it: its digest read from the cloud's row.
            cloud_digests.append(storage.cloud.digest_of(row) if row else staged.digest)
            continue
        cloud_digests.append(target.digest())
        writes.append(target)
        checksum = multiset_add(checksum, target.digest())
        if row is None:
            count += 1
        else:
            checksum = multiset_add(checksum, storage.cloud.digest_of(row), sign=-1)
    if drifted:
        _refresh(storage, settings, session, drifted, now)
        return record.next(step="sweep", stale=record.tx, then="end")
    storage.cloud.set_aside(
        record.tx,
        user,
        writes,
        now,
        seq=record.prior + 1,
        digests=[w.digest() for w in writes],
        replaced=rows,
    )
    staged_sha = RunningSha256.load(record.staged_sha or START)
    staged_sha.update(b"".join(staged_digests))
    cloud_sha = RunningSha256.load(record.cloud_sha or START)
    cloud_sha.update(b"".join(cloud_digests))
    ended = len(page) < limit
    return record.next(
        step="snapshot" if ended else "aside",
        after=None if ended else keys[-1],
        done=record.done + len(page),
        checksum=checksum,
        count=count,
        new=record.new + outcomes["new"],
        unchanged=record.unchanged + outcomes["unchanged"],
        applied=record.applied + len(writes),
        staged_sha=staged_sha.state(),
        cloud_sha=cloud_sha.state(),
        kinds=dict(kinds),
    )


def restart(storage: AwsStorage, session: Session, record: CommitRecord) -> CommitRecord:
    """The record that begins the commit again from fresh reads, sweeping what this
    attempt set aside.

    >>> restart(storage, session, record).step  # doctest: +SKIP
    'sweep'
    """
    again = fresh(storage, session, record)
    return dataclasses.replace(again, part=record.part + 1, step="sweep", stale=record.tx)


def _snapshot(
    storage: AwsStorage,
    settings: Settings,
    session: Session,
    record: CommitRecord,
    limit: int,
    now: int,
) -> CommitRecord:
    # Before the flip: it reads the staged items, which the working set's TTL removes.
    upload = record.upload or start_snapshot(storage, session.id, session.manifest.item_count)
    parts, (last, skip), ended = snapshot_part(
        storage, session.id, upload, record.parts, (record.after, record.skip), limit
    )
    if ended:
        return record.next(step="flip", after=None, upload=None, parts=[], skip=0)
    return record.next(upload=upload, parts=parts, after=last, skip=skip)


def flip(storage: AwsStorage, session: Session, record: CommitRecord, now: int) -> bool:
    """The commit point: the pointer, the session's result and its event, at once.

    >>> flip(storage, session, record, now)  # doctest: +SKIP
    True
    """
    manifest = session.manifest
    # Every staged item's digest went into the record's hash (a drifted one restarts).
    dataset, count = RunningSha256.load(record.staged_sha or START).hexdigest(), record.done
    if count != manifest.item_count or dataset != manifest.dataset_checksum:
        _fail(storage, session, _ChecksumFailed(dataset, count), now)
        swept = record.next(step="sweep", stale=record.tx, then="end")
        return save_record(storage, session.id, swept, record.part)
    # The cloud digests were read at the generation the flip is conditioned on: after
    # it, the cloud holds exactly them (the items it kept, and the versions it wrote).
    cloud_checksum = RunningSha256.load(record.cloud_sha or START).hexdigest()
    # Only one commit rolls forward per user at a time: a stalled one finishes first.
    storage.settle(session.user_id)
    result = _result(storage, session, record, cloud_checksum, now)
    head = SyncHead(record.prior + 1, record.checksum, record.count)
    pointer = storage.cloud.flip(
        record.tx, session.user_id, None, record.generation, (record.prior, head), job=session.id
    )
    unit = Unit()
    unit.add(pointer)
    completed = dataclasses.replace(
        session, status=SessionStatus.COMPLETED, completed_at=now, updated_at=now, result=result
    )
    attrs = session_attrs(completed, retention_s=storage.settings.retention_days * 24 * 3600)
    unit.sessions[session.id] = SessionWrite(
        session.user_id, session.id, session.version, attrs, completing=False
    )
    event = Event.new(
        EventType.MIGRATION_COMPLETED,
        user_id=session.user_id,
        session_id=session.id,
        detail={
            "itemCount": result.item_count,
            "appliedCount": result.applied_count,
            "datasetChecksum": dataset,
            "cloudChecksum": cloud_checksum,
        },
        now=now,
    )
    op = put_op(event_row(event, time.time_ns()))
    op.last = True
    unit.add(op)
    # Published by this job once the roll-forward is done (the outbox sweep leaves a
    # rolling user's events alone), so that a row goes out once.
    rolling = record.next(step="roll", after=None, done=0, outbox=op.target)
    unit.add(record_op(session.id, rolling, record.part))
    failpoint("commit.flip.before")
    try:
        commit(storage, unit)
    except VersionConflict as lost:
        if getattr(lost, "target", None) != pointer.target:
            return False  # another slice flipped
        # Another writer committed since the items were read: start over from fresh reads.
        return save_record(storage, session.id, restart(storage, session, record), record.part)
    failpoint("commit.flip.after")
    metric(
        logger,
        "MigrationCommitted",
        {"ItemsWritten": record.applied, "Slices": record.part},
        f"session {session.id} committed {record.applied} cloud item(s) of {count}",
        sessionId=session.id,
        userId=session.user_id,
    )
    return True


def _result(
    storage: AwsStorage, session: Session, record: CommitRecord, cloud_checksum: str, now: int
) -> CompleteMigrationResponse:
    count = session.manifest.item_count
    return CompleteMigrationResponse(
        session_id=session.id,
        status=SessionStatus.COMPLETED,
        item_count=count,
        applied_count=record.applied,
        dataset_checksum=session.manifest.dataset_checksum,
        cloud_checksum=cloud_checksum,
        completed_at=now,
        new_items=record.new,
        unchanged_items=record.unchanged,
        conflicts=count - record.new - record.unchanged,
        resolutions_by_kind=dict(record.kinds),
        sync_seq=record.prior + 1,
        sync_prior_seq=record.prior,
    )


def _roll(
    storage: AwsStorage,
    settings: Settings,
    session: Session,
    record: CommitRecord,
    limit: int,
    now: int,
) -> CommitRecord:
    user = session.user_id
    if read_profile(storage.table, user).rolling != record.tx:
        # A writer of this user finished it first (it had to, to commit its own).
        return record.next(step="cleanup", after=None, done=0)
    after = item_key(*record.after) if record.after else None
    rows = storage.cloud.aside_page(record.tx, user, after=after, limit=limit)
    storage.cloud.copy_page(user, rows)
    failpoint("commit.roll.page")
    if len(rows) < limit:
        storage.cloud.clear(user, record.tx)
        return record.next(step="cleanup", after=None, done=0)
    return record.next(after=split_item_key(rows[-1]["sk"]["S"]), done=record.done + len(rows))


def _cleanup(
    storage: AwsStorage,
    settings: Settings,
    session: Session,
    record: CommitRecord,
    limit: int,
    now: int,
) -> CommitRecord:
    if record.outbox is not None:
        pk, sk = record.outbox
        row = storage.table.get(pk, sk)
        if row is not None and "obx" in row:
            publish(storage, [(event_of(row), (pk, sk))])
        return record.next(outbox=None)
    if not drop_aside(storage, record.tx, session.user_id, limit):
        return record.next()
    # The working copy is no longer needed: the snapshot holds what was migrated.
    storage.table.delete_prefix(f"sessions/{session.id}/commit/")
    storage.table.delete_prefix(f"sessions/{session.id}/batches/")
    return record.next(step="done")


#: The steps that return the next record (``flip`` records its own).
STEPS: dict[str, Step] = {
    "sweep": _sweep,
    "aside": _aside,
    "snapshot": _snapshot,
    "roll": _roll,
    "cleanup": _cleanup,
}
