"""The HTTP layer: requests on the wire, retries, and the translation of every failure.

Faults are injected with ``httpx.MockTransport`` handlers, so the real httpx client stack runs;
time is injected, so nothing sleeps.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import socket
from collections.abc import Callable, Iterator
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from sdk import contract as c
from sdk._errors import (
    AuthError,
    ConfigurationError,
    ConflictError,
    InvalidRequestError,
    MigrationError,
    NotFoundError,
    OfflineError,
    ProtocolError,
    RefusedError,
    ServerError,
    TransportError,
)
from sdk._transport.http import Exchange, Transport
from sdk._transport.retry import RetryPolicy
from sdk._wire import models as wire

BASE = "http://test"
USER = "u1"
TOKEN = "s3cr3t-t0k3n"
WALL = 1_700_000_000.0
CHECKSUM = "ab" * 32

STATUS = {
    "sessionId": "s1",
    "status": "uploading",
    "progress": 0.5,
    "currentStep": "uploading",
    "batchCount": 2,
    "receivedBatches": [0],
}
DETECT = {
    "hasLocalData": True,
    "itemCount": 3,
    "dataVersion": 1,
    "canMigrate": True,
    "serverTime": 1_700_000_000_000,
}
START = {
    "sessionId": "s1",
    "migrationId": "mig-00000001",
    "status": "created",
    "estimatedDuration": 1.0,
    "receivedBatches": [],
    "serverTime": 0,
}
VERSION = {"data": {}, "updatedAt": 1, "deleted": False}
RESOLVED = {"resolvedCount": 1, "remainingConflicts": 0}
COMPLETED = {
    "sessionId": "s1",
    "status": "completed",
    "itemCount": 1,
    "appliedCount": 1,
    "datasetChecksum": CHECKSUM,
    "cloudChecksum": CHECKSUM,
    "completedAt": 0,
}
SUMMARY = {
    "sessionId": "s1",
    "result": "completed",
    "summary": {
        "totalItems": 1,
        "newItems": 1,
        "unchangedItems": 0,
        "conflicts": 0,
        "durationMs": 5,
        "datasetChecksum": CHECKSUM,
        "cloudChecksum": CHECKSUM,
        "verified": True,
    },
}
MANIFEST = wire.Manifest(
    item_count=1, collections={"a": 1}, batch_size=1, batch_count=1, dataset_checksum=CHECKSUM
)
START_REQUEST = wire.StartMigrationRequest(
    migration_id="mig-00000001", device_id="d1", data_version=1, manifest=MANIFEST
)


def receipt(seq: int = 0, checksum: str = CHECKSUM) -> dict[str, Any]:
    return {
        "seq": seq,
        "itemCount": 1,
        "checksum": checksum,
        "newCount": 1,
        "unchangedCount": 0,
        "conflictCount": 0,
    }


def conflict(key: str) -> dict[str, Any]:
    return {
        "conflictId": f"c-{key}",
        "collection": "a",
        "key": key,
        "local": VERSION,
        "server": VERSION,
    }


class Clock:
    """Monotonic and wall clocks that only move when the transport sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL + self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


Handler = Callable[[httpx.Request], httpx.Response]
Answer = httpx.Response | type[Exception] | Exception | dict[str, Any] | Handler


class Server:
    """Answers requests from a script (the last answer repeats) and records what it got.

    An answer is a response, a JSON body (200), an exception (class or instance) to raise,
    or a handler function.
    """

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, type):
            kind: Any = answer
            if issubclass(kind, httpx.RequestError):
                raise kind("simulated failure", request=request)
            raise kind("simulated failure")
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, dict):
            return httpx.Response(200, json=answer)
        if isinstance(answer, httpx.Response):
            return answer
        return answer(request)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


Factory = Callable[..., tuple[Transport, Server, Clock]]


