"""Bad input, foreign users and misuse get a 4xx problem+json answer, never a 5xx."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from aws_fixtures import Backend, backend_named
from server_fixtures import Server, items_of, make_plan, running_server

from backend_stub import Settings, create_app, issue_token
from backend_stub.bodies import Inflater
from backend_stub.problems import ApiError
from backend_stub.storage.sqlite import SQLiteStorage
from sdk.contract import CHECKSUM_HEADER, PROBLEM_CONTENT_TYPE, Limits, batch_checksum

SMALL = Limits(max_batch_items=10, max_batch_bytes=4096)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    """SQLite: most refusals happen before storage is touched. The ones that depend on
    what storage holds run on both backends (``on_both_backends``)."""
    return backend_named(request, getattr(request, "param", "sqlite"))


on_both_backends = pytest.mark.parametrize("backend", ["sqlite", "aws"], indirect=True)


@pytest.fixture
def server(tmp_path: Path, backend: Backend) -> Iterator[Server]:
    with running_server(tmp_path, limits=SMALL, backend=backend) as running:
        yield running


@pytest.fixture
def session(server: Server) -> str:
    """An open session of alice's: 4 items in 2 batches."""
    return server.started(make_plan(items_of(4), batch_size=2))


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    if code is not None:
        assert body["code"] == code


def item_body(**change: Any) -> bytes:
    item = {**items_of(1)[0], **change}
    return json.dumps({"items": [item]}).encode()


# --------------------------------------------------------------------------- authentication


def _unsigned(user: str) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': user, 'exp': 2**40})}."


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "alice"}).encode())
    return f"{header}.{forged.rstrip(b'=').decode()}.{signature}"


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("Basic YWxpY2U6eA==", id="wrong-scheme"),
        pytest.param("Bearer ", id="empty"),
        pytest.param("Bearer not.a.jwt", id="garbage"),
        pytest.param("expired", id="expired"),
        pytest.param("tampered", id="tampered"),
        pytest.param("other-secret", id="signed-with-another-secret"),
        pytest.param("alg-none", id="alg-none"),
    ],
)
def test_requests_without_a_valid_token_are_unauthenticated(
    server: Server, authorization: str | None
) -> None:
    secret = server.settings.jwt_secret
    tokens = {
        "expired": issue_token("alice", secret, ttl=-10),
        "tampered": _tampered(issue_token("mallory", secret)),
        "other-secret": issue_token("alice", "x" * 40),
        "alg-none": _unsigned("alice"),
    }
    headers = {}
    if authorization in tokens:
        headers["Authorization"] = f"Bearer {tokens[authorization]}"
    elif authorization is not None:
        headers["Authorization"] = authorization

    response = server.client.get(server.url("/detect"), headers=headers)

    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_tampered_token_really_was_signed_for_someone_else(server: Server) -> None:
    forged = _tampered(issue_token("mallory", server.settings.jwt_secret))

    claims = jwt.decode(forged, options={"verify_signature": False})

    assert claims["sub"] == "alice"


ENDPOINTS = [
    pytest.param("GET", "/detect", None, id="detect"),
    pytest.param("POST", "/start", {}, id="start"),
    pytest.param("PUT", "/sessions/{sid}/batches/0", None, id="batch"),
    pytest.param("GET", "/status?sessionId={sid}", None, id="status"),
    pytest.param("GET", "/sessions/{sid}/conflicts", None, id="conflicts"),
    pytest.param(
        "POST", "/resolve-conflicts", {"sessionId": "{sid}", "resolutions": []}, id="resolve"
    ),
    pytest.param("POST", "/sessions/{sid}/complete", {"datasetChecksum": "0" * 64}, id="complete"),
    pytest.param("GET", "/summary?sessionId={sid}", None, id="summary"),
    pytest.param("DELETE", "/sessions/{sid}", None, id="cancel"),
]


def _call(
    server: Server, method: str, path: str, body: Any, *, owner: str, caller: str, sid: str
) -> httpx.Response:
    content = json.dumps(body).replace("{sid}", sid).encode() if body is not None else b"{}"
    return server.client.request(
        method,
        server.url(path.replace("{sid}", sid), owner),
        content=content,
        headers=server.auth(
            caller,
            **{"Content-Type": "application/json", CHECKSUM_HEADER: batch_checksum(content)},
        ),
    )


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_a_token_for_another_user_is_forbidden_on_every_endpoint(
    server: Server, session: str, method: str, path: str, body: Any
) -> None:
    response = _call(server, method, path, body, owner="alice", caller="bob", sid=session)

    assert_problem(response, 403, "forbidden")


