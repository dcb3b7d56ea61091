"""The aws backend's completion off the request path, on moto: ``complete`` decides and
answers ``committing``, the worker commits in slices, a crash at any step resumes, and
nothing the committed state needs expires."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_fixtures import AwsBackend, Backend, expire_every_ttl, rows_under, tap_events
from server_fixtures import (
    T0,
    Clock,
    Plan,
    Server,
    TestClient,
    items_of,
    make_plan,
    running_server,
)

from backend_stub import Settings, commit_steps, committing, create_app, seed_cloud_items
from backend_stub.events import Event, EventType
from backend_stub.items import cloud_item
from backend_stub.storage.aws import AwsStorage
from backend_stub.storage.aws_cloud import CloudItems
from backend_stub.storage.aws_slices import load_record, save_record
from backend_stub.storage.aws_sweep import sweep_aside
from backend_stub.worker import Worker
from sdk.contract import canonical_item, dataset_checksum_of

SLICE = 40
DEVICE = "phone-1"  # the device server_fixtures.Server.start migrates from


@dataclasses.dataclass
class Bare:
    """The app on aws with a worker that runs only when a test says so."""

    server: Server
    worker: Worker
    aws: AwsBackend

    @property
    def storage(self) -> AwsStorage:
        assert isinstance(self.server.storage, AwsStorage)
        return self.server.storage

    def uploaded(self, count: int, *, batch_size: int = 50) -> tuple[Plan, str]:
        plan = make_plan(items_of(count), batch_size=batch_size)
        session_id = self.server.started(plan)
        self.server.upload_all(session_id, plan)
        self.worker.drain()
        assert self.server.status(session_id).json()["status"] == "ready"
        return plan, session_id

    def keys(self, plan: Plan) -> list[tuple[str, str]]:
        return [(i["collection"], i["key"]) for i in plan.items]

    def versions(self, plan: Plan) -> dict[str, int]:
        reader = self.aws.open()
        return {k[1]: i.version for k, i in reader.cloud_items("alice", self.keys(plan)).items()}


@pytest.fixture
def bare(aws_backend: AwsBackend) -> Iterator[Bare]:
    aws_settings = dataclasses.replace(aws_backend.settings, commit_slice=SLICE)
    backend = AwsBackend(aws_settings, aws_backend.session)
    settings = Settings(backend="aws", aws=aws_settings)
    storage = backend.open()
    clock = Clock()
    worker = Worker(backend.open(), settings, clock=clock, wait_seconds=0)
    with TestClient(create_app(settings, storage=storage, clock=clock)) as client:
        server = Server(client, storage, settings, clock, backend="aws", open_reader=backend.open)
        yield Bare(server, worker, backend)


def one_job(worker: Worker) -> int:
    """Handle the next job of the queue, if any (one slice of a commit)."""
    return worker.poll(max_messages=1, wait_seconds=0)


# --------------------------------------------------------------------------- off the request


def test_complete_answers_committing_at_once_and_the_worker_commits_slice_by_slice(
    bare: Bare,
) -> None:
    tap = tap_events(bare.aws)
    plan, session_id = bare.uploaded(250)
    server = bare.server

    first = server.complete_once(session_id, plan.checksum)

    assert first.status_code == 200, first.text
    assert first.json()["status"] == "committing"
    assert bare.versions(plan) == {}  # nothing was written by the request
    assert server.complete_once(session_id, plan.checksum).json()["status"] == "committing"
    progress = []
    slices = 0
    while one_job(bare.worker):
        slices += 1
        status = server.status(session_id).json()
        progress.append((status["status"], status["progress"], status["currentStep"]))
    bare.worker.drain()  # the replayed complete's duplicate job finds nothing to do

    # Each job handled at most one slice of the 250 items.
    assert slices >= 250 // SLICE + 3
    committing = [p for s, p, _ in progress if s == "committing"]
    assert committing and committing == sorted(committing) and committing[-1] < 1.0
    assert any("items written aside" in step for _, _, step in progress)
    done = server.complete_once(session_id, plan.checksum).json()
    assert done["status"] == "completed"
    assert done["cloudChecksum"] == plan.checksum
    assert (done["newItems"], done["appliedCount"]) == (250, 250)
    assert bare.versions(plan) == {i["key"]: 1 for i in plan.items}
    assert server.summary(session_id).json()["summary"]["verified"] is True
    # The working copy is gone: set-aside rows, commit parts and batch bodies.
    assert rows_under(bare.storage, "TX#") == 0
    listed = bare.storage.resources.s3.list_objects_v2(
        Bucket=bare.storage.resources.bucket, Prefix=f"sessions/{session_id}/"
    )
    assert [o["Key"] for o in listed.get("Contents", [])] == [
        f"sessions/{session_id}/snapshot.jsonl"
    ]
    published = sorted(e["detail-type"] for e in tap.collect(2))
    assert published == ["MigrationCompleted", "MigrationStarted"]
    assert bare.storage.publish_outbox() == 0  # nothing left to publish again


def test_the_sdk_waits_for_the_commit_and_reports_its_progress(bare: Bare, tmp_path: Path) -> None:
    from sdk_fixtures import learning_items, make_store

    from sdk import MigrationClient, MigrationOptions, Progress, ProgressPhase, RetryPolicy

    store = make_store(tmp_path / "store.sqlite3", learning_items(120))
    seen: list[Progress] = []

    def run_the_worker(response: Any) -> None:
        if response.request.method == "PUT" or response.request.url.path.endswith("/status"):
            bare.worker.poll(max_messages=1, wait_seconds=0)

    bare.server.client.event_hooks["response"].append(run_the_worker)
    with MigrationClient(
        http_client=bare.server.client,
        user_id="alice",
        token=bare.server.auth()["Authorization"].split()[1],
        store_path=store,
        options=MigrationOptions(batch_size=30, cache_dir=tmp_path / "cache"),
        retry=RetryPolicy.none(),
        on_progress=seen.append,
    ) as client:
        result = client.migrate()

    assert result.verified
    completing = [p.items_done for p in seen if p.phase is ProgressPhase.COMPLETING]
    assert len(set(completing)) > 2  # moved with the server's commit, not 0 then all
    assert completing == sorted(completing)


# --------------------------------------------------------------------------- crashes


def _crash_once(target: Any, name: str, *, after: bool) -> Callable[..., Any]:
    original = getattr(target, name)
    calls = {"n": 0}

    def crashing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2 and not after:
            raise RuntimeError(f"the worker died before {name}")
        answer = original(*args, **kwargs)
        if calls["n"] == 2 and after:
            raise RuntimeError(f"the worker died after {name}")
        return answer

    return crashing


STEPS = [
    pytest.param(CloudItems, "set_aside", False, id="setting-aside"),
    pytest.param(CloudItems, "set_aside", True, id="after-setting-aside"),
    pytest.param(committing, "save_record", False, id="before-recording-a-slice"),
    pytest.param(committing, "save_record", True, id="after-recording-a-slice"),
    pytest.param(commit_steps, "snapshot_part", True, id="after-a-snapshot-part"),
    pytest.param(commit_steps, "commit", False, id="at-the-flip"),
    pytest.param(commit_steps, "commit", True, id="right-after-the-flip"),
    pytest.param(CloudItems, "copy_page", True, id="rolling-forward"),
    pytest.param(CloudItems, "clear", False, id="before-clearing-the-pointer"),
    pytest.param(commit_steps, "publish", False, id="publishing"),
    pytest.param(commit_steps, "drop_aside", False, id="cleaning-up"),
]


@pytest.mark.parametrize(("target", "name", "after"), STEPS)
def test_a_commit_killed_at_any_step_is_finished_by_the_job_coming_back(
    bare: Bare, monkeypatch: pytest.MonkeyPatch, target: Any, name: str, after: bool
) -> None:
    plan, session_id = bare.uploaded(130)
    assert bare.server.complete_once(session_id, plan.checksum).json()["status"] == "committing"
    monkeypatch.setattr(target, name, _crash_once(target, name, after=after))

    bare.worker.drain()  # the failed job comes back (no backoff in the tests) and resumes

    monkeypatch.undo()
    done = bare.server.complete_once(session_id, plan.checksum).json()
    assert done["status"] == "completed"
    assert done["cloudChecksum"] == plan.checksum
    assert bare.versions(plan) == {i["key"]: 1 for i in plan.items}
    assert "rolling" not in (bare.storage.table.get("USER#alice", "PROFILE") or {})
    assert rows_under(bare.storage, "TX#") == 0
    events = bare.storage.events(user_id="alice", type="MigrationCompleted")
    assert len(events) == 1


def test_a_roll_forward_whose_jobs_were_lost_is_queued_again_by_the_next_status(
    bare: Bare,
) -> None:
    storage = bare.storage
    plan, session_id = bare.uploaded(60)
    bare.server.complete_once(session_id, plan.checksum)
    while load_record(storage, session_id).step != "roll":  # type: ignore[union-attr]
        one_job(bare.worker)
    resources = storage.resources
    resources.sqs.purge_queue(QueueUrl=resources.queue_url)  # its job is gone
    record = load_record(storage, session_id)
    assert record is not None
    save_record(storage, session_id, dataclasses.replace(record, updated_at=0.0), record.part)

    assert bare.server.status(session_id).json()["status"] == "completed"
    bare.worker.drain()

    assert "rolling" not in (storage.table.get("USER#alice", "PROFILE") or {})
    assert load_record(storage, session_id).step == "done"  # type: ignore[union-attr]


def test_a_commit_whose_jobs_were_lost_is_queued_again_by_the_next_call(bare: Bare) -> None:
    storage = bare.storage
    plan, session_id = bare.uploaded(90)
    bare.server.complete_once(session_id, plan.checksum)
    one_job(bare.worker)
    resources = storage.resources
    resources.sqs.purge_queue(QueueUrl=resources.queue_url)
    assert bare.worker.drain() == 0
    # Time passes: no slice ran for longer than a job stays invisible.
    record = load_record(storage, session_id)
    assert record is not None
    save_record(storage, session_id, dataclasses.replace(record, updated_at=0.0), record.part)

    assert bare.server.status(session_id).json()["status"] == "committing"
    bare.worker.drain()

    assert bare.server.complete_once(session_id, plan.checksum).json()["status"] == "completed"
    assert bare.versions(plan) == {i["key"]: 1 for i in plan.items}


# --------------------------------------------------------------------------- retention


def test_nothing_a_flipped_commit_needs_expires_and_the_summary_outlives_the_working_set(
    bare: Bare, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = bare.storage
    plan, session_id = bare.uploaded(120)
    bare.server.complete_once(session_id, plan.checksum)

    def die(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("the worker died rolling forward")

    # Every worker dies rolling forward; the job ends in the dead-letter queue.
    monkeypatch.setattr(CloudItems, "copy_page", die)
    bare.worker.drain()
    monkeypatch.undo()
    assert "rolling" in (storage.table.get("USER#alice", "PROFILE") or {})
    assert bare.worker.drain() == 0

    # A month and more later: every TTL has passed.
    assert expire_every_ttl(storage, days=storage.settings.retention_days + 2) > 0

    # The user's data is whole to every reader, though not one item was copied.
    assert bare.versions(plan) == {i["key"]: 1 for i in plan.items}
    summary = bare.server.summary(session_id).json()
    assert (summary["result"], summary["summary"]["verified"]) == ("completed", True)
    assert summary["summary"]["newItems"] == 120
    # The next sweep of the outbox finds the stalled commit and queues it again.
    record = load_record(storage, session_id)
    assert record is not None and record.step == "roll"
    save_record(storage, session_id, dataclasses.replace(record, updated_at=0.0), record.part)
    storage.publish_outbox()
    bare.worker.drain()

    assert "rolling" not in (storage.table.get("USER#alice", "PROFILE") or {})
    assert rows_under(storage, "TX#") == 0
    assert bare.versions(plan) == {i["key"]: 1 for i in plan.items}
    detect = bare.server.client.get(
        "/api/migration/alice/detect", params={"deviceId": DEVICE}, headers=bare.server.auth()
    ).json()
    assert detect["alreadyMigrated"] is True


def test_the_outbox_sweep_does_not_publish_while_the_roll_forward_runs(bare: Bare) -> None:
    storage = bare.storage
    plan, session_id = bare.uploaded(100)
    bare.server.complete_once(session_id, plan.checksum)
    while load_record(storage, session_id).step != "roll":  # type: ignore[union-attr]
        one_job(bare.worker)
    assert bare.server.complete_once(session_id, plan.checksum).json()["status"] == "completed"
    tap = tap_events(bare.aws)

    assert storage.publish_outbox() == 0  # rolling: its job publishes once it is done

    bare.worker.drain()
    assert storage.publish_outbox() == 0
    assert [e["detail-type"] for e in tap.collect(1)] == ["MigrationCompleted"]
    # moto delivers from the bus to the queue as it publishes: nothing else came.
    assert "Messages" not in tap._sqs.receive_message(QueueUrl=tap.url)


def test_a_flip_that_loses_to_another_writer_starts_over_and_sweeps_its_rows(
    bare: Bare,
) -> None:
    storage = bare.storage
    plan, session_id = bare.uploaded(100)
    bare.server.complete_once(session_id, plan.checksum)
    while load_record(storage, session_id).step != "flip":  # type: ignore[union-attr]
        one_job(bare.worker)
    first = load_record(storage, session_id)
    assert first is not None and rows_under(storage, f"TX#{first.tx}#") == 100
    # Another device writes an item of alice that this migration does not hold.
    other = {**items_of(1)[0], "key": "zz-other"}
    seed_cloud_items(storage, "alice", [other], device_id="tablet")

    bare.worker.drain()

    assert rows_under(storage, f"TX#{first.tx}#") == 0
    done = bare.server.complete_once(session_id, plan.checksum).json()
    assert done["status"] == "completed"
    assert bare.versions(plan) == {i["key"]: 1 for i in plan.items}
    assert storage.sync_head("alice").item_count == 101


def test_the_bucket_expires_session_copies_after_the_retention(bare: Bare) -> None:
    resources = bare.storage.resources
    rules = resources.s3.get_bucket_lifecycle_configuration(Bucket=resources.bucket)["Rules"]
    by_id = {rule["ID"]: rule for rule in rules}
    assert by_id["session-working-copies"]["Filter"] == {"Prefix": "sessions/"}
    assert by_id["session-working-copies"]["Expiration"] == {
        "Days": bare.storage.settings.retention_days
    }


def test_the_scheduled_publisher_drains_the_outbox(
    bare: Bare, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend_stub import lambda_handler

    storage = bare.storage
    # Three events committed, then every process died before publishing them.
    monkeypatch.setattr("backend_stub.storage.aws_commit.publish", lambda *a: 0)
    for n in range(3):
        event = Event.new(
            EventType.LOCAL_DATA_DETECTED, user_id=f"u{n}", session_id=None, detail={}, now=T0
        )
        storage.record_event(event)
    monkeypatch.undo()
    monkeypatch.setattr(lambda_handler, "_worker", lambda: bare.worker)
    tap = tap_events(bare.aws)

    answer = lambda_handler.publish_outbox({"source": "aws.events"}, None)

    assert answer == {"published": 3, "swept": 0}
    assert sorted(e["detail"]["userId"] for e in tap.collect(3)) == ["u0", "u1", "u2"]
    assert storage.publish_outbox() == 0


# --------------------------------------------------------------------------- orphans


def test_rows_set_aside_by_a_unit_that_died_before_its_flip_are_swept(
    aws_storage: AwsStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [cloud_item(i, version=1, device_id="phone") for i in items_of(30)]
    # The process dies inside the unit: nothing cleans up after it.
    monkeypatch.setattr(AwsStorage, "_drop_unflipped", lambda self, unit: None)
    with pytest.raises(RuntimeError), aws_storage.atomic():
        aws_storage.put_cloud_items("alice", items, T0)
        raise RuntimeError("the process died before the flip")
    monkeypatch.undo()
    assert rows_under(aws_storage, "TX#") == 30

    assert sweep_aside(aws_storage) == 0  # within the grace period: maybe still running
    assert sweep_aside(aws_storage, grace_s=0) == 1

    assert rows_under(aws_storage, "TX#") == 0
    assert aws_storage.cloud_items("alice", [(i.collection, i.key) for i in items]) == {}
    assert not list(aws_storage.table.query("USER#alice", prefix="ASIDE#"))


def test_a_failed_unit_takes_its_set_aside_rows_with_it(aws_storage: AwsStorage) -> None:
    items = [cloud_item(i, version=1, device_id="phone") for i in items_of(30)]
    with pytest.raises(RuntimeError), aws_storage.atomic():
        aws_storage.put_cloud_items("alice", items, T0)
        raise RuntimeError("refused after writing")

    assert rows_under(aws_storage, "TX#") == 0
    assert not list(aws_storage.table.query("USER#alice", prefix="ASIDE#"))


def test_a_write_stopped_after_its_flip_survives_every_ttl_and_the_sweep_finishes_it(
    aws_storage: AwsStorage, aws_backend: AwsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = items_of(30)

    def die(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("the process died rolling forward")

    monkeypatch.setattr(CloudItems, "roll_forward", die)
    seed_cloud_items(aws_storage, "alice", items, device_id="tablet", now=T0)
    monkeypatch.undo()
    assert "rolling" in (aws_storage.table.get("USER#alice", "PROFILE") or {})

    expire_every_ttl(aws_storage, days=aws_storage.settings.retention_days + 2)
    keys = [(i["collection"], i["key"]) for i in items]
    reader = aws_backend.open()
    assert len(reader.cloud_items("alice", keys)) == 30
    assert sweep_aside(aws_storage, grace_s=0) == 1

    assert "rolling" not in (aws_storage.table.get("USER#alice", "PROFILE") or {})
    assert rows_under(aws_storage, "TX#") == 0
    assert {k: i.version for k, i in reader.cloud_items("alice", keys).items()} == {
        k: 1 for k in keys
    }


# --------------------------------------------------------------------------- checksums


def test_the_cloud_checksum_is_read_from_the_committed_cloud_not_from_staged_items(
    tmp_path: Path, backend: Backend
) -> None:
    with running_server(tmp_path, backend=backend) as server:
        local = items_of(6)
        # The cloud holds another version of one item; the device lets it stand.
        seed_cloud_items(
            server.storage, "alice", [{**local[2], "data": {"from": "tablet"}}], now=T0
        )
        plan = make_plan(local, batch_size=3)
        session_id = server.started(plan)
        server.upload_all(session_id, plan)
        (conflict,) = server.conflicts(session_id).json()["conflicts"]
        server.resolve(session_id, [{"conflictId": conflict["conflictId"], "choice": "server"}])

        done = server.complete(session_id, plan.checksum).json()

        keys = sorted((i["collection"], i["key"]) for i in local)
        cloud = server.storage.cloud_items("alice", keys)
        assert done["status"] == "completed"
        assert done["cloudChecksum"] == dataset_checksum_of([cloud[k].wire() for k in keys])
        assert done["cloudChecksum"] != plan.checksum  # the staged items would say this
        assert server.summary(session_id).json()["summary"]["verified"] is True


def test_a_large_snapshot_goes_up_in_parts_and_keeps_its_sha256(
    bare: Bare, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.s3 import models as s3_models

    from backend_stub.storage import aws_snapshot

    # Parts of 4 kB instead of 5 MiB (moto checks S3's minimum; lowered alike).
    monkeypatch.setattr(aws_snapshot, "PART_BYTES", 4096)
    monkeypatch.setattr(s3_models, "S3_UPLOAD_PART_MIN_SIZE", 4096)
    plan, session_id = bare.uploaded(200)
    bare.server.complete_once(session_id, plan.checksum)
    parts = 0
    while one_job(bare.worker):
        record = load_record(bare.storage, session_id)
        parts = max(parts, len(record.parts) if record else 0)
    bare.worker.drain()

    assert parts >= 2  # recorded before the last, which completes the upload
    s3, bucket = bare.storage.resources.s3, bare.storage.resources.bucket
    name = f"sessions/{session_id}/snapshot.jsonl"
    body = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
    head = s3.head_object(Bucket=bucket, Key=name, ChecksumMode="ENABLED")
    assert body.splitlines() == [canonical_item(i) for i in plan.items]
    assert head["Metadata"] == {"items": "200", "part-bytes": "4096"}
    # Parts of exactly 4096 bytes but the last (items straddle them), so the composite
    # SHA-256 can be recomputed from the body alone.
    pieces = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    digests = b"".join(hashlib.sha256(p).digest() for p in pieces)
    composite = base64.b64encode(hashlib.sha256(digests).digest()).decode()
    # S3 appends "-<parts>" (moto leaves it out); base64 has no "-".
    assert head["ChecksumSHA256"].split("-")[0] == composite
    assert len(pieces) == parts + 1
    assert head["ServerSideEncryption"] == "AES256"


# --------------------------------------------------------------------------- bounded writers


def _push(bare: Bare, key: str, data: dict[str, Any]) -> Any:
    server = bare.server
    change = {
        "collection": "lessons",
        "key": key,
        "data": data,
        "updatedAt": T0,
        "deleted": False,
        "baseSeq": None,
    }
    return server.client.post(
        server.url("/sync/push"),
        json={"pushId": f"p-{key}", "deviceId": "tablet", "changes": [change]},
        headers=server.auth(),
    )


def test_a_push_during_a_migrations_roll_forward_waits_and_copies_nothing(
    bare: Bare, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = bare.storage
    plan, session_id = bare.uploaded(3 * SLICE)
    bare.server.complete_once(session_id, plan.checksum)
    while load_record(storage, session_id).step != "roll":  # type: ignore[union-attr]
        one_job(bare.worker)
    copied: list[int] = []
    original = CloudItems._copy_page
    monkeypatch.setattr(
        CloudItems,
        "_copy_page",
        lambda self, user, rows: copied.append(len(rows)) or original(self, user, rows),
    )

    refused = _push(bare, "zz-new", {"from": "tablet"})

    # Before: the push finished the migration's whole roll-forward in its request.
    assert copied == []
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["code"] == "migration-committing"
    assert refused.json()["sessionId"] == session_id
    assert "rolling" in (storage.table.get("USER#alice", "PROFILE") or {})

    bare.worker.drain()  # the jobs roll forward, slice by slice
    applied = _push(bare, "zz-new", {"from": "tablet"})

    assert applied.status_code == 200, applied.text
    assert applied.json()["results"][0]["outcome"] == "applied"
    assert bare.versions(plan) == {i["key"]: 1 for i in plan.items}
    assert storage.sync_head("alice").item_count == 3 * SLICE + 1


def test_a_push_during_a_stalled_roll_forward_queues_its_job_again(bare: Bare) -> None:
    storage = bare.storage
    plan, session_id = bare.uploaded(2 * SLICE)
    bare.server.complete_once(session_id, plan.checksum)
    while load_record(storage, session_id).step != "roll":  # type: ignore[union-attr]
        one_job(bare.worker)
    resources = storage.resources
    resources.sqs.purge_queue(QueueUrl=resources.queue_url)  # its job is gone
    record = load_record(storage, session_id)
    assert record is not None
    save_record(storage, session_id, dataclasses.replace(record, updated_at=0.0), record.part)

    assert _push(bare, "zz-new", {"v": 1}).status_code == 503
    assert bare.worker.drain() > 0  # the push queued the roll-forward's job again

    assert load_record(storage, session_id).step == "done"  # type: ignore[union-attr]
    assert _push(bare, "zz-new", {"v": 1}).status_code == 200


def _migrated_device(bare: Bare, tmp_path: Path, retry: Any) -> Any:
    """A device migrated through the SDK whose migration still rolls forward, with one
    local write made after it."""
    from sdk_fixtures import learning_items, make_store

    from sdk import LocalStore, MigrationClient, MigrationOptions

    store = make_store(tmp_path / "store.sqlite3", learning_items(3 * SLICE))

    def run_the_worker(response: Any) -> None:
        if response.request.method == "PUT" or response.request.url.path.endswith("/status"):
            bare.worker.poll(max_messages=1, wait_seconds=0)

    hooks = bare.server.client.event_hooks["response"]
    hooks.append(run_the_worker)
    client = MigrationClient(
        http_client=bare.server.client,
        user_id="alice",
        token=bare.server.auth()["Authorization"].split()[1],
        store_path=store,
        options=MigrationOptions(batch_size=30, cache_dir=tmp_path / "cache"),
        retry=retry,
    )
    result = client.migrate()
    hooks.remove(run_the_worker)
    assert result.verified
    record = load_record(bare.storage, result.session_id)
    assert record is not None and record.step == "roll"
    with LocalStore(store) as local:
        local.put("lesson_progress", "after", {"score": 1})
    return client


def test_a_sync_during_the_roll_forward_keeps_its_changes_pending_without_an_error(
    bare: Bare, tmp_path: Path
) -> None:
    from sdk import RetryPolicy

    with _migrated_device(bare, tmp_path, RetryPolicy.none()) as client:
        waiting = client.sync()  # 503 migration-committing: no error, the push waits

        assert (waiting.pushed, waiting.pending_changes, waiting.verified) == (0, 1, False)
        bare.worker.drain()
        synced = client.sync()

    assert (synced.pushed, synced.pending_changes, synced.verified) == (1, 0, True)


def test_a_sync_during_the_roll_forward_waits_retry_after_and_pushes(
    bare: Bare, tmp_path: Path
) -> None:
    from sdk import RetryPolicy

    refused: list[str] = []

    def roll_on_refusal(response: Any) -> None:
        if response.status_code == 503:
            refused.append(response.headers["Retry-After"])
            bare.worker.drain()  # what happens while the device waits

    # Retry-After clamped to 0 s so that the test does not sleep.
    retry = RetryPolicy(attempts=3, initial=0.0, jitter=0.0, max_retry_after=0.0)
    with _migrated_device(bare, tmp_path, retry) as client:
        bare.server.client.event_hooks["response"].append(roll_on_refusal)
        synced = client.sync()

    assert refused == ["5"]
    assert (synced.pushed, synced.pending_changes, synced.verified) == (1, 0, True)


def test_the_flip_and_the_snapshot_read_nothing_back_whatever_the_size(bare: Bare) -> None:
    worker_storage = bare.worker.storage
    assert isinstance(worker_storage, AwsStorage)
    calls: list[str] = []

    def count(model: Any, **kwargs: Any) -> None:
        calls.append(f"{model.service_model.service_name}:{model.name}")

    for client in (worker_storage.resources.s3, worker_storage.resources.dynamodb):
        client.meta.events.register("before-call", count)
    plan, session_id = bare.uploaded(6 * SLICE)
    bare.server.complete_once(session_id, plan.checksum)
    by_step: dict[str, list[str]] = {}
    while True:
        record = load_record(bare.storage, session_id)
        calls.clear()
        if not one_job(bare.worker):
            break
        if record is not None:
            by_step.setdefault(record.step, []).extend(calls)

    # Before: the flip read every slice's digests back from S3 and listed the conflicts,
    # and the last snapshot slice read the whole snapshot back to hash it.
    flip = by_step["flip"]
    assert not [c for c in flip if c.startswith("s3:")], flip
    assert len(flip) <= 8, flip
    snapshot = [c for c in by_step["snapshot"] if c.startswith("s3:")]
    assert "s3:GetObject" not in snapshot and "s3:CopyObject" not in snapshot, snapshot
    done = bare.server.complete_once(session_id, plan.checksum).json()
    assert (done["status"], done["cloudChecksum"]) == ("completed", plan.checksum)


def test_a_commit_begun_before_the_checksums_moved_into_its_record_begins_again(
    bare: Bare,
) -> None:
    storage = bare.storage
    plan, session_id = bare.uploaded(3 * SLICE)
    bare.server.complete_once(session_id, plan.checksum)
    while load_record(storage, session_id).step != "flip":  # type: ignore[union-attr]
        one_job(bare.worker)
    record = load_record(storage, session_id)
    assert record is not None
    # What an earlier version recorded: the digests were in S3, not in the record.
    earlier = dataclasses.replace(record, staged_sha="", cloud_sha="")
    assert save_record(storage, session_id, earlier, record.part)

    bare.worker.drain()

    done = bare.server.complete_once(session_id, plan.checksum).json()
    assert (done["status"], done["cloudChecksum"]) == ("completed", plan.checksum)
    assert bare.versions(plan) == {i["key"]: 1 for i in plan.items}