@pytest.fixture
def make() -> Iterator[Factory]:
    clients: list[httpx.Client] = []

    def factory(
        *answers: Answer,
        token: str | Callable[[], str] = TOKEN,
        retry: RetryPolicy | None = None,
        user_id: str = USER,
    ) -> tuple[Transport, Server, Clock]:
        server = Server(*answers)
        clock = Clock()
        client = httpx.Client(base_url=BASE, transport=httpx.MockTransport(server))
        clients.append(client)
        transport = Transport(
            client,
            user_id=user_id,
            token=token,
            retry=retry or RetryPolicy(jitter=0.0),
            sleep=clock.sleep,
            clock=clock.monotonic,
            wall_clock=clock.wall,
        )
        return transport, server, clock

    yield factory
    for client in clients:
        client.close()


def problem(status: int, code: str | None = None, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"type": "about:blank", "title": f"Title {status}", "status": status}
    if code is not None:
        body["code"] = code
    body.update(extra)
    return httpx.Response(status, json=body, headers={"Content-Type": c.PROBLEM_CONTENT_TYPE})


# ---------------------------------------------------------------------- the calls on the wire


def test_detect_sends_camelcase_query_auth_and_accept(make: Factory) -> None:
    transport, server, _ = make(DETECT)
    answer = transport.detect(has_local_data=True, item_count=3, data_version=1, device_id="d1")
    assert isinstance(answer, wire.DetectMigrationResponse)
    assert answer.can_migrate
    request = server.last
    assert request.method == "GET"
    assert request.url.path == "/api/migration/u1/detect"
    assert dict(request.url.params) == {
        "hasLocalData": "true",
        "itemCount": "3",
        "dataVersion": "1",
        "deviceId": "d1",
    }
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/json"


def test_detect_leaves_out_unknown_version_and_device(make: Factory) -> None:
    transport, server, _ = make(DETECT)
    transport.detect(has_local_data=False, item_count=0, data_version=None, device_id=None)
    assert dict(server.last.url.params) == {"hasLocalData": "false", "itemCount": "0"}


def test_the_user_id_is_percent_encoded_as_one_path_segment(make: Factory) -> None:
    transport, server, _ = make(STATUS, user_id="ann@example.com")
    transport.status()
    assert server.last.url.raw_path == b"/api/migration/ann%40example.com/status"


@pytest.mark.parametrize(
    ("call", "answer", "method", "path", "params", "body"),
    [
        pytest.param(
            lambda t: t.start(START_REQUEST),
            START,
            "POST",
            "/start",
            {},
            START_REQUEST.wire(),
            id="start",
        ),
        pytest.param(
            lambda t: t.status("s1"),
            STATUS,
            "GET",
            "/status",
            {"sessionId": "s1"},
            None,
            id="status",
        ),
        pytest.param(lambda t: t.status(), STATUS, "GET", "/status", {}, None, id="status-any"),
        pytest.param(
            lambda t: t.conflicts("s1", cursor="k", limit=10),
            {"conflicts": [conflict("x")], "total": 1, "unresolved": 1},
            "GET",
            "/sessions/s1/conflicts",
            {"cursor": "k", "limit": "10"},
            None,
            id="conflicts",
        ),
        pytest.param(
            lambda t: t.resolve(
                wire.ResolveConflictsRequest(
                    session_id="s1", resolutions=[wire.Resolution(conflict_id="c1", choice="local")]
                )
            ),
            RESOLVED,
            "POST",
            "/resolve-conflicts",
            {},
            {
                "sessionId": "s1",
                "resolutions": [
                    {
                        "conflictId": "c1",
                        "choice": "local",
                        "data": None,
                        "updatedAt": None,
                        "deleted": None,
                        "strategy": None,
                    }
                ],
            },
            id="resolve",
        ),
        pytest.param(
            lambda t: t.complete("s1", wire.CompleteMigrationRequest(dataset_checksum=CHECKSUM)),
            COMPLETED,
            "POST",
            "/sessions/s1/complete",
            {},
            {"datasetChecksum": CHECKSUM},
            id="complete",
        ),
        pytest.param(
            lambda t: t.summary("s1"),
            SUMMARY,
            "GET",
            "/summary",
            {"sessionId": "s1"},
            None,
            id="summary",
        ),
        pytest.param(
            lambda t: t.cancel("s1"),
            {**STATUS, "status": "cancelled"},
            "DELETE",
            "/sessions/s1",
            {},
            None,
            id="cancel",
        ),
    ],
)
def test_each_call_uses_its_method_path_and_body_and_returns_the_model(
    make: Factory,
    call: Callable[[Transport], Any],
    answer: dict[str, Any],
    method: str,
    path: str,
    params: dict[str, str],
    body: dict[str, Any] | None,
) -> None:
    transport, server, _ = make(answer)
    result = call(transport)
    request = server.last
    assert (request.method, request.url.path) == (method, f"/api/migration/u1{path}")
    assert dict(request.url.params) == params
    if body is None:
        assert request.content == b""
    else:
        assert request.headers["Content-Type"] == "application/json"
        assert json.loads(request.content) == body
    # The SDK's light model reads the answer as the contract's pydantic model does.
    assert result.wire() == getattr(c, type(result).__name__).model_validate(answer).wire()


