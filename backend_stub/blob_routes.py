"""The attachment endpoints under ``/api/migration/{userId}/blobs``: query, chunk upload,
complete, download.

The same authentication, problem+json answers and idempotency as the other endpoints
(:mod:`backend_stub.routes`); the rules are in :mod:`backend_stub.blobs`. A chunk is raw
bytes (``application/octet-stream``), capped at ``blobChunkBytes`` (not the JSON batch
limit); a download streams, with ``Range`` support::

    >>> for route in blob_router.routes:
    ...     print(*route.methods, route.path.split("/blobs", 1)[1])
    POST /query
    PUT /{sha256}/chunks/{index}
    POST /{sha256}/complete
    GET /{sha256}
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from backend_stub import blobs
from backend_stub.auth import UserId
from backend_stub.bodies import json_body, read_body
from backend_stub.problems import ApiError
from backend_stub.routes import SettingsDep, StorageDep
from backend_stub.storage.records import VersionConflict
from sdk.contract import (
    API_PREFIX,
    BLOB_SIZE_HEADER,
    CHECKSUM_HEADER,
    SHA256_PATTERN,
    BlobChunkReceipt,
    BlobCompleteRequest,
    BlobQueryRequest,
    BlobQueryResponse,
    BlobState,
    ProblemCode,
)

__all__ = ["blob_router"]

BlobName = Annotated[str, Path(pattern=SHA256_PATTERN)]
# A chunk has one name, as a batch does: "+1" or "01" is not chunk 1.
ChunkIndex = Annotated[str, Path(pattern=r"^(0|[1-9][0-9]{0,8})$")]
ChunkChecksum = Annotated[str, Header(alias=CHECKSUM_HEADER, pattern=r"^[0-9a-fA-F]{64}$")]
BlobSize = Annotated[str, Header(alias=BLOB_SIZE_HEADER, pattern=r"^(0|[1-9][0-9]{0,17})$")]

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_CHUNK_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The chunk's bytes: blobChunkBytes long, the last chunk the rest.",
        "content": {"application/octet-stream": _BINARY},
    }
}
_DOWNLOAD: dict[int | str, dict[str, Any]] = {
    200: {"description": "The whole blob.", "content": {"application/octet-stream": _BINARY}},
    206: {
        "description": "The part a Range asked for.",
        "content": {"application/octet-stream": _BINARY},
    },
    307: {
        "description": "Direct transfer: read the blob (Range too) at the Location, a "
        "signed storage URL; send no bearer token there."
    },
}

blob_router = APIRouter(prefix=API_PREFIX + "/{userId}/blobs", tags=["blobs"])


@blob_router.post("/query")
def query_blobs(
    user_id: UserId,
    body: Annotated[BlobQueryRequest, Depends(json_body(BlobQueryRequest))],
    storage: StorageDep,
    settings: SettingsDep,
) -> BlobQueryResponse:
    """Which of these blobs the server holds, and the chunks of uploads in progress;
    with ``directUpload``, signed URLs for the chunks of the blobs in ``uploads``."""
    return blobs.query_blobs(storage, settings, user_id, body)


@blob_router.put("/{sha256}/chunks/{index}", openapi_extra=_CHUNK_BODY)
async def put_chunk(
    user_id: UserId,
    request: Request,
    sha256: BlobName,
    index: ChunkIndex,
    checksum: ChunkChecksum,
    size: BlobSize,
    storage: StorageDep,
    settings: SettingsDep,
) -> BlobChunkReceipt:
    """Upload chunk ``index`` of the blob; replaying a chunk answers the same receipt."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/octet-stream":
        raise ApiError(
            415,
            ProblemCode.UNSUPPORTED_MEDIA_TYPE,
            "send a chunk as 'Content-Type: application/octet-stream'",
        )
    expected = blobs.chunk_length(settings, size=int(size), index=int(index))
    state = await run_in_threadpool(storage.blobs.state, user_id, sha256)
    if state.held:
        return blobs.held_receipt(settings, state, int(index))
    data = await read_body(
        request, limit=expected, advice=f"chunk {index} of this blob is {expected} bytes long"
    )
    blobs.check_chunk(data, expected=expected, index=int(index), checksum=checksum.lower())
    try:
        received = await run_in_threadpool(
            storage.blobs.put_chunk, user_id, sha256, int(size), int(index), data
        )
    except VersionConflict:
        raise ApiError(
            409,
            ProblemCode.VERSION_CONFLICT,
            "the upload of this blob kept changing under this chunk: send it again",
        ) from None
    if not received:  # a complete racing this chunk finished the upload meanwhile
        state = await run_in_threadpool(storage.blobs.state, user_id, sha256)
        if state.held:
            return blobs.held_receipt(settings, state, int(index))
    return BlobChunkReceipt(sha256=sha256, index=int(index), received_chunks=received)


@blob_router.post("/{sha256}/complete")
def complete_blob(
    user_id: UserId,
    sha256: BlobName,
    body: Annotated[BlobCompleteRequest, Depends(json_body(BlobCompleteRequest))],
    storage: StorageDep,
    settings: SettingsDep,
) -> BlobState:
    """Verify the whole content against its name and keep it (idempotent)."""
    return blobs.complete_blob(storage, settings, user_id, sha256, body)


@blob_router.get("/{sha256}", response_class=StreamingResponse, responses=_DOWNLOAD)
def get_blob(
    user_id: UserId,
    sha256: BlobName,
    storage: StorageDep,
    range_header: Annotated[str | None, Header(alias="Range", max_length=200)] = None,
) -> Response:
    """The blob's bytes, streamed; a single ``Range: bytes=a-b`` answers 206 with that
    part. With direct transfer, a 307 to a signed storage URL of the blob instead."""
    return blobs.blob_response(storage, user_id, sha256, range_header)
