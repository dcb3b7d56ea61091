"""Nobody gets in: another user's ids are not found on every endpoint and change nothing,
and no token but a valid one for the path's user opens any endpoint.

``test_server_refusals.py`` checks the status codes; this checks that the refused
requests left every row of the database as it was.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from server_fixtures import Server, items_of, make_plan, running_server

from backend_stub import seed_cloud_items
from backend_stub.auth import issue_token
from backend_stub.storage.sqlite import DATABASE_NAME
from sdk.contract import CHECKSUM_HEADER, PROBLEM_CONTENT_TYPE, batch_checksum

TABLES = ("sessions", "batches", "staged_items", "conflicts", "cloud_items", "events")


def everything(data_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read-only."""
    uri = f"{(data_dir / DATABASE_NAME).resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}
    finally:
        conn.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running_server(tmp_path) as running:
        yield running


@pytest.fixture
def alice(server: Server) -> dict[str, str]:
    """Alice mid-migration: a session with one batch held and two conflicts open; and
    bob with a session of his own."""
    items = items_of(6)
    seed_cloud_items(server.storage, "alice", [dict(i, data={"cloud": 1}) for i in items[:2]])
    plan = make_plan(items, batch_size=2)
    session = server.started(plan)
    assert server.put(session, 0, plan.bodies[0]).status_code == 200
    conflicts = server.conflicts(session).json()["conflicts"]
    assert len(conflicts) == 2
    bob_plan = make_plan(items_of(2, collection="bobs"), batch_size=2)
    bob_session = server.started(bob_plan, user="bob")
    return {
        "session": session,
        "conflict": conflicts[0]["conflictId"],
        "bob_session": bob_session,
        "checksum": plan.checksum,
        "body": plan.bodies[1].decode(),
    }


def calls(ids: dict[str, str]) -> list[tuple[str, str, bytes | None]]:
    """Every endpoint, aimed at alice's session and conflict."""
    sid, cid = ids["session"], ids["conflict"]
    resolve = {"sessionId": sid, "resolutions": [{"conflictId": cid, "choice": "local"}]}
    return [
        ("GET", f"/status?sessionId={sid}", None),
        ("GET", f"/summary?sessionId={sid}", None),
        ("GET", f"/sessions/{sid}/conflicts", None),
        ("PUT", f"/sessions/{sid}/batches/1", ids["body"].encode()),
        ("POST", "/resolve-conflicts", json.dumps(resolve).encode()),
        (
            "POST",
            f"/sessions/{sid}/complete",
            json.dumps({"datasetChecksum": ids["checksum"]}).encode(),
        ),
        ("DELETE", f"/sessions/{sid}", None),
        # Bob's own session with alice's conflict id: the id is unknown in his session.
        (
            "POST",
            "/resolve-conflicts",
            json.dumps(
                {
                    "sessionId": ids["bob_session"],
                    "resolutions": [{"conflictId": cid, "choice": "local"}],
                }
            ).encode(),
        ),
    ]


def send(
    server: Server,
    method: str,
    path: str,
    body: bytes | None,
    *,
    user: str,
    authorization: str | None,
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if body is not None:
        headers[CHECKSUM_HEADER] = batch_checksum(body)
    if authorization is not None:
        headers["Authorization"] = authorization
    return server.client.request(method, server.url(path, user), content=body, headers=headers)


def test_another_users_ids_are_not_found_anywhere_and_change_nothing(
    server: Server, alice: dict[str, str]
) -> None:
    before = everything(server.settings.data_dir)  # type: ignore[arg-type]

    answers = [
        send(
            server,
            m,
            p,
            b,
            user="bob",
            authorization=f"Bearer {issue_token('bob', server.settings.jwt_secret)}",
        )
        for m, p, b in calls(alice)
    ]

    assert [a.status_code for a in answers] == [404] * len(answers), [a.text for a in answers]
    assert all(a.headers["content-type"] == PROBLEM_CONTENT_TYPE for a in answers)
    assert all(alice["session"] not in a.text or "no migration session" in a.text for a in answers)
    assert everything(server.settings.data_dir) == before  # type: ignore[arg-type]


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def forged(kind: str, secret: str) -> str | None:
    """The Authorization header of one kind of bad credentials for alice."""
    now = int(time.time())
    header, payload, signature = issue_token("alice", secret).split(".")
    claims = {"sub": "alice", "exp": now + 600}
    bobs = jwt.decode(issue_token("bob", secret), options={"verify_signature": False})
    if kind == "missing":
        return None
    if kind == "alg-HS512-same-secret":
        with warnings.catch_warnings():  # PyJWT frowns on the key length for HS512
            warnings.simplefilter("ignore")
            return "Bearer " + jwt.encode(claims, secret, algorithm="HS512")
    return {
        "empty": "Bearer ",
        "basic-scheme": "Basic YWxpY2U6cGFzc3dvcmQ=",
        "garbage": "Bearer not-a-jwt",
        "expired": f"Bearer {issue_token('alice', secret, ttl=-1)}",
        "tampered-subject": f"Bearer {header}.{_b64({**claims, 'x': 1})}.{signature}",
        "bobs-token-relabelled": f"Bearer {header}.{_b64({**bobs, 'sub': 'alice'})}.{signature}",
        "alg-none": f"Bearer {_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "alg-None": f"Bearer {_b64({'alg': 'None'})}.{_b64(claims)}.",
        "another-secret": f"Bearer {issue_token('alice', 'x' * 40)}",
        "no-expiry": "Bearer " + jwt.encode({"sub": "alice"}, secret, algorithm="HS256"),
        "no-subject": "Bearer " + jwt.encode({"exp": now + 600}, secret, algorithm="HS256"),
        "not-yet-valid": "Bearer " + jwt.encode({**claims, "nbf": now + 300}, secret),
        "signature-stripped": f"Bearer {header}.{payload}.",
    }[kind]


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "empty",
        "basic-scheme",
        "garbage",
        "expired",
        "tampered-subject",
        "bobs-token-relabelled",
        "alg-none",
        "alg-None",
        "alg-HS512-same-secret",
        "another-secret",
        "no-expiry",
        "no-subject",
        "not-yet-valid",
        "signature-stripped",
    ],
)
def test_no_forged_missing_or_expired_token_opens_any_endpoint(
    server: Server, alice: dict[str, str], kind: str
) -> None:
    authorization = forged(kind, server.settings.jwt_secret)
    before = everything(server.settings.data_dir)  # type: ignore[arg-type]
    endpoints = [
        ("GET", "/detect?hasLocalData=true&itemCount=3", None),
        ("POST", "/start", b"{}"),
        *calls(alice)[:-1],
    ]

    answers = [
        send(server, m, p, b, user="alice", authorization=authorization) for m, p, b in endpoints
    ]

    assert [a.status_code for a in answers] == [401] * len(answers), [a.text for a in answers]
    assert all(a.headers["www-authenticate"].startswith("Bearer") for a in answers)
    assert all(a.headers["content-type"] == PROBLEM_CONTENT_TYPE for a in answers)
    assert everything(server.settings.data_dir) == before  # type: ignore[arg-type]