def test_session_ids_are_percent_encoded_in_paths(make: Factory) -> None:
    transport, server, _ = make(STATUS)
    transport.cancel("a/b c")
    assert server.last.url.raw_path == b"/api/migration/u1/sessions/a%2Fb%20c"


@pytest.mark.parametrize("session_id", [".", "..", "", None, 7])
def test_a_session_id_that_cannot_be_a_path_segment_is_refused(
    make: Factory, session_id: Any
) -> None:
    transport, server, _ = make(STATUS)
    with pytest.raises(ConfigurationError, match="session_id"):
        transport.cancel(session_id)
    assert server.requests == []


@pytest.mark.parametrize(
    "compress", [pytest.param(False, id="plain"), pytest.param(True, id="gzip")]
)
def test_a_batch_arrives_with_its_checksum_and_round_trips_through_gzip(
    make: Factory, compress: bool
) -> None:
    body = c.batch_body(
        c.canonical_item(
            {"collection": "a", "key": f"k{i}", "data": {"n": i}, "updatedAt": 1, "deleted": False}
        )
        for i in range(200)
    )
    checksum = c.batch_checksum(body)
    received: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        raw = request.content
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        received.append(raw)
        assert hashlib.sha256(raw).hexdigest() == request.headers[c.CHECKSUM_HEADER]
        return httpx.Response(200, json=receipt(3, checksum))

    transport, _, _ = make(handler)
    answer = transport.put_batch("s1", 3, body, checksum, gzip=compress)

    assert answer.seq == 3
    assert received == [body]


def test_put_batch_sends_json_content_type_and_gzip_header_only_when_asked(
    make: Factory,
) -> None:
    transport, server, _ = make(receipt(0))
    transport.put_batch("s1", 0, b'{"items":[]}', CHECKSUM)
    plain = server.last
    transport.put_batch("s1", 0, b'{"items":[]}', CHECKSUM, gzip=True)
    zipped = server.last
    assert plain.method == zipped.method == "PUT"
    assert plain.url.path == "/api/migration/u1/sessions/s1/batches/0"
    assert plain.headers["Content-Type"] == zipped.headers["Content-Type"] == "application/json"
    assert plain.headers[c.CHECKSUM_HEADER] == CHECKSUM
    assert "Content-Encoding" not in plain.headers
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.content) == plain.content


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(("s1", -1, b"{}", CHECKSUM), "seq", id="negative-seq"),
        pytest.param(("s1", True, b"{}", CHECKSUM), "seq", id="bool-seq"),
        pytest.param(("s1", 0, "{}", CHECKSUM), "body", id="text-body"),
        pytest.param(("s1", 0, b"{}", "AB" * 32), "checksum", id="uppercase-checksum"),
        pytest.param(("s1", 0, b"{}", "abc"), "checksum", id="short-checksum"),
    ],
)
def test_put_batch_refuses_bad_arguments_before_sending(
    make: Factory, args: tuple[Any, ...], needle: str
) -> None:
    transport, server, _ = make(receipt(0))
    with pytest.raises(ConfigurationError, match=needle):
        transport.put_batch(*args)
    assert server.requests == []


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(receipt(1), id="other-seq"),
        pytest.param(receipt(0, "cd" * 32), id="other-checksum"),
    ],
)
def test_a_receipt_for_another_batch_is_a_protocol_error(
    make: Factory, answer: dict[str, Any]
) -> None:
    transport, _, _ = make(answer)
    with pytest.raises(ProtocolError, match="put_batch"):
        transport.put_batch("s1", 0, b"{}", CHECKSUM)


