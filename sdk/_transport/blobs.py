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

from .._errors import ProtocolError
from .._failpoints import failpoint
from .._wire.canonical import BLOB_SIZE_HEADER, CHECKSUM_HEADER
from .._wire.models import (
    BlobChunkReceipt,
    BlobCompleteRequest,
    BlobQueryRequest,
    BlobQueryResponse,
    BlobState,
)
from .http import Transport

__all__ = ["QUERY_MAX", "complete", "download", "put_chunk", "query"]

#: Blobs per ``/blobs/query`` request (the contract's bound).
QUERY_MAX = 1000
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def query(transport: Transport, shas: Sequence[str]) -> list[BlobState]:
    """What the server holds of each blob, in the order asked (any number of blobs)."""
    states: list[BlobState] = []
    for start in range(0, len(shas), QUERY_MAX):
        asked = list(shas[start : start + QUERY_MAX])
        answer = transport._call(
            "blob query",
            "POST",
            "/blobs/query",
            BlobQueryResponse,
            json=BlobQueryRequest(blobs=asked).wire(),
        )
        if [state.sha256 for state in answer.blobs] != asked:
            raise ProtocolError(
                "blob query: the server answered for other blobs than asked; the server "
                "and the SDK disagree on the wire contract, update whichever is older"
            )
        states.extend(answer.blobs)
    return states


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


def download(transport: Transport, sha256: str, start: int, length: int) -> bytes:
    """``length`` bytes of blob ``sha256`` from ``start`` (a ``Range`` request, so a
    download resumes where it stopped and holds one part in memory at a time)."""
    end = start + length - 1
    response = transport._request(
        "blob download",
        "GET",
        f"/blobs/{sha256}",
        headers={"Range": f"bytes={start}-{end}", "Accept": "application/octet-stream"},
    )
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
