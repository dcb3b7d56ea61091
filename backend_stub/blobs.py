"""The attachment (blob) service: what the ``/blobs`` endpoints check and answer.

Chunks are checked here (size for their index, the blob's size within the limit, the
chunk's own SHA-256) before the storage backend sees them; the backend
(:mod:`backend_stub.storage.blobs`) verifies the whole content on ``complete``. A user
only ever sees their own blobs: another user's hash is simply not held::

    >>> from backend_stub.settings import Settings
    >>> chunk_length(Settings(), size=10, index=0)
    10
    >>> parse_range("bytes=2-4", 10), parse_range("bytes=-3", 10), parse_range(None, 10)
    ((2, 5), (7, 10), None)
"""

from __future__ import annotations

import hashlib
import re

from starlette.responses import RedirectResponse, Response, StreamingResponse

from backend_stub.problems import ApiError
from backend_stub.settings import Settings
from backend_stub.storage import Storage
from backend_stub.storage.blobs import BlobMismatch, ChunksMissing
from sdk.contract import (
    CHECKSUM_HEADER,
    BlobChunkReceipt,
    BlobCompleteRequest,
    BlobQueryRequest,
    BlobQueryResponse,
    BlobState,
    ProblemCode,
    blob_chunk_count,
    blob_chunk_size,
)

__all__ = [
    "blob_response",
    "check_chunk",
    "chunk_length",
    "complete_blob",
    "held_receipt",
    "parse_range",
    "query_blobs",
]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _too_large(settings: Settings, size: int) -> ApiError:
    limit = settings.limits.max_blob_bytes
    return ApiError(
        413,
        ProblemCode.PAYLOAD_TOO_LARGE,
        f"a blob of {size} bytes is larger than this server's maxBlobBytes ({limit}):"
        " keep the attachment smaller",
        extra={"limit": limit},
    )


def chunk_length(settings: Settings, *, size: int, index: int) -> int:
    """The length chunk ``index`` of a blob of ``size`` bytes must have: 413 when the blob
    is over the limit, 422 when the blob has no such chunk.

    >>> from backend_stub.settings import Settings
    >>> chunk_length(Settings(), size=0, index=0)
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: a blob of 0 bytes has no chunk 0 (it has 0 chunks of ...)
    """
    if size > settings.limits.max_blob_bytes:
        raise _too_large(settings, size)
    chunk = settings.limits.blob_chunk_bytes
    count = blob_chunk_count(size, chunk)
    if index >= count:
        raise ApiError(
            422,
            ProblemCode.VALIDATION_FAILED,
            f"a blob of {size} bytes has no chunk {index} (it has {count} chunks of {chunk} bytes)",
        )
    return blob_chunk_size(size, chunk, index)


def check_chunk(data: bytes, *, expected: int, index: int, checksum: str) -> None:
    """400 unless ``data`` is ``expected`` bytes long and hashes to ``checksum``.

    >>> check_chunk(b"ab", expected=2, index=0, checksum=hashlib.sha256(b"ab").hexdigest())
    >>> check_chunk(b"ab", expected=2, index=0, checksum="0" * 64)
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: chunk 0 does not match its X-Content-SHA256: send it again
    """
    if len(data) != expected:
        raise ApiError(
            400,
            ProblemCode.INVALID_REQUEST,
            f"chunk {index} must be {expected} bytes long, not {len(data)}: every chunk but"
            " the last is blobChunkBytes long, the last is the rest",
        )
    if hashlib.sha256(data).hexdigest() != checksum:
        raise ApiError(
            400,
            ProblemCode.CHECKSUM_MISMATCH,
            f"chunk {index} does not match its {CHECKSUM_HEADER}: send it again",
        )


def held_receipt(settings: Settings, state: BlobState, index: int) -> BlobChunkReceipt:
    """The receipt of a chunk of a blob held already: every chunk is there.

    >>> from sdk.contract import EMPTY_SHA256
    >>> held_receipt(Settings(), BlobState(sha256=EMPTY_SHA256, held=True, size=3), 0
    ...              ).received_chunks
    [0]
    """
    count = blob_chunk_count(state.size or 0, settings.limits.blob_chunk_bytes)
    return BlobChunkReceipt(sha256=state.sha256, index=index, received_chunks=list(range(count)))