def test_a_start_answer_for_another_migration_is_a_protocol_error(make: Factory) -> None:
    transport, _, _ = make({**START, "migrationId": "mig-99999999"})
    with pytest.raises(ProtocolError, match="mig-99999999"):
        transport.start(START_REQUEST)


def test_iter_conflicts_follows_next_cursor_to_the_end(make: Factory) -> None:
    transport, server, _ = make(
        {
            "conflicts": [conflict("a"), conflict("b")],
            "total": 3,
            "unresolved": 3,
            "nextCursor": "p2",
        },
        {"conflicts": [conflict("c")], "total": 3, "unresolved": 3},
    )
    keys = [x.key for x in transport.iter_conflicts("s1")]
    assert keys == ["a", "b", "c"]
    assert [r.url.params.get("cursor") for r in server.requests] == [None, "p2"]


def test_iter_conflicts_stops_when_the_server_repeats_a_cursor(make: Factory) -> None:
    page = {"conflicts": [], "total": 0, "unresolved": 0, "nextCursor": "again"}
    transport, server, _ = make(page)
    with pytest.raises(ProtocolError, match="cursor 'again'"):
        list(transport.iter_conflicts("s1"))
    assert len(server.requests) == 2


# ---------------------------------------------------------------------- the round trip


def test_last_exchange_records_local_send_and_receive_times_and_the_date(
    make: Factory,
) -> None:
    date = formatdate(WALL + 5, usegmt=True)
    transport, _, _ = make(httpx.Response(200, json=STATUS, headers={"Date": date}))
    before = transport.last_exchange
    transport.status()
    exchange = transport.last_exchange
    assert before is None
    assert exchange is not None
    assert exchange == Exchange(
        sent_at_ms=int(WALL * 1000), received_at_ms=int(WALL * 1000), date=date
    )
    assert exchange.date_ms == int((WALL + 5) * 1000)


def test_last_exchange_is_kept_for_error_answers_too(make: Factory) -> None:
    transport, _, _ = make(problem(404))
    with pytest.raises(NotFoundError):
        transport.status()
    assert transport.last_exchange is not None
    assert transport.last_exchange.date is None


# ---------------------------------------------------------------------- retries


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_a_transient_status_is_retried_until_it_succeeds(make: Factory, status: int) -> None:
    transport, server, clock = make(httpx.Response(status), httpx.Response(status), STATUS)
    assert transport.status().session_id == "s1"
    assert len(server.requests) == 3
    assert clock.slept == [0.25, 0.5]


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_transient_status_that_outlasts_the_attempts_is_a_chained_server_error(
    make: Factory, status: int
) -> None:
    transport, server, _ = make(
        httpx.Response(status, json={"title": "Busy", "status": status, "detail": "overloaded"}),
        retry=RetryPolicy(attempts=4, jitter=0.0),
    )
    with pytest.raises(ServerError) as caught:
        transport.status()
    assert caught.value.status == status
    assert len(server.requests) == 4
    assert "4 attempts made" in str(caught.value)
    assert "overloaded" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.HTTPStatusError)


def test_retries_stop_when_the_time_budget_is_spent(make: Factory) -> None:
    transport, server, clock = make(
        httpx.Response(503), retry=RetryPolicy(attempts=100, timeout=5.0, jitter=0.0)
    )
    with pytest.raises(ServerError, match="budget of 5 s is spent"):
        transport.status()
    assert sum(clock.slept) == pytest.approx(5.0)
    # 0.25 + 0.5 + 1 + 2 = 3.75, then the last 1.25 s of budget
    assert len(server.requests) == 6


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_sleep"),
    [
        pytest.param(429, "7", 7.0, id="429-seconds"),
        pytest.param(503, "7", 7.0, id="503-seconds"),
        pytest.param(503, formatdate(WALL + 12, usegmt=True), 12.0, id="503-http-date"),
        pytest.param(503, "-4", 0.0, id="negative-is-now"),
        pytest.param(503, "whenever", 0.25, id="garbage-falls-back-to-backoff"),
        pytest.param(500, "7", 0.25, id="ignored-on-500"),
    ],
)
def test_retry_after_is_honoured_on_429_and_503(
    make: Factory, status: int, retry_after: str, expected_sleep: float
) -> None:
    transport, _, clock = make(httpx.Response(status, headers={"Retry-After": retry_after}), STATUS)
    transport.status()
    assert clock.slept == [expected_sleep]


