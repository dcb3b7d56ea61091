"""Request bodies, read by hand so nothing buffers more than the limit.

Every body is streamed from the request and refused with 413 the moment it passes the
cap (a ``Content-Length`` over the cap is refused before reading anything). A gzip body
is inflated as it arrives, with the same cap on the inflated size, so a gzip bomb costs
at most the limit. JSON is parsed and validated in one pydantic pass; broken JSON is a
400, a well-formed body with the wrong shape a 422::

    >>> inflater = Inflater(limit=10)
    >>> import gzip
    >>> inflater.feed(gzip.compress(b"hello"))
    >>> inflater.finish()
    b'hello'
"""

from __future__ import annotations

import dataclasses
import json
import re
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from backend_stub.problems import ApiError
from backend_stub.settings import Settings
from sdk.contract import CHECKSUM_HEADER, ProblemCode, canonical_json

__all__ = [
    "Inflater",
    "Upload",
    "batch_upload",
    "json_body",
    "parse_model",
    "read_body",
    "reject_duplicate_members",
    "validation_problem",
]

M = TypeVar("M", bound=BaseModel)

_CHECKSUM = re.compile(r"[0-9a-fA-F]{64}")
_GZIP_WBITS = 16 + zlib.MAX_WBITS


def _too_large(limit: int, advice: str = "send smaller batches") -> ApiError:
    return ApiError(
        413,
        ProblemCode.PAYLOAD_TOO_LARGE,
        f"the body is larger than {limit} bytes: {advice}",
        extra={"limit": limit},
    )


class Inflater:
    """Incremental gzip inflation that stops as soon as the output passes ``limit``.

    >>> import gzip
    >>> bomb = gzip.compress(b"0" * 1_000_000)
    >>> inflater = Inflater(limit=1000)
    >>> inflater.feed(bomb)
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: the body is larger than 1000 bytes: send smaller batches
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._out = bytearray()
        self._inflate = zlib.decompressobj(wbits=_GZIP_WBITS)

    def feed(self, chunk: bytes) -> None:
        """Inflate the next piece of the compressed stream."""
        data = chunk
        try:
            while data:
                if self._inflate.eof:
                    # Several gzip members, one after the other, are one valid stream.
                    self._inflate = zlib.decompressobj(wbits=_GZIP_WBITS)
                room = self._limit - len(self._out) + 1
                self._out += self._inflate.decompress(data, room)
                if len(self._out) > self._limit:
                    raise _too_large(self._limit)
                data = self._inflate.unconsumed_tail or self._inflate.unused_data
        except zlib.error as exc:
            raise ApiError(
                400, ProblemCode.INVALID_REQUEST, f"the gzip body is corrupt: {exc}"
            ) from exc

    def finish(self) -> bytes:
        """The inflated body; 400 if the stream stopped mid-way."""
        if not self._inflate.eof:
            raise ApiError(400, ProblemCode.INVALID_REQUEST, "the gzip body is truncated")
        return bytes(self._out)


def _encoding(request: Request) -> str:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return "identity"
    if encoding == "gzip":
        return "gzip"
    raise ApiError(
        415,
        ProblemCode.UNSUPPORTED_MEDIA_TYPE,
        f"Content-Encoding {encoding!r} is not supported: send gzip or identity",
    )


def _require_json(request: Request) -> None:
    media_type, _, params = request.headers.get("content-type", "").partition(";")
    charset = "utf-8"
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if media_type.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        raise ApiError(
            415,
            ProblemCode.UNSUPPORTED_MEDIA_TYPE,
            "send the body as 'Content-Type: application/json' (UTF-8)",
        )


async def read_body(request: Request, *, limit: int, advice: str = "send smaller batches") -> bytes:
    """The request body, inflated if gzip, never buffering more than ``limit`` bytes
    (``advice``: what the 413 tells the client to do).

    Raises :class:`~backend_stub.problems.ApiError` 413 (too large), 415 (an encoding
    other than gzip or identity) or 400 (a broken gzip stream).

    >>> import asyncio
    >>> from starlette.requests import Request
    >>> async def receive():
    ...     return {"type": "http.request", "body": b"x" * 100, "more_body": True}
    >>> request = Request({"type": "http", "headers": []}, receive)
    >>> asyncio.run(read_body(request, limit=250))
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: the body is larger than 250 bytes: send smaller batches
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, ProblemCode.INVALID_REQUEST, "malformed Content-Length")
        if int(declared) > limit:
            raise _too_large(limit, advice)
    inflater = Inflater(limit) if _encoding(request) == "gzip" else None
    received = 0
    body = bytearray()
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(limit, advice)
            if inflater is not None:
                inflater.feed(chunk)
            else:
                body += chunk
    except ClientDisconnect as exc:
        # A network fault, not a server failure: nobody hears this answer, but it must
        # not be logged (and counted) as a 500.
        raise ApiError(
            400,
            ProblemCode.INVALID_REQUEST,
            "the client disconnected before sending the whole body",
        ) from exc
    return inflater.finish() if inflater is not None else bytes(body)


