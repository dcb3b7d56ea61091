"""The aws backend's commit with its processes really killed: the worker SIGKILLed
around the flip and in the roll-forward, the API SIGKILLed after recording the decision
but before answering; a fresh process finishes, and every TTL then passes.

The API is ``python -m backend_stub`` and the worker ``python -m backend_stub worker``,
each a child process on the test's own resources in the session's moto server;
``MIGRATION_FAILPOINTS`` makes one SIGKILL itself at a named step
(:mod:`backend_stub.failpoints`). The queue's visibility timeout is short so that the
killed worker's job comes back quickly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aws_fixtures import AwsBackend, expire_every_ttl, fresh_aws_backend, rows_under, tap_events
from aws_servers import AwsServerView, aws_env, spawn_aws_worker
from chaos_harness import poll, spawn_server
from server_fixtures import Clock, Plan, Server, items_of, make_plan

from backend_stub import Settings
from backend_stub.storage.aws import AwsStorage
from backend_stub.storage.aws_slices import load_record

ITEMS = 100
SLICE = 25  # several slices of aside, snapshot and roll-forward each
WAIT = 60.0  # generous: two cores shared with other work


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MIGRATION_"):
            monkeypatch.delenv(name)


@pytest.fixture
def backend(moto_endpoint: str, boto_session: Any) -> AwsBackend:
    return fresh_aws_backend(moto_endpoint, boto_session, commit_slice=SLICE, visibility_timeout=2)


@pytest.fixture
def storage(backend: AwsBackend) -> Iterator[AwsStorage]:
    opened = backend.open()
    yield opened
    opened.close()


@contextlib.contextmanager
def api(data_dir: Path, backend: AwsBackend, **env: str) -> Iterator[tuple[Server, Any]]:
    """The API as a child process, and the wire shortcuts of alice against it."""
    process = spawn_server(data_dir, env={**aws_env(backend.settings), **env})
    settings = Settings(backend="aws", aws=backend.settings)
    reader = backend.open()
    try:
        with httpx.Client(base_url=process.url, timeout=30) as client:
            yield Server(client, reader, settings, Clock(), backend="aws"), process
    finally:
        process.kill()
        reader.close()


@contextlib.contextmanager
def worker(data_dir: Path, backend: AwsBackend, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    process = spawn_aws_worker(data_dir, backend, **env)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=10)


def uploaded(server: Server) -> tuple[Plan, str]:
    """A started session with every batch uploaded and processed by the worker."""
    plan = make_plan(items_of(ITEMS), batch_size=SLICE)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)
    poll(
        lambda: server.status(session_id).json()["status"] == "ready",
        timeout=WAIT,
        what="the worker to process every batch",
    )
    return plan, session_id


def killed(process: subprocess.Popen[Any]) -> int:
    code: int = process.wait(timeout=WAIT)
    return code


def finished(storage: AwsStorage, session_id: str) -> bool:
    record = load_record(storage, session_id)
    return record is not None and record.step == "done"


def assert_whole_after_every_ttl(
    server: Server, storage: AwsStorage, backend: AwsBackend, plan: Plan, session_id: str
) -> None:
    """The migration completed once, nothing is set aside, and after every TTL passed
    the user's cloud is exactly the migrated items and the summary still says so."""
    assert len(storage.events(user_id="alice", type="MigrationCompleted")) == 1
    assert storage.publish_outbox() == 0  # nothing left to publish again
    assert rows_under(storage, "TX#") == 0
    assert "rolling" not in (storage.table.get("USER#alice", "PROFILE") or {})

    assert expire_every_ttl(storage, days=storage.settings.retention_days + 2) > 0

    keys = [(i["collection"], i["key"]) for i in plan.items]
    assert set(AwsServerView(backend).cloud("alice")) == set(keys)
    assert {k: i.version for k, i in storage.cloud_items("alice", keys).items()} == dict.fromkeys(
        keys, 1
    )
    summary = server.summary(session_id).json()
    assert (summary["result"], summary["summary"]["verified"]) == ("completed", True)
    assert summary["summary"]["cloudChecksum"] == plan.checksum
    assert summary["summary"]["newItems"] == ITEMS


@pytest.mark.parametrize(
    ("step", "status_at_death"),
    [
        pytest.param("commit.flip.before=kill", "committing", id="before-the-flip"),
        pytest.param("commit.flip.after=kill", "completed", id="right-after-the-flip"),
        pytest.param("commit.roll.page=kill@2", "completed", id="rolling-forward"),
    ],
)
def test_a_worker_killed_in_the_commit_is_finished_by_a_fresh_one_and_survives_every_ttl(
    tmp_path: Path, backend: AwsBackend, storage: AwsStorage, step: str, status_at_death: str
) -> None:
    tap = tap_events(backend)
    with api(tmp_path / "api", backend) as (server, _):
        with worker(tmp_path, backend, MIGRATION_FAILPOINTS=step) as doomed:
            plan, session_id = uploaded(server)
            answer = server.complete_once(session_id, plan.checksum)
            assert answer.json()["status"] == "committing", answer.text
            assert killed(doomed) == -signal.SIGKILL
        # Dead where the failpoint says: the flip not landed yet, or landed and the
        # roll-forward left to do.
        record = load_record(storage, session_id)
        assert record is not None
        assert record.step == ("flip" if status_at_death == "committing" else "roll")
        assert server.status(session_id).json()["status"] == status_at_death

        with worker(tmp_path, backend):
            poll(lambda: finished(storage, session_id), timeout=WAIT, what="the commit to finish")
            done = server.complete_once(session_id, plan.checksum).json()
            published = sorted(e["detail-type"] for e in tap.collect(2))

        assert (done["status"], done["cloudChecksum"]) == ("completed", plan.checksum)
        assert published == ["MigrationCompleted", "MigrationStarted"]
        assert_whole_after_every_ttl(server, storage, backend, plan, session_id)


def test_an_api_killed_before_answering_complete_completes_on_the_retry(
    tmp_path: Path, backend: AwsBackend, storage: AwsStorage
) -> None:
    tap = tap_events(backend)
    with worker(tmp_path, backend):
        with api(
            tmp_path / "api-1", backend, MIGRATION_FAILPOINTS="commit.complete.recorded=kill"
        ) as (server, process):
            plan, session_id = uploaded(server)
            with pytest.raises(httpx.TransportError):
                server.complete_once(session_id, plan.checksum)
            assert killed(process.process) == -signal.SIGKILL

        with api(tmp_path / "api-2", backend) as (server, _):
            retried = server.complete_once(session_id, plan.checksum)
            assert retried.status_code == 200, retried.text
            assert retried.json()["status"] in ("committing", "completed")
            poll(
                lambda: server.status(session_id).json()["status"] == "completed",
                timeout=WAIT,
                what="the commit to complete",
            )
            done = server.complete_once(session_id, plan.checksum).json()
            assert (done["status"], done["cloudChecksum"]) == ("completed", plan.checksum)
            poll(lambda: finished(storage, session_id), timeout=WAIT, what="the commit to finish")
            published = sorted(e["detail-type"] for e in tap.collect(2))

            assert published == ["MigrationCompleted", "MigrationStarted"]
            assert_whole_after_every_ttl(server, storage, backend, plan, session_id)