def test_a_retry_after_date_is_measured_against_the_servers_date(make: Factory) -> None:
    # The server's clock runs an hour ahead of the device's; it still means "in 10 s".
    server_now = WALL + 3600
    headers = {
        "Retry-After": formatdate(server_now + 10, usegmt=True),
        "Date": formatdate(server_now, usegmt=True),
    }
    transport, _, clock = make(httpx.Response(503, headers=headers), STATUS)
    transport.status()
    assert clock.slept == [10.0]


def test_a_huge_retry_after_is_clamped_to_max_retry_after(make: Factory) -> None:
    transport, _, clock = make(
        httpx.Response(429, headers={"Retry-After": "99999999"}),
        STATUS,
        retry=RetryPolicy(timeout=1000.0, max_retry_after=300.0),
    )
    transport.status()
    assert clock.slept == [300.0]


def test_a_retry_after_longer_than_the_budget_raises_at_once(make: Factory) -> None:
    transport, server, clock = make(httpx.Response(503, headers={"Retry-After": "600"}), STATUS)
    with pytest.raises(ServerError, match="asked to retry after 300 s") as caught:
        transport.status()
    assert caught.value.status == 503
    assert clock.slept == []
    assert len(server.requests) == 1


def test_retry_none_sends_once(make: Factory) -> None:
    transport, server, _ = make(httpx.Response(503), retry=RetryPolicy.none())
    with pytest.raises(ServerError):
        transport.status()
    assert len(server.requests) == 1


def test_a_non_idempotent_request_is_never_retried(make: Factory) -> None:
    # Every call of the protocol is idempotent, so only the internal switch can show this.
    transport, server, clock = make(httpx.Response(503), httpx.ConnectError)
    with pytest.raises(ServerError, match="not idempotent"):
        transport._request("probe", "POST", "/probe", idempotent=False)
    with pytest.raises(OfflineError, match="not idempotent"):
        transport._request("probe", "POST", "/probe", idempotent=False)
    assert len(server.requests) == 2
    assert clock.slept == []


@pytest.mark.parametrize("status", [501, 505])
def test_a_5xx_that_retrying_cannot_fix_is_a_server_error_at_once(
    make: Factory, status: int
) -> None:
    transport, server, _ = make(httpx.Response(status))
    with pytest.raises(ServerError) as caught:
        transport.status()
    assert caught.value.status == status
    assert len(server.requests) == 1


# ---------------------------------------------------------------------- network failures


NETWORK_FAILURES = [
    pytest.param(exc, id=exc.__name__)
    for exc in (
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.ReadTimeout,
        httpx.WriteTimeout,
        httpx.PoolTimeout,
        httpx.ReadError,
        httpx.WriteError,
        httpx.CloseError,
        httpx.RemoteProtocolError,
        httpx.ProxyError,
    )
]


@pytest.mark.parametrize("exc", NETWORK_FAILURES)
def test_a_network_failure_is_retried_until_it_succeeds(
    make: Factory, exc: type[Exception]
) -> None:
    transport, server, clock = make(exc, STATUS)
    assert transport.status().session_id == "s1"
    assert len(server.requests) == 2
    assert clock.slept == [0.25]


