"""End-to-end migrations through the aws backend: the SDK, the API on DynamoDB, S3, SQS and
EventBridge (moto, on loopback), and the worker processing the queue in a thread."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aws_fixtures import AwsBackend, WorkerThread, tap_events
from sdk_fixtures import learning_items, make_store
from server_fixtures import TestClient

from backend_stub import Settings, create_app, issue_token, seed_cloud_items
from backend_stub.storage.aws import AwsStorage
from backend_stub.worker import Worker
from sdk import (
    LocalState,
    LocalStore,
    MigrationClient,
    MigrationOptions,
    MigrationOutcome,
    OfflineError,
    RetryPolicy,
    detect_local,
)
from sdk.contract import Item, canonical_item, dataset_checksum_of


@dataclasses.dataclass
class AwsServer:
    settings: Settings
    client: TestClient
    storage: AwsStorage
    aws: AwsBackend

    def token(self, user_id: str) -> str:
        return issue_token(user_id, self.settings.jwt_secret)


@pytest.fixture
def aws_server(aws_backend: AwsBackend) -> Iterator[AwsServer]:
    settings = Settings(backend="aws", aws=aws_backend.settings)
    storage = aws_backend.open()
    app = create_app(settings, storage=storage)
    with (
        TestClient(app, base_url="http://testserver") as client,
        WorkerThread(aws_backend.open(), settings),
    ):
        yield AwsServer(settings, client, storage, aws_backend)


def client_for(server: AwsServer, store: Path, user: str, tmp_path: Path, **kwargs: Any):
    kwargs.setdefault("options", MigrationOptions(batch_size=50, cache_dir=tmp_path / "cache"))
    kwargs.setdefault("retry", RetryPolicy.none())
    return MigrationClient(
        http_client=server.client,
        user_id=user,
        token=server.token(user),
        store_path=store,
        **kwargs,
    )


def local_of(store: Path) -> dict[tuple[str, str], Item]:
    with LocalStore(store, create=False) as s:
        return {(i["collection"], i["key"]): i for i in s.iter_items()}


def test_a_store_migrates_through_the_aws_backend_and_its_worker(
    aws_server: AwsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tap = tap_events(aws_server.aws)
    items = learning_items(300)
    store = make_store(tmp_path / "store.sqlite3", items)
    different = [dict(i, data={"score": 100}) for i in items[20:30]]
    seed_cloud_items(aws_server.storage, "alice", items[:20] + different, device_id="tablet")
    caplog.set_level(logging.INFO, logger="backend_stub")

    with client_for(aws_server, store, "alice", tmp_path) as client:
        result = client.migrate()

    assert result.outcome is MigrationOutcome.COMPLETED
    assert result.verified
    assert (result.new_items, result.unchanged_items, result.conflicts) == (len(items) - 30, 20, 10)
    assert result.resolutions_by_kind == {"server_wins": 10}
    local = local_of(store)
    cloud = aws_server.storage.cloud_items("alice", list(local))
    assert {k: v.wire() for k, v in cloud.items()} == local
    assert result.cloud_checksum == dataset_checksum_of(local.values())
    assert detect_local(store).state is LocalState.MIGRATED
    # Every batch was processed by the worker, each reported as a CloudWatch metric.
    processed = [r for r in caplog.records if getattr(r, "Event", None) == "BatchProcessed"]
    assert len({r.seq for r in processed}) == result.batches_uploaded  # type: ignore[attr-defined]
    assert processed[0]._aws["CloudWatchMetrics"][0]["Namespace"] == "OfflineMigrate"  # type: ignore[attr-defined]
    # The five kinds of events went out on the bus (four of them in this migration).
    published = {e["detail-type"] for e in tap.collect(4)}
    assert published == {
        "LocalDataDetected",
        "MigrationStarted",
        "DataConflictDetected",
        "MigrationCompleted",
    }
    # The uploaded snapshot is kept in S3, encrypted, with its SHA-256.
    s3 = aws_server.aws.resources.s3
    name = f"sessions/{result.session_id}/snapshot.jsonl"
    head = s3.head_object(Bucket=aws_server.aws.settings.bucket, Key=name, ChecksumMode="ENABLED")
    body = s3.get_object(Bucket=aws_server.aws.settings.bucket, Key=name)["Body"].read()
    assert head["ServerSideEncryption"] == "AES256"
    # One part: S3's composite SHA-256 is the SHA-256 of the body's SHA-256.
    composite = hashlib.sha256(hashlib.sha256(body).digest()).digest()
    assert head["ChecksumSHA256"].split("-")[0] == base64.b64encode(composite).decode()
    assert head["Metadata"]["items"] == str(len(items))
    ordered = sorted(items, key=lambda i: (i["collection"], i["key"]))
    assert body.splitlines() == [canonical_item(i) for i in ordered]


def test_an_interrupted_upload_resumes_on_the_aws_backend(
    aws_server: AwsServer, tmp_path: Path
) -> None:
    items = learning_items(200)
    store = make_store(tmp_path / "store.sqlite3", items)
    puts = {"n": 0}

    def go_offline_after_three_batches(request: httpx.Request) -> None:
        if request.method == "PUT":
            puts["n"] += 1
            if puts["n"] > 3:
                raise httpx.ConnectError("network is unreachable", request=request)

    aws_server.client.event_hooks["request"].append(go_offline_after_three_batches)
    options = MigrationOptions(batch_size=20, max_in_flight=1, cache_dir=tmp_path / "cache")
    with client_for(aws_server, store, "erin", tmp_path, options=options) as client:
        with pytest.raises(OfflineError, match="resume"):
            client.migrate()
        first = aws_server.storage.latest_session("erin")
        assert first is not None
        assert len(aws_server.storage.received_batches(first.id)) == 3

        aws_server.client.event_hooks["request"].clear()
        result = client.migrate()

    assert result.verified and result.resumed
    assert result.session_id == first.id
    assert result.batches_uploaded == -(-len(items) // 20) - 3
    local = local_of(store)
    cloud = aws_server.storage.cloud_items("erin", list(local))
    assert {k: v.wire() for k, v in cloud.items()} == local


def test_the_sdk_waits_while_the_server_is_processing(
    aws_backend: AwsBackend, tmp_path: Path
) -> None:
    """No worker until the SDK has uploaded everything and polls: it waits, then completes."""
    settings = Settings(backend="aws", aws=aws_backend.settings)
    storage = aws_backend.open()
    store = make_store(tmp_path / "store.sqlite3", learning_items(60))
    seen: list[str] = []

    def start_the_worker_once_processing_shows(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/status"):
            status = json.loads(response.read())["status"]
            seen.append(status)
            if status == "processing" and not worker.is_alive():
                worker.start()

    stop = threading.Event()
    processor = Worker(aws_backend.open(), settings, wait_seconds=0, idle_wait=0.005)
    worker = threading.Thread(target=processor.run, args=(stop,))
    with TestClient(create_app(settings, storage=storage), base_url="http://testserver") as http:
        http.event_hooks["response"].append(start_the_worker_once_processing_shows)
        try:
            with MigrationClient(
                http_client=http,
                user_id="gil",
                token=issue_token("gil", settings.jwt_secret),
                store_path=store,
                options=MigrationOptions(batch_size=20, cache_dir=tmp_path / "cache"),
                retry=RetryPolicy.none(),
            ) as client:
                result = client.migrate()
        finally:
            stop.set()
            if worker.is_alive():
                worker.join(timeout=30)

    assert result.verified
    assert "processing" in seen
    assert seen.index("processing") < len(seen) - 1


def test_a_store_migrates_through_the_aws_backend_in_the_sdks_default_batches(
    aws_server: AwsServer, tmp_path: Path
) -> None:
    # 5,000 items or 1 MiB per batch by default: a batch this large goes through the
    # worker's queue, S3 and DynamoDB whole.
    items = learning_items(5_100)
    store = make_store(tmp_path / "store.sqlite3", items)
    options = MigrationOptions(cache_dir=tmp_path / "cache")
    with client_for(aws_server, store, "dora", tmp_path, options=options) as client:
        result = client.migrate()
    assert result.outcome is MigrationOutcome.COMPLETED and result.verified
    assert result.batches_uploaded == 2
    assert result.cloud_checksum == dataset_checksum_of(items)
    assert local_of(store) == {(i["collection"], i["key"]): i for i in items}
