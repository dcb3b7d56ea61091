"""The migration itself: detect, snapshot, start, upload, resolve, complete, verify.

A migration is a small state machine over the journal's phases. Every step first
writes what it is about to do to the journal, and every server call it makes is
idempotent, so the whole function can be killed anywhere and simply called again: it
reads the journal, asks the server for the truth (``status``) and carries on.

Use it through :class:`sdk.MigrationClient` (or :func:`sdk.migrate`); this module is
the engine behind them. The conflict phase is :mod:`sdk._migration.resolving`; what the steps
share (the run's state, starting over, stopping) is :mod:`sdk._migration.run`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from .._conflicts.policy import ClockEstimate, FlaggedItem
from .._errors import (
    ConflictError,
    MigrationBlockedError,
    MigrationError,
    NotFoundError,
    ProtocolError,
    SnapshotError,
    VerificationError,
)
from .._events import (
    Hooks,
    LocalDataDetected,
    MigrationCompleted,
    MigrationStarted,
    Progress,
    ProgressPhase,
)
from .._failpoints import configure_from_env, failpoint
from .._stopping import Stopped
from .._store import changes
from .._store.detect import LocalState, check_local, detect_local
from .._store.local import LocalStore, MigratedSync
from .._store.schema import connect_read_only
from .._store.snapshot import Snapshot, open_snapshot, take_snapshot
from .._sync.attachments import upload_referenced
from .._sync.run import SyncResult
from .._transport.http import Transport
from .._wire import models as c
from .._wire.canonical import ProblemCode, SessionStatus
from .committing import await_commit
from .journal import (
    Journal,
    JournalRecord,
    Phase,
)
from .options import MigrationOptions
from .resolving import resolve_conflicts
from .run import Restart, Run, poll_status, session_id_of, session_status

__all__ = ["MigrationOutcome", "MigrationResult", "run_migration"]

logger = logging.getLogger(__name__)

#: How many times one call starts over with a fresh snapshot when the server session
#: is gone (expired, cancelled elsewhere, failed) before it gives up.
_MAX_RESTARTS = 2
#: How many upload passes one call makes before the server's status must show every
#: batch (a batch acknowledged but then not listed means the server lost it).
_MAX_UPLOAD_PASSES = 3
#: How many rounds of "complete → cloud changed → resolve again" one call accepts.
_MAX_RESOLVE_ROUNDS = 3
#: How long one call waits for a server that processes batches asynchronously (its
#: status says ``processing``) before it gives up; the next call resumes the wait.
_PROCESSING_TIMEOUT = 600.0


class MigrationOutcome(str, enum.Enum):
    """How a call to migrate ended without an error.

    ``STOPPED``: the caller's stop event was set; the migration paused at a safe point
    and the next call resumes it.

    >>> MigrationOutcome.COMPLETED.value
    'completed'
    """

    COMPLETED = "completed"
    NOTHING_TO_MIGRATE = "nothing_to_migrate"
    ALREADY_MIGRATED = "already_migrated"
    STOPPED = "stopped"
    #: Conflicts wait for the app (``manual`` or deferred): list them with
    #: ``pending_conflicts()``, decide with ``resolve_conflict()``, then migrate again.
    AWAITING_RESOLUTION = "awaiting_resolution"


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
    #: Conflicts waiting for the app (``AWAITING_RESOLUTION``).
    pending_conflicts: int = 0
    #: Items ``newest_wins`` could not order with confidence, decided by the fallback.
    flagged: list[FlaggedItem] = dataclasses.field(default_factory=list)
    #: The sync that ended the migration: it pushed what the app wrote meanwhile and
    #: pulled what other devices hold (``None`` when the server offers no sync).
    sync: SyncResult | None = None


def run_migration(
    *,
    store_path: Path,
    transport: Transport,
    journal: Journal,
    options: MigrationOptions,
    cache_dir: Path,
    hooks: Hooks,
    stop: threading.Event | None = None,
) -> MigrationResult:
    """Run (or resume) the migration of the store at ``store_path`` to the end.

    When ``stop`` is set (from any thread) the run leaves at the next safe point (between
    batches or steps) and returns a ``STOPPED`` result; the next call resumes it.
    """
    configure_from_env()  # tests crash child processes at named steps (no-op when unset)
    run = Run(store_path, transport, journal, options, cache_dir, hooks, stop=stop)
    try:
        return _run(run)
    except Stopped:
        record = journal.load()
        logger.info("migration stopped at a safe point; the next call resumes it")
        return MigrationResult(
            outcome=MigrationOutcome.STOPPED,
            migration_id=record.migration_id if record else None,
            session_id=record.session_id if record else None,
            item_count=record.item_count if record else 0,
            resumed=record is not None,
            batches_uploaded=run.batches_uploaded,
            duration_s=time.monotonic() - run.started,
        )


def _run(run: Run) -> MigrationResult:
    journal = run.journal
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
        except Restart as why:
            logger.warning("starting the migration over: %s", why)
            # The journal's record, not ours: _drive may have journaled a session since.
            _abandon(run, journal.load() or record)
            record = None
    raise MigrationError(
        "the server discarded the migration session several times in a row; "
        "check the server's session TTL and try again later"
    )


# --------------------------------------------------------------------------- phases


def _prepare(run: Run) -> JournalRecord | MigrationResult:
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
    # Resolved conflicts and the migrated mark are written back at the end: a store that
    # cannot even be opened for that is refused now, before anything is uploaded.
    LocalStore(run.store_path, create=False).close()
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
    run.clock = _measured(run, server.server_time)
    run.check_stop()
    migration_id = uuid.uuid4().hex
    prefix = _snapshot_prefix(run.store_path)
    _drop_stale_snapshots(run.cache_dir, prefix)
    run.hooks.progress(Progress(ProgressPhase.SNAPSHOTTING, 0, local.item_count))
    snapshot = take_snapshot(
        run.store_path,
        run.cache_dir,
        batch_size=min(run.options.batch_size, server.limits.max_batch_items),
        max_batch_bytes=server.limits.max_batch_bytes,
        batch_bytes=run.options.batch_bytes,
        name=f"{prefix}-{migration_id}",
        # Each item is checked once, when its batch is built to be sent (see _upload).
        trust_digests=not run.check_every_item,
    )
    failpoint("snapshot.taken")
    run.hooks.progress(
        Progress(ProgressPhase.SNAPSHOTTING, snapshot.item_count, snapshot.item_count)
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
            collections=dict(snapshot.collections),
        )
    return run.journal.create(record)


def _drive(run: Run, record: JournalRecord, *, resumed: bool) -> MigrationResult:
    snapshot: Snapshot | None = None
    try:
        if record.phase < Phase.COMPLETED:
            snapshot = _open_snapshot(run, record)
        if record.phase is Phase.PREPARED:
            assert snapshot is not None
            record = _start(run, record, snapshot, resumed=resumed)
        for _round in range(_MAX_RESOLVE_ROUNDS):
            run.check_stop()
            if record.phase is Phase.STARTED:
                assert snapshot is not None
                record = _upload(run, record, snapshot)
            if record.phase is Phase.UPLOADED:
                assert snapshot is not None
                record = resolve_conflicts(run, record, snapshot)
                if record.phase is Phase.UPLOADED:  # conflicts wait for the app
                    return _awaiting(run, record, resumed=resumed)
            if record.phase is Phase.RESOLVED:
                run.check_stop()
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


def _open_snapshot(run: Run, record: JournalRecord) -> Snapshot:
    try:
        snapshot = open_snapshot(Path(record.snapshot_path))
    except SnapshotError as exc:
        raise Restart(f"the snapshot is gone or damaged ({exc})") from exc
    if snapshot.dataset_checksum != record.dataset_checksum:
        snapshot.close()
        raise Restart("the snapshot on disk is not the one this migration started with")
    return snapshot


def _start(run: Run, record: JournalRecord, snapshot: Snapshot, *, resumed: bool) -> JournalRecord:
    run.hooks.progress(Progress(ProgressPhase.STARTING, 0, record.item_count))
    request = c.StartMigrationRequest(
        migration_id=record.migration_id,
        device_id=record.device_id,
        data_version=snapshot.data_version,
        config=c.MigrationConfig(compression="gzip" if run.compress else "identity"),
        manifest=snapshot.manifest(),
    )
    failpoint("start.before")
    try:
        answer = run.transport.start(request)
    except ConflictError as exc:
        raise MigrationBlockedError(
            f"the server refused to start this migration: {exc}", reason=exc.code
        ) from exc
    failpoint("start.sent")
    run.clock = _measured(run, answer.server_time)
    record = run.journal.advance(
        Phase.STARTED, session_id=answer.session_id, **_clock_fields(run.clock)
    )
    run.hooks.emit(
        MigrationStarted(
            migration_id=record.migration_id,
            session_id=answer.session_id,
            item_count=record.item_count,
            resumed=resumed,
        )
    )
    run.hooks.progress(Progress(ProgressPhase.STARTING, record.item_count, record.item_count))
    return record


def _upload(run: Run, record: JournalRecord, snapshot: Snapshot) -> JournalRecord:
    session_id = session_id_of(record)
    sizes = {seq: (items, size) for seq, items, size in snapshot.batch_sizes()}
    bytes_total = sum(size for _items, size in sizes.values())
    for _pass in range(_MAX_UPLOAD_PASSES):
        # The server's record of which batches it holds is the truth, on every restart.
        status = session_status(run, session_id)
        if status.status is SessionStatus.COMPLETED:
            return run.journal.advance(Phase.UPLOADED)
        held = set(status.received_batches)
        missing = [seq for seq in sorted(sizes) if seq not in held]
        if not missing and status.status is SessionStatus.PROCESSING:
            # Held, not processed yet: conflicts are known once they are. A batch the
            # server then fails to process is no longer held, and is sent again.
            status = _await_processing(run, session_id)
            held = set(status.received_batches)
            missing = [seq for seq in sorted(sizes) if seq not in held]
        if not missing:
            return run.journal.advance(Phase.UPLOADED)
        done_items = sum(sizes[s][0] for s in held if s in sizes)
        done_bytes = sum(sizes[s][1] for s in held if s in sizes)
        progress = _Counter(record.item_count, bytes_total, done_items, done_bytes)
        run.hooks.progress(progress.report())

        def acknowledge(receipts: list[c.BatchReceipt], progress: _Counter = progress) -> None:
            failpoint("batch.answered")
            run.journal.record_batches((r.seq, *sizes[r.seq]) for r in receipts)
            for receipt in receipts:
                progress.add(*sizes[receipt.seq])
                run.batches_uploaded += 1
            run.hooks.progress(progress.report())

        try:
            _send_batches(run, session_id, snapshot, missing, acknowledge)
        except SnapshotError as exc:
            if not snapshot.trusts_store_digests:
                raise
            # Nothing of the batch was sent. The store holds an item unlike its digest
            # (written around the SDK, digest included, or damaged): a snapshot that
            # checks every item reads it as it is.
            run.check_every_item = True
            raise Restart(f"{exc}; taking a snapshot that checks every item") from exc
    raise ProtocolError(
        f"the server acknowledged every batch of session {session_id} but its status still "
        "lists some as missing; report this to the server's operators"
        + (f" (it says: {'; '.join(status.errors)})" if status.errors else "")
    )


def _await_processing(run: Run, session_id: str) -> c.GetMigrationStatusResponse:
    """Poll ``status`` (backing off to 2 s) while the server says ``processing``."""
    return poll_status(
        run,
        session_id,
        while_state=SessionStatus.PROCESSING,
        doing="processing the batches of",
        timeout=_PROCESSING_TIMEOUT,
    )


def _send_batches(
    run: Run,
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
                if run.stop is not None and run.stop.is_set():
                    break  # let the batches in flight land (and be journaled), then stop
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
            run.check_stop()
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
                if exc.code == ProblemCode.SESSION_EXPIRED.value:
                    raise Restart("the session expired during the upload") from exc
                raise
    finally:
        # Batches that did land are journaled even when a sibling failed.
        if receipts:
            acknowledge(receipts)
    return set(pending)


def _awaiting(run: Run, record: JournalRecord, *, resumed: bool) -> MigrationResult:
    """The result while conflicts wait for the app; the next call continues from here."""
    waiting = sum(1 for p in run.journal.pending() if p.choice is None)
    decided = run.journal.resolutions()
    kinds: dict[str, int] = {}
    for r in decided:
        kinds[r.strategy] = kinds.get(r.strategy, 0) + 1
    run.hooks.progress(Progress(ProgressPhase.RESOLVING, len(decided), len(decided) + waiting))
    return MigrationResult(
        outcome=MigrationOutcome.AWAITING_RESOLUTION,
        migration_id=record.migration_id,
        session_id=record.session_id,
        item_count=record.item_count,
        collections=dict(record.collections),
        conflicts=run.conflicts_seen,
        resolutions_by_kind=dict(sorted(kinds.items())),
        dataset_checksum=record.dataset_checksum,
        resumed=resumed,
        batches_uploaded=run.batches_uploaded,
        duration_s=time.monotonic() - run.started,
        pending_conflicts=waiting,
        flagged=_flagged(run.journal),
    )


def _measured(run: Run, server_time: int) -> ClockEstimate | None:
    """The clock offset from the last round trip, if it beats the one known so far."""
    measured = ClockEstimate.measure(run.transport.last_exchange, server_time)
    return run.clock if measured is None else measured.better(run.clock)


def _clock_fields(clock: ClockEstimate | None) -> dict[str, Any]:
    if clock is None:
        return {}
    return {"clock_offset_ms": clock.offset_ms, "clock_uncertainty_ms": clock.uncertainty_ms}


def _flagged(journal: Journal) -> list[FlaggedItem]:
    return [FlaggedItem(**flag) for flag in journal.flags()]


def _complete(run: Run, record: JournalRecord) -> JournalRecord:
    session_id = session_id_of(record)
    run.hooks.progress(Progress(ProgressPhase.COMPLETING, 0, record.item_count))
    upload_referenced(
        run.transport,
        Path(record.snapshot_path),
        progress=run.hooks.progress,
        content_from=run.store_path,
    )
    failpoint("complete.before")
    request = c.CompleteMigrationRequest(dataset_checksum=record.dataset_checksum)
    try:
        answer = run.transport.complete(session_id, request)
        answer = await_commit(run, session_id, answer, request, record.item_count)
    except ConflictError as exc:
        if exc.code == ProblemCode.CONFLICTS_UNRESOLVED.value:
            # Another device changed an item in conflict meanwhile: decide again.
            return run.journal.advance(Phase.UPLOADED)
        if exc.code == ProblemCode.BATCHES_MISSING.value:
            return run.journal.advance(Phase.STARTED)
        if exc.code in (ProblemCode.SESSION_EXPIRED.value, ProblemCode.INVALID_STATE.value):
            raise Restart(f"the server cannot complete session {session_id}: {exc}") from exc
        raise
    except NotFoundError as exc:
        raise Restart(f"the server no longer knows session {session_id}") from exc
    failpoint("complete.after")
    completion: dict[str, Any] | None = None
    if answer.new_items is not None:
        completion = {
            "new_items": answer.new_items,
            "unchanged_items": answer.unchanged_items,
            "conflicts": answer.conflicts,
            "resolutions_by_kind": answer.resolutions_by_kind,
        }
    if answer.sync_seq is not None:
        completion = {
            **(completion or {}),
            "sync_seq": answer.sync_seq,
            "sync_prior_seq": answer.sync_prior_seq or 0,
        }
    record = run.journal.advance(
        Phase.COMPLETED, cloud_checksum=answer.cloud_checksum, completion=completion
    )
    run.hooks.progress(Progress(ProgressPhase.COMPLETING, record.item_count, record.item_count))
    return record


def _verify(run: Run, record: JournalRecord, *, resumed: bool) -> MigrationResult:
    session_id = session_id_of(record)
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
                sync=_migrated_sync(record, run.transport.user_id),
            )
        record = run.journal.advance(Phase.VERIFIED)
    failpoint("cleanup.before")
    # The commit's own counts; the summary (a second full pass on the server) only when
    # the server did not send them.
    summary = (
        None
        if record.completion and "new_items" in record.completion
        else _summary(run, session_id)
    )
    flagged = _flagged(run.journal)
    Path(record.snapshot_path).unlink(missing_ok=True)
    run.journal.clear()
    run.hooks.progress(Progress(ProgressPhase.VERIFYING, record.item_count, record.item_count))
    if (record.completion or {}).get("sync_seq") is None:
        # With a sync to follow (the store now keeps in step), the call is done when the
        # sync is: its DONE ends the bar, and the overall fraction stays one call's.
        run.hooks.progress(Progress(ProgressPhase.DONE, record.item_count, record.item_count))
    assert record.cloud_checksum is not None
    run.hooks.emit(
        MigrationCompleted(
            session_id=session_id, item_count=record.item_count, checksum=record.cloud_checksum
        )
    )
    has_counts = record.completion is not None and "new_items" in record.completion
    counts: dict[str, Any] = (
        record.completion
        if has_counts and record.completion is not None
        else (dataclasses.asdict(summary) if summary else {"conflicts": run.conflicts_seen})
    )
    return MigrationResult(
        outcome=MigrationOutcome.COMPLETED,
        migration_id=record.migration_id,
        session_id=session_id,
        item_count=record.item_count,
        collections=dict(record.collections),
        new_items=counts.get("new_items"),
        unchanged_items=counts.get("unchanged_items"),
        conflicts=counts.get("conflicts") or 0,
        resolutions_by_kind=dict(counts.get("resolutions_by_kind") or {}),
        dataset_checksum=record.dataset_checksum,
        cloud_checksum=record.cloud_checksum,
        verified=True,
        resumed=resumed,
        batches_uploaded=run.batches_uploaded,
        duration_s=time.monotonic() - run.started,
        flagged=flagged,
    )


def _migrated_sync(record: JournalRecord, user_id: str) -> MigratedSync | None:
    """Where the sync continues, from what the commit said (``None``: a server without
    sync) and what the snapshot held."""
    completion = record.completion or {}
    if completion.get("sync_seq") is None:
        return None
    path = Path(record.snapshot_path)
    try:
        conn = connect_read_only(path)
        try:
            row = conn.execute(
                "SELECT value FROM store_meta WHERE key = 'change_counter'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        row = None
    if row is None:
        # The snapshot is gone (a crash after it was deleted cannot happen before this
        # point, but a cleaned cache can): nothing may be taken as pushed, so every row
        # stays pending and the first sync sends it; the cloud answers "unchanged".
        return MigratedSync(
            seq=int(completion["sync_seq"]),
            prior_seq=int(completion.get("sync_prior_seq") or 0),
            snapshot_counter=0,
            in_snapshot=lambda keys: set(),
            user_id=user_id,
        )

    def in_snapshot(keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        conn = connect_read_only(path)
        try:
            return {(c_, k) for c_, k in changes.keyed_rows(conn, keys)}
        finally:
            conn.close()

    return MigratedSync(
        seq=int(completion["sync_seq"]),
        prior_seq=int(completion.get("sync_prior_seq") or 0),
        snapshot_counter=int(row[0]),
        in_snapshot=in_snapshot,
        user_id=user_id,
    )


def _summary(run: Run, session_id: str) -> c.MigrationSummary | None:
    """The server's counts, for the result; a verified migration does not need them."""
    try:
        return run.transport.summary(session_id).summary
    except MigrationError as exc:
        logger.warning("migration verified, but its summary could not be fetched: %s", exc)
        return None


def _snapshot_prefix(store_path: Path) -> str:
    """How this store's snapshots are named: stores of one app share the cache folder."""
    return "s" + hashlib.sha256(str(store_path.resolve()).encode()).hexdigest()[:16]


def _drop_stale_snapshots(cache_dir: Path, prefix: str) -> None:
    """Delete this store's snapshot files that no journal names: a process killed while
    it took a snapshot, or before it journaled it, leaves one (or a ``.partial``) behind.
    Called with an empty journal and the store's migration lock held, so none is in use."""
    if not cache_dir.is_dir():
        return
    for path in cache_dir.glob(f"{prefix}-*"):
        logger.info("removing the unfinished snapshot %s", path)
        path.unlink(missing_ok=True)


def _abandon(run: Run, record: JournalRecord | None) -> None:
    """Drop a migration whose session is gone: cancel it (best effort), forget it."""
    if record is None:
        return
    if record.session_id is not None:
        try:
            run.transport.cancel(record.session_id)
        except MigrationError as exc:
            logger.info("could not cancel session %s: %s", record.session_id, exc)
    Path(record.snapshot_path).unlink(missing_ok=True)
    run.journal.clear(keep_decisions=True)


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
