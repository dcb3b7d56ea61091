"""The aws backend's batch queue: at-least-once delivery applied once, poison batches in the
dead-letter queue and in the session's status, inbound events, the Lambda entry points
and the worker command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_fixtures import AwsBackend
from server_fixtures import T0, Server, items_of, make_plan, running_server

from backend_stub import seed_cloud_items
from backend_stub.events import Event
from backend_stub.monitoring import JsonFormatter
from backend_stub.service import now_ms
from backend_stub.storage.aws import AwsStorage
from backend_stub.worker import Outcome, Worker, job_message


@pytest.fixture
def server(tmp_path: Path, aws_backend: AwsBackend) -> Iterator[Server]:
    """The app on the aws backend; unlike the contract tests, nothing drains the queue:
    each test runs the worker itself."""
    from aws_fixtures import Backend

    with running_server(tmp_path, backend=Backend("aws", aws_backend)) as running:
        running.client.event_hooks["response"].clear()
        yield running


def worker_for(server: Server, storage: AwsStorage | None = None) -> Worker:
    assert isinstance(server.storage, AwsStorage)
    return Worker(storage or server.storage, server.settings, clock=server.clock, wait_seconds=0)


def queue_messages(storage: AwsStorage, url: str | None = None) -> list[dict[str, Any]]:
    """Every message in a queue (received, then made visible again)."""
    sqs = storage.resources.sqs
    url = url or storage.resources.queue_url
    answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    return answer.get("Messages", [])


def conflict_events(storage: AwsStorage, user: str = "alice") -> list[Event]:
    return storage.events(user_id=user, type="DataConflictDetected")


def a_batch_with_conflicts(server: Server) -> tuple[str, Any]:
    """Alice's session of 6 items in 2 batches; 2 items of batch 0 conflict with the cloud."""
    local = items_of(6)
    seed_cloud_items(server.storage, "alice", [{**i, "data": {"x": 0}} for i in local[:2]], now=T0)
    plan = make_plan(local, batch_size=3)
    return server.started(plan), plan


# --------------------------------------------------------------------------- at least once


def test_duplicate_deliveries_apply_a_batch_once(server: Server) -> None:
    storage = server.storage
    assert isinstance(storage, AwsStorage)
    session_id, plan = a_batch_with_conflicts(server)
    assert server.put(session_id, 0, plan.bodies[0]).status_code == 200
    held = storage.ledger.held(session_id, 0)
    assert held is not None
    # SQS may deliver a message again, and a replayed upload sends its job again.
    for _ in range(2):
        storage.resources.sqs.send_message(
            QueueUrl=storage.resources.queue_url,
            MessageBody=job_message("alice", session_id, 0, held.checksum),
        )
    assert server.put(session_id, 0, plan.bodies[0]).json()["replayed"] is True

    handled = worker_for(server).drain()

    assert handled == 4
    status = server.status(session_id).json()
    assert (status["receivedBatches"], status["processedBatches"]) == ([0], 1)
    assert (status["conflictCount"], status["unresolvedConflicts"]) == (2, 2)
    assert len(storage.staged_items(session_id, after=None, limit=100)) == 3
    assert len(conflict_events(storage)) == 1
    assert queue_messages(storage) == []


def test_two_workers_on_one_message_apply_the_batch_once(
    server: Server, aws_backend: AwsBackend
) -> None:
    storage = server.storage
    assert isinstance(storage, AwsStorage)
    session_id, plan = a_batch_with_conflicts(server)
    server.put(session_id, 0, plan.bodies[0])
    (message,) = queue_messages(storage)
    both_loaded = threading.Barrier(2, timeout=10)
    outcomes: list[Outcome] = []

    def deliver() -> None:
        # Each worker its own storage (its own process, as far as caches go); both have
        # the batch in hand before either starts processing it.
        own = aws_backend.open()
        load = own.ledger.load

        def load_together(held: Any) -> bytes:
            body = load(held)
            both_loaded.wait()
            return body

        own.ledger.load = load_together  # type: ignore[method-assign]
        outcomes.append(worker_for(server, own).handle(message["Body"], 1))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # One processed it; the other found the batch leased (or done) and let it be.
    assert sorted(o.done for o in outcomes) in ([False, True], [True, True])
    status = server.status(session_id).json()
    assert (status["processedBatches"], status["conflictCount"]) == (1, 2)
    assert len(storage.staged_items(session_id, after=None, limit=100)) == 3
    assert len(conflict_events(storage)) == 1


