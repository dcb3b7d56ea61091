"""Admission: can this device migrate now (``detect``), and opening its session (``start``).

``start`` is idempotent on the client's migration id: the same id returns the same
session, whatever its state; a user has at most one open session; a device that
completed a migration cannot start another::

    >>> from contextlib import closing
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> with closing(SQLiteStorage.in_memory()) as storage:
    ...     found = detect(storage, Settings(), "alice", has_local_data=False, item_count=0,
    ...                    data_version=None, device_id=None, now=0)
    >>> found.can_migrate, "gzip" in found.capabilities
    (True, True)
"""

from __future__ import annotations

import logging
import re
import uuid

from backend_stub.events import Event, EventType
from backend_stub.problems import ApiError
from backend_stub.service import retrying
from backend_stub.settings import Settings
from backend_stub.storage import Session, Storage, VersionConflict
from sdk.contract import (
    NAME_PATTERN,
    DetectMigrationResponse,
    Limits,
    Manifest,
    ProblemCode,
    SessionStatus,
    StartMigrationRequest,
    StartMigrationResponse,
)

__all__ = ["CAPABILITIES", "EMPTY_START", "detect", "start_migration"]

logger = logging.getLogger(__name__)

#: What this server can do beyond the basics, reported by ``GET /detect``.
CAPABILITIES = (
    "gzip",
    "parallel-batches",
    "resumable",
    "conflict-resolution",
    "merged-resolution",
    "plan",
    "sync",
    "blobs",
)

#: A start request for an empty store (documentation examples use it).
EMPTY_START = StartMigrationRequest(
    migration_id="mig-example-0001",
    device_id="device-1",
    data_version=1,
    manifest=Manifest(
        item_count=0, collections={}, batch_size=1, batch_count=0, dataset_checksum="0" * 64
    ),
)

_NAME = re.compile(NAME_PATTERN)


def detect(
    storage: Storage,
    settings: Settings,
    user_id: str,
    *,
    has_local_data: bool,
    item_count: int,
    data_version: int | None,
    device_id: str | None,
    now: int,
) -> DetectMigrationResponse:
    """``GET /detect``: can this device migrate now? Publishes ``LocalDataDetected``.

    >>> from contextlib import closing
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> with closing(SQLiteStorage.in_memory()) as storage:
    ...     found = detect(storage, Settings(), "alice", has_local_data=True, item_count=3,
    ...                    data_version=2, device_id="d1", now=0)
    ...     published = [e.type.value for e in storage.events()]
    >>> found.can_migrate, published
    (False, ['LocalDataDetected'])
    >>> found.reason
    'data version 2 is not supported (supported: 1): update the app before migrating'
    """
    active = storage.active_session(user_id, now)
    already = device_id is not None and storage.has_completed(user_id, device_id)
    reason = None
    if data_version is not None and data_version not in settings.supported_data_versions:
        reason = (
            f"data version {data_version} is not supported (supported:"
            f" {_versions(settings)}): update the app before migrating"
        )
    elif already:
        reason = "this device already migrated its data to this account"
    if has_local_data:
        with storage.atomic():
            storage.record_event(
                Event.new(
                    EventType.LOCAL_DATA_DETECTED,
                    user_id=user_id,
                    session_id=active.id if active else None,
                    detail={
                        "itemCount": item_count,
                        "dataVersion": data_version,
                        "deviceId": device_id,
                    },
                    now=now,
                )
            )
    return DetectMigrationResponse(
        has_local_data=has_local_data,
        item_count=item_count,
        data_version=data_version,
        can_migrate=reason is None,
        reason=reason,
        already_migrated=already,
        migration_candidate=storage.is_candidate(user_id),
        active_session_id=active.id if active else None,
        supported_data_versions=list(settings.supported_data_versions),
        limits=settings.limits,
        capabilities=[c for c in CAPABILITIES if c != "sync" or storage.supports_sync]
        + (["blobs-direct"] if storage.blob_urls is not None else []),
        server_time=now,
    )


