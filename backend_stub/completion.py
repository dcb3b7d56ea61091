"""Completion: check, apply to the cloud in one transaction, verify, summarise.

``complete`` walks the staged items once, in (collection, key) order, inside one
transaction: it recomputes the dataset checksum, checks that no cloud item changed since
it was staged, writes the new cloud versions and computes the cloud checksum over the
migrated keys. Anything wrong rolls the whole walk back, so a reader never sees half a
migration::

    >>> _Drifted([]).items
    []
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
from collections import Counter

from backend_stub.batches import new_conflict
from backend_stub.events import Event, EventType
from backend_stub.items import cloud_item
from backend_stub.problems import ApiError
from backend_stub.service import ensure_open, load_session, retrying, touch
from backend_stub.settings import Settings
from backend_stub.storage import (
    CloudItem,
    Conflict,
    Key,
    Session,
    StagedItem,
    Storage,
    VersionConflict,
    iter_conflicts,
    iter_staged,
)
from sdk.contract import (
    CompleteMigrationRequest,
    CompleteMigrationResponse,
    Item,
    ProblemCode,
    SessionStatus,
)

__all__ = ["complete_migration"]

logger = logging.getLogger(__name__)


class _ChecksumFailed(Exception):
    def __init__(self, actual: str, count: int) -> None:
        super().__init__(actual)
        self.actual = actual
        self.count = count


class _Drifted(Exception):
    def __init__(self, items: list[tuple[StagedItem, CloudItem | None]]) -> None:
        super().__init__(f"{len(items)} cloud item(s) changed")
        self.items = items


def complete_migration(
    storage: Storage,
    settings: Settings,
    user_id: str,
    session_id: str,
    request: CompleteMigrationRequest,
    *,
    now: int,
) -> CompleteMigrationResponse:
    """``POST .../complete``: apply the migration; a replay answers the stored result.

    >>> from backend_stub.start import start_migration
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> from sdk.contract import Manifest, StartMigrationRequest, batch_body, canonical_item
    >>> from sdk.contract import dataset_checksum_of
    >>> item = {"collection": "c", "key": "k", "data": {}, "updatedAt": 1, "deleted": False}
    >>> body = batch_body([canonical_item(item)])
    >>> checksum = dataset_checksum_of([item])
    >>> manifest = Manifest(item_count=1, collections={"c": 1}, batch_size=1, batch_count=1,
    ...                     dataset_checksum=checksum)
    >>> storage, settings = SQLiteStorage.in_memory(), Settings()
    >>> sid = start_migration(storage, settings, "alice", StartMigrationRequest(
    ...     migration_id="mig-example-1", device_id="d1", data_version=1, manifest=manifest),
    ...     now=0).session_id
    >>> from backend_stub.batches import put_batch
    >>> from backend_stub.bodies import Upload
    >>> from sdk.contract import batch_checksum
    >>> _ = put_batch(storage, settings, "alice", sid, 0, Upload(body, batch_checksum(body)),
    ...               now=1)
    >>> done = complete_migration(storage, settings, "alice", sid,
    ...                           CompleteMigrationRequest(dataset_checksum=checksum), now=2)
    >>> done.status.value, done.cloud_checksum == checksum
    ('completed', True)
    >>> from backend_stub.summary import get_summary
    >>> get_summary(storage, "alice", None, now=3).summary.verified
    True
    >>> storage.close()
    """

    def attempt() -> CompleteMigrationResponse:
        session = load_session(storage, user_id, session_id)
        if session.status is SessionStatus.COMPLETED and session.result is not None:
            if request.dataset_checksum != session.result.dataset_checksum:
                raise _checksum_mismatch("this migration completed with another dataset checksum")
            return session.result
        ensure_open(session, now)
        _ensure_complete(storage, session)
        if request.dataset_checksum != session.manifest.dataset_checksum:
            raise _checksum_mismatch(
                "the checksum differs from the manifest's: confirm with the checksum of the"
                " snapshot that was uploaded"
            )
        try:
            return _commit(storage, session, now)
        except _ChecksumFailed as failed:
            _fail(storage, session, failed, now)
            raise _checksum_mismatch(
                "the uploaded items do not add up to the manifest's dataset checksum, so the"
                " migration failed: take a new snapshot and start a new migration"
            ) from None
        except _Drifted as drifted:
            unresolved = _refresh(storage, settings, session, drifted.items, now)
            if unresolved:
                raise ApiError(
                    409,
                    ProblemCode.CONFLICTS_UNRESOLVED,
                    f"the cloud changed while migrating: {unresolved} conflict(s) to resolve"
                    " before completing",
                    extra={"unresolvedConflicts": unresolved},
                ) from None
            # Only reclassified items, no conflict: commit again from a fresh read.
            raise VersionConflict(session.id) from None

    return retrying(attempt)


def _ensure_complete(storage: Storage, session: Session) -> None:
    if not session.all_batches_held:
        held = set(storage.received_batches(session.id))
        count = session.manifest.batch_count - len(held)
        if count <= 0:
            # Every batch is held, some not processed yet (a backend that queues them).
            pending = storage.backlog(session.id).pending
            raise ApiError(
                409,
                ProblemCode.BATCHES_MISSING,
                f"{len(pending)} batch(es) are still being processed: poll GET /status until"
                " processedBatches equals batchCount, then complete",
                extra={"missingBatches": [], "pendingBatches": pending[:100]},
            )
        # The first hundred are enough to act on; the plan may hold millions.
        missing = list(
            itertools.islice((s for s in range(session.manifest.batch_count) if s not in held), 100)
        )
        raise ApiError(
            409,
            ProblemCode.BATCHES_MISSING,
            f"{count} batch(es) still missing, first {missing[0]}: upload them first",
            extra={"missingBatches": missing},
        )
    _, unresolved = storage.conflict_counts(session.id)
    if unresolved:
        raise ApiError(
            409,
            ProblemCode.CONFLICTS_UNRESOLVED,
            f"{unresolved} conflict(s) unresolved: resolve them before completing",
            extra={"unresolvedConflicts": unresolved},
        )


def _checksum_mismatch(detail: str) -> ApiError:
    return ApiError(409, ProblemCode.CHECKSUM_MISMATCH, detail)


@dataclasses.dataclass
class _Walk:
    """What one pass over the staged items found, in (collection, key) order."""

    count: int = 0
    applied: int = 0  # cloud items written during the walk (conflicts decided local/merged)
    outcomes: Counter[str] = dataclasses.field(default_factory=Counter)
    staged_hash: hashlib._Hash = dataclasses.field(default_factory=hashlib.sha256)
    cloud_hash: hashlib._Hash = dataclasses.field(default_factory=hashlib.sha256)
    drifted: list[tuple[StagedItem, CloudItem | None]] = dataclasses.field(default_factory=list)


def _commit(storage: Storage, session: Session, now: int) -> CompleteMigrationResponse:
    decisions = {(c.collection, c.key): c for c in iter_conflicts(storage, session.id)}
    with storage.atomic():
        prior = storage.sync_head(session.user_id).seq if storage.supports_sync else None
        walk = None if decisions else _walk_digests(storage, session)
        if walk is None:
            walk = _walk_items(storage, session, decisions, now)
        count, applied, outcomes = walk.count, walk.applied, walk.outcomes
        dataset = walk.staged_hash.hexdigest()
        if count != session.manifest.item_count or dataset != session.manifest.dataset_checksum:
            raise _ChecksumFailed(dataset, count)
        if walk.drifted:
            raise _Drifted(walk.drifted)
        # New items are the bulk of a first migration: the backend copies them from the
        # staged rows itself (one statement on SQLite) instead of item by item here.
        copied = storage.put_new_staged_items(
            session.id, session.user_id, device_id=session.device_id, now=now
        )
        if copied != outcomes["new"]:  # the session's lock makes this impossible
            raise VersionConflict(session.id)
        applied += copied
        head = storage.sync_head(session.user_id).seq if storage.supports_sync else None
        result = CompleteMigrationResponse(
            session_id=session.id,
            status=SessionStatus.COMPLETED,
            item_count=count,
            applied_count=applied,
            dataset_checksum=dataset,
            cloud_checksum=walk.cloud_hash.hexdigest(),
            completed_at=now,
            new_items=outcomes["new"],
            unchanged_items=outcomes["unchanged"],
            conflicts=count - outcomes["new"] - outcomes["unchanged"],
            resolutions_by_kind=dict(
                Counter(c.strategy or c.choice or "unknown" for c in decisions.values())
            ),
            sync_seq=head,
            sync_prior_seq=prior,
        )
        storage.update_session(
            dataclasses.replace(
                session,
                status=SessionStatus.COMPLETED,
                completed_at=now,
                updated_at=now,
                result=result,
            )
        )
        storage.record_event(
            Event.new(
                EventType.MIGRATION_COMPLETED,
                user_id=session.user_id,
                session_id=session.id,
                detail={
                    "itemCount": count,
                    "appliedCount": applied,
                    "datasetChecksum": dataset,
                    "cloudChecksum": result.cloud_checksum,
                },
                now=now,
            )
        )
    logger.info("session %s completed: %d items, %d written", session.id, count, applied)
    return result


def _walk_digests(storage: Storage, session: Session) -> _Walk | None:
    """The walk of a session without conflicts, from the backend's tally (the common
    case: a first migration). Every item is new or unchanged, so the cloud ends up
    holding exactly the staged digests. ``None`` when an item drifted since it was
    staged (or is a conflict after all): the full walk then deals with it."""
    tally = storage.tally_staged(session.id, session.user_id)
    if tally is None:
        return None
    walk = _Walk(staged_hash=tally.digests, outcomes=tally.outcomes)
    walk.count = sum(tally.outcomes.values())
    walk.cloud_hash = walk.staged_hash.copy()
    return walk


def _walk_items(
    storage: Storage, session: Session, decisions: dict[Key, Conflict], now: int
) -> _Walk:
    """The full walk: every staged item against the cloud's, conflicts decided by the
    device written as it goes (rolled back with the transaction if anything is wrong)."""
    walk = _Walk()
    for page in iter_staged(storage, session.id):
        cloud = storage.cloud_items(session.user_id, [(s.collection, s.key) for s in page])
        writes: list[CloudItem] = []
        for staged in page:
            walk.count += 1
            walk.outcomes[staged.outcome] += 1
            walk.staged_hash.update(staged.digest)
            key = (staged.collection, staged.key)
            current = cloud.get(key)
            if (current.version if current else None) != staged.cloud_version:
                walk.drifted.append((staged, current))
                continue
            if staged.outcome == "new":  # copied all at once after the walk
                walk.cloud_hash.update(staged.digest)
                continue
            target, digest = _target(staged, current, decisions.get(key), session.device_id)
            walk.cloud_hash.update(digest)
            if target is not None:
                writes.append(target)
        if writes and not walk.drifted:
            storage.put_cloud_items(session.user_id, writes, now)
            walk.applied += len(writes)
    return walk


def _target(
    staged: StagedItem, current: CloudItem | None, conflict: Conflict | None, device_id: str
) -> tuple[CloudItem | None, bytes]:
    """What to write for one staged item (``None``: keep the cloud's) and the digest the
    cloud then holds for it."""
    if staged.outcome == "unchanged":
        return None, staged.digest
    assert current is not None
    if conflict is None or not conflict.resolved:
        # Resolutions changed after they were read; the session version check would
        # refuse this commit anyway, so give up early and retry from fresh reads.
        raise VersionConflict(staged.key)
    if conflict.choice == "server":
        return None, current.digest()
    if conflict.choice == "local":
        return staged.as_cloud(version=current.version + 1, device_id=device_id), staged.digest
    assert conflict.merged is not None
    merged = cloud_item(
        Item(
            collection=staged.collection,
            key=staged.key,
            data=conflict.merged.data,
            updatedAt=conflict.merged.updated_at,
            deleted=conflict.merged.deleted,
        ),
        version=current.version + 1,
        device_id=device_id,
    )
    return merged, merged.digest()


def _fail(storage: Storage, session: Session, failed: _ChecksumFailed, now: int) -> None:
    reason = "dataset checksum mismatch: the uploaded items differ from the manifest"
    with storage.atomic():
        storage.update_session(
            dataclasses.replace(session, status=SessionStatus.FAILED, error=reason, updated_at=now)
        )
        storage.record_event(
            Event.new(
                EventType.MIGRATION_FAILED,
                user_id=session.user_id,
                session_id=session.id,
                detail={
                    "reason": reason,
                    "expectedChecksum": session.manifest.dataset_checksum,
                    "actualChecksum": failed.actual,
                    "expectedItems": session.manifest.item_count,
                    "actualItems": failed.count,
                },
                now=now,
            )
        )
    logger.warning("session %s failed: %s", session.id, reason)


def _refresh(
    storage: Storage,
    settings: Settings,
    session: Session,
    drifted: list[tuple[StagedItem, CloudItem | None]],
    now: int,
) -> int:
    """Reclassify items whose cloud version changed since staging; returns unresolved."""
    existing: dict[Key, Conflict] = {
        (c.collection, c.key): c for c in iter_conflicts(storage, session.id)
    }
    refreshed: list[Conflict] = []
    with storage.atomic():
        for staged, current in drifted:
            key = (staged.collection, staged.key)
            old = existing.get(key)
            if current is None or current.digest() == staged.digest:
                outcome = "new" if current is None else "unchanged"
                storage.set_staged_outcome(
                    session.id, key, outcome, None if current is None else current.version
                )
                if old is not None:
                    storage.delete_conflict(old.id)
                continue
            storage.set_staged_outcome(session.id, key, "conflict", current.version)
            refreshed.append(
                new_conflict(
                    session.id, staged.wire(), current, conflict_id=old.id if old else None
                )
            )
        storage.save_conflicts(refreshed)
        _, unresolved = storage.conflict_counts(session.id)
        announce = bool(refreshed) and not session.conflicts_announced
        if announce:
            storage.record_event(
                Event.new(
                    EventType.DATA_CONFLICT_DETECTED,
                    user_id=session.user_id,
                    session_id=session.id,
                    detail={"conflictCount": len(refreshed), "atCompletion": True},
                    now=now,
                )
            )
        storage.update_session(
            touch(
                session,
                settings,
                now,
                status=SessionStatus.AWAITING_RESOLUTION if unresolved else SessionStatus.READY,
                conflicts_announced=session.conflicts_announced or announce,
            )
        )
    logger.info("session %s: %d cloud item(s) changed since staging", session.id, len(drifted))
    return unresolved
