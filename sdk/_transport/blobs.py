"""The attachment (blob) endpoints, over the same :class:`~sdk._transport.http.Transport`
as every other call: its token, retries and translation of failures into the SDK's
errors. Every call is idempotent (a chunk is named by its blob and index, a blob by its
content), so every call is retried.

    >>> import hashlib, httpx
    >>> def server(request: httpx.Request) -> httpx.Response:
    ...     return httpx.Response(200, json={"blobs": [{"sha256": "a" * 64, "held": True,
    ...         "size": 3, "receivedChunks": []}]})
    >>> client = httpx.Client(base_url="http://test", transport=httpx.MockTransport(server))
    >>> with Transport(client, user_id="u1", token="t0k3n") as transport:
    ...     query(transport, ["a" * 64])[0].held
    True
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence

import httpx

from .._errors import ProtocolError
from .._failpoints import failpoint
from .._wire.canonical import BLOB_SIZE_HEADER, CHECKSUM_HEADER
from .._wire.models import (
    BlobChunkReceipt,
    BlobChunkUrl,
    BlobCompleteRequest,
    BlobQueryRequest,
    BlobQueryResponse,
    BlobState,
    BlobUploadPlan,
)
from . import direct
from .http import Transport

__all__ = [
    "QUERY_MAX",
    "Download",
    "complete",
    "download",
    "put_chunk",
    "put_chunk_direct",
    "query",
    "query_all",
    "query_upload",
]

#: Blobs per ``/blobs/query`` request (the contract's bound).
QUERY_MAX = 1000
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def query(transport: Transport, shas: Sequence[str]) -> list[BlobState]:
    """What the server holds of each blob, in the order asked (any number of blobs)."""
    return query_all(transport, shas)[0]


def query_all(transport: Transport, shas: Sequence[str]) -> tuple[list[BlobState], bool]:
    """:func:`query`, and whether the server takes chunks straight into its storage
    (``directUpload``: then :func:`query_upload` gives a signed URL per chunk)."""
    states: list[BlobState] = []
    direct = False
    for start in range(0, len(shas), QUERY_MAX):
        answer = _ask(transport, BlobQueryRequest(blobs=list(shas[start : start + QUERY_MAX])))
        states.extend(answer.blobs)
        direct = answer.direct_upload
    return states, direct


def query_upload(transport: Transport, sha256: str, size: int, chunks: list[str]) -> BlobState:
    """The state of one blob about to be uploaded whose chunks hash to ``chunks``: on a
    server with direct upload, with signed URLs for (some of) the chunks it lacks."""
    plan = BlobUploadPlan(sha256=sha256, size=size, chunks=chunks)
    answer = _ask(transport, BlobQueryRequest(blobs=[sha256], uploads=[plan]))
    return answer.blobs[0]


def _ask(transport: Transport, request: BlobQueryRequest) -> BlobQueryResponse:
    answer = transport._call(
        "blob query", "POST", "/blobs/query", BlobQueryResponse, json=request.wire()
    )
    if [state.sha256 for state in answer.blobs] != request.blobs:
        raise ProtocolError(
            "blob query: the server answered for other blobs than asked; the server "
            "and the SDK disagree on the wire contract, update whichever is older"
        )
    return answer


def put_chunk_direct(
    transport: Transport, target: BlobChunkUrl, parts: Callable[[], Iterable[bytes]]
) -> None:
    """Send a chunk to the signed storage URL the server gave for it, with the headers
    the URL was signed for (its checksum and length: the storage checks both). Raises
    :class:`~sdk._transport.direct.SignedUrlRefused` when the URL has expired."""
    direct.send(
        transport,
        "blob chunk upload",
        "PUT",
        target.url,
        content=_Body(parts),
        headers=target.headers,
    )
    failpoint("blob.chunk.sent")


def put_chunk(
    transport: Transport,
    sha256: str,
    index: int,
    parts: Callable[[], Iterable[bytes]],
    size: int,
) -> BlobChunkReceipt:
    """Send chunk ``index`` of blob ``sha256`` (whose whole size is ``size``), read by
    ``parts()`` a part at a time, twice: once for its checksum, once on the wire (and
    again on each retry), so the chunk is never whole in memory."""
    digest = hashlib.sha256()
    length = 0
    for part in parts():
        digest.update(part)
        length += len(part)
    receipt = transport._call(
        "blob chunk upload",
        "PUT",
        f"/blobs/{sha256}/chunks/{index}",
        BlobChunkReceipt,
        content=_Body(parts),
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
            CHECKSUM_HEADER: digest.hexdigest(),
            BLOB_SIZE_HEADER: str(size),
        },
    )
    failpoint("blob.chunk.sent")
    if receipt.sha256 != sha256 or index not in receipt.received_chunks:
        raise ProtocolError(
            f"blob chunk upload: the server did not confirm chunk {index} of {sha256}; ask "
            "again (the upload resumes with the chunks the server lacks)"
        )
    return receipt


class _Body:
    """A chunk's bytes, sent a part at a time and read anew on each retry; the
    ``blob.chunk.sending`` failpoint lies between two parts, so a crash test can kill
    the process with half a chunk on the wire."""

    def __init__(self, parts: Callable[[], Iterable[bytes]]) -> None:
        self._parts = parts

    def __iter__(self) -> Iterator[bytes]:
        for number, part in enumerate(self._parts()):
            if number:
                failpoint("blob.chunk.sending")
            yield part


def complete(transport: Transport, sha256: str, size: int) -> BlobState:
    """Ask the server to verify the whole blob and keep it (idempotent)."""
    state = transport._call(
        "blob complete",
        "POST",
        f"/blobs/{sha256}/complete",
        BlobState,
        json=BlobCompleteRequest(size=size).wire(),
    )
    if state.sha256 != sha256 or not state.held:
        raise ProtocolError(
            f"blob complete: the server did not confirm it holds {sha256}; the server and "
            "the SDK disagree on the wire contract, update whichever is older"
        )
    return state


class Download:
    """Reads ranges of blob ``sha256``: from the server, or from the signed storage URL it
    redirects to (direct transfer), which serves the next ranges too until it expires.
    The bearer token goes to the server only."""

    def __init__(self, transport: Transport, sha256: str) -> None:
        self.transport = transport
        self.sha256 = sha256
        #: The signed URL the server redirected to (``None``: ask the server).
        self.url: str | None = None

    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (a ``Range`` request, so a download resumes
        where it stopped and holds one part in memory at a time)."""
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        for attempt in range(2):
            if self.url is None:
                response = self.transport._request(
                    "blob download",
                    "GET",
                    f"/blobs/{self.sha256}",
                    headers={**headers, "Accept": "application/octet-stream"},
                    redirect=True,
                )
                if not response.has_redirect_location:
                    return _part(response, self.sha256, start, length)
                self.url = str(response.url.join(response.headers["Location"]))
            try:
                response = direct.send(
                    self.transport, "blob download", "GET", self.url, headers=headers
                )
            except direct.SignedUrlRefused:
                self.url = None
                if attempt:
                    raise
                continue
            return _part(response, self.sha256, start, length)
        raise AssertionError("unreachable")  # pragma: no cover


def download(transport: Transport, sha256: str, start: int, length: int) -> bytes:
    """``length`` bytes of blob ``sha256`` from ``start`` (see :class:`Download`)."""
    return Download(transport, sha256).read(start, length)


def _part(response: httpx.Response, sha256: str, start: int, length: int) -> bytes:
    end = start + length - 1
    data = response.content
    if response.status_code == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if match is None or int(match.group(1)) != start:
            raise ProtocolError(
                f"blob download: the server answered another range of {sha256} than asked "
                f"({response.headers.get('Content-Range')!r} for bytes {start}-{end})"
            )
        return data
    return data[start : start + length]  # a server that ignores Range sends it whole
