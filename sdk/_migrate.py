"""The migration itself: detect, snapshot, start, upload, resolve, complete, verify.

A migration is a small state machine over the journal's phases. Every step first
writes what it is about to do to the journal, and every server call it makes is
idempotent, so the whole function can be killed anywhere and simply called again: it
reads the journal, asks the server for the truth (``status``) and carries on.

Use it through :class:`sdk.MigrationClient` (or :func:`sdk.migrate`); this module is
the engine behind them.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from . import contract as c
from ._detect import LocalState, check_local, detect_local
from ._errors import (
    ConfigurationError,
    ConflictError,
    MigrationBlockedError,
    MigrationError,
    NotFoundError,
    ProtocolError,
    SnapshotError,
    VerificationError,
)
from ._events import (
    DataConflictDetected,
    Hooks,
    LocalDataDetected,
    MigrationCompleted,
    MigrationStarted,
    Progress,
    ProgressPhase,
)
from ._journal import Journal, JournalRecord, Phase, ResolutionRecord
from ._snapshot import Snapshot, open_snapshot, take_snapshot
from ._store import LocalStore
from ._transport import Transport

__all__ = ["MigrationOptions", "MigrationOutcome", "MigrationResult", "run_migration"]

logger = logging.getLogger(__name__)

#: How many times one call starts over with a fresh snapshot when the server session
#: is gone (expired, cancelled elsewhere, failed) before it gives up.
_MAX_RESTARTS = 2
#: How many upload passes one call makes before the server's status must show every
#: batch (a batch acknowledged but then not listed means the server lost it).
_MAX_UPLOAD_PASSES = 3
#: How many rounds of "complete → cloud changed → resolve again" one call accepts.
_MAX_RESOLVE_ROUNDS = 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class MigrationOptions:
    """How the migration runs. Every field has a safe default.

    >>> MigrationOptions(batch_size=500).max_in_flight
    2
    >>> try:
    ...     MigrationOptions(batch_size=0)
    ... except ConfigurationError as exc:
    ...     print(exc)
    batch_size must be at least 1, got 0
    """

    #: Items per batch (the server's own limit caps it).
    batch_size: int = 1000
    #: Batches uploaded in parallel (the server's limit caps it).
    max_in_flight: int = 2
    #: gzip batch bodies when the server offers it.
    compress: bool = False
    #: Where snapshots go; default: the user cache directory of the app.
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be at least 1, got {self.max_in_flight}")


class MigrationOutcome(str, enum.Enum):
    """How a call to migrate ended without an error.

    >>> MigrationOutcome.COMPLETED.value
    'completed'
    """

    COMPLETED = "completed"
    NOTHING_TO_MIGRATE = "nothing_to_migrate"
    ALREADY_MIGRATED = "already_migrated"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MigrationResult:
    """What a migration did. ``verified`` is true only when the cloud's checksum of the
    migrated items equals the device's own.

    >>> MigrationResult(outcome=MigrationOutcome.NOTHING_TO_MIGRATE).verified
    False
    """

    outcome: MigrationOutcome
    migration_id: str | None = None
    session_id: str | None = None
    item_count: int = 0
    collections: dict[str, int] = dataclasses.field(default_factory=dict)
    new_items: int | None = None
    unchanged_items: int | None = None
    conflicts: int = 0
    resolutions_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
    dataset_checksum: str | None = None
    cloud_checksum: str | None = None
    verified: bool = False
    resumed: bool = False
    batches_uploaded: int = 0
    duration_s: float = 0.0


class _Restart(Exception):
    """The server session is gone; start over with a fresh snapshot."""


@dataclasses.dataclass
class _Run:
    store_path: Path
    transport: Transport
    journal: Journal
    options: MigrationOptions
    cache_dir: Path
    hooks: Hooks
    started: float = dataclasses.field(default_factory=time.monotonic)
    batches_uploaded: int = 0
    conflicts_seen: int = 0
    compress: bool = False


def run_migration(
    *,
    store_path: Path,
    transport: Transport,
    journal: Journal,
    options: MigrationOptions,
    cache_dir: Path,
    hooks: Hooks,
) -> MigrationResult:
    """Run (or resume) the migration of the store at ``store_path`` to the end."""
    run = _Run(store_path, transport, journal, options, cache_dir, hooks)
    record = journal.load()
    resumed = record is not None
    for _attempt in range(_MAX_RESTARTS + 1):
        if record is None:
            prepared = _prepare(run)
            if isinstance(prepared, MigrationResult):
                return prepared
            record = prepared
        try:
            return _drive(run, record, resumed=resumed)
        except _Restart as why:
            logger.warning("starting the migration over: %s", why)
            _abandon(run, record)
            record = None
    raise MigrationError(
        "the server discarded the migration session several times in a row; "
        "check the server's session TTL and try again later"
    )


# --------------------------------------------------------------------------- phases


def _prepare(run: _Run) -> JournalRecord | MigrationResult:
    run.hooks.progress(Progress(ProgressPhase.DETECTING, 0, 0))
    local = detect_local(run.store_path)
    if local.state in (LocalState.NO_STORE, LocalState.EMPTY):
        return MigrationResult(outcome=MigrationOutcome.NOTHING_TO_MIGRATE)
    if local.state is LocalState.MIGRATED:
        state = local.migration
        return MigrationResult(
            outcome=MigrationOutcome.ALREADY_MIGRATED,
            migration_id=state.migration_id if state else None,
            session_id=state.session_id if state else None,
            item_count=local.item_count,
            collections=dict(local.counts),
            cloud_checksum=state.cloud_checksum if state else None,
            verified=True,
        )
    check_local(local)
    run.hooks.emit(
        LocalDataDetected(
            item_count=local.item_count,
            collections=dict(local.counts),
            data_version=local.data_version,
        )
    )
    server = run.transport.detect(
        has_local_data=True,
        item_count=local.item_count,
        data_version=local.data_version,
        device_id=local.device_id,
    )
    if not server.can_migrate:
        raise MigrationBlockedError(
            f"the server will not take this migration now: {server.reason or 'no reason given'}",
            reason=server.reason,
        )
    run.compress = run.options.compress and "gzip" in server.capabilities
    migration_id = uuid.uuid4().hex
    run.hooks.progress(Progress(ProgressPhase.SNAPSHOTTING, 0, local.item_count))
    snapshot = take_snapshot(
        run.store_path,
        run.cache_dir,
        batch_size=min(run.options.batch_size, server.limits.max_batch_items),
        max_batch_bytes=server.limits.max_batch_bytes,
        name=migration_id,
    )
    with snapshot:
        record = JournalRecord.new(
            migration_id=migration_id,
            user_id=run.transport.user_id,
            device_id=snapshot.device_id,
            snapshot_path=str(snapshot.path),
            dataset_checksum=snapshot.dataset_checksum,
            item_count=snapshot.item_count,
            batch_count=snapshot.batch_count,
        )
    return run.journal.create(record)


def _drive(run: _Run, record: JournalRecord, *, resumed: bool) -> MigrationResult:
    snapshot: Snapshot | None = None
    try:
        if record.phase < Phase.COMPLETED:
            snapshot = _open_snapshot(run, record)
        if record.phase is Phase.PREPARED:
            assert snapshot is not None
            record = _start(run, record, snapshot, resumed=resumed)
        for _round in range(_MAX_RESOLVE_ROUNDS):
            if record.phase is Phase.STARTED:
                assert snapshot is not None
                record = _upload(run, record, snapshot)
            if record.phase is Phase.UPLOADED:
                assert snapshot is not None
                record = _resolve(run, record, snapshot)
            if record.phase is Phase.RESOLVED:
                record = _complete(run, record)
            if record.phase >= Phase.COMPLETED:
                break
        else:
            raise MigrationError(
                "the cloud kept changing the items in conflict while this device resolved "
                "them; run the migration again once the other device is idle"
            )
    finally:
        if snapshot is not None:
            snapshot.close()
    return _verify(run, record, resumed=resumed)


def _open_snapshot(run: _Run, record: JournalRecord) -> Snapshot:
    try:
        snapshot = open_snapshot(Path(record.snapshot_path))
    except SnapshotError as exc:
        raise _Restart(f"the snapshot is gone or damaged ({exc})") from exc
    if snapshot.dataset_checksum != record.dataset_checksum:
        snapshot.close()
        raise _Restart("the snapshot on disk is not the one this migration started with")
    return snapshot


def _start(run: _Run, record: JournalRecord, snapshot: Snapshot, *, resumed: bool) -> JournalRecord:
    run.hooks.progress(Progress(ProgressPhase.STARTING, 0, record.item_count))
    request = c.StartMigrationRequest(
        migration_id=record.migration_id,
        device_id=record.device_id,
        data_version=snapshot.data_version,
        config=c.MigrationConfig(compression="gzip" if run.compress else "identity"),
        manifest=snapshot.manifest(),
    )
    try:
        answer = run.transport.start(request)
    except ConflictError as exc:
        raise MigrationBlockedError(
            f"the server refused to start this migration: {exc}", reason=exc.code
        ) from exc
    record = run.journal.advance(Phase.STARTED, session_id=answer.session_id)
    run.hooks.emit(
        MigrationStarted(
            migration_id=record.migration_id,
            session_id=answer.session_id,
            item_count=record.item_count,
            resumed=resumed,
        )
    )
    return record


def _session_status(run: _Run, session_id: str) -> c.GetMigrationStatusResponse:
    try:
        status = run.transport.status(session_id)
    except NotFoundError as exc:
        raise _Restart(f"the server no longer knows session {session_id}") from exc
    if status.status in (c.SessionStatus.CANCELLED, c.SessionStatus.EXPIRED):
        raise _Restart(f"session {session_id} is {status.status.value}")
    if status.status is c.SessionStatus.FAILED:
        raise _Restart(f"session {session_id} failed: {'; '.join(status.errors) or 'no detail'}")
    return status


def _upload(run: _Run, record: JournalRecord, snapshot: Snapshot) -> JournalRecord:
    session_id = _session_id(record)
    sizes = {seq: (items, size) for seq, items, size in snapshot.batch_sizes()}
    bytes_total = sum(size for _items, size in sizes.values())
    for _pass in range(_MAX_UPLOAD_PASSES):
        # The server's record of which batches it holds is the truth, on every restart.
        status = _session_status(run, session_id)
        if status.status is c.SessionStatus.COMPLETED:
            return run.journal.advance(Phase.UPLOADED)
        held = set(status.received_batches)
        missing = [seq for seq in sorted(sizes) if seq not in held]
        if not missing:
            return run.journal.advance(Phase.UPLOADED)
        done_items = sum(sizes[s][0] for s in held if s in sizes)
        done_bytes = sum(sizes[s][1] for s in held if s in sizes)
        progress = _Counter(record.item_count, bytes_total, done_items, done_bytes)
        run.hooks.progress(progress.report())

        def acknowledge(receipts: list[c.BatchReceipt], progress: _Counter = progress) -> None:
            run.journal.record_batches((r.seq, *sizes[r.seq]) for r in receipts)
            for receipt in receipts:
                progress.add(*sizes[receipt.seq])
                run.batches_uploaded += 1
            run.hooks.progress(progress.report())

        _send_batches(run, session_id, snapshot, missing, acknowledge)
    raise ProtocolError(
        f"the server acknowledged every batch of session {session_id} but its status still "
        "lists some as missing; report this to the server's operators"
    )


def _send_batches(
    run: _Run,
    session_id: str,
    snapshot: Snapshot,
    seqs: list[int],
    acknowledge: Callable[[list[c.BatchReceipt]], None],
) -> None:
    """Upload ``seqs`` with at most ``max_in_flight`` requests open, in bounded memory."""
    limit = run.options.max_in_flight
    with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="sdk-upload") as pool:
        in_flight: set[Future[c.BatchReceipt]] = set()
        try:
            for batch in snapshot.iter_batches(seqs):
                while len(in_flight) >= limit:
                    in_flight = _collect(in_flight, acknowledge, FIRST_COMPLETED)
                in_flight.add(
                    pool.submit(
                        run.transport.put_batch,
                        session_id,
                        batch.seq,
                        batch.body,
                        batch.checksum,
                        gzip=run.compress,
                    )
                )
            while in_flight:
                in_flight = _collect(in_flight, acknowledge, FIRST_COMPLETED)
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise


def _collect(
    in_flight: set[Future[c.BatchReceipt]],
    acknowledge: Callable[[list[c.BatchReceipt]], None],
    return_when: str,
) -> set[Future[c.BatchReceipt]]:
    done, pending = wait(in_flight, return_when=return_when)
    receipts: list[c.BatchReceipt] = []
    try:
        for future in done:
            try:
                receipts.append(future.result())
            except ConflictError as exc:
                if exc.code == c.ProblemCode.SESSION_EXPIRED.value:
                    raise _Restart("the session expired during the upload") from exc
                raise
    finally:
        # Batches that did land are journaled even when a sibling failed.
        if receipts:
            acknowledge(receipts)
    return set(pending)


def _resolve(run: _Run, record: JournalRecord, snapshot: Snapshot) -> JournalRecord:
    session_id = _session_id(record)
    unresolved = [x for x in run.transport.iter_conflicts(session_id) if not x.resolved]
    if unresolved:
        run.conflicts_seen = max(run.conflicts_seen, len(unresolved))
        run.hooks.emit(DataConflictDetected(session_id=session_id, count=len(unresolved)))
        run.hooks.progress(Progress(ProgressPhase.RESOLVING, 0, len(unresolved)))
        # Decided and journaled before anything is written locally or posted.
        run.journal.save_resolutions(_server_wins(conflict) for conflict in unresolved)
    decided = run.journal.resolutions()
    _apply_locally(run, snapshot, decided)
    pending = [r for r in decided if not r.posted]
    chunk = 500
    for start in range(0, len(pending), chunk):
        part = pending[start : start + chunk]
        run.transport.resolve(
            c.ResolveConflictsRequest(
                session_id=session_id,
                resolutions=[
                    c.Resolution(conflict_id=r.conflict_id, choice=r.choice, strategy=r.strategy)  # type: ignore[arg-type]
                    for r in part
                ],
            )
        )
        run.journal.mark_posted(r.conflict_id for r in part)
        run.hooks.progress(Progress(ProgressPhase.RESOLVING, start + len(part), len(pending)))
    overrides = {(r.collection, r.key): r.item for r in decided if r.choice != "local"}
    # With nothing overridden the expected state is the snapshot itself: skip a full pass.
    expected = (
        snapshot.dataset_checksum_with(overrides)  # type: ignore[arg-type]
        if overrides
        else snapshot.dataset_checksum
    )
    return run.journal.advance(Phase.RESOLVED, expected_checksum=expected)


def _server_wins(conflict: c.DataConflict) -> ResolutionRecord:
    server = conflict.server
    return ResolutionRecord(
        conflict_id=conflict.conflict_id,
        collection=conflict.collection,
        key=conflict.key,
        choice="server",
        strategy="server_wins",
        item={
            "collection": conflict.collection,
            "key": conflict.key,
            "data": server.data,
            "updatedAt": server.updated_at,
            "deleted": server.deleted,
        },
    )


def _apply_locally(run: _Run, snapshot: Snapshot, decided: Iterable[ResolutionRecord]) -> None:
    """Write the winning versions into the store, where the app has not edited them since."""
    decided = [r for r in decided if r.choice != "local"]
    if not decided:
        return
    originals = snapshot.get_items([(r.collection, r.key) for r in decided])
    pairs: list[tuple[Any, Any]] = [
        (originals[(r.collection, r.key)], r.item)
        for r in decided
        if (r.collection, r.key) in originals
    ]
    with LocalStore(run.store_path, create=False) as store:
        replaced = store.replace_if_unchanged(pairs)
    logger.info("applied %d of %d conflict resolutions to the local store", replaced, len(pairs))


def _complete(run: _Run, record: JournalRecord) -> JournalRecord:
    session_id = _session_id(record)
    run.hooks.progress(Progress(ProgressPhase.COMPLETING, 0, record.item_count))
    try:
        answer = run.transport.complete(
            session_id, c.CompleteMigrationRequest(dataset_checksum=record.dataset_checksum)
        )
    except ConflictError as exc:
        if exc.code == c.ProblemCode.CONFLICTS_UNRESOLVED.value:
            # Another device changed an item in conflict meanwhile: decide again.
            return run.journal.advance(Phase.UPLOADED)
        if exc.code == c.ProblemCode.BATCHES_MISSING.value:
            return run.journal.advance(Phase.STARTED)
        if exc.code in (c.ProblemCode.SESSION_EXPIRED.value, c.ProblemCode.INVALID_STATE.value):
            raise _Restart(f"the server cannot complete session {session_id}: {exc}") from exc
        raise
    except NotFoundError as exc:
        raise _Restart(f"the server no longer knows session {session_id}") from exc
    return run.journal.advance(Phase.COMPLETED, cloud_checksum=answer.cloud_checksum)


def _verify(run: _Run, record: JournalRecord, *, resumed: bool) -> MigrationResult:
    session_id = _session_id(record)
    run.hooks.progress(Progress(ProgressPhase.VERIFYING, 0, record.item_count))
    if record.phase is Phase.COMPLETED:
        if record.cloud_checksum is None or record.cloud_checksum != record.expected_checksum:
            raise VerificationError(
                f"the cloud's checksum of the migrated items ({record.cloud_checksum}) differs "
                f"from this device's ({record.expected_checksum}); the local store was kept "
                "as it is and not marked migrated; contact support with session "
                f"{session_id}"
            )
        with LocalStore(run.store_path, create=False) as store:
            store.mark_migrated(
                migration_id=record.migration_id,
                session_id=session_id,
                cloud_checksum=record.cloud_checksum,
            )
        record = run.journal.advance(Phase.VERIFIED)
    summary = _summary(run, session_id)
    Path(record.snapshot_path).unlink(missing_ok=True)
    run.journal.clear()
    run.hooks.progress(Progress(ProgressPhase.DONE, record.item_count, record.item_count))
    assert record.cloud_checksum is not None
    run.hooks.emit(
        MigrationCompleted(
            session_id=session_id, item_count=record.item_count, checksum=record.cloud_checksum
        )
    )
    return MigrationResult(
        outcome=MigrationOutcome.COMPLETED,
        migration_id=record.migration_id,
        session_id=session_id,
        item_count=record.item_count,
        collections=dict(summary.collections) if summary else {},
        new_items=summary.new_items if summary else None,
        unchanged_items=summary.unchanged_items if summary else None,
        conflicts=summary.conflicts if summary else run.conflicts_seen,
        resolutions_by_kind=dict(summary.resolutions_by_kind) if summary else {},
        dataset_checksum=record.dataset_checksum,
        cloud_checksum=record.cloud_checksum,
        verified=True,
        resumed=resumed,
        batches_uploaded=run.batches_uploaded,
        duration_s=time.monotonic() - run.started,
    )


def _summary(run: _Run, session_id: str) -> c.MigrationSummary | None:
    """The server's counts, for the result; a verified migration does not need them."""
    try:
        return run.transport.summary(session_id).summary
    except MigrationError as exc:
        logger.warning("migration verified, but its summary could not be fetched: %s", exc)
        return None


def _abandon(run: _Run, record: JournalRecord | None) -> None:
    """Drop a migration whose session is gone: cancel it (best effort), forget it."""
    if record is None:
        return
    if record.session_id is not None:
        try:
            run.transport.cancel(record.session_id)
        except MigrationError as exc:
            logger.info("could not cancel session %s: %s", record.session_id, exc)
    Path(record.snapshot_path).unlink(missing_ok=True)
    run.journal.clear()


def _session_id(record: JournalRecord) -> str:
    if record.session_id is None:
        raise MigrationError(f"the journal of migration {record.migration_id} has no session")
    return record.session_id


@dataclasses.dataclass
class _Counter:
    items_total: int
    bytes_total: int
    items_done: int
    bytes_done: int

    def add(self, items: int, size: int) -> None:
        self.items_done += items
        self.bytes_done += size

    def report(self) -> Progress:
        return Progress(
            ProgressPhase.UPLOADING,
            self.items_done,
            self.items_total,
            self.bytes_done,
            self.bytes_total,
        )
