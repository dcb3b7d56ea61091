"""The one module that speaks HTTP to the migration server.

:class:`Transport` wraps an injected :class:`httpx.Client` whose ``base_url`` is the server's
root. It adds the token and the wire contract's headers, retries what is worth retrying (see
:mod:`sdk._transport.retry`), parses answers into the contract's models (in their light
form, :mod:`sdk._wire.models`, so no pydantic is needed), and translates every failure of
the layer below into the SDK's error tree, chained, so no httpx exception leaks::

    >>> import httpx
    >>> def server(request: httpx.Request) -> httpx.Response:
    ...     return httpx.Response(200, json={"sessionId": "s1", "status": "uploading",
    ...         "progress": 0.5, "currentStep": "uploading", "batchCount": 2,
    ...         "receivedBatches": [0]})
    >>> client = httpx.Client(base_url="http://test", transport=httpx.MockTransport(server))
    >>> with Transport(client, user_id="u1", token="t0k3n") as transport:
    ...     transport.status("s1").received_batches
    [0]

Every call of the protocol is idempotent (``start`` on its migration id, batches on
(session, seq, checksum), and so on), so every call is retried. Failures end as
:class:`~sdk._errors.OfflineError` (the server could not be reached),
:class:`~sdk._errors.ServerError` (5xx or 429 outlasted the retries),
:class:`~sdk._errors.RefusedError` and its subclasses (4xx, with the problem+json body) or
:class:`~sdk._errors.ProtocolError` (an answer that breaks the contract).
"""

from __future__ import annotations

import gzip as gzip_module
import logging
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, TypeAlias, TypeVar
from urllib.parse import quote

import httpx

from .._errors import (
    AuthError,
    ConfigurationError,
    ConflictError,
    EndpointError,
    InvalidRequestError,
    NotFoundError,
    OfflineError,
    ProtocolError,
    RefusedError,
    ServerError,
    TransportError,
)
from .._failpoints import failpoint
from .._wire.canonical import API_PREFIX, CHECKSUM_HEADER, USER_ID_PATTERN, ProblemCode
from .._wire.models import (
    BatchReceipt,
    CompleteMigrationRequest,
    CompleteMigrationResponse,
    DataConflict,
    DataConflicts,
    DetectMigrationResponse,
    GetMigrationStatusResponse,
    GetMigrationSummaryResponse,
    Limits,
    PlanEntry,
    PlanResponse,
    PushResponse,
    ResolveConflictsRequest,
    ResolveConflictsResponse,
    StartMigrationRequest,
    StartMigrationResponse,
    SyncStateResponse,
)
from .._wire.validate import WireError, WireModel, parse
from .retry import (
    Retrier,
    RetryDecision,
    RetryPolicy,
    RetryRun,
    parse_http_date,
    parse_retry_after,
)

__all__ = ["Exchange", "TokenSource", "Transport"]

logger = logging.getLogger(__name__)

#: A bearer token, or a function returning a fresh one (asked before every attempt).
TokenSource: TypeAlias = str | Callable[[], str]

_Model = TypeVar("_Model", bound=WireModel)

# Failures where the request may never have reached the server, or its answer never came back:
# the server may be down or the device offline, so waiting and trying again can help.
_UNREACHABLE = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.ProxyError,
    httpx.RemoteProtocolError,
)
# TLS errors that are a connection cut mid-handshake (a flaky mobile network), not a setup
# mistake: these stay "offline". Every other ssl.SSLError under a connect error is a setup
# mistake (a certificate that cannot be verified, https:// to a plain-HTTP server) that no
# retry can fix.
_TLS_NETWORK_ERRORS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Only these two carry a Retry-After that means "come back then" (RFC 9110 §10.2.3).
_RETRY_AFTER_STATUSES = frozenset({429, 503})
# RFC 6750 tokens are visible ASCII; anything else (spaces, newlines) would corrupt the header.
_TOKEN = re.compile(r"[\x21-\x7e]+")
_CHECKSUM = re.compile(r"[0-9a-f]{64}")
_USER_ID = re.compile(USER_ID_PATTERN)