@on_both_backends
@pytest.mark.parametrize(
    ("method", "path", "body"), [p for p in ENDPOINTS if "{sid}" in str(p.values)]
)
def test_another_users_session_is_not_found_on_every_endpoint(
    server: Server, session: str, method: str, path: str, body: Any
) -> None:
    response = _call(server, method, path, body, owner="bob", caller="bob", sid=session)

    assert_problem(response, 404, "not-found")
    assert server.status(session).json()["status"] == "created"


@pytest.mark.parametrize(
    "user", [pytest.param("bad user", id="space"), pytest.param("-dash", id="leading-dash")]
)
def test_a_malformed_user_id_is_a_bad_request(server: Server, user: str) -> None:
    response = server.client.get(server.url("/detect", user), headers=server.auth(user))

    assert_problem(response, 400, "invalid-request")


# --------------------------------------------------------------------------- sizes


@on_both_backends
def test_a_batch_with_more_items_than_the_limit_is_too_large(server: Server, session: str) -> None:
    items = items_of(11)
    body = json.dumps({"items": items}, separators=(",", ":")).encode()

    assert_problem(server.put(session, 0, body), 413, "payload-too-large")


def test_a_declared_content_length_over_the_limit_is_refused_unread(
    server: Server, session: str
) -> None:
    body = b" " * (SMALL.max_batch_bytes + 1)

    assert_problem(server.put(session, 0, body), 413, "payload-too-large")


def test_a_streamed_body_over_the_limit_is_refused(server: Server, session: str) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 1024

    response = server.client.put(
        server.url(f"/sessions/{session}/batches/0"),
        content=chunks(),
        headers=server.auth(**{"Content-Type": "application/json", CHECKSUM_HEADER: "0" * 64}),
    )

    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload-too-large")


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit(tmp_path: Path) -> None:
    """Over a transport that streams (unlike TestClient, which buffers the request)."""
    storage = SQLiteStorage.open(tmp_path)
    app = create_app(Settings(data_dir=tmp_path, limits=SMALL), storage=storage)
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1000):
            pulled += 1
            yield b" " * 1024

    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            plan = make_plan(items_of(4), batch_size=2)
            token = {
                "Authorization": f"Bearer {issue_token('alice', app.state.settings.jwt_secret)}"
            }
            started = await client.post(
                "/api/migration/alice/start",
                json={
                    "migrationId": "mig-streamed",
                    "deviceId": "d",
                    "dataVersion": 1,
                    "manifest": plan.manifest,
                },
                headers=token,
            )
            return await client.put(
                f"/api/migration/alice/sessions/{started.json()['sessionId']}/batches/0",
                content=chunks(),
                headers={**token, "Content-Type": "application/json", CHECKSUM_HEADER: "0" * 64},
            )

    try:
        response = asyncio.run(scenario())
    finally:
        storage.close()

    assert response.status_code == 413
    assert pulled <= SMALL.max_batch_bytes // 1024 + 2


def test_a_gzip_bomb_is_refused_after_inflating_at_most_the_limit(
    server: Server, session: str
) -> None:
    bomb = gzip.compress(b"[" * 3_000_000)  # ~1000:1
    assert len(bomb) < SMALL.max_batch_bytes

    response = server.put(session, 0, bomb, checksum="0" * 64, headers={"Content-Encoding": "gzip"})

    assert_problem(response, 413, "payload-too-large")


def test_the_inflater_never_holds_more_than_the_limit() -> None:
    inflater = Inflater(limit=1000)
    with pytest.raises(ApiError) as caught:
        inflater.feed(gzip.compress(b"x" * 10_000_000))

    assert caught.value.status == 413
    assert len(inflater._out) <= 1001


@pytest.mark.parametrize(
    "compressed",
    [
        pytest.param(gzip.compress(b"hello")[:-4], id="truncated"),
        pytest.param(b"not gzip at all", id="not-gzip"),
    ],
)
def test_a_broken_gzip_body_is_a_bad_request(
    server: Server, session: str, compressed: bytes
) -> None:
    response = server.put(
        session, 0, compressed, checksum="0" * 64, headers={"Content-Encoding": "gzip"}
    )

    assert_problem(response, 400)


