"""Helpers for the server tests: the real app in-process, on either storage backend.

Tests build a :class:`Server` with :func:`running_server` and talk to it through
``fastapi.testclient.TestClient`` (a real ``httpx.Client`` over the ASGI app). Time is a
:class:`Clock` the test moves, so expiry needs no sleeping.

The backend is a temp-dir SQLite database, or (``backend`` fixture, ``aws``) DynamoDB, S3,
SQS and EventBridge on moto: there every batch upload is followed, in the uploading
thread, by a worker draining the job queue, so a test sees each batch processed when its
``PUT`` returns, as on SQLite (the receipt itself only acknowledges storage).
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from starlette.exceptions import StarletteDeprecationWarning

from backend_stub import Settings, create_app, issue_token
from backend_stub.storage import Storage
from backend_stub.storage.sqlite import SQLiteStorage
from sdk.contract import (
    CHECKSUM_HEADER,
    Item,
    Limits,
    batch_body,
    batch_checksum,
    canonical_item,
    dataset_checksum_of,
)

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 package for its test client; plain httpx still
    # works, and is what the product depends on.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

__all__ = [
    "Clock",
    "Plan",
    "Server",
    "TestClient",
    "items_of",
    "make_plan",
    "running_server",
]

BASE = "/api/migration"
T0 = 1_700_000_000_000


class Clock:
    """A settable clock in ms since the epoch."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


def items_of(
    count: int, *, collection: str = "lessons", updated_at: int = T0, **data: Any
) -> list[Item]:
    """``count`` live items ``{collection}/k0000...`` with small data objects."""
    return [
        Item(
            collection=collection,
            key=f"k{i:04d}",
            data={"n": i, **data},
            updatedAt=updated_at,
            deleted=False,
        )
        for i in range(count)
    ]


@dataclasses.dataclass(frozen=True)
class Plan:
    """A snapshot split into batches, as the SDK would send it."""

    items: list[Item]
    bodies: list[bytes]
    manifest: dict[str, Any]

    @property
    def checksum(self) -> str:
        return str(self.manifest["datasetChecksum"])


def make_plan(items: Sequence[Item], batch_size: int) -> Plan:
    """Sort, batch and checksum ``items``; the manifest is in wire (camelCase) form."""
    ordered = sorted(items, key=lambda i: (i["collection"], i["key"]))
    bodies = [
        batch_body(canonical_item(item) for item in ordered[start : start + batch_size])
        for start in range(0, len(ordered), batch_size)
    ]
    collections: dict[str, int] = {}
    for item in ordered:
        collections[item["collection"]] = collections.get(item["collection"], 0) + 1
    manifest = {
        "itemCount": len(ordered),
        "collections": collections,
        "batchSize": batch_size,
        "batchCount": math.ceil(len(ordered) / batch_size),
        "datasetChecksum": dataset_checksum_of(ordered),
    }
    return Plan(ordered, bodies, manifest)