@pytest.mark.parametrize("exc", NETWORK_FAILURES)
def test_a_network_failure_that_outlasts_the_retries_is_a_chained_offline_error(
    make: Factory, exc: type[Exception]
) -> None:
    transport, server, _ = make(exc, retry=RetryPolicy(attempts=3, jitter=0.0))
    with pytest.raises(OfflineError) as caught:
        transport.status()
    message = str(caught.value)
    assert message.startswith(f"status: cannot reach {BASE}/api/migration/u1/status")
    assert exc.__name__ in message
    assert "the migration will resume when the server is reachable" in message
    assert type(caught.value.__cause__) is exc
    assert caught.value.retryable
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(httpx.UnsupportedProtocol, ConfigurationError, id="UnsupportedProtocol"),
        pytest.param(httpx.LocalProtocolError, TransportError, id="LocalProtocolError"),
        pytest.param(httpx.DecodingError, ProtocolError, id="DecodingError"),
        pytest.param(httpx.TooManyRedirects, ProtocolError, id="TooManyRedirects"),
        pytest.param(httpx.InvalidURL("bad"), ConfigurationError, id="InvalidURL"),
        pytest.param(httpx.StreamConsumed(), TransportError, id="StreamConsumed"),
        pytest.param(httpx.CookieConflict("two"), TransportError, id="CookieConflict"),
    ],
)
def test_failures_that_retrying_cannot_fix_are_translated_at_once(
    make: Factory, exc: Any, expected: type[Exception]
) -> None:
    transport, server, _ = make(exc)
    with pytest.raises(expected) as caught:
        transport.status()
    assert caught.value.__cause__ is not None
    assert isinstance(caught.value.__cause__, Exception)
    assert len(server.requests) == 1


def test_a_response_body_that_fails_to_decompress_is_a_protocol_error(make: Factory) -> None:
    # Built inside the handler: httpx decodes a response's content when it is created.
    transport, _, _ = make(
        lambda _: httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip")
    )
    with pytest.raises(ProtocolError, match="could not be read") as caught:
        transport.status()
    assert isinstance(caught.value.__cause__, httpx.DecodingError)


def _every_httpx_exception() -> list[Any]:
    found = []
    for name in httpx.__all__:
        kind = getattr(httpx, name)
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            continue
        found.append(pytest.param(kind, id=name))
    return found


@pytest.mark.parametrize("kind", _every_httpx_exception())
def test_no_httpx_exception_leaks_out_of_the_transport(make: Factory, kind: Any) -> None:
    request = httpx.Request("GET", BASE)
    if issubclass(kind, httpx.HTTPStatusError):
        exc: Exception = kind("x", request=request, response=httpx.Response(500))
    elif issubclass(kind, httpx.RequestError):
        exc = kind("x", request=request)
    elif issubclass(kind, httpx.StreamError):
        exc = kind() if kind is not httpx.StreamError else kind("x")
    else:
        exc = kind("x")
    transport, _, _ = make(exc, retry=RetryPolicy(attempts=2, jitter=0.0))
    with pytest.raises(MigrationError) as caught:
        transport.status()
    assert not isinstance(caught.value, httpx.HTTPError)
    assert caught.value.__cause__ is exc


def test_a_refused_connection_through_from_url_is_an_offline_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port is closed again: connecting to it is refused at once.
    with (
        Transport.from_url(
            f"http://127.0.0.1:{port}", user_id=USER, token=TOKEN, retry=RetryPolicy.none()
        ) as transport,
        pytest.raises(OfflineError, match=f"cannot reach http://127.0.0.1:{port}"),
    ):
        transport.status()


# ---------------------------------------------------------------------- refusals (4xx)