def test_a_json_endpoint_body_over_the_limit_is_too_large(server: Server) -> None:
    plan = make_plan(items_of(1), batch_size=1)
    manifest = {**plan.manifest, "padding": "x" * SMALL.max_batch_bytes}

    response = server.client.post(
        server.url("/start"),
        json={
            "migrationId": "mig-too-big",
            "deviceId": "d",
            "dataVersion": 1,
            "manifest": manifest,
        },
        headers=server.auth(),
    )

    assert_problem(response, 413, "payload-too-large")


# --------------------------------------------------------------------------- media types


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Content-Type": "text/plain"}, id="text-plain"),
        pytest.param({"Content-Type": "application/json; charset=latin-1"}, id="latin-1"),
        pytest.param({"Content-Encoding": "br"}, id="brotli"),
        pytest.param({"Content-Encoding": "gzip, gzip"}, id="double-gzip"),
    ],
)
def test_an_unsupported_media_type_is_refused(
    server: Server, session: str, headers: dict[str, str]
) -> None:
    assert_problem(
        server.put(session, 0, item_body(), headers=headers), 415, "unsupported-media-type"
    )


def test_a_json_endpoint_refuses_a_body_that_is_not_json(server: Server) -> None:
    response = server.client.post(
        server.url("/start"), content=b"x=1", headers=server.auth(**{"Content-Type": "text/plain"})
    )

    assert_problem(response, 415, "unsupported-media-type")


# --------------------------------------------------------------------------- bodies


@on_both_backends
@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b"{not json", 400, id="malformed"),
        pytest.param(item_body().replace(b"k0000", b"k\xff"), 400, id="invalid-utf8"),
        pytest.param(
            item_body().replace(b'"n": 0', b'"n": ' + b"[" * 500 + b"]" * 500), 400, id="too-deep"
        ),
        pytest.param(item_body().replace(b'"n": 0', b'"n": NaN'), 400, id="nan"),
        pytest.param(item_body().replace(b'"n": 0', b'"n": Infinity'), 400, id="infinity"),
        pytest.param(b"[]", 422, id="not-an-object"),
        pytest.param(b'{"items": [], "more": 1}', 422, id="unknown-top-level-field"),
        pytest.param(item_body(extra=1), 422, id="unknown-item-field"),
        pytest.param(item_body(collection="no spaces"), 422, id="bad-collection"),
        pytest.param(item_body(key=""), 422, id="empty-key"),
        pytest.param(item_body(key="a\nb"), 422, id="control-character-in-key"),
        pytest.param(item_body(data=[1]), 422, id="data-not-an-object"),
        pytest.param(item_body(updatedAt=-1), 422, id="negative-time"),
        pytest.param(item_body(updatedAt=1.5), 422, id="fractional-time"),
        pytest.param(item_body(updatedAt=2**70), 422, id="time-past-64-bits"),
        pytest.param(item_body(deleted=0), 422, id="deleted-not-a-bool"),
        pytest.param(b'{"items": []}', 422, id="empty-batch"),
    ],
)
def test_a_malformed_batch_is_refused_and_nothing_is_stored(
    server: Server, session: str, body: bytes, status: int
) -> None:
    response = server.put(session, 0, body)

    assert_problem(response, status)
    assert server.status(session).json()["receivedBatches"] == []


@on_both_backends
@pytest.mark.parametrize(
    ("checksum", "code"),
    [
        pytest.param("f" * 64, "bad-checksum", id="mismatch"),
        pytest.param("xyz", "invalid-request", id="malformed"),
        pytest.param("", "invalid-request", id="missing"),
    ],
)
def test_a_bad_checksum_is_a_bad_request(
    server: Server, session: str, checksum: str, code: str
) -> None:
    plan = make_plan(items_of(4), batch_size=2)
    headers = {CHECKSUM_HEADER: checksum}

    response = server.put(session, 0, plan.bodies[0], headers=headers)

    assert_problem(response, 400, code)
    assert server.status(session).json()["receivedBatches"] == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"migrationId": "short", "deviceId": "d", "dataVersion": 1}, id="bad-migration-id"
        ),
        pytest.param({"unknown": True}, id="unknown-field"),
    ],
)
def test_a_malformed_start_is_unprocessable(server: Server, body: dict[str, Any]) -> None:
    plan = make_plan(items_of(1), batch_size=1)

    response = server.client.post(
        server.url("/start"), json={"manifest": plan.manifest, **body}, headers=server.auth()
    )

    assert_problem(response, 422, "validation-failed")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/sessions/{sid}/complete", {"datasetChecksum": "0" * 64}, id="complete"),
        pytest.param("/resolve-conflicts", {"sessionId": "{sid}", "resolutions": []}, id="resolve"),
        pytest.param(
            "/resolve-conflicts",
            {"sessionId": "{sid}", "resolutions": [{"conflictId": "c", "choice": "server"}]},
            id="resolution",
        ),
    ],
)
def test_unknown_fields_in_a_json_body_are_unprocessable(
    server: Server, session: str, path: str, body: dict[str, Any]
) -> None:
    content = json.loads(json.dumps(body).replace("{sid}", session))
    if content.get("resolutions"):
        content["resolutions"][0]["unknown"] = 1
    else:
        content["unknown"] = 1

    response = server.client.post(
        server.url(path.replace("{sid}", session)), json=content, headers=server.auth()
    )

    assert_problem(response, 422, "validation-failed")