def test_a_worker_whose_lease_expired_cannot_apply_its_stale_attempt(
    server: Server, aws_backend: AwsBackend
) -> None:
    """Worker A stalls after staging; its lease runs out; B processes the batch; then A
    wakes up. The fence refuses A's writes and its attempt never counts."""
    storage = server.storage
    assert isinstance(storage, AwsStorage)
    session_id, plan = a_batch_with_conflicts(server)
    server.put(session_id, 0, plan.bodies[0])
    (message,) = queue_messages(storage)
    slow = aws_backend.open()
    write = slow.ledger.write_fenced
    staged, resume = threading.Event(), threading.Event()

    def write_then_stall(*args: Any, **kwargs: Any) -> None:
        write(*args, **kwargs)
        if not staged.is_set():
            staged.set()
            assert resume.wait(timeout=10)

    slow.ledger.write_fenced = write_then_stall  # type: ignore[method-assign]
    outcome: list[Outcome] = []
    stalled = threading.Thread(
        target=lambda: outcome.append(worker_for(server, slow).handle(message["Body"], 1))
    )
    stalled.start()
    assert staged.wait(timeout=10)
    # A's lease runs out (as if it had stalled for the whole visibility timeout).
    storage.table.update(
        f"SESSION#{session_id}",
        "BATCH#0000000000",
        "SET #leaseUntil = :past",
        values={":past": {"N": "0"}},
    )

    assert worker_for(server).handle(message["Body"], 2).done
    resume.set()
    stalled.join(timeout=30)

    assert outcome and outcome[0].done  # A retried, and found the batch processed
    status = server.status(session_id).json()
    assert (status["processedBatches"], status["conflictCount"]) == (1, 2)
    assert len(storage.staged_items(session_id, after=None, limit=100)) == 3
    assert len(conflict_events(storage)) == 1
    server.put(session_id, 1, plan.bodies[1])
    worker_for(server).drain()
    assert server.status(session_id).json()["status"] == "awaiting_resolution"


def test_a_job_lost_on_the_way_to_the_queue_is_sent_again_by_the_replayed_upload(
    server: Server,
) -> None:
    storage = server.storage
    assert isinstance(storage, AwsStorage)
    plan = make_plan(items_of(2), batch_size=2)
    session_id = server.started(plan)
    server.put(session_id, 0, plan.bodies[0])
    storage.resources.sqs.purge_queue(QueueUrl=storage.resources.queue_url)
    assert server.status(session_id).json()["status"] == "processing"

    assert server.put(session_id, 0, plan.bodies[0]).json()["replayed"] is True
    worker_for(server).drain()

    assert server.status(session_id).json()["status"] == "ready"
    assert server.complete(session_id, plan.checksum).status_code == 200


# --------------------------------------------------------------------------- poison batches


