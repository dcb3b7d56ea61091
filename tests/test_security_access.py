"""Nobody gets in: another user's ids are not found on every endpoint and change nothing,
and no token but a valid one for the path's user opens any endpoint.

``test_server_refusals.py`` checks the status codes; this checks that the refused
requests left every row of the database as it was. On both backends: ``ON_BOTH`` runs a
test on the aws one too (DynamoDB and S3 on moto's server), where "every row" is every
item of the table and every object of the bucket.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
import warnings
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from _pytest.mark.structures import ParameterSet
from aws_fixtures import backend_named
from server_fixtures import Server, items_of, make_plan, running_server

from backend_stub import seed_cloud_items
from backend_stub.auth import issue_token
from backend_stub.storage.sqlite import DATABASE_NAME
from sdk.contract import CHECKSUM_HEADER, PROBLEM_CONTENT_TYPE, batch_checksum

TABLES = (
    "sessions",
    "session_numbers",
    "batches",
    "staged_items",
    "conflicts",
    "cloud_items",
    "events",
)


def everything(server: Server) -> dict[str, list[Any]]:
    """Every row of every table, read-only (on aws: every item and every object)."""
    if server.backend == "aws":
        return everything_on_aws(server.storage.resources)  # type: ignore[attr-defined]
    data_dir = server.settings.data_dir
    assert data_dir is not None
    uri = f"{(data_dir / DATABASE_NAME).resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}
    finally:
        conn.close()


def everything_on_aws(resources: Any) -> dict[str, list[Any]]:
    pages = resources.dynamodb.get_paginator("scan").paginate(
        TableName=resources.table, ConsistentRead=True
    )
    rows = [row for page in pages for row in page.get("Items", [])]
    listed = resources.s3.list_objects_v2(Bucket=resources.bucket).get("Contents", [])
    return {
        "table": sorted(rows, key=repr),
        "bucket": sorted((o["Key"], o["ETag"], o["Size"]) for o in listed),
    }


#: Runs a test on both backends (a ``server`` parameter, see :func:`server`).
ON_BOTH = pytest.mark.parametrize("server", ["sqlite", "aws"], indirect=True)


def on_both(names: str, params: Sequence[Any], *, aws: Collection[Any]) -> pytest.MarkDecorator:
    """``parametrize(names, params)`` on SQLite; on the aws backend too for the params
    whose id (or first value, without an id) is in ``aws``: a representative few, so
    that ``make test`` stays quick (``server`` must be the test's first argument)."""
    cases = []
    for param in params:
        if not isinstance(param, ParameterSet):
            param = pytest.param(*(param if isinstance(param, tuple) else (param,)))
        cases.append(pytest.param("sqlite", *param.values, id=param.id, marks=param.marks))
        if (param.id if param.id is not None else param.values[0]) in aws:
            shown = param.id if param.id is not None else "-".join(map(str, param.values))
            cases.append(pytest.param("aws", *param.values, id=f"aws-{shown}", marks=param.marks))
    return pytest.mark.parametrize(f"server,{names}", cases, indirect=["server"])


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """The app on SQLite, or on the backend a test's ``server`` parameter names."""
    backend = backend_named(request, getattr(request, "param", "sqlite"))
    with running_server(tmp_path, backend=backend) as running:
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


@ON_BOTH
def test_another_users_ids_are_not_found_anywhere_and_change_nothing(
    server: Server, alice: dict[str, str]
) -> None:
    before = everything(server)

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
    assert everything(server) == before


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


KINDS = [
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
]
#: On the aws backend too: the server checks tokens before any storage; one of each kind.
AWS_KINDS = ["missing", "expired", "bobs-token-relabelled", "alg-none"]


@on_both("kind", KINDS, aws=AWS_KINDS)
def test_no_forged_missing_or_expired_token_opens_any_endpoint(
    server: Server, alice: dict[str, str], kind: str
) -> None:
    authorization = forged(kind, server.settings.jwt_secret)
    before = everything(server)
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
    assert everything(server) == before