_ADVICE_BY_CODE: dict[str, str] = {
    ProblemCode.UNAUTHENTICATED.value: (
        "the token is missing, invalid or expired; sign the user in again, or pass a token "
        "provider that returns a fresh token"
    ),
    ProblemCode.FORBIDDEN.value: (
        "the token was issued for another user; use the signed-in user's own id and token"
    ),
    ProblemCode.NOT_FOUND.value: (
        "the session no longer exists or belongs to another user; call status() and start "
        "a new migration if needed"
    ),
    ProblemCode.ALREADY_MIGRATED.value: "this user's data is already in the cloud",
    ProblemCode.ACTIVE_SESSION.value: (
        "another migration is in progress for this user; resume or cancel it first"
    ),
    ProblemCode.INVALID_STATE.value: (
        "the session's state does not allow this step; call status() and resume from there"
    ),
    ProblemCode.BATCH_OUT_OF_RANGE.value: (
        "the batch number is outside the manifest's plan; rebuild the batch plan"
    ),
    ProblemCode.BATCH_MISMATCH.value: (
        "the server holds different content under this batch number, so the snapshot "
        "changed since the upload began; cancel and start a new migration"
    ),
    ProblemCode.DUPLICATE_ITEM.value: "an item occurs twice in the upload; rebuild the snapshot",
    ProblemCode.BATCHES_MISSING.value: (
        "upload the batches that status() does not list as received, then complete again"
    ),
    ProblemCode.CONFLICTS_UNRESOLVED.value: (
        "resolve the remaining conflicts, then complete again"
    ),
    ProblemCode.CHECKSUM_MISMATCH.value: (
        "what the server received does not add up to the manifest's checksum; rebuild the "
        "snapshot and start a new migration"
    ),
    ProblemCode.BAD_CHECKSUM.value: (
        "the batch does not match its X-Content-SHA256; recompute it over the uncompressed body"
    ),
    ProblemCode.SESSION_EXPIRED.value: "the session expired; start a new migration",
    ProblemCode.VERSION_CONFLICT.value: (
        "the session changed at the same time; call status() and try again"
    ),
    ProblemCode.PAYLOAD_TOO_LARGE.value: (
        "send smaller batches, within the limits that detect() reports"
    ),
    ProblemCode.UNSUPPORTED_DATA_VERSION.value: (
        "the server does not accept this data version; update the app"
    ),
    ProblemCode.METHOD_NOT_ALLOWED.value: (
        "the server does not offer this call; check that client and server versions match"
    ),
    ProblemCode.PUSH_MISMATCH.value: (
        "this push id was used for other changes; the SDK sends each set of changes under "
        "a new push id, so report this as a bug"
    ),
}

_CONTRACT_BUG = (
    "the request does not follow the wire contract; this is a bug in the SDK or the app, "
    "please report it with the problem details"
)
_ADVICE_BY_STATUS: dict[int, str] = {
    401: _ADVICE_BY_CODE[ProblemCode.UNAUTHENTICATED.value],
    403: _ADVICE_BY_CODE[ProblemCode.FORBIDDEN.value],
    404: _ADVICE_BY_CODE[ProblemCode.NOT_FOUND.value],
    409: "the request clashes with the session's state; call status() and resume from there",
    413: _ADVICE_BY_CODE[ProblemCode.PAYLOAD_TOO_LARGE.value],
    415: _CONTRACT_BUG,
    400: _CONTRACT_BUG,
    422: _CONTRACT_BUG,
}

_REFUSED_BY_STATUS: dict[int, type[RefusedError]] = {
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    400: InvalidRequestError,
    413: InvalidRequestError,
    415: InvalidRequestError,
    422: InvalidRequestError,
}


@dataclass(frozen=True, slots=True)
class Exchange:
    """One round trip, timed by the local wall clock, for measuring the clock offset.

    The caller compares a response's ``serverTime`` with the midpoint of ``sent_at_ms`` and
    ``received_at_ms``; ``date`` is the response's ``Date`` header (second precision) for
    answers that carry no ``serverTime``.

    >>> e = Exchange(sent_at_ms=1000, received_at_ms=1200, date="Thu, 01 Jan 1970 00:00:01 GMT")
    >>> (e.round_trip_ms, e.midpoint_ms, e.date_ms)
    (200, 1100, 1000)
    """

    sent_at_ms: int
    received_at_ms: int
    date: str | None = None

    @property
    def round_trip_ms(self) -> int:
        """Milliseconds between sending the request and receiving the answer.

        >>> Exchange(sent_at_ms=5, received_at_ms=8).round_trip_ms
        3
        """
        return self.received_at_ms - self.sent_at_ms

    @property
    def midpoint_ms(self) -> int:
        """The local time the server most likely answered at (half-way through the trip).

        >>> Exchange(sent_at_ms=0, received_at_ms=10).midpoint_ms
        5
        """
        return (self.sent_at_ms + self.received_at_ms) // 2

    @property
    def date_ms(self) -> int | None:
        """The ``Date`` header in ms since the epoch, or ``None`` if absent or unreadable.

        >>> Exchange(sent_at_ms=0, received_at_ms=0, date="garbage").date_ms is None
        True
        """
        seconds = parse_http_date(self.date)
        return None if seconds is None else round(seconds * 1000)