def test_a_poison_batch_lands_in_the_dead_letter_queue_and_shows_in_the_status(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    storage = server.storage
    assert isinstance(storage, AwsStorage)
    plan = make_plan(items_of(4), batch_size=2)
    session_id = server.started(plan)
    server.put(session_id, 0, plan.bodies[0])
    server.put(session_id, 1, plan.bodies[1])
    held = storage.ledger.held(session_id, 1)
    assert held is not None
    # The stored copy of batch 1 is damaged: every attempt at processing it fails.
    storage.resources.s3.put_object(
        Bucket=storage.resources.bucket, Key=held.body_key, Body=b'{"items": []}'
    )
    caplog.set_level(logging.INFO, logger="backend_stub")

    worker_for(server).drain()

    dead = queue_messages(storage, storage.resources.dead_letter_queue_url)
    assert [json.loads(m["Body"])["seq"] for m in dead] == [1]
    assert queue_messages(storage) == []
    status = server.status(session_id).json()
    assert status["status"] == "uploading"
    assert status["receivedBatches"] == [0]
    assert len(status["errors"]) == 1
    assert "batch 1 could not be processed (processing failed 3 times" in status["errors"][0]
    assert "upload it again" in status["errors"][0]
    assert [
        r.getMessage() for r in caplog.records if getattr(r, "Event", "") == "BatchDeadLettered"
    ]

    # The client sends it again; this copy is sound.
    assert server.put(session_id, 1, plan.bodies[1]).json()["replayed"] is False
    worker_for(server).drain()

    status = server.status(session_id).json()
    assert (status["status"], status["errors"], status["receivedBatches"]) == ("ready", [], [0, 1])
    assert server.complete(session_id, plan.checksum).status_code == 200


def test_a_refused_batch_is_reported_at_once_and_not_retried(server: Server) -> None:
    storage = server.storage
    assert isinstance(storage, AwsStorage)
    items = items_of(4)
    plan = make_plan(items, batch_size=2)
    session_id = server.started(plan)
    server.put(session_id, 0, plan.bodies[0])
    worker_for(server).drain()
    from sdk.contract import batch_body, canonical_item

    server.put(session_id, 1, batch_body(canonical_item(i) for i in items[1:3]))

    assert worker_for(server).drain() == 1
    assert queue_messages(storage, storage.resources.dead_letter_queue_url) == []
    (error,) = server.status(session_id).json()["errors"]
    assert "already uploaded in another batch" in error


# --------------------------------------------------------------------------- events in


def test_user_registered_events_from_the_bus_mark_a_candidate(server: Server) -> None:
    storage = server.storage
    assert isinstance(storage, AwsStorage)
    storage.resources.events.put_events(
        Entries=[
            {
                "Source": "accounts",
                "DetailType": "UserRegistered",
                "Detail": json.dumps({"userId": "zoe", "registeredAt": T0}),
                "EventBusName": storage.resources.event_bus,
            }
        ]
    )

    assert worker_for(server).drain() == 1
    assert storage.is_candidate("zoe")
    assert not storage.is_candidate("yan")


# --------------------------------------------------------------------------- entry points


@pytest.fixture
def lambda_env(
    aws_backend: AwsBackend, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    from backend_stub import lambda_handler

    settings = aws_backend.settings
    env = {
        "MIGRATION_BACKEND": "aws",
        "MIGRATION_AWS_ENDPOINT_URL": str(settings.endpoint_url),
        "MIGRATION_AWS_TABLE": settings.table,
        "MIGRATION_AWS_BUCKET": settings.bucket,
        "MIGRATION_AWS_QUEUE": settings.queue,
        "MIGRATION_AWS_DEAD_LETTER_QUEUE": settings.dead_letter_queue,
        "MIGRATION_AWS_EVENT_BUS": settings.event_bus,
        "MIGRATION_AWS_MAX_RECEIVES": "3",
        "MIGRATION_AWS_RETRY_DELAY": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The handlers log JSON lines on a real Lambda; here pytest keeps its log capture.
    monkeypatch.setattr(lambda_handler, "configure_logging", lambda **_: None)
    for cached in (lambda_handler._settings, lambda_handler._api, lambda_handler._worker):
        cached.cache_clear()
    asyncio.set_event_loop(None)
    yield env
    for cached in (lambda_handler._settings, lambda_handler._api, lambda_handler._worker):
        cached.cache_clear()
    # Mangum makes an event loop for the container's lifetime; the test's ends here.
    with contextlib.suppress(RuntimeError):
        asyncio.get_event_loop_policy().get_event_loop().close()
    asyncio.set_event_loop(None)


def _http_event(method: str, path: str, token: str, body: str | None = None) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "authorization": f"Bearer {token}",
            "content-type": "application/json",
            "host": "api.example.com",
        },
        "requestContext": {
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "1.2.3.4"},
            "requestId": "r1",
            "stage": "$default",
        },
        "body": body,
        "isBase64Encoded": False,
    }