@pytest.mark.parametrize(
    ("status", "code", "expected", "advice"),
    [
        pytest.param(400, "bad-checksum", InvalidRequestError, "X-Content-SHA256", id="400"),
        pytest.param(401, "unauthenticated", AuthError, "sign the user in again", id="401"),
        pytest.param(403, "forbidden", AuthError, "another user", id="403"),
        pytest.param(404, "not-found", NotFoundError, "start a new migration", id="404"),
        pytest.param(409, "batch-mismatch", ConflictError, "snapshot changed", id="409"),
        pytest.param(409, None, ConflictError, "call status()", id="409-without-code"),
        pytest.param(413, "payload-too-large", InvalidRequestError, "smaller batches", id="413"),
        pytest.param(415, "unsupported-media-type", InvalidRequestError, "bug", id="415"),
        pytest.param(422, "validation-failed", InvalidRequestError, "wire contract", id="422"),
        pytest.param(418, None, RefusedError, "problem details", id="418"),
        pytest.param(410, "session-expired", RefusedError, "session expired", id="410"),
    ],
)
def test_a_4xx_becomes_the_matching_refusal_with_its_problem(
    make: Factory, status: int, code: str | None, expected: type[RefusedError], advice: str
) -> None:
    answer = problem(status, code, detail="what went wrong", extra="kept")
    transport, server, clock = make(answer)
    with pytest.raises(expected) as caught:
        transport.status()
    error = caught.value
    assert type(error) is expected
    assert (error.status, error.code) == (status, code)
    assert error.problem["detail"] == "what went wrong"
    assert error.problem["extra"] == "kept"
    message = str(error)
    assert f"Title {status}: what went wrong" in message
    assert advice in message
    assert isinstance(error.__cause__, httpx.HTTPStatusError)
    assert len(server.requests) == 1
    assert clock.slept == []


@pytest.mark.parametrize(
    "body",
    [b"<html>nope</html>", b"[" * 100_000 + b"]" * 100_000],
    ids=["html", "nested-too-deep"],
)
def test_a_4xx_without_a_problem_body_still_maps_by_status(make: Factory, body: bytes) -> None:
    transport, _, _ = make(httpx.Response(404, content=body))
    with pytest.raises(NotFoundError, match=r"404 \(Not Found\)") as caught:
        transport.status()
    assert (caught.value.code, caught.value.problem) == (None, {})


def test_a_redirect_is_a_protocol_error(make: Factory) -> None:
    transport, _, _ = make(httpx.Response(302, headers={"Location": "https://test/"}))
    with pytest.raises(ProtocolError, match="302"):
        transport.status()


# ---------------------------------------------------------------------- tokens


def test_a_token_provider_is_asked_before_every_attempt(make: Factory) -> None:
    issued = iter(["t1", "t2", "t3"])
    transport, server, _ = make(httpx.Response(503), STATUS, token=lambda: next(issued))
    transport.status()
    transport.status()
    assert [r.headers["Authorization"] for r in server.requests] == [
        "Bearer t1",
        "Bearer t2",
        "Bearer t3",
    ]


def test_a_token_provider_is_asked_again_after_a_401_and_the_call_retried_once(
    make: Factory,
) -> None:
    issued = iter(["expired", "fresh"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] == "Bearer expired":
            return problem(401, "unauthenticated")
        return httpx.Response(200, json=STATUS)

    transport, server, clock = make(handler, token=lambda: next(issued))
    assert transport.status().session_id == "s1"
    assert [r.headers["Authorization"] for r in server.requests] == [
        "Bearer expired",
        "Bearer fresh",
    ]
    assert clock.slept == []


def test_a_second_401_after_a_fresh_token_is_an_auth_error(make: Factory) -> None:
    asked: list[int] = []

    def provider() -> str:
        asked.append(1)
        return "always-bad"

    transport, server, _ = make(problem(401, "unauthenticated"), token=provider)
    with pytest.raises(AuthError) as caught:
        transport.status()
    assert caught.value.status == 401
    assert len(server.requests) == 2
    assert len(asked) == 2


def test_a_static_token_is_not_retried_after_a_401(make: Factory) -> None:
    transport, server, _ = make(problem(401, "unauthenticated"))
    with pytest.raises(AuthError):
        transport.status()
    assert len(server.requests) == 1


def test_a_403_is_not_retried_even_with_a_token_provider(make: Factory) -> None:
    transport, server, _ = make(problem(403, "forbidden"), token=lambda: "t")
    with pytest.raises(AuthError):
        transport.status()
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("token", "needle"),
    [
        pytest.param("", "non-empty", id="empty"),
        pytest.param("Bearer abc", "without the 'Bearer ' prefix", id="with-prefix"),
        pytest.param("abc\r\nX-Evil: 1", "visible ASCII", id="header-injection"),
        pytest.param(42, "str", id="not-text"),
    ],
)
def test_a_bad_static_token_is_refused_at_construction(token: Any, needle: str) -> None:
    with httpx.Client(base_url=BASE) as client, pytest.raises(ConfigurationError, match=needle):
        Transport(client, user_id=USER, token=token)