def query_blobs(
    storage: Storage, settings: Settings, user_id: str, body: BlobQueryRequest
) -> BlobQueryResponse:
    """The state of each asked blob, in the request's order; on a backend with direct
    transfer, the blobs listed in ``uploads`` come with signed URLs for their missing
    chunks (a backend without ignores ``uploads``).

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> from sdk.contract import EMPTY_SHA256
    >>> storage = SQLiteStorage.in_memory()
    >>> answer = query_blobs(storage, Settings(), "alice", BlobQueryRequest(blobs=[EMPTY_SHA256]))
    >>> answer.blobs[0].held, answer.direct_upload
    (False, False)
    >>> storage.close()
    """
    states = storage.blobs.states(user_id, body.blobs)
    urls = storage.blob_urls
    if urls is None:
        return BlobQueryResponse(blobs=states)
    chunk = settings.limits.blob_chunk_bytes
    at = {sha: place for place, sha in enumerate(body.blobs)}
    for plan in body.uploads:
        place = at.get(plan.sha256)
        if place is None:
            raise ApiError(
                422,
                ProblemCode.VALIDATION_FAILED,
                f"uploads names blob ...{plan.sha256[:8]}..., which blobs does not list:"
                " list every blob to upload in blobs too",
            )
        if plan.size > settings.limits.max_blob_bytes:
            raise _too_large(settings, plan.size)
        count = blob_chunk_count(plan.size, chunk)
        if len(plan.chunks) != count:
            raise ApiError(
                422,
                ProblemCode.VALIDATION_FAILED,
                f"a blob of {plan.size} bytes has {count} chunks of {chunk} bytes, not"
                f" {len(plan.chunks)}: send the SHA-256 of each chunk, in order",
            )
        if not states[place].held:
            states[place] = urls.upload_urls(user_id, plan.sha256, plan.size, plan.chunks, chunk)
    return BlobQueryResponse(blobs=states, direct_upload=True)


def complete_blob(
    storage: Storage, settings: Settings, user_id: str, sha256: str, body: BlobCompleteRequest
) -> BlobState:
    """Verify and keep the blob: 409 while chunks are missing, 400 (and the upload
    discarded) when the content does not hash to ``sha256``.

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> from sdk.contract import EMPTY_SHA256
    >>> storage = SQLiteStorage.in_memory()
    >>> complete_blob(storage, Settings(), "alice", EMPTY_SHA256, BlobCompleteRequest(size=0)
    ...               ).held
    True
    >>> storage.close()
    """
    if body.size > settings.limits.max_blob_bytes:
        raise _too_large(settings, body.size)
    count = blob_chunk_count(body.size, settings.limits.blob_chunk_bytes)
    try:
        return storage.blobs.complete(user_id, sha256, body.size, count)
    except ChunksMissing as missing:
        raise ApiError(
            409,
            ProblemCode.INVALID_STATE,
            f"{missing.missing} of the blob's {count} chunks have not arrived: ask"
            " /blobs/query which ones the server holds and send the others",
            extra={"missingChunks": missing.missing, "chunkCount": count},
        ) from None
    except BlobMismatch as mismatch:
        raise ApiError(
            400,
            ProblemCode.CHECKSUM_MISMATCH,
            f"the blob's content does not hash to its name ({mismatch}); the upload was"
            " discarded: send its chunks again from the original content",
        ) from None


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``(start, stop)`` a ``Range`` header asks of ``size`` bytes; ``None`` for the
    whole (no header, several ranges or another unit: the whole is a valid answer);
    416 when no byte of the range exists.

    >>> parse_range("bytes=8-", 10), parse_range("bytes=0-100", 10)
    ((8, 10), (0, 10))
    >>> parse_range("bytes=10-", 10)
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: the blob has 10 bytes: bytes=10- asks for none of them
    """
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        start, stop = max(size - int(last), 0), size
    else:
        start = int(first)
        stop = size if last == "" else min(int(last) + 1, size)
        if last != "" and int(last) < start:
            return None  # an invalid range is ignored (RFC 9110, section 14.2)
    if start >= stop:
        raise ApiError(
            416,
            ProblemCode.INVALID_REQUEST,
            f"the blob has {size} bytes: {header} asks for none of them",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, stop


def blob_response(
    storage: Storage, user_id: str, sha256: str, range_header: str | None
) -> Response:
    """The held blob, streamed (206 with the part a ``Range`` asks for), or on a backend
    with direct transfer a 307 to a signed URL of it (where the ``Range`` applies);
    404 when this user holds no such blob.

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> from sdk.contract import EMPTY_SHA256
    >>> storage = SQLiteStorage.in_memory()
    >>> blob_response(storage, "alice", EMPTY_SHA256, None)
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: no blob ...e3b0c442... is held for this user: upload it first
    >>> storage.close()
    """
    state = storage.blobs.state(user_id, sha256)
    if not state.held or state.size is None:
        raise ApiError(
            404,
            ProblemCode.NOT_FOUND,
            f"no blob ...{sha256[:8]}... is held for this user: upload it first",
        )
    if storage.blob_urls is not None:
        # The URL is a credential for a while: no cache keeps it.
        return RedirectResponse(
            storage.blob_urls.download_url(user_id, sha256),
            status_code=307,
            headers={CHECKSUM_HEADER: sha256, "Cache-Control": "no-store"},
        )
    size = state.size
    wanted = parse_range(range_header, size)
    start, stop = wanted or (0, size)
    headers = {
        "Content-Length": str(stop - start),
        CHECKSUM_HEADER: sha256,
        "Accept-Ranges": "bytes",
        "ETag": f'"{sha256}"',
    }
    if wanted is not None:
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    return StreamingResponse(
        storage.blobs.read(user_id, sha256, start, stop),
        status_code=206 if wanted is not None else 200,
        media_type="application/octet-stream",
        headers=headers,
    )
