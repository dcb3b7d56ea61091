"""The migration endpoints under ``/api/migration/{userId}``.

Routes are thin: authenticate (:func:`~backend_stub.auth.authenticated_user` runs first,
before any body is read), read the body, call one service function. Handlers are plain
``def`` functions, so FastAPI runs them in its threadpool and the blocking storage calls
never stall the event loop. The one exception is a batch upload on the embedded backend,
which runs on the loop (see ``BatchIntake``, and why in ``app._batch_intake``)::

    >>> len(router.routes), router.routes[0].path
    (10, '/api/migration/{userId}/detect')
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, NamedTuple

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from backend_stub import conflicts, plan, service, start, summary
from backend_stub.auth import UserId
from backend_stub.bodies import Upload, batch_upload, json_body
from backend_stub.settings import Settings
from backend_stub.storage import Storage
from sdk.contract import (
    API_PREFIX,
    BatchReceipt,
    CompleteMigrationRequest,
    CompleteMigrationResponse,
    DataConflicts,
    DetectMigrationResponse,
    GetMigrationStatusResponse,
    GetMigrationSummaryResponse,
    PlanRequest,
    PlanResponse,
    ResolveConflictsRequest,
    ResolveConflictsResponse,
    StartMigrationRequest,
    StartMigrationResponse,
)

__all__ = ["router"]

# The same rule as StartMigrationRequest.device_id.
_DEVICE_ID = r"^[A-Za-z0-9_.-]{1,64}$"


# The dependencies below only read the app's state: coroutines, so that FastAPI calls
# them on the event loop instead of handing each to the thread pool.


async def _storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _now(request: Request) -> int:
    clock: Callable[[], int] = request.app.state.clock
    return clock()


class BatchIntake(NamedTuple):
    """What ``PUT .../batches/{seq}`` runs (:func:`batches.put_batch`, or on the aws
    backend :func:`worker.accept_batch`: store and queue), and whether it runs on the
    event loop's thread instead of the thread pool."""

    run: Callable[..., BatchReceipt]
    inline: bool


async def _batch_intake(request: Request) -> BatchIntake:
    intake: BatchIntake = request.app.state.batch_intake
    return intake


StorageDep = Annotated[Storage, Depends(_storage)]
SettingsDep = Annotated[Settings, Depends(_settings)]
Now = Annotated[int, Depends(_now)]
SessionId = Annotated[str, Path(alias="sessionId")]
OptionalSessionId = Annotated[str | None, Query(alias="sessionId")]
# A batch has one name: "+1", "01" or "1.0" are not batch 1 (422), and a number too large
# for the plan is out of range (409).
BatchSeq = Annotated[str, Path(pattern=r"^(0|[1-9][0-9]*)$")]

router = APIRouter(prefix=API_PREFIX + "/{userId}", tags=["migration"])


@router.get("/detect")
def detect_migration(
    user_id: UserId,
    storage: StorageDep,
    settings: SettingsDep,
    now: Now,
    has_local_data: Annotated[bool, Query(alias="hasLocalData")] = False,
    item_count: Annotated[int, Query(alias="itemCount", ge=0, le=2**63 - 1)] = 0,
    data_version: Annotated[int | None, Query(alias="dataVersion")] = None,
    device_id: Annotated[str | None, Query(alias="deviceId", pattern=_DEVICE_ID)] = None,
) -> DetectMigrationResponse:
    """Whether this user can migrate now; reports what the device found locally."""
    return start.detect(
        storage,
        settings,
        user_id,
        has_local_data=has_local_data,
        item_count=item_count,
        data_version=data_version,
        device_id=device_id,
        now=now,
    )


@router.post("/plan")
def plan_migration(
    user_id: UserId,
    body: Annotated[PlanRequest, Depends(json_body(PlanRequest))],
    storage: StorageDep,
    settings: SettingsDep,
    now: Now,
) -> PlanResponse:
    """Classify a page of keys and digests against the cloud (read-only)."""
    return plan.plan_items(storage, settings, user_id, body, now=now)


@router.post("/start")
def start_migration(
    user_id: UserId,
    body: Annotated[StartMigrationRequest, Depends(json_body(StartMigrationRequest))],
    storage: StorageDep,
    settings: SettingsDep,
    now: Now,
) -> StartMigrationResponse:
    """Open a migration session (idempotent on ``migrationId``)."""
    return start.start_migration(storage, settings, user_id, body, now=now)


@router.put("/sessions/{sessionId}/batches/{seq}")
async def put_batch(
    user_id: UserId,
    upload: Annotated[Upload, Depends(batch_upload)],
    session_id: SessionId,
    seq: BatchSeq,
    storage: StorageDep,
    settings: SettingsDep,
    now: Now,
    intake: Annotated[BatchIntake, Depends(_batch_intake)],
) -> BatchReceipt:
    """Upload batch ``seq``; replaying the same batch answers the stored receipt."""
    call = functools.partial(
        intake.run, storage, settings, user_id, session_id, int(seq), upload, now=now
    )
    return call() if intake.inline else await run_in_threadpool(call)


@router.get("/status")
def get_status(
    user_id: UserId, storage: StorageDep, now: Now, session_id: OptionalSessionId = None
) -> GetMigrationStatusResponse:
    """The session's state and which batches the server holds."""
    return service.get_status(storage, user_id, session_id, now=now)


@router.get("/sessions/{sessionId}/conflicts")
def list_conflicts(
    user_id: UserId,
    session_id: SessionId,
    storage: StorageDep,
    settings: SettingsDep,
    cursor: Annotated[str | None, Query(max_length=4096)] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> DataConflicts:
    """One page of the session's conflicts, in (collection, key) order."""
    return conflicts.list_conflicts(
        storage, settings, user_id, session_id, cursor=cursor, limit=limit
    )


@router.post("/resolve-conflicts")
def resolve_conflicts(
    user_id: UserId,
    body: Annotated[ResolveConflictsRequest, Depends(json_body(ResolveConflictsRequest))],
    storage: StorageDep,
    settings: SettingsDep,
    now: Now,
) -> ResolveConflictsResponse:
    """Record the device's decisions for some conflicts."""
    return conflicts.resolve_conflicts(storage, settings, user_id, body, now=now)


@router.post("/sessions/{sessionId}/complete")
def complete_migration(
    user_id: UserId,
    body: Annotated[CompleteMigrationRequest, Depends(json_body(CompleteMigrationRequest))],
    session_id: SessionId,
    storage: StorageDep,
    settings: SettingsDep,
    now: Now,
    request: Request,
) -> CompleteMigrationResponse:
    """Apply the migration to the cloud atomically (idempotent); on the aws backend,
    decide and answer ``committing`` while the worker commits."""
    complete: Callable[..., CompleteMigrationResponse] = request.app.state.completer
    return complete(storage, settings, user_id, session_id, body, now=now)


@router.get("/summary")
def get_summary(
    user_id: UserId, storage: StorageDep, now: Now, session_id: OptionalSessionId = None
) -> GetMigrationSummaryResponse:
    """Counts, checksums and a fresh verification of a session (the latest by default)."""
    return summary.get_summary(storage, user_id, session_id, now=now)


@router.delete("/sessions/{sessionId}")
def cancel_migration(
    user_id: UserId, session_id: SessionId, storage: StorageDep, settings: SettingsDep, now: Now
) -> GetMigrationStatusResponse:
    """Cancel the session and purge its staged data (idempotent)."""
    return service.cancel_migration(storage, settings, user_id, session_id, now=now)