@dataclasses.dataclass
class Server:
    """The app under test, its storage and clock, and shortcuts for the wire calls."""

    client: httpx.Client  # a TestClient: an httpx.Client over the ASGI app
    storage: Storage
    settings: Settings
    clock: Clock
    backend: str = "sqlite"
    #: Opens another connection to the same data (as another process would read it).
    open_reader: Any = None

    def auth(self, user: str = "alice", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(user, self.settings.jwt_secret)}", **extra}

    def url(self, path: str, user: str = "alice") -> str:
        return f"{BASE}/{user}{path}"

    def start(
        self,
        plan: Plan,
        *,
        user: str = "alice",
        migration_id: str | None = None,
        device_id: str = "phone-1",
        data_version: int = 1,
    ) -> httpx.Response:
        return self.client.post(
            self.url("/start", user),
            json={
                "migrationId": migration_id or f"mig-{uuid.uuid4().hex[:12]}",
                "deviceId": device_id,
                "dataVersion": data_version,
                "manifest": plan.manifest,
            },
            headers=self.auth(user),
        )

    def started(self, plan: Plan, **kwargs: Any) -> str:
        response = self.start(plan, **kwargs)
        assert response.status_code == 200, response.text
        return str(response.json()["sessionId"])

    def put(
        self,
        session_id: str,
        seq: int,
        body: bytes,
        *,
        user: str = "alice",
        checksum: str | None = None,
        gzipped: bool = False,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = gzip.compress(body) if gzipped else body
        all_headers = self.auth(
            user,
            **{
                "Content-Type": "application/json",
                CHECKSUM_HEADER: checksum or batch_checksum(body),
            },
        )
        if gzipped:
            all_headers["Content-Encoding"] = "gzip"
        all_headers.update(headers or {})
        return self.client.put(
            self.url(f"/sessions/{session_id}/batches/{seq}", user),
            content=sent,
            headers=all_headers,
        )

    def upload_all(self, session_id: str, plan: Plan) -> list[dict[str, Any]]:
        receipts = []
        for seq, body in enumerate(plan.bodies):
            response = self.put(session_id, seq, body)
            assert response.status_code == 200, response.text
            receipts.append(response.json())
        return receipts

    def status(self, session_id: str | None = None, user: str = "alice") -> httpx.Response:
        params = {"sessionId": session_id} if session_id else {}
        return self.client.get(self.url("/status", user), params=params, headers=self.auth(user))

    def conflicts(self, session_id: str, **params: Any) -> httpx.Response:
        return self.client.get(
            self.url(f"/sessions/{session_id}/conflicts"), params=params, headers=self.auth()
        )

    def resolve(self, session_id: str, resolutions: list[dict[str, Any]]) -> httpx.Response:
        return self.client.post(
            self.url("/resolve-conflicts"),
            json={"sessionId": session_id, "resolutions": resolutions},
            headers=self.auth(),
        )

    def complete(self, session_id: str, checksum: str) -> httpx.Response:
        """``complete``; on aws its answer once the worker committed (the aws fixture's
        hook runs the worker after each ``complete``, so the replay has the result)."""
        response = self.complete_once(session_id, checksum)
        if response.status_code == 200 and response.json()["status"] == "committing":
            response = self.complete_once(session_id, checksum)
        return response

    def complete_once(self, session_id: str, checksum: str) -> httpx.Response:
        return self.client.post(
            self.url(f"/sessions/{session_id}/complete"),
            json={"datasetChecksum": checksum},
            headers=self.auth(),
        )

    def cancel(self, session_id: str) -> httpx.Response:
        return self.client.delete(self.url(f"/sessions/{session_id}"), headers=self.auth())

    def summary(self, session_id: str | None = None) -> httpx.Response:
        params = {"sessionId": session_id} if session_id else {}
        return self.client.get(self.url("/summary"), params=params, headers=self.auth())

    def event_types(self, user: str = "alice") -> list[str]:
        return [event.type.value for event in self.storage.events(user_id=user)]


@contextmanager
def running_server(
    data_dir: Path, *, limits: Limits | None = None, backend: Any = None, **settings: Any
) -> Iterator[Server]:
    """The app on a SQLite database in ``data_dir`` (or on ``backend``), with a test clock.

    ``backend`` is the ``backend`` fixture's value (``None``: SQLite).
    """
    if backend is not None and backend.name == "aws":
        with _running_aws(backend.aws, limits=limits, **settings) as server:
            yield server
        return
    config = Settings(data_dir=data_dir, limits=limits or Limits(), **settings)
    storage = SQLiteStorage.open(data_dir)
    clock = Clock()
    try:
        with TestClient(create_app(config, storage=storage, clock=clock)) as client:
            yield Server(
                client, storage, config, clock, open_reader=lambda: SQLiteStorage.open(data_dir)
            )
    finally:
        storage.close()


@contextmanager
def _running_aws(aws: Any, *, limits: Limits | None, **settings: Any) -> Iterator[Server]:
    from backend_stub.worker import Worker

    config = Settings(backend="aws", aws=aws.settings, limits=limits or Limits(), **settings)
    storage = aws.open()
    clock = Clock()
    worker = Worker(storage, config, clock=clock, wait_seconds=0)

    def process_after_upload(response: httpx.Response) -> None:
        path = response.request.url.path
        if response.request.method == "PUT" and "/batches/" in path:
            worker.drain()
        if response.request.method == "POST" and path.endswith("/complete"):
            worker.drain()  # the commit, slice after slice

    try:
        with TestClient(create_app(config, storage=storage, clock=clock)) as client:
            client.event_hooks["response"].append(process_after_upload)
            yield Server(client, storage, config, clock, backend="aws", open_reader=aws.open)
    finally:
        storage.close()