def start_migration(
    storage: Storage, settings: Settings, user_id: str, request: StartMigrationRequest, *, now: int
) -> StartMigrationResponse:
    """``POST /start``: open a session, or return the one this migration id opened.

    >>> from contextlib import closing
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> with closing(SQLiteStorage.in_memory()) as storage:
    ...     first = start_migration(storage, Settings(), "alice", EMPTY_START, now=0)
    ...     again = start_migration(storage, Settings(), "alice", EMPTY_START, now=1)
    >>> again.session_id == first.session_id, again.status
    (True, <SessionStatus.CREATED: 'created'>)
    """
    if request.data_version not in settings.supported_data_versions:
        raise ApiError(
            422,
            ProblemCode.UNSUPPORTED_DATA_VERSION,
            f"data version {request.data_version} is not supported (supported:"
            f" {_versions(settings)}): update the app before migrating",
        )
    _check_manifest(request.manifest, settings.limits)

    def attempt() -> StartMigrationResponse:
        existing = storage.session_for_migration(user_id, request.migration_id)
        if existing is not None:
            return _replayed_start(storage, existing, request, now)
        _ensure_may_start(storage, user_id, request.device_id, now)
        session = Session(
            id=str(uuid.uuid4()),
            user_id=user_id,
            migration_id=request.migration_id,
            device_id=request.device_id,
            data_version=request.data_version,
            manifest=request.manifest,
            config=request.config,
            status=SessionStatus.CREATED,
            version=1,
            created_at=now,
            updated_at=now,
            expires_at=now + settings.session_ttl_ms,
        )
        with storage.atomic():
            # Checked again inside the transaction: a concurrent start may have won.
            if storage.active_session(user_id, now) is not None:
                raise VersionConflict(user_id)
            storage.insert_session(session)
            storage.record_event(
                Event.new(
                    EventType.MIGRATION_STARTED,
                    user_id=user_id,
                    session_id=session.id,
                    detail={
                        "migrationId": session.migration_id,
                        "deviceId": session.device_id,
                        "dataVersion": session.data_version,
                        "itemCount": session.manifest.item_count,
                        "batchCount": session.manifest.batch_count,
                    },
                    now=now,
                )
            )
        logger.info(
            "user %s started session %s (%d items in %d batches)",
            user_id,
            session.id,
            session.manifest.item_count,
            session.manifest.batch_count,
        )
        return _start_response(session, [], now)

    return retrying(attempt)


def _ensure_may_start(storage: Storage, user_id: str, device_id: str, now: int) -> None:
    if storage.has_completed(user_id, device_id):
        raise ApiError(
            409,
            ProblemCode.ALREADY_MIGRATED,
            "this device already migrated its data to this account",
        )
    active = storage.active_session(user_id, now)
    if active is not None:
        raise ApiError(
            409,
            ProblemCode.ACTIVE_SESSION,
            "another migration is in progress for this user: resume it or cancel it",
            extra={"activeSessionId": active.id},
        )


def _replayed_start(
    storage: Storage, session: Session, request: StartMigrationRequest, now: int
) -> StartMigrationResponse:
    if (
        session.manifest != request.manifest
        or session.device_id != request.device_id
        or session.data_version != request.data_version
    ):
        raise ApiError(
            409,
            ProblemCode.INVALID_STATE,
            f"migration id {request.migration_id!r} was started with a different manifest:"
            " use a new migration id for a new snapshot",
            extra={"sessionId": session.id},
        )
    return _start_response(session, storage.received_batches(session.id), now)


def _start_response(session: Session, received: list[int], now: int) -> StartMigrationResponse:
    manifest = session.manifest
    return StartMigrationResponse(
        session_id=session.id,
        migration_id=session.migration_id,
        status=session.status_at(now),
        # A rough guess for a progress bar: about 20k items a second, plus latency.
        estimated_duration=round(
            1.0 + manifest.item_count / 20_000 + manifest.batch_count * 0.05, 2
        ),
        received_batches=received,
        server_time=now,
        expires_at=session.expires_at,
    )


def _check_manifest(manifest: Manifest, limits: Limits) -> None:
    problems = []
    if sum(manifest.collections.values()) != manifest.item_count:
        problems.append("the collection counts do not add up to itemCount")
    if any(count < 0 for count in manifest.collections.values()):
        problems.append("a collection count is negative")
    if any(not _NAME.fullmatch(name) for name in manifest.collections):
        problems.append("a collection name is malformed")
    if (manifest.item_count == 0) != (manifest.batch_count == 0):
        problems.append("itemCount and batchCount must both be zero or both positive")
    elif manifest.item_count and not (
        -(-manifest.item_count // manifest.batch_size)  # ceil in integers: no float overflow
        <= manifest.batch_count
        <= manifest.item_count
    ):
        problems.append("batchCount does not fit itemCount and batchSize")
    if manifest.batch_size > limits.max_batch_items:
        problems.append(f"batchSize is over the limit of {limits.max_batch_items} items")
    if manifest.item_count > limits.max_items_per_migration:
        problems.append(
            f"itemCount is over the limit of {limits.max_items_per_migration} items per migration"
        )
    if problems:
        raise ApiError(
            422,
            ProblemCode.VALIDATION_FAILED,
            "inconsistent manifest: " + "; ".join(problems),
            extra={"errors": problems},
        )


def _versions(settings: Settings) -> str:
    return ", ".join(str(v) for v in settings.supported_data_versions)
