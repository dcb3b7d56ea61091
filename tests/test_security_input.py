"""Hostile input, endpoint by endpoint: always a 4xx problem+json, never a 5xx, and the
database exactly as it was. Extends ``test_server_refusals.py`` (which covers the batch
endpoint's bodies, sizes and media types) to every JSON endpoint, ids and paths,
duplicate members, huge numbers, bodies cut off by the client, and body caps that hold
without a ``Content-Length``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aws_fixtures import backend_named
from server_fixtures import Server, items_of, make_plan, running_server
from test_security_access import ON_BOTH, everything, on_both

from backend_stub import Settings, create_app, issue_token
from backend_stub.storage.sqlite import SQLiteStorage
from sdk.contract import CHECKSUM_HEADER, PROBLEM_CONTENT_TYPE, Limits, batch_checksum

LIMITS = Limits(max_batch_items=10, max_batch_bytes=64 * 1024)
CHECKSUM = "0" * 64


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """The app on SQLite, or on the backend a test's ``server`` parameter names
    (:func:`~test_security_access.on_both`)."""
    backend = backend_named(request, getattr(request, "param", "sqlite"))
    with running_server(tmp_path, limits=LIMITS, backend=backend) as running:
        yield running


@pytest.fixture
def session(server: Server) -> str:
    return server.started(make_plan(items_of(4), batch_size=2))


def refused(server: Server, response: httpx.Response, *statuses: int) -> None:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.json()["status"] == response.status_code


def post(server: Server, path: str, body: bytes, **headers: str) -> httpx.Response:
    return server.client.post(
        server.url(path),
        content=body,
        headers=server.auth(**{"Content-Type": "application/json", **headers}),
    )


def start_body(**change: Any) -> dict[str, Any]:
    plan = make_plan(items_of(4), batch_size=2)
    return {
        "migrationId": "mig-hostile-01",
        "deviceId": "d1",
        "dataVersion": 1,
        "manifest": plan.manifest,
        **change,
    }


# --------------------------------------------------------------------------- ids and paths

BAD_SESSION_IDS = [
    "..",
    "%2e%2e",
    "..%2F..%2Fdetect",
    "%2F",
    "a%00b",
    "x" * 4000,
    "%F0%9F%92%A5",
    "%FF%FE",
    "%C0%AE%C0%AE",
    "'%20OR%201=1--",
    "*",
    "%25",
]


@on_both(
    "bad",
    [pytest.param(b, id=b[:16]) for b in BAD_SESSION_IDS],
    aws=("..%2F..%2Fdetect", "a%00b", "'%20OR%201=1--"),
)
def test_path_traversal_and_malformed_session_ids_are_refused_on_every_endpoint(
    server: Server, session: str, bad: str
) -> None:
    before = everything(server)
    body = json.dumps({"datasetChecksum": CHECKSUM}).encode()
    headers = server.auth(**{"Content-Type": "application/json", CHECKSUM_HEADER: CHECKSUM})
    for method, path in [
        ("GET", f"/sessions/{bad}/conflicts"),
        ("PUT", f"/sessions/{bad}/batches/0"),
        ("POST", f"/sessions/{bad}/complete"),
        ("DELETE", f"/sessions/{bad}"),
        ("GET", f"/status?sessionId={bad}"),
        ("GET", f"/summary?sessionId={bad}"),
    ]:
        response = server.client.request(method, server.url(path), content=body, headers=headers)
        refused(server, response, 400, 404, 405, 422)
    resolve = json.dumps({"sessionId": bad, "resolutions": []}).encode()
    refused(server, post(server, "/resolve-conflicts", resolve), 404, 422)

    assert everything(server) == before


@on_both(
    "user",
    ["..", "%2e%2e", "alice%2F..%2Fbob", "%FF", "alice%00", "ALICE"],
    aws=("alice%2F..%2Fbob",),
)
def test_malformed_or_traversing_user_ids_never_reach_alices_data(
    server: Server, user: str
) -> None:
    response = server.client.get(f"/api/migration/{user}/detect", headers=server.auth("alice"))

    refused(server, response, 400, 403, 404)
    assert server.storage.events(user_id="alice") == []


# --------------------------------------------------------------------------- ownership fields


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/start", start_body(status="completed"), id="start-status"),
        pytest.param("/start", start_body(userId="bob"), id="start-owner"),
        pytest.param("/start", start_body(sessionId="chosen-id"), id="start-session-id"),
        pytest.param("/start", start_body(version=99), id="start-version"),
        pytest.param(
            "/start",
            start_body(manifest={**start_body()["manifest"], "userId": "bob"}),
            id="manifest-owner",
        ),
        pytest.param(
            "/sessions/{sid}/complete",
            {"datasetChecksum": CHECKSUM, "status": "completed"},
            id="complete-status",
        ),
        pytest.param(
            "/sessions/{sid}/complete",
            {"datasetChecksum": CHECKSUM, "cloudChecksum": CHECKSUM},
            id="complete-cloud-checksum",
        ),
        pytest.param(
            "/resolve-conflicts",
            {"sessionId": "{sid}", "resolutions": [], "userId": "bob"},
            id="resolve-owner",
        ),
        pytest.param(
            "/resolve-conflicts",
            {
                "sessionId": "{sid}",
                "resolutions": [{"conflictId": "c", "choice": "local", "resolved": False}],
            },
            id="resolution-state",
        ),
    ],
)
def test_fields_that_try_to_set_state_or_owner_are_unprocessable(
    server: Server, session: str, path: str, body: dict[str, Any]
) -> None:
    before = everything(server)
    content = json.dumps(body).replace("{sid}", session).encode()

    response = post(server, path.replace("{sid}", session), content)

    refused(server, response, 422)
    assert everything(server) == before


@pytest.mark.parametrize("field", ["userId", "version", "deviceId", "sessionId"])
def test_a_batch_item_that_names_an_owner_or_version_is_unprocessable(
    server: Server, session: str, field: str
) -> None:
    item = {**items_of(1)[0], field: "bob"}
    body = json.dumps({"items": [item]}).encode()

    refused(server, server.put(session, 0, body), 422)
    assert server.status(session).json()["receivedBatches"] == []


# --------------------------------------------------------------------------- bodies


def _dup(text: bytes, member: bytes) -> bytes:
    """``text`` with its first ``"member": value`` written twice."""
    at = text.index(b'"' + member + b'"')
    end = text.index(b",", at)
    return text[:end] + b"," + text[at:end] + text[end:]


JSON_ENDPOINT_BODIES: list[Any] = [
    pytest.param("/start", b"[" * 5000 + b"]" * 5000, 400, id="start-deep"),
    pytest.param(
        "/start",
        json.dumps(start_body(config={"a": 1}))
        .encode()
        .replace(b'{"a": 1}', b'{"a":' * 900 + b"1" + b"}" * 900),
        400,
        id="start-deep-config",
    ),
    pytest.param(
        "/start",
        json.dumps(start_body(dataVersion=10**40)).encode(),
        422,
        id="start-huge-data-version",
    ),
    pytest.param(
        "/start",
        json.dumps(start_body(manifest={**start_body()["manifest"], "itemCount": 10**40})).encode(),
        422,
        id="start-huge-item-count",
    ),
    pytest.param(
        "/start",
        json.dumps(start_body())
        .encode()
        .replace(b'"dataVersion": 1', b'"dataVersion": ' + b"1" * 5000),
        400,
        id="start-5000-digits",
    ),
    pytest.param(
        "/start",
        json.dumps(start_body()).encode().replace(b'"dataVersion": 1', b'"dataVersion": NaN'),
        422,
        id="start-nan",
    ),
    pytest.param(
        "/start",
        json.dumps(start_body()).encode().replace(b'"dataVersion": 1', b'"dataVersion": 1e999'),
        422,
        id="start-infinite",
    ),
    pytest.param(
        "/start",
        _dup(json.dumps(start_body()).encode(), b"migrationId"),
        400,
        id="start-duplicate-member",
    ),
    pytest.param(
        "/start",
        json.dumps(start_body()).encode().replace(b"mig-hostile", b"mig-\xff\xfe"),
        400,
        id="start-invalid-utf8",
    ),
    pytest.param(
        "/sessions/{sid}/complete",
        f'{{"datasetChecksum": "{CHECKSUM}", "datasetChecksum": "{"1" * 64}"}}'.encode(),
        400,
        id="complete-duplicate-member",
    ),
    pytest.param(
        "/sessions/{sid}/complete", b'{"datasetChecksum": "\xff"}', 400, id="complete-invalid-utf8"
    ),
    pytest.param(
        "/resolve-conflicts",
        b'{"sessionId": "{sid}", "resolutions": [{"conflictId":'
        b' "c", "choice": "merged", "data": {"x": ' + b"9" * 5000 + b'}, "updatedAt": 1,'
        b' "deleted": false}]}',
        400,
        id="resolve-5000-digit-data",
    ),
    pytest.param(
        "/resolve-conflicts",
        b'{"sessionId": "{sid}", "resolutions": [{"conflictId":'
        b' "c", "choice": "merged", "data": {"x": 1, "x": 2}, "updatedAt": 1,'
        b' "deleted": false}]}',
        400,
        id="resolve-duplicate-nested-member",
    ),
    pytest.param(
        "/resolve-conflicts",
        b'{"sessionId": "{sid}", "resolutions": [{"conflictId":'
        b' "c", "choice": "merged", "data": {"x": 1}, "updatedAt": ' + b"9" * 30 + b","
        b' "deleted": false}]}',
        422,
        id="resolve-huge-updated-at",
    ),
]


@on_both(
    "path,body,status",
    JSON_ENDPOINT_BODIES,
    aws=("start-duplicate-member", "complete-invalid-utf8", "resolve-duplicate-nested-member"),
)
def test_hostile_json_bodies_are_refused_and_change_nothing(
    server: Server, session: str, path: str, body: bytes, status: int
) -> None:
    before = everything(server)

    response = post(
        server, path.replace("{sid}", session), body.replace(b"{sid}", session.encode())
    )

    refused(server, response, status)
    assert everything(server) == before


@on_both(
    "change",
    [
        pytest.param(lambda b: _dup(b, b"key"), id="repeated-item-member"),
        pytest.param(
            lambda b: b[:-1] + b',"items":' + b[len(b'{"items":') : -1] + b"}", id="repeated-items"
        ),
        pytest.param(lambda b: b.replace(b'"n":0', b'"n":' + b"9" * 5000), id="5000-digits"),
        pytest.param(lambda b: b.replace(b'"n":0', b'"n":1e999'), id="infinite"),
    ],
    aws=("repeated-items", "5000-digits"),
)
def test_hostile_batch_bodies_are_refused_and_nothing_is_stored(
    server: Server, session: str, change: Any
) -> None:
    body = change(make_plan(items_of(4), batch_size=2).bodies[0])

    response = server.put(session, 0, body)

    assert response.status_code in (400, 409, 422), response.text
    refused(server, response, response.status_code)
    assert server.status(session).json()["receivedBatches"] == []


def test_a_canonical_batch_is_accepted_without_a_second_parse(server: Server, session: str) -> None:
    # The duplicate-member check costs nothing for what the SDK sends: canonical bodies.
    plan = make_plan(items_of(4), batch_size=2)

    assert server.put(session, 0, plan.bodies[0]).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Content-Encoding": "br"}, id="brotli"),
        pytest.param({"Content-Encoding": "deflate"}, id="deflate"),
        pytest.param({"Content-Encoding": "x-gzip"}, id="x-gzip"),
        pytest.param({"Content-Type": "application/x-www-form-urlencoded"}, id="form"),
        pytest.param({"Content-Type": "text/json"}, id="text-json"),
        pytest.param({"Content-Type": "application/json; charset=utf-16"}, id="utf-16"),
        pytest.param({"Content-Type": "multipart/form-data; boundary=x"}, id="multipart"),
    ],
)
def test_json_endpoints_refuse_unsupported_encodings_and_types(
    server: Server, session: str, headers: dict[str, str]
) -> None:
    for path in ("/start", f"/sessions/{session}/complete", "/resolve-conflicts"):
        refused(server, post(server, path, json.dumps(start_body()).encode(), **headers), 415)


def test_a_gzip_bomb_on_a_json_endpoint_is_too_large(server: Server) -> None:
    bomb = gzip.compress(b" " * 50_000_000)
    assert len(bomb) < LIMITS.max_batch_bytes

    refused(server, post(server, "/start", bomb, **{"Content-Encoding": "gzip"}), 413)


def test_a_json_body_over_the_limit_with_its_length_declared_is_refused_unread(
    server: Server, session: str
) -> None:
    for path in ("/start", f"/sessions/{session}/complete", "/resolve-conflicts"):
        refused(server, post(server, path, b" " * (LIMITS.max_batch_bytes + 1)), 413)


@pytest.mark.parametrize("path", ["/start", "/sessions/{sid}/complete", "/resolve-conflicts"])
def test_a_streamed_json_body_is_refused_as_soon_as_it_passes_the_limit(
    tmp_path: Path, path: str
) -> None:
    """No Content-Length, over a transport that really streams: the server stops reading."""
    storage = SQLiteStorage.open(tmp_path)
    settings = Settings(data_dir=tmp_path, limits=LIMITS)
    app = create_app(settings, storage=storage)
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(10_000):
            pulled += 1
            yield b" " * 1024

    async def scenario() -> httpx.Response:
        token = {"Authorization": f"Bearer {issue_token('alice', settings.jwt_secret)}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            started = await client.post(
                "/api/migration/alice/start", json=start_body(), headers=token
            )
            sid = started.json()["sessionId"]
            return await client.post(
                "/api/migration/alice" + path.replace("{sid}", sid),
                content=chunks(),
                headers={**token, "Content-Type": "application/json"},
            )

    try:
        response = asyncio.run(scenario())
    finally:
        storage.close()

    assert response.status_code == 413
    assert pulled <= LIMITS.max_batch_bytes // 1024 + 2


def test_a_body_cut_off_by_the_client_is_a_4xx_not_a_logged_server_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = SQLiteStorage.open(tmp_path)
    settings = Settings(data_dir=tmp_path, limits=LIMITS)
    app = create_app(settings, storage=storage)
    token = issue_token("alice", settings.jwt_secret).encode()
    messages: list[dict[str, Any]] = []
    incoming = iter(
        [
            {"type": "http.request", "body": b'{"migrationId": "mig-cut', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/migration/alice/start",
        "raw_path": b"",
        "root_path": "",
        "query_string": b"",
        "server": ("test", 80),
        "client": ("c", 1),
        "headers": [(b"authorization", b"Bearer " + token), (b"content-type", b"application/json")],
    }
    try:
        asyncio.run(app(scope, receive, send))
    finally:
        storage.close()

    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    assert status == 400
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_header_values_that_are_not_ascii_are_refused(server: Server, session: str) -> None:
    body = make_plan(items_of(4), batch_size=2).bodies[0]
    headers = {
        b"Authorization": server.auth()["Authorization"].encode(),
        b"Content-Type": b"application/json",
        CHECKSUM_HEADER.encode(): "é".encode() * 32,
    }
    response = server.client.put(
        server.url(f"/sessions/{session}/batches/0"), content=body, headers=headers
    )
    refused(server, response, 400)

    token = {b"Authorization": b"Bearer \xff\xfe"}
    refused(server, server.client.get(server.url("/detect"), headers=token), 401)


# --------------------------------------------------------------------------- sequence numbers


@on_both(
    "seq,status",
    # One spelling per batch: "+1", "01" or "1.0" are not batch 1.
    [(seq, 422) for seq in ["+1", "01", "1.0", "1e0", " 1", "1_0", "\u0661"]]
    # Too large for any plan: out of range.
    + [(seq, 409) for seq in [str(2**31), str(2**63), str(2**64), str(10**30)]],
    aws=("01", str(2**63)),
)
def test_a_sequence_number_is_a_plain_number_within_the_plan(
    server: Server, session: str, seq: str, status: int
) -> None:
    body = make_plan(items_of(4), batch_size=2).bodies[0]

    response = server.client.put(
        server.url(f"/sessions/{session}/batches/{seq}"),
        content=body,
        headers=server.auth(
            **{"Content-Type": "application/json", CHECKSUM_HEADER: batch_checksum(body)}
        ),
    )

    refused(server, response, status)
    assert server.status(session).json()["receivedBatches"] == []


@ON_BOTH
def test_a_gap_in_the_sequence_is_named_at_completion_and_a_replay_with_other_content_is_refused(
    server: Server,
) -> None:
    plan = make_plan(items_of(6), batch_size=2)
    other = make_plan(items_of(6, extra="changed"), batch_size=2)
    session = server.started(plan)
    for seq in (0, 2):
        assert server.put(session, seq, plan.bodies[seq]).status_code == 200

    gap = server.complete(session, plan.checksum)
    replay = server.put(session, 2, other.bodies[2])

    refused(server, gap, 409)
    assert gap.json()["code"] == "batches-missing" and "first 1" in gap.json()["detail"]
    refused(server, replay, 409)
    assert replay.json()["code"] == "batch-mismatch"
    assert server.status(session).json()["receivedBatches"] == [0, 2]
