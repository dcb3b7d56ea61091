"""The sync endpoints under ``/api/migration/{userId}/sync``: push, changes, state.

The same authentication, limits, problem+json answers and idempotency rules as the
migration endpoints (:mod:`backend_stub.routes`), whose dependencies they share::

    >>> [route.path.rsplit("/", 1)[-1] for route in sync_router.routes]
    ['push', 'changes', 'state']
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from backend_stub import sync
from backend_stub.auth import UserId
from backend_stub.bodies import json_body
from backend_stub.problems import ApiError
from backend_stub.routes import _DEVICE_ID, Now, SettingsDep, StorageDep
from backend_stub.storage import Storage
from sdk.contract import (
    API_PREFIX,
    ProblemCode,
    PullResponse,
    PushRequest,
    PushResponse,
    SyncStateResponse,
)

__all__ = ["sync_router"]


async def _offers_sync(user_id: UserId, storage: StorageDep) -> Storage:
    # After authentication (UserId), so a stranger learns nothing about the backend.
    if not storage.supports_sync:
        raise ApiError(
            404,
            ProblemCode.NOT_FOUND,
            "this server's storage backend does not offer sync (detect lists no 'sync'"
            " capability): run the server on a backend that does",
        )
    return storage


sync_router = APIRouter(
    prefix=API_PREFIX + "/{userId}/sync", tags=["sync"], dependencies=[Depends(_offers_sync)]
)


@sync_router.post("/push")
def push(
    user_id: UserId,
    body: Annotated[PushRequest, Depends(json_body(PushRequest))],
    storage: StorageDep,
    settings: SettingsDep,
    now: Now,
) -> PushResponse:
    """Apply a batch of the device's changes once; conflicts come back with the cloud's
    version."""
    return sync.push_changes(storage, settings, user_id, body, now=now)


@sync_router.get("/changes", response_model=PullResponse)
def changes(
    user_id: UserId,
    storage: StorageDep,
    settings: SettingsDep,
    since: Annotated[str | None, Query(max_length=4096)] = None,
    until: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    device_id: Annotated[str | None, Query(alias="deviceId", pattern=_DEVICE_ID)] = None,
) -> Response:
    """The user's items written after ``since`` (a cursor of an earlier answer; none: from
    the start), oldest first, up to ``until`` (a seq) when given, without those whose
    current version ``deviceId`` wrote (the asking device holds them)."""
    body = sync.pull_body(
        storage, settings, user_id, since=since, until=until, limit=limit, device_id=device_id
    )
    return Response(body, media_type="application/json")


@sync_router.get("/state")
def state(
    user_id: UserId,
    storage: StorageDep,
    full: Annotated[bool, Query()] = False,
    since: Annotated[str | None, Query(max_length=4096)] = None,
    device_id: Annotated[str | None, Query(alias="deviceId", pattern=_DEVICE_ID)] = None,
) -> SyncStateResponse:
    """The user's head seq, item count and checksum (``full``: recomputed from the items;
    ``since``: how many items a pull from that cursor would bring to ``deviceId``)."""
    return sync.sync_state(storage, user_id, full=full, since=since, device_id=device_id)
