"""Fixtures for direct attachment transfer (``MIGRATION_AWS_BLOB_DIRECT``): moto behind a
recording front, and the API recording what reaches it.

:class:`S3Front` is moto's own WSGI application (the same in-process state as the session's
moto server) served on another loopback port through a middleware that records every
request it sees (method, path, whether it is presigned, its headers, its body's length and
SHA-256) before moto answers it. moto accepts any presigned URL (it checks neither the
signature, nor the expiry, nor ``x-amz-checksum-sha256``), so the front can be told to
refuse given URLs as S3 refuses an expired one (403 ``AccessDenied``): the fault moto
cannot produce. :func:`recording_app` wraps the API's ASGI app so a test sees the bytes
of every request body the API received.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest

from backend_stub import localaws

EXPIRED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Request has expired</Message></Error>"
)


@dataclasses.dataclass
class Seen:
    """One request as the front received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: int
    body_sha256_b64: str

    @property
    def presigned(self) -> bool:
        return "X-Amz-Signature" in self.query


class S3Front:
    """moto on its own loopback port, recording (see the module)."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        self.seen: list[Seen] = []
        #: Signatures of URLs to refuse once as expired (a URL signed again in the same
        #: second is the same URL: the second use stands for the fresh one).
        self.expired: set[str] = set()
        self._lock = threading.Lock()
        self._inner = localaws.serialized(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            "127.0.0.1", 0, self._app, True, request_handler=MotoRequestHandler
        )
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        headers = {
            k[5:].replace("_", "-").lower(): str(v) for k, v in environ.items() if k[:5] == "HTTP_"
        }
        if "CONTENT_LENGTH" in environ:
            headers["content-length"] = str(environ["CONTENT_LENGTH"])
        seen = Seen(
            environ["REQUEST_METHOD"],
            environ.get("PATH_INFO", ""),
            query,
            headers,
            len(body),
            base64.b64encode(hashlib.sha256(body).digest()).decode(),
        )
        with self._lock:
            self.seen.append(seen)
            refused = query.get("X-Amz-Signature") in self.expired
            self.expired.discard(query.get("X-Amz-Signature", ""))
        if refused:
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
            return [EXPIRED]
        if len(body) < length:  # a body cut off (a client killed): S3 keeps nothing of it
            start_response("400 Bad Request", [("Content-Type", "application/xml")])
            return [b"<Error><Code>IncompleteBody</Code></Error>"]
        return self._inner(environ, start_response)

    def presigned(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.presigned]

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)


@pytest.fixture(scope="session")
def s3_front(moto_endpoint: str) -> Iterator[S3Front]:
    """The recording front (moto's credentials and patches are those of ``moto_endpoint``)."""
    front = S3Front()
    yield front
    front.stop()


def recording_app(app: Any, bodies: list[tuple[str, str, int]]) -> Any:
    """``app``, appending ``(method, path, body bytes received)`` per request to ``bodies``."""

    async def recorded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        entry = [scope["method"], scope["path"], 0]

        async def counted() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                entry[2] += len(message.get("body", b""))
            return message

        try:
            await app(scope, counted, send)
        finally:
            bodies.append((entry[0], entry[1], entry[2]))

    return recorded


class ThreadedApi:
    """An ASGI app served by uvicorn on a loopback port, in a thread (a child process can
    reach it)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