def test_a_bad_token_from_the_provider_is_refused_without_echoing_it(make: Factory) -> None:
    transport, server, _ = make(STATUS, token=lambda: "leaky secret")
    with pytest.raises(ConfigurationError, match="token provider") as caught:
        transport.status()
    assert "leaky" not in str(caught.value)
    assert server.requests == []


def test_retries_are_logged_without_the_token(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    transport, _, _ = make(
        httpx.ConnectError, httpx.Response(503), problem(401), STATUS, token=lambda: TOKEN
    )
    transport.status()
    retries = [r for r in caplog.records if r.name == "sdk._transport.http"]
    assert [r.levelno for r in retries] == [logging.WARNING, logging.WARNING, logging.INFO]
    assert "retrying in 0.25 s (attempt 2 of 8)" in retries[0].getMessage()
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
    assert "Authorization" not in caplog.text


# ---------------------------------------------------------------------- broken answers


@pytest.mark.parametrize(
    ("answer", "needle"),
    [
        pytest.param(httpx.Response(200, text="<html>hi</html>"), "not JSON", id="html"),
        pytest.param(httpx.Response(200), "not JSON", id="empty"),
        pytest.param(
            httpx.Response(200, content=b"[" * 100_000 + b"]" * 100_000), "not JSON", id="deep"
        ),
        pytest.param(
            httpx.Response(200, json={k: v for k, v in STATUS.items() if k != "progress"}),
            "progress: Field required",
            id="missing-field",
        ),
        pytest.param(
            httpx.Response(200, json={**STATUS, "status": "dancing"}), "status: ", id="bad-enum"
        ),
        pytest.param(
            httpx.Response(200, json={**STATUS, "surprise": 1}), "surprise", id="unknown-field"
        ),
        pytest.param(httpx.Response(200, json=[1, 2]), "GetMigrationStatusResponse", id="list"),
    ],
)
def test_an_answer_that_breaks_the_contract_is_a_protocol_error(
    make: Factory, answer: httpx.Response, needle: str
) -> None:
    transport, _, _ = make(answer)
    with pytest.raises(ProtocolError, match=needle) as caught:
        transport.status()
    assert str(caught.value).startswith("status: ")
    assert caught.value.__cause__ is not None


# ---------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        pytest.param({"user_id": ""}, "user_id", id="empty-user"),
        pytest.param({"user_id": "../etc"}, "user_id", id="path-user"),
        pytest.param({"token": None}, "token", id="no-token"),
        pytest.param({"retry": 3}, "RetryPolicy", id="retry-not-a-policy"),
    ],
)
def test_bad_constructor_arguments_are_configuration_errors(
    kwargs: dict[str, Any], needle: str
) -> None:
    arguments: dict[str, Any] = {"user_id": USER, "token": TOKEN, **kwargs}
    with httpx.Client(base_url=BASE) as client, pytest.raises(ConfigurationError, match=needle):
        Transport(client, **arguments)


def test_a_client_without_a_base_url_is_a_configuration_error() -> None:
    with httpx.Client() as client, pytest.raises(ConfigurationError, match="base_url"):
        Transport(client, user_id=USER, token=TOKEN)


@pytest.mark.parametrize(
    ("url", "timeout"),
    [
        pytest.param("127.0.0.1:8000", 5.0, id="no-scheme"),
        pytest.param("ftp://host", 5.0, id="ftp"),
        pytest.param("http://host", 0, id="zero-timeout"),
    ],
)
def test_from_url_refuses_bad_urls_and_timeouts(url: str, timeout: float) -> None:
    with pytest.raises(ConfigurationError):
        Transport.from_url(url, user_id=USER, token=TOKEN, timeout=timeout)


def test_close_closes_only_a_client_the_transport_created() -> None:
    owned = Transport.from_url(BASE, user_id=USER, token=TOKEN)
    owned.close()
    assert owned._client.is_closed

    with httpx.Client(base_url=BASE) as client:
        with Transport(client, user_id=USER, token=TOKEN):
            pass
        assert not client.is_closed