def test_nan_in_a_merged_resolution_is_refused(server: Server, session: str) -> None:
    content = (
        f'{{"sessionId": "{session}", "resolutions": [{{"conflictId": "c", "choice": "merged",'
        ' "data": {"x": NaN}, "updatedAt": 1, "deleted": false}]}'
    )

    response = server.client.post(
        server.url("/resolve-conflicts"),
        content=content.encode(),
        headers=server.auth(**{"Content-Type": "application/json"}),
    )

    assert_problem(response, 400)


# --------------------------------------------------------------------------- sequence and state


@on_both_backends
@pytest.mark.parametrize(
    ("seq", "status", "code"),
    [
        pytest.param("2", 409, "batch-out-of-range", id="past-the-plan"),
        pytest.param("-1", 422, "validation-failed", id="negative"),
        pytest.param("one", 422, "validation-failed", id="not-a-number"),
    ],
)
def test_a_batch_outside_the_plan_is_refused(
    server: Server, session: str, seq: str, status: int, code: str
) -> None:
    body = make_plan(items_of(4), batch_size=2).bodies[0]

    response = server.client.put(
        server.url(f"/sessions/{session}/batches/{seq}"),
        content=body,
        headers=server.auth(
            **{"Content-Type": "application/json", CHECKSUM_HEADER: batch_checksum(body)}
        ),
    )

    assert_problem(response, status, code)


@on_both_backends
def test_a_batch_for_a_completed_session_is_refused(server: Server) -> None:
    plan = make_plan(items_of(2), batch_size=1)
    session_id = server.started(plan)
    server.put(session_id, 0, plan.bodies[0])
    other = make_plan(items_of(2, extra=True), batch_size=1)

    server.put(session_id, 1, plan.bodies[1])
    server.complete(session_id, plan.checksum)

    assert_problem(server.put(session_id, 1, other.bodies[1]), 409)
    assert server.put(session_id, 1, plan.bodies[1]).json()["replayed"] is True


@on_both_backends
def test_an_unknown_session_is_not_found(server: Server) -> None:
    assert_problem(server.status("no-such-session"), 404, "not-found")
    assert_problem(server.complete("no-such-session", "0" * 64), 404, "not-found")


def test_an_unknown_route_and_a_wrong_method_are_problems(server: Server) -> None:
    assert_problem(server.client.get("/nowhere"), 404, "not-found")
    wrong = server.client.patch(server.url("/start"), headers=server.auth())
    assert_problem(wrong, 405, "method-not-allowed")
    assert "POST" in wrong.headers["allow"]


@pytest.mark.parametrize("authorized", [True, False], ids=["with a token", "without"])
def test_a_trailing_slash_is_not_found_and_never_redirects_to_the_host_header(
    server: Server, authorized: bool
) -> None:
    headers = {"Host": "evil.example", **(server.auth() if authorized else {})}

    answer = server.client.get(server.url("/detect") + "/", headers=headers, follow_redirects=False)

    assert_problem(answer, 404, "not-found")
    assert "location" not in answer.headers
    assert "evil.example" not in answer.text


@pytest.mark.parametrize("count", [-1, 2**63, 10**40, "many"])
def test_a_bad_query_parameter_is_unprocessable(server: Server, count: object) -> None:
    response = server.client.get(
        server.url("/detect"), params={"itemCount": count}, headers=server.auth()
    )

    assert_problem(response, 422, "validation-failed")
    assert response.json()["errors"][0]["loc"] == ["query", "itemCount"]