def validation_problem(exc: ValidationError) -> ApiError:
    """Map a pydantic failure to 400 (not JSON at all) or 422 (JSON of the wrong shape).

    >>> from sdk.contract import Limits
    >>> validation_problem(_catch(lambda: Limits.model_validate_json("{"))).status
    400
    >>> validation_problem(_catch(lambda: Limits.model_validate_json('{"x": 1}'))).status
    422
    """
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return ApiError(
            400, ProblemCode.INVALID_REQUEST, f"the body is not valid JSON: {errors[0]['msg']}"
        )
    return ApiError(
        422,
        ProblemCode.VALIDATION_FAILED,
        f"{len(errors)} invalid field(s), first at {_where(errors[0]['loc'])}: {errors[0]['msg']}",
        extra={
            "errors": [
                {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors[:20]
            ]
        },
    )


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "the body"


def _catch(call: Callable[[], Any]) -> ValidationError:
    try:
        call()
    except ValidationError as exc:
        return exc
    raise AssertionError("no validation error")  # pragma: no cover


def parse_model(model: type[M], body: bytes) -> M:
    """Validate a JSON body against a wire model (400/422 on failure; NaN refused).

    >>> from sdk.contract import CompleteMigrationRequest
    >>> parse_model(CompleteMigrationRequest, b'{"datasetChecksum": "' + b"0" * 64 + b'"}'
    ...             ).dataset_checksum[:4]
    '0000'
    """
    try:
        value = model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_problem(exc) from exc
    try:
        # pydantic's parser accepts NaN and Infinity; JSON (and our checksums) do not.
        canonical_json(value.model_dump())
    except ValueError as exc:
        raise ApiError(
            400,
            ProblemCode.INVALID_REQUEST,
            "the body is not valid JSON for this API: NaN, Infinity or a number too long",
        ) from exc
    reject_duplicate_members(body)
    return value


class _Repeated(Exception):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _Repeated(name)
            seen.add(name)
    return members


def reject_duplicate_members(body: bytes) -> None:
    """400 when a JSON object repeats a member name. Parsers disagree on which one wins
    (RFC 8259, section 4), so such a body means different things to different readers;
    pydantic silently keeps the last one. A body that is not JSON is left to the parser
    that reports it.

    >>> reject_duplicate_members(b'{"a": 1, "b": {"a": 2}}')
    >>> reject_duplicate_members(b'{"items": [], "items": [1]}')
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: the body repeats the member 'items' in one object
    """
    try:
        json.loads(body, object_pairs_hook=_unique_members)
    except _Repeated as repeated:
        raise ApiError(
            400,
            ProblemCode.INVALID_REQUEST,
            f"the body repeats the member {repeated.args[0]!r} in one object",
        ) from None
    except (ValueError, RecursionError):
        return


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A FastAPI dependency reading a capped JSON body as ``model``.

    >>> from sdk.contract import CompleteMigrationRequest
    >>> callable(json_body(CompleteMigrationRequest))
    True
    """

    async def dependency(request: Request) -> M:
        settings: Settings = request.app.state.settings
        _require_json(request)
        body = await read_body(request, limit=settings.limits.max_batch_bytes)
        return parse_model(model, body)

    return dependency


@dataclasses.dataclass(frozen=True)
class Upload:
    """A batch body as received: inflated bytes and the declared SHA-256 (lower-case hex).

    >>> Upload(body=b"{}", checksum="0" * 64).body
    b'{}'
    """

    body: bytes
    checksum: str


async def batch_upload(request: Request) -> Upload:
    """FastAPI dependency for ``PUT .../batches/{seq}``: headers checked, body read.

    Checks, in order: JSON content type (415), a well-formed ``X-Content-SHA256`` (400),
    the encoding (415) and the size (413). The checksum itself is verified by the
    service, against the inflated body.

    >>> import asyncio
    >>> from starlette.requests import Request
    >>> async def receive():
    ...     return {"type": "http.request", "body": b"{}"}
    >>> request = Request({"type": "http", "headers": [(b"content-type", b"text/plain")]},
    ...                   receive)
    >>> asyncio.run(batch_upload(request))
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: send the body as 'Content-Type: application/json' (UTF-8)
    """
    _require_json(request)
    declared = request.headers.get(CHECKSUM_HEADER, "").strip()
    if not _CHECKSUM.fullmatch(declared):
        raise ApiError(
            400,
            ProblemCode.INVALID_REQUEST,
            f"send the hex SHA-256 of the uncompressed body in {CHECKSUM_HEADER}",
        )
    settings: Settings = request.app.state.settings
    body = await read_body(request, limit=settings.limits.max_batch_bytes)
    return Upload(body=body, checksum=declared.lower())