def test_the_lambda_entry_points_serve_the_api_and_process_the_queue(
    lambda_env: dict[str, str], aws_backend: AwsBackend
) -> None:
    from backend_stub import issue_token
    from backend_stub.lambda_handler import api, events, worker
    from backend_stub.settings import DEV_JWT_SECRET

    token = issue_token("alice", DEV_JWT_SECRET)
    missing = api(_http_event("GET", "/api/migration/alice/status", token), None)
    assert missing["statusCode"] == 404
    assert missing["headers"]["content-type"] == "application/problem+json"

    plan = make_plan(items_of(2), batch_size=2)
    start = {
        "migrationId": "mig-lambda-1",
        "deviceId": "d1",
        "dataVersion": 1,
        "manifest": plan.manifest,
    }
    started = api(_http_event("POST", "/api/migration/alice/start", token, json.dumps(start)), None)
    session_id = json.loads(started["body"])["sessionId"]
    from sdk.contract import CHECKSUM_HEADER, batch_checksum

    upload = _http_event(
        "PUT",
        f"/api/migration/alice/sessions/{session_id}/batches/0",
        token,
        plan.bodies[0].decode(),
    )
    upload["headers"][CHECKSUM_HEADER.lower()] = batch_checksum(plan.bodies[0])
    assert api(upload, None)["statusCode"] == 200

    storage = aws_backend.open()
    messages = queue_messages(storage)
    records = [
        {
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": {"ApproximateReceiveCount": "1"},
        }
        for m in messages
    ]
    records.append(
        {"messageId": "junk", "receiptHandle": "x", "body": "not json", "attributes": {}}
    )
    assert worker({"Records": records}, None) == {"batchItemFailures": [{"itemIdentifier": "junk"}]}
    status = api(_http_event("GET", "/api/migration/alice/status", token), None)
    assert json.loads(status["body"])["status"] == "ready"

    registered = {
        "detail-type": "UserRegistered",
        "source": "accounts",
        "detail": {"userId": "uma", "registeredAt": T0},
    }
    assert events(registered, None) == {"handled": True}
    assert storage.is_candidate("uma")


def test_the_worker_command_drains_the_queue(
    server: Server, aws_backend: AwsBackend, tmp_path: Path
) -> None:
    server.clock.now = now_ms()  # the command runs on the wall clock
    plan = make_plan(items_of(4), batch_size=2)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)
    settings = aws_backend.settings
    env = {
        **os.environ,
        "MIGRATION_BACKEND": "aws",
        "MIGRATION_AWS_ENDPOINT_URL": str(settings.endpoint_url),
        "MIGRATION_AWS_TABLE": settings.table,
        "MIGRATION_AWS_BUCKET": settings.bucket,
        "MIGRATION_AWS_QUEUE": settings.queue,
        "MIGRATION_AWS_DEAD_LETTER_QUEUE": settings.dead_letter_queue,
        "MIGRATION_AWS_EVENT_BUS": settings.event_bus,
    }

    done = subprocess.run(
        [sys.executable, "-m", "backend_stub", "worker", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "handled 2 message(s)"
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert {line.get("Event") for line in logged} >= {"BatchProcessed"}
    assert server.status(session_id).json()["status"] == "ready"


def test_log_lines_are_json_with_embedded_metrics(caplog: pytest.LogCaptureFixture) -> None:
    from backend_stub.monitoring import metric

    caplog.set_level(logging.INFO, logger="backend_stub")
    metric(logging.getLogger("backend_stub.test"), "BatchProcessed", {"Items": 3}, sessionId="s1")

    line = json.loads(JsonFormatter().format(caplog.records[-1]))
    assert (line["message"], line["Items"], line["sessionId"]) == ("BatchProcessed", 3, "s1")
    assert line["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [{"Name": "Items", "Unit": "Count"}]