class Transport:
    """HTTP client of the migration API for one user.

    ``client`` is an :class:`httpx.Client` whose ``base_url`` is the server's root (it is not
    closed by :meth:`close`, its owner closes it). ``token`` is a bearer token or a function
    returning a fresh one; a function is asked before every attempt, and once more after a
    401. ``sleep``, ``clock`` (monotonic, for the retry budget), ``rng`` (jitter) and
    ``wall_clock`` (epoch seconds, for :attr:`last_exchange` and ``Retry-After`` dates) are
    injectable so tests never wait. Safe to share between threads, as the client is.

    >>> transport = Transport(httpx.Client(base_url="http://127.0.0.1:8000"),
    ...                       user_id="user@example.com", token=lambda: "fresh-token")
    >>> transport.base_path
    '/api/migration/user%40example.com'
    >>> transport.close()
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        user_id: str,
        token: TokenSource,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(client, httpx.Client):
            raise ConfigurationError(f"client must be an httpx.Client, got {type(client).__name__}")
        if client.base_url.scheme not in ("http", "https") or not client.base_url.host:
            raise ConfigurationError(
                f"the httpx.Client needs a base_url such as http://127.0.0.1:8000 pointing at "
                f"the migration server's root, got {str(client.base_url)!r}"
            )
        if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
            raise ConfigurationError(
                f"user_id must match {USER_ID_PATTERN} (the wire contract's user ids), "
                f"got {user_id!r}"
            )
        if isinstance(token, str):
            _check_token(token, "token")
        elif not callable(token):
            raise ConfigurationError(
                f"token must be a str or a function returning one, got {type(token).__name__}"
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        self._client = client
        self._owns_client = False
        self._token = token
        self._retrier = Retrier(retry, sleep=sleep, clock=clock, rng=rng)
        self._wall_clock = wall_clock
        self.user_id = user_id
        #: The base path of this user's API, the user id percent-encoded as one segment.
        self.base_path = f"{API_PREFIX}/{quote(user_id, safe='')}"
        #: The last round trip that got an answer (any status); ``None`` before the first.
        self.last_exchange: Exchange | None = None
        #: The limits the server advertised at the last ``detect`` (``None`` before one).
        self.limits: Limits | None = None
        self._direct: httpx.Client | None = None
        self._direct_lock = threading.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        user_id: str,
        token: TokenSource,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> Transport:
        """Build a transport with its own :class:`httpx.Client`, which :meth:`close` closes.

        ``timeout`` is httpx's per-request timeout (connect, read, write, pool) in seconds;
        the retry policy's ``timeout`` bounds the whole call.

        >>> with Transport.from_url("http://127.0.0.1:8000", user_id="u1", token="t") as t:
        ...     t.base_path
        '/api/migration/u1'
        """
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"url must be the server's root, such as http://127.0.0.1:8000, got {url!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        try:
            client = httpx.Client(base_url=url, timeout=httpx.Timeout(timeout))
        except httpx.InvalidURL as exc:
            raise ConfigurationError(f"url is not a valid URL: {url!r} ({exc})") from exc
        try:
            transport = cls(
                client,
                user_id=user_id,
                token=token,
                retry=retry,
                sleep=sleep,
                clock=clock,
                rng=rng,
                wall_clock=wall_clock,
            )
        except BaseException:
            client.close()
            raise
        transport._owns_client = True
        return transport

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the HTTP client if :meth:`from_url` created it; an injected one stays open.

        >>> t = Transport.from_url("http://127.0.0.1:8000", user_id="u1", token="t")
        >>> t.close()
        """
        if self._owns_client:
            self._client.close()
        if self._direct is not None:
            self._direct.close()
            self._direct = None

    def _direct_client(self) -> httpx.Client:
        """The client for signed storage URLs (direct attachment transfer): its own, so
        neither the token nor anything set on the API's client reaches another host."""
        with self._direct_lock:
            if self._direct is None:
                self._direct = httpx.Client(timeout=self._client.timeout, follow_redirects=False)
            return self._direct

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ the calls

    def detect(
        self,
        *,
        has_local_data: bool,
        item_count: int,
        data_version: int | None,
        device_id: str | None,
    ) -> DetectMigrationResponse:
        """``GET /detect``: tell the server what the device holds, learn whether it may migrate.

        >>> transport.detect(has_local_data=True, item_count=42, data_version=1,
        ...                  device_id="d1").can_migrate  # doctest: +SKIP
        True
        """
        _check_count("item_count", item_count)
        params: dict[str, str | int] = {
            "hasLocalData": "true" if has_local_data else "false",
            "itemCount": item_count,
        }
        if data_version is not None:
            params["dataVersion"] = data_version
        if device_id is not None:
            params["deviceId"] = device_id
        try:
            answer = self._call("detect", "GET", "/detect", DetectMigrationResponse, params=params)
            self.limits = answer.limits
            return answer
        except NotFoundError as exc:
            # detect names no resource that could be missing: a 404 means the URL is not the
            # migration server's (a wrong host, path prefix or port), whatever the body says.
            raise EndpointError(
                f"detect: {self._url(self.base_path + '/detect')} answered 404 Not Found, so "
                "this is not the migration server's address; check the server URL (its "
                "root, such as https://api.example.com, without /api/migration) and the "
                "port"
            ) from exc

    def start(self, request: StartMigrationRequest) -> StartMigrationResponse:
        """``POST /start``; the same ``migration_id`` always returns the same session.

        >>> transport.start(request).session_id  # doctest: +SKIP
        'sess-123'
        """
        response = self._call(
            "start", "POST", "/start", StartMigrationResponse, json=request.wire()
        )
        if response.migration_id != request.migration_id:
            raise ProtocolError(
                f"start: the server answered for migration {response.migration_id!r} instead "
                f"of {request.migration_id!r}; check that the server URL is the migration server"
            )
        return response

    def put_batch(
        self, session_id: str, seq: int, body: bytes, checksum: str, *, gzip: bool = False
    ) -> BatchReceipt:
        """``PUT /sessions/{id}/batches/{seq}``; replaying the same batch returns its receipt.

        ``body`` is the uncompressed JSON ``{"items": [...]}`` and ``checksum`` its hex
        SHA-256 (see :func:`sdk.contract.batch_checksum`); ``gzip=True`` compresses it on the
        wire only.

        >>> body = batch_body([canonical_item(item)])  # doctest: +SKIP
        >>> transport.put_batch("sess-123", 0, body, batch_checksum(body)).seq  # doctest: +SKIP
        0
        """
        sid = _segment("session_id", session_id)
        _check_count("seq", seq)
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise ConfigurationError(f"body must be bytes, got {type(body).__name__}")
        if not isinstance(checksum, str) or not _CHECKSUM.fullmatch(checksum):
            raise ConfigurationError(
                f"checksum must be 64 lowercase hex digits (SHA-256 of the body), got {checksum!r}"
            )
        headers = {"Content-Type": "application/json", CHECKSUM_HEADER: checksum}
        content = bytes(body)
        if gzip:
            # mtime=0 keeps the compressed bytes identical across retries and replays.
            content = gzip_module.compress(content, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
        receipt = self._call(
            "put_batch",
            "PUT",
            f"/sessions/{sid}/batches/{seq}",
            BatchReceipt,
            content=content,
            headers=headers,
        )
        failpoint("batch.sent")  # the server holds the batch; the engine has not seen it
        if receipt.seq != seq or receipt.checksum.lower() != checksum:
            raise ProtocolError(
                f"put_batch: the server acknowledged batch {receipt.seq} with checksum "
                f"{receipt.checksum!r} for batch {seq} with checksum {checksum!r}; the batch "
                "was not confirmed, ask status() before sending it again"
            )
        return receipt

    def status(self, session_id: str | None = None) -> GetMigrationStatusResponse:
        """``GET /status``: which batches the server holds (the truth, after any restart).

        >>> transport.status("sess-123").received_batches  # doctest: +SKIP
        [0, 1, 3]
        """
        params = {} if session_id is None else {"sessionId": _text("session_id", session_id)}
        return self._call("status", "GET", "/status", GetMigrationStatusResponse, params=params)

    def conflicts(
        self, session_id: str, *, cursor: str | None = None, limit: int | None = None
    ) -> DataConflicts:
        """``GET /sessions/{id}/conflicts``: one page; pass ``next_cursor`` for the next.

        >>> page = transport.conflicts("sess-123", limit=100)  # doctest: +SKIP
        >>> page.next_cursor  # doctest: +SKIP
        'c-100'
        """
        sid = _segment("session_id", session_id)
        params: dict[str, str | int] = {}
        if cursor is not None:
            params["cursor"] = _text("cursor", cursor)
        if limit is not None:
            _check_count("limit", limit, minimum=1)
            params["limit"] = limit
        return self._call(
            "conflicts", "GET", f"/sessions/{sid}/conflicts", DataConflicts, params=params
        )

    def iter_conflicts(
        self, session_id: str, *, limit: int | None = None
    ) -> Iterator[DataConflict]:
        """Every conflict of a session, page after page, following ``next_cursor``.

        >>> [c.key for c in transport.iter_conflicts("sess-123")]  # doctest: +SKIP
        ['lesson-1', 'lesson-7']
        """
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            page = self.conflicts(session_id, cursor=cursor, limit=limit)
            yield from page.conflicts
            cursor = page.next_cursor
            if cursor is None:
                return
            if cursor in seen:
                # A server that hands back an old cursor would keep us paging forever.
                raise ProtocolError(
                    f"conflicts: the server returned cursor {cursor!r} a second time; paging "
                    "stopped to avoid an endless loop, please report this server bug"
                )
            seen.add(cursor)

    def resolve(self, request: ResolveConflictsRequest) -> ResolveConflictsResponse:
        """``POST /resolve-conflicts``; replaying the same resolutions changes nothing.

        >>> transport.resolve(ResolveConflictsRequest(session_id="sess-123",
        ...     resolutions=[Resolution(conflict_id="c1", choice="server")])
        ... ).remaining_conflicts  # doctest: +SKIP
        0
        """
        return self._call(
            "resolve", "POST", "/resolve-conflicts", ResolveConflictsResponse, json=request.wire()
        )

    def plan(self, entries: list[PlanEntry]) -> PlanResponse:
        """``POST /plan``: what the cloud holds under these keys (read-only). ``entries``
        are plain dicts, ascending by (collection, key); the answer has one outcome each.

        >>> transport.plan([{"collection": "c", "key": "k", "digest": "0" * 64}]
        ...                ).outcomes  # doctest: +SKIP
        ['new']
        """
        # The entries are already wire dicts: no model object per entry on the way out.
        answer = self._call("plan", "POST", "/plan", PlanResponse, json={"entries": entries})
        if len(answer.outcomes) != len(entries):
            raise ProtocolError(
                f"plan: the server answered {len(answer.outcomes)} outcomes for "
                f"{len(entries)} entries; the server and the SDK disagree on the wire "
                "contract, update whichever is older"
            )
        return answer

    def complete(
        self, session_id: str, request: CompleteMigrationRequest
    ) -> CompleteMigrationResponse:
        """``POST /sessions/{id}/complete``: commit; after completion it returns the same result.

        >>> transport.complete("sess-123", CompleteMigrationRequest(
        ...     dataset_checksum=manifest.dataset_checksum)).status  # doctest: +SKIP
        <SessionStatus.COMPLETED: 'completed'>
        """
        sid = _segment("session_id", session_id)
        return self._call(
            "complete",
            "POST",
            f"/sessions/{sid}/complete",
            CompleteMigrationResponse,
            json=request.wire(),
        )

    def summary(self, session_id: str | None = None) -> GetMigrationSummaryResponse:
        """``GET /summary``: result, counts, checksums and recommendations.

        >>> transport.summary("sess-123").summary.verified  # doctest: +SKIP
        True
        """
        params = {} if session_id is None else {"sessionId": _text("session_id", session_id)}
        return self._call("summary", "GET", "/summary", GetMigrationSummaryResponse, params=params)

    def cancel(self, session_id: str) -> GetMigrationStatusResponse:
        """``DELETE /sessions/{id}``: cancel the session; the server purges what it staged.

        >>> transport.cancel("sess-123").status  # doctest: +SKIP
        <SessionStatus.CANCELLED: 'cancelled'>
        """
        sid = _segment("session_id", session_id)
        return self._call("cancel", "DELETE", f"/sessions/{sid}", GetMigrationStatusResponse)

    # ------------------------------------------------------------------ machinery

    # ------------------------------------------------------------------ sync

    def push(self, body: bytes) -> PushResponse:
        """``POST /sync/push`` with a :class:`~sdk.contract.PushRequest` body already encoded
        (the SDK keeps the exact bytes, so a push retried after a crash is the same push).

        >>> transport.push(request_json).results[0].outcome  # doctest: +SKIP
        'applied'
        """
        return self._call(
            "push",
            "POST",
            "/sync/push",
            PushResponse,
            content=body,
            headers={"Content-Type": "application/json"},
        )

    def pull(
        self, *, since: str | None, until: int | None, limit: int, device_id: str | None = None
    ) -> bytes:
        """``GET /sync/changes``: one page's body, as the server sent it. The caller reads
        it with :class:`sdk._sync.page.PulledPage`, which checks that it is a
        :class:`~sdk.contract.PullResponse` and parses its items one at a time as they are
        written into the store (a large bootstrap builds no model per item).

        >>> transport.pull(since=None, until=None, limit=1000)[:12]  # doctest: +SKIP
        b'{"changes":['
        """
        params: dict[str, str | int] = {"limit": _count("limit", limit, minimum=1)}
        if since:
            params["since"] = _text("since", since)
        if until is not None:
            params["until"] = _count("until", until)
        if device_id is not None:
            params["deviceId"] = _text("device_id", device_id)
        return self._request("pull", "GET", "/sync/changes", params=params).content

    def sync_state(
        self, *, full: bool = False, since: str | None = None, device_id: str | None = None
    ) -> SyncStateResponse:
        """``GET /sync/state``: the cloud's head, item count and checksum; ``full``
        recomputes the checksum from every item on the server; ``since`` (a cursor) also
        counts what a pull from there would bring to ``device_id``.

        >>> transport.sync_state().seq  # doctest: +SKIP
        42
        """
        params: dict[str, str | int] = {"full": "true" if full else "false"}
        if since is not None:
            params["since"] = _text("since", since)
        if device_id is not None:
            params["deviceId"] = _text("device_id", device_id)
        return self._call("sync state", "GET", "/sync/state", SyncStateResponse, params=params)

    def _call(
        self,
        op: str,
        method: str,
        path: str,
        model: type[_Model],
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        content: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Model:
        response = self._request(
            op, method, path, params=params, json=json, content=content, headers=headers
        )
        try:
            data = response.json()
        except (ValueError, RecursionError) as exc:  # nested too deep for the parser
            raise ProtocolError(
                f"{op}: the server's {response.status_code} answer is not JSON ({exc}); check "
                "that the URL points at the migration server"
            ) from exc
        try:
            return parse(model, data)
        except WireError as exc:
            raise ProtocolError(
                f"{op}: the server's answer is not a valid {model.__name__}: "
                f"{_summarize(exc)}; the server and the SDK disagree on the wire contract, "
                "update whichever is older"
            ) from exc

    def _request(
        self,
        op: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        content: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
        redirect: bool = False,
    ) -> httpx.Response:
        """Send until a 2xx answer arrives or the retries run out; return that answer
        (``redirect``: a redirect too, not followed, so the token stays on this host)."""
        url_path = self.base_path + path
        run = self._retrier.start()
        token_refreshed = False
        while True:
            all_headers = {
                "Authorization": f"Bearer {self._bearer()}",
                "Accept": "application/json",
                **(headers or {}),
            }
            sent_at = self._wall_clock()
            try:
                response = self._client.request(
                    method,
                    url_path,
                    params=params,
                    json=json,
                    content=content,
                    headers=all_headers,
                    follow_redirects=False if redirect else httpx.USE_CLIENT_DEFAULT,
                )
            except _UNREACHABLE as exc:
                self._raise_if_tls_setup(op, url_path, exc)
                decision = self._decide(run, idempotent, None)
                if not decision.retry:
                    self._raise_offline(op, url_path, exc, decision)
                self._log_retry(method, url_path, _describe(exc), run, decision)
                run.wait(decision)
                continue
            except httpx.UnsupportedProtocol as exc:
                raise ConfigurationError(
                    f"{op}: cannot send to {self._url(url_path)}: {exc}; the client's base_url "
                    "must be an http:// or https:// URL"
                ) from exc
            except (httpx.DecodingError, httpx.TooManyRedirects) as exc:
                raise ProtocolError(
                    f"{op}: the server's answer to {method} {url_path} could not be read: "
                    f"{_describe(exc)}; check that the URL points at the migration server"
                ) from exc
            except httpx.InvalidURL as exc:
                raise ConfigurationError(
                    f"{op}: {method} {url_path} is not a valid URL: {exc}"
                ) from exc
            except (httpx.HTTPError, httpx.StreamError, httpx.CookieConflict) as exc:
                # LocalProtocolError and the like: the request itself could not be built.
                raise TransportError(
                    f"{op}: {method} {url_path} could not be sent: {_describe(exc)}; this is "
                    "a bug in the SDK, please report it"
                ) from exc
            self.last_exchange = Exchange(
                sent_at_ms=round(sent_at * 1000),
                received_at_ms=round(self._wall_clock() * 1000),
                date=response.headers.get("Date"),
            )
            status = response.status_code
            if 200 <= status < 300 or (redirect and response.has_redirect_location):
                return response
            if status == 401 and callable(self._token) and not token_refreshed and idempotent:
                # One more try with a freshly asked token: it may just have expired in flight.
                token_refreshed = True
                logger.info("%s %s: 401, asking the token provider again", method, url_path)
                continue
            if status in _RETRY_STATUSES:
                decision = self._decide(run, idempotent, self._retry_after(response))
                if not decision.retry:
                    self._raise_server(op, method, url_path, response, decision)
                what = f"answered {status} {response.reason_phrase}"
                self._log_retry(method, url_path, what, run, decision)
                run.wait(decision)
                continue
            self._raise_status(op, method, url_path, response)

    def _log_retry(
        self, method: str, path: str, what: str, run: RetryRun, decision: RetryDecision
    ) -> None:
        # Only method and path: headers (the token) never reach the logs.
        logger.warning(
            "%s %s: %s; retrying in %.2f s (attempt %d of %d)",
            method,
            path,
            what,
            decision.delay,
            run.failures + 1,
            self._retrier.policy.attempts,
        )

    def _decide(self, run: RetryRun, idempotent: bool, retry_after: float | None) -> RetryDecision:
        if not idempotent:
            return RetryDecision(None, "the request is not idempotent, so it is never retried")
        return run.next_delay(retry_after)

    def _retry_after(self, response: httpx.Response) -> float | None:
        if response.status_code not in _RETRY_AFTER_STATUSES:
            return None
        return parse_retry_after(
            response.headers.get("Retry-After"),
            now=self._wall_clock(),
            server_now=parse_http_date(response.headers.get("Date")),
        )

    def _bearer(self) -> str:
        if isinstance(self._token, str):
            return self._token
        token = self._token()
        _check_token(token, "the token provider's result")
        return token

    def _url(self, path: str) -> str:
        return str(self._client.base_url).rstrip("/") + path

    def _raise_offline(
        self,
        op: str,
        path: str,
        exc: httpx.TransportError,
        decision: RetryDecision,
    ) -> NoReturn:
        raise OfflineError(
            f"{op}: cannot reach {self._url(path)}: {_describe(exc)}; gave up "
            f"({decision.reason}); the migration will resume when the server is reachable"
        ) from exc

    def _raise_if_tls_setup(self, op: str, path: str, exc: httpx.TransportError) -> None:
        """Raise :class:`EndpointError` when ``exc`` is a TLS set-up mistake, not a network
        failure: waiting for the network would never end."""
        tls = _tls_cause(exc)
        if tls is None:
            return
        url = self._url(path)
        detail = tls.reason or str(tls)
        if isinstance(tls, ssl.SSLCertVerificationError):
            detail = f"{detail}: {tls.verify_message}"
            advice = (
                "check that the server URL's host name is the one on the server's certificate "
                "and that the certificate is issued by a CA this device trusts (an app that "
                "bundles Python must ship a CA bundle, such as certifi's); for a private CA, "
                "pass http_client=httpx.Client(base_url=..., verify=ssl_context)"
            )
        else:
            advice = (
                "check the URL's scheme and port: https:// needs a server speaking TLS there "
                "(the embedded `python -m backend_stub` speaks plain http://)"
            )
        raise EndpointError(
            f"{op}: the TLS connection to {url} failed ({type(tls).__name__}: {detail}); {advice}"
        ) from exc

    def _raise_server(
        self,
        op: str,
        method: str,
        path: str,
        response: httpx.Response,
        decision: RetryDecision,
    ) -> NoReturn:
        problem = _problem(response)
        detail = problem.get("detail") or problem.get("title")
        said = f" ({detail})" if isinstance(detail, str) and detail else ""
        code = problem.get("code")
        raise ServerError(
            f"{op}: the server answered {method} {path} with {response.status_code} "
            f"{response.reason_phrase}{said}; gave up ({decision.reason}); the migration "
            "is safe and resumes when called again, try again in a few minutes",
            status=response.status_code,
            code=code if isinstance(code, str) else None,
        ) from _status_exception(response)

    def _raise_status(self, op: str, method: str, path: str, response: httpx.Response) -> NoReturn:
        status = response.status_code
        cause = _status_exception(response)
        if 400 <= status < 500:
            problem = _problem(response)
            raw_code = problem.get("code")
            code = raw_code if isinstance(raw_code, str) else None
            title = problem.get("title")
            detail = problem.get("detail")
            said = title if isinstance(title, str) and title else response.reason_phrase
            if isinstance(detail, str) and detail and detail != said:
                said = f"{said}: {detail}"
            advice = _ADVICE_BY_CODE.get(code or "") or _ADVICE_BY_STATUS.get(
                status, "the request was refused; check the problem details"
            )
            error_type = _REFUSED_BY_STATUS.get(status, RefusedError)
            raise error_type(
                f"{op}: the server refused {method} {path} with {status} ({said}); {advice}",
                status=status,
                code=code,
                problem=problem,
            ) from cause
        if 500 <= status < 600:
            # 501, 505 and friends: retrying cannot change the answer.
            raise ServerError(
                f"{op}: the server answered {method} {path} with {status} "
                f"{response.reason_phrase}; check that client and server versions match",
                status=status,
            ) from cause
        raise ProtocolError(
            f"{op}: the server answered {method} {path} with an unexpected {status} "
            f"{response.reason_phrase}; a redirect usually means a wrong scheme or a proxy in "
            "the way, check the server URL"
        ) from cause


# ---------------------------------------------------------------------- helpers


def _check_token(token: object, what: str) -> None:
    # Never echo the token itself: messages end up in logs and crash reports.
    if not isinstance(token, str):
        raise ConfigurationError(f"{what} must be a str, got {type(token).__name__}")
    if token.lower().startswith("bearer "):
        raise ConfigurationError(f"{what} must be the bare token, without the 'Bearer ' prefix")
    if not _TOKEN.fullmatch(token):
        raise ConfigurationError(
            f"{what} must be a non-empty string of visible ASCII characters (no spaces or "
            "line breaks)"
        )


def _count(name: str, value: object, *, minimum: int = 0) -> int:
    _check_count(name, value, minimum=minimum)
    return value  # type: ignore[return-value]


def _check_count(name: str, value: object, *, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty str, got {value!r}")
    return value


def _segment(name: str, value: object) -> str:
    text = _text(name, value)
    # URL normalisation would turn these into "this folder" / "the parent folder".
    if text in (".", ".."):
        raise ConfigurationError(f"{name} must not be {text!r}")
    return quote(text, safe="")


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The :class:`ssl.SSLError` a connect error wraps (httpx chains httpcore's error,
    which chains ssl's), unless it is a connection cut mid-handshake."""
    if not isinstance(exc, httpx.ConnectError):
        return None
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLError):
            return None if isinstance(cause, _TLS_NETWORK_ERRORS) else cause
        cause = cause.__cause__ or cause.__context__
    return None


def _describe(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _problem(response: httpx.Response) -> dict[str, Any]:
    """The problem+json body as a dict, or ``{}`` when the body is something else."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return {}
    return body if isinstance(body, dict) else {}


def _status_exception(response: httpx.Response) -> httpx.HTTPStatusError:
    # The chained cause keeps the request and response for debugging, as httpx would raise it.
    return httpx.HTTPStatusError(
        f"{response.status_code} {response.reason_phrase} for {response.request.url}",
        request=response.request,
        response=response,
    )


def _summarize(exc: WireError, limit: int = 3) -> str:
    errors = exc.errors()
    parts = [
        f"{'.'.join(str(p) for p in error['loc']) or '<root>'}: {error['msg']}"
        for error in errors[:limit]
    ]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more
