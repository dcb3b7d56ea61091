"""Requests to the signed storage URLs a server hands out for direct attachment transfer
(S3 presigned URLs behind API Gateway + Lambda, where a chunk does not fit through the API).

The URL carries its own authorization: no bearer token goes there (the request goes out
on the transport's own plain client, never the API's), and only its scheme, host and
path reach the logs (its query string is a credential for a while). The transport's retry
policy applies as for any call; a 403 means the URL expired or no longer fits, and
:class:`SignedUrlRefused` tells the caller to ask the server for a fresh one::

    >>> import httpx
    >>> client = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(
    ...     lambda request: httpx.Response(403, text="<Code>AccessDenied</Code>")))
    >>> from .http import Transport
    >>> transport = Transport(client, user_id="u1", token="t")
    >>> transport._direct = client
    >>> send(transport, "blob chunk upload", "PUT", "http://s3.test/b/k?X-Amz-Signature=s",
    ...      content=b"", headers={})
    Traceback (most recent call last):
    ...
    sdk._transport.direct.SignedUrlRefused: ... http://s3.test/b/k (403 AccessDenied); ...
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import httpx

from .._errors import AuthError, OfflineError, ProtocolError, RefusedError, ServerError
from .http import _RETRY_STATUSES, _UNREACHABLE, Transport

__all__ = ["SignedUrlRefused", "send", "shown"]

logger = logging.getLogger(__name__)

_CODE = re.compile(r"<Code>([^<]{1,64})</Code>")


class SignedUrlRefused(AuthError):
    """The storage refused a signed URL (403: expired, or signed for other headers):
    ask the server for a fresh one. Raised when a fresh one is refused too."""


def shown(url: str) -> str:
    """``url`` without its query string, the part that is a credential.

    >>> shown("https://b.s3.amazonaws.com/k?X-Amz-Signature=secret")
    'https://b.s3.amazonaws.com/k'
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def send(
    transport: Transport,
    op: str,
    method: str,
    url: str,
    *,
    content: bytes | Iterable[bytes] | None = None,
    headers: Mapping[str, str],
) -> httpx.Response:
    """Send to a signed URL until a 2xx answer arrives or the retries run out."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ProtocolError(
            f"{op}: the server handed out {shown(url)!r} as a storage URL; the server and the "
            "SDK disagree on the wire contract, update whichever is older"
        )
    client = transport._direct_client()
    run = transport._retrier.start()
    while True:
        try:
            response = client.request(method, url, content=content, headers=dict(headers))
        except _UNREACHABLE as exc:
            decision = run.next_delay()
            if not decision.retry:
                raise OfflineError(
                    f"{op}: cannot reach the storage at {shown(url)}: {type(exc).__name__}; "
                    f"gave up ({decision.reason}); it resumes when the storage is reachable"
                ) from exc
            logger.warning("%s %s: %s; retrying", method, shown(url), type(exc).__name__)
            run.wait(decision)
            continue
        except httpx.HTTPError as exc:
            raise ProtocolError(
                f"{op}: {method} {shown(url)} failed: {type(exc).__name__}: {exc}"
            ) from exc
        status = response.status_code
        if 200 <= status < 300:
            return response
        found = _CODE.search(response.text[:4096])
        said = f"{status} {found.group(1) if found else response.reason_phrase}"
        if status in _RETRY_STATUSES:
            decision = run.next_delay()
            if not decision.retry:
                raise ServerError(
                    f"{op}: the storage answered {method} {shown(url)} with {said}; gave up "
                    f"({decision.reason}); it resumes when called again",
                    status=status,
                )
            logger.warning("%s %s: answered %s; retrying", method, shown(url), said)
            run.wait(decision)
            continue
        if status == 403:
            raise SignedUrlRefused(
                f"{op}: the storage refused the signed URL {shown(url)} ({said}); ask the "
                "server for a fresh one",
                status=status,
                code=found.group(1) if found else None,
                problem={},
            )
        raise RefusedError(
            f"{op}: the storage refused {method} {shown(url)} with {said}; the content "
            "sent does not match what the server signed for, retry the upload",
            status=status,
            code=found.group(1) if found else None,
            problem={},
        )
