"""The aws backend below the HTTP layer, on moto: the commit that no reader sees half of and
that resumes after a crash, optimistic locking, TTL, encryption and checksums."""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_fixtures import AwsBackend, Backend
from server_fixtures import T0, Plan, Server, items_of, make_plan, running_server

from backend_stub import seed_cloud_items
from backend_stub.events import Event, EventType
from backend_stub.items import cloud_item
from backend_stub.problems import ApiError
from backend_stub.start import start_migration
from backend_stub.storage import Batch, DuplicateItem, Session, StagedItem, VersionConflict
from backend_stub.storage.aws import AwsStorage
from backend_stub.storage.aws_cloud import CloudItems
from backend_stub.storage.aws_rows import n
from backend_stub.storage.aws_slices import load_record, save_record
from backend_stub.storage.aws_table import Table
from backend_stub.storage.records import CommitRolling
from sdk.contract import Limits, Manifest, SessionStatus, StartMigrationRequest


@pytest.fixture
def server(tmp_path: Path, aws_backend: AwsBackend) -> Iterator[Server]:
    with running_server(tmp_path, backend=Backend("aws", aws_backend)) as running:
        yield running


def aws_of(server: Server) -> AwsStorage:
    assert isinstance(server.storage, AwsStorage)
    return server.storage


def uploaded(server: Server, count: int, *, user: str = "alice", batch_size: int = 100) -> Plan:
    """A session of ``count`` new items, every batch processed: ready to complete."""
    plan = make_plan(items_of(count), batch_size=batch_size)
    session_id = server.started(plan, user=user)
    server.upload_all(session_id, plan)
    plan.manifest["sessionId"] = session_id
    return plan


def cloud_versions(storage: AwsStorage, plan: Plan, user: str = "alice") -> dict[str, int]:
    keys = [(i["collection"], i["key"]) for i in plan.items]
    return {k[1]: item.version for k, item in storage.cloud_items(user, keys).items()}


def raw_cloud_rows(storage: AwsStorage, plan: Plan, user: str = "alice") -> int:
    """Cloud rows as stored, without resolving a pending commit (what readers must not see)."""
    keys = [
        {"pk": {"S": f"ITEM#{user}#{i['collection']}#{i['key']}"}, "sk": {"S": "ITEM"}}
        for i in plan.items
    ]
    return len(storage.table.batch_get(keys))


def profile(storage: AwsStorage, user: str = "alice") -> dict[str, Any]:
    return storage.table.get(f"USER#{user}", "PROFILE") or {}


# --------------------------------------------------------------------------- commit at scale


def test_a_commit_interrupted_after_its_flip_is_whole_to_readers_and_finished_later(
    server: Server, aws_backend: AwsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = aws_of(server)
    plan = uploaded(server, 250)
    copy = CloudItems._apply
    calls = {"n": 0}

    def crash_after_the_first_hundred(self: CloudItems, ops: Any) -> int:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("the process died here")
        return copy(self, ops)

    monkeypatch.setattr(CloudItems, "_apply", crash_after_the_first_hundred)
    done = server.complete(plan.manifest["sessionId"], plan.checksum)
    monkeypatch.undo()

    # The commit point passed: the migration happened, all of it, for every reader...
    assert done.status_code == 200, done.text
    assert raw_cloud_rows(storage, plan) == 100  # ...though 150 items are not copied yet
    assert "rolling" in profile(storage)
    reader = aws_backend.open()
    assert cloud_versions(reader, plan) == {i["key"]: 1 for i in plan.items}
    assert server.summary().json()["summary"]["verified"] is True

    # Its jobs ended in the dead-letter queue. The next writer of alice's items does not
    # finish it (a migration's may be millions of rows): it waits, and queues the
    # stalled job again; the job finishes it.
    session_id = plan.manifest["sessionId"]
    record = load_record(storage, session_id)
    assert record is not None and record.step == "roll"
    save_record(storage, session_id, dataclasses.replace(record, updated_at=0.0), record.part)
    other = [{**items_of(1)[0], "key": "other"}]
    with pytest.raises(CommitRolling):
        seed_cloud_items(storage, "alice", other, now=T0)
    assert raw_cloud_rows(storage, plan) == 100
    server.complete(session_id, plan.checksum)  # the fixture's worker drains the queue
    seed_cloud_items(storage, "alice", other, now=T0)

    assert raw_cloud_rows(storage, plan) == 250
    assert "rolling" not in profile(storage)
    assert cloud_versions(reader, plan) == {i["key"]: 1 for i in plan.items}
    snapshot = storage.resources.s3.get_object(
        Bucket=storage.resources.bucket, Key=f"sessions/{plan.manifest['sessionId']}/snapshot.jsonl"
    )["Body"].read()
    assert len(snapshot.splitlines()) == 250


def test_a_commit_interrupted_before_its_flip_changes_nothing_and_is_retried(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = aws_of(server)
    plan = uploaded(server, 150)
    transact = Table.transact

    def die_at_the_flip(self: Table, ops: Any) -> None:
        if any("Update" in op.item and op.target[1] == "PROFILE" for op in ops):
            raise ConnectionError("the process died here")
        transact(self, ops)

    monkeypatch.setattr(Table, "transact", die_at_the_flip)
    # The worker dies at the flip on every try: the job ends in the dead-letter queue.
    answer = server.complete(plan.manifest["sessionId"], plan.checksum)
    monkeypatch.undo()

    assert answer.json()["status"] == "committing"
    assert cloud_versions(storage, plan) == {}
    session_id = plan.manifest["sessionId"]
    # Later, the commit has not moved for longer than a job stays invisible...
    record = load_record(storage, session_id)
    assert record is not None and record.step == "flip"
    save_record(storage, session_id, dataclasses.replace(record, updated_at=0.0), record.part)
    # ...and the client's next call queues it again; the complete replay has the result.
    assert server.status(session_id).json()["status"] == "committing"
    done = server.complete(session_id, plan.checksum)

    assert done.json()["status"] == "completed"
    assert cloud_versions(storage, plan) == {i["key"]: 1 for i in plan.items}


def test_a_write_after_the_commit_waits_for_its_unfinished_roll_forward_then_wins(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = aws_of(server)
    plan = uploaded(server, 20, batch_size=20)

    def crash(self: CloudItems, ops: Any) -> int:
        raise RuntimeError("the process died before copying anything")

    monkeypatch.setattr(CloudItems, "_apply", crash)
    assert server.complete(plan.manifest["sessionId"], plan.checksum).status_code == 200
    monkeypatch.undo()
    later = {**plan.items[3], "data": {"from": "tablet"}}
    # Another device's write waits for the roll-forward (its job, queued again)...
    session_id = plan.manifest["sessionId"]
    record = load_record(storage, session_id)
    assert record is not None
    save_record(storage, session_id, dataclasses.replace(record, updated_at=0.0), record.part)
    with pytest.raises(CommitRolling):
        seed_cloud_items(storage, "alice", [later], device_id="tablet", now=T0)
    server.complete(session_id, plan.checksum)  # the fixture's worker drains the queue
    # ...then reads the committed version (1) and writes version 2.
    seed_cloud_items(storage, "alice", [later], device_id="tablet", now=T0)

    held = storage.cloud_items("alice", [(later["collection"], later["key"])])
    assert [(i.version, i.device_id) for i in held.values()] == [(2, "tablet")]
    assert sorted(cloud_versions(storage, plan).values()) == [1] * 19 + [2]


def test_a_commit_whose_reads_went_stale_loses_rather_than_applying_half(
    aws_storage: AwsStorage, aws_backend: AwsBackend
) -> None:
    first, second = items_of(2)
    keys = [(i["collection"], i["key"]) for i in (first, second)]
    other_device = aws_backend.open()

    with pytest.raises(VersionConflict), aws_storage.atomic():
        assert aws_storage.cloud_items("alice", keys) == {}
        aws_storage.put_cloud_items(
            "alice", [cloud_item(i, version=1, device_id="phone") for i in (first, second)], T0
        )
        # Meanwhile another device writes one of the items, and commits first.
        seed_cloud_items(other_device, "alice", [second], device_id="tablet", now=T0)

    held = aws_storage.cloud_items("alice", keys)
    assert [(k[1], i.device_id) for k, i in held.items()] == [(second["key"], "tablet")]


def test_a_resolution_request_larger_than_a_transaction_keeps_counts_exact(
    tmp_path: Path, aws_backend: AwsBackend
) -> None:
    with running_server(tmp_path, backend=Backend("aws", aws_backend)) as server:
        local = items_of(130)
        seed_cloud_items(server.storage, "alice", [{**i, "data": {}} for i in local], now=T0)
        plan = make_plan(local, batch_size=65)
        session_id = server.started(plan)
        server.upload_all(session_id, plan)
        ids = []
        cursor = None
        while True:
            page = server.conflicts(session_id, **({"cursor": cursor} if cursor else {})).json()
            ids += [c["conflictId"] for c in page["conflicts"]]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert len(ids) == 130

        answer = server.resolve(session_id, [{"conflictId": c, "choice": "local"} for c in ids])

        assert answer.json() == {"resolvedCount": 130, "remainingConflicts": 0}
        status = server.status(session_id).json()
        assert (status["status"], status["conflictCount"], status["unresolvedConflicts"]) == (
            "ready",
            130,
            0,
        )
        done = server.complete(session_id, plan.checksum)
        assert done.json()["appliedCount"] == 130


def test_large_items_go_through_s3_and_come_back_whole(server: Server) -> None:
    big = {**items_of(1)[0], "data": {"blob": "x" * 200_000}}
    plan = make_plan([big, *items_of(3)[1:]], batch_size=3)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)

    assert server.complete(session_id, plan.checksum).status_code == 200

    held = server.storage.cloud_items("alice", [(big["collection"], big["key"])])
    assert json.loads(next(iter(held.values())).data) == big["data"]
    assert server.summary().json()["summary"]["verified"] is True


def staged(seq: int, *names: str) -> list[StagedItem]:
    return [StagedItem("c", name, seq, "{}", 1, False, bytes(32), "new", None) for name in names]


def test_an_interrupted_batch_counts_for_nothing_but_keeps_its_keys_while_live(
    aws_storage: AwsStorage,
) -> None:
    first = Batch("s1", 0, "a" * 64, 2, 2, 0, 0, T0)
    with pytest.raises(RuntimeError), aws_storage.atomic():
        aws_storage.insert_batch(first, staged(0, "k1", "k2"))
        raise RuntimeError("the worker died before its commit")

    # Nothing of it counts...
    assert aws_storage.staged_items("s1", after=None, limit=10) == []
    assert aws_storage.received_batches("s1") == [0]  # still pending: its job comes back
    # ...but while its lease lives, another batch cannot take its keys.
    with pytest.raises(DuplicateItem):
        aws_storage.insert_batch(Batch("s1", 1, "b" * 64, 1, 1, 0, 0, T0), staged(1, "k2"))
    # Its retry (a new run) takes over its own rows and commits them once.
    aws_storage.table.update(
        "SESSION#s1", "BATCH#0000000000", "SET #leaseUntil = :past", values={":past": n(0)}
    )
    aws_storage.insert_batch(first, staged(0, "k1", "k2"))
    assert [i.key for i in aws_storage.staged_items("s1", after=None, limit=10)] == ["k1", "k2"]


# --------------------------------------------------------------------------- sessions


def a_session(**changes: Any) -> Session:
    manifest = Manifest(
        item_count=0, collections={}, batch_size=1, batch_count=0, dataset_checksum="0" * 64
    )
    session = Session(
        id="s1",
        user_id="alice",
        migration_id="mig-00000001",
        device_id="d1",
        data_version=1,
        manifest=manifest,
        config=None,
        status=SessionStatus.CREATED,
        version=1,
        created_at=0,
        updated_at=0,
        expires_at=1_000,
    )
    return dataclasses.replace(session, **changes)


def test_an_update_from_a_stale_read_loses_and_changes_nothing(aws_storage: AwsStorage) -> None:
    aws_storage.insert_session(a_session())
    read = aws_storage.get_session("s1")
    assert read is not None
    aws_storage.update_session(dataclasses.replace(read, status=SessionStatus.UPLOADING))

    with pytest.raises(VersionConflict):
        aws_storage.update_session(dataclasses.replace(read, status=SessionStatus.CANCELLED))

    stored = aws_storage.get_session("s1")
    assert stored is not None
    assert (stored.status, stored.version) == (SessionStatus.UPLOADING, 2)


def test_concurrent_starts_of_one_user_open_one_session(aws_storage: AwsStorage) -> None:
    from backend_stub.settings import Settings

    manifest = Manifest(
        item_count=0, collections={}, batch_size=1, batch_count=0, dataset_checksum="0" * 64
    )

    def start(n: int) -> str:
        request = StartMigrationRequest(
            migration_id=f"mig-concurrent-{n}", device_id=f"d{n}", data_version=1, manifest=manifest
        )
        try:
            return start_migration(aws_storage, Settings(), "alice", request, now=T0).session_id
        except ApiError as refused:
            return refused.code.value

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(start, range(4)))

    assert sorted(a for a in answers if a == "active-session") == ["active-session"] * 3
    assert aws_storage.active_session("alice", T0) is not None


def test_sessions_expire_by_ttl_unless_completed(server: Server) -> None:
    storage = aws_of(server)
    described = storage.resources.dynamodb.describe_time_to_live(TableName=storage.table.name)
    assert described["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED",
        "AttributeName": "ttl",
    }
    plan = uploaded(server, 3, batch_size=3)
    session_id = plan.manifest["sessionId"]
    row = storage.table.get("USER#alice", f"MIGRATION#{session_id}")
    assert row is not None
    expires = storage.get_session(session_id).expires_at  # type: ignore[union-attr]
    retention = storage.settings.retention_days * 24 * 3600
    assert int(row["ttl"]["N"]) == expires // 1000 + retention

    server.complete(session_id, plan.checksum)

    row = storage.table.get("USER#alice", f"MIGRATION#{session_id}")
    assert row is not None and "ttl" not in row
    assert row["status"]["S"] == "completed"
    assert int(row["version"]["N"]) > 1


def test_batches_are_stored_encrypted_with_their_sha256(server: Server) -> None:
    storage = aws_of(server)
    plan = make_plan(items_of(2), batch_size=2)
    session_id = server.started(plan)
    server.put(session_id, 0, plan.bodies[0])
    held = storage.ledger.held(session_id, 0)
    assert held is not None

    head = storage.resources.s3.head_object(
        Bucket=storage.resources.bucket, Key=held.body_key, ChecksumMode="ENABLED"
    )

    digest = hashlib.sha256(plan.bodies[0]).digest()
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ChecksumSHA256"] == base64.b64encode(digest).decode()
    assert storage.ledger.load(held) == plan.bodies[0]


# --------------------------------------------------------------------------- units of work


def test_a_failed_nested_block_rolls_back_alone(aws_storage: AwsStorage) -> None:
    with aws_storage.atomic():
        aws_storage.mark_candidate("alice", 0)
        with pytest.raises(RuntimeError), aws_storage.atomic():
            aws_storage.mark_candidate("bob", 0)
            raise RuntimeError("nested")

    assert (aws_storage.is_candidate("alice"), aws_storage.is_candidate("bob")) == (True, False)


def test_a_failed_block_leaves_nothing_behind(aws_storage: AwsStorage) -> None:
    with pytest.raises(RuntimeError), aws_storage.atomic():
        aws_storage.insert_session(a_session())
        aws_storage.mark_candidate("alice", 0)
        raise RuntimeError("boom")

    assert aws_storage.get_session("s1") is None
    assert not aws_storage.is_candidate("alice")


def test_events_are_kept_in_order_and_filtered(aws_storage: AwsStorage) -> None:
    for kind, user in [
        (EventType.MIGRATION_STARTED, "alice"),
        (EventType.LOCAL_DATA_DETECTED, "bob"),
        (EventType.MIGRATION_COMPLETED, "alice"),
    ]:
        aws_storage.record_event(Event.new(kind, user_id=user, session_id=None, detail={}, now=0))

    assert [e.type for e in aws_storage.events(user_id="alice")] == [
        EventType.MIGRATION_STARTED,
        EventType.MIGRATION_COMPLETED,
    ]
    assert [e.user_id for e in aws_storage.events(type="LocalDataDetected")] == ["bob"]
    assert aws_storage.publish_outbox() == 0  # published with their commit


def test_a_limit_on_the_page_size_is_kept(tmp_path: Path, aws_backend: AwsBackend) -> None:
    with running_server(
        tmp_path, backend=Backend("aws", aws_backend), limits=Limits(conflicts_page_size=2)
    ) as server:
        local = items_of(5)
        seed_cloud_items(server.storage, "alice", [{**i, "data": {}} for i in local], now=T0)
        plan = make_plan(local, batch_size=5)
        session_id = server.started(plan)
        server.upload_all(session_id, plan)

        first = server.conflicts(session_id).json()

        assert [c["key"] for c in first["conflicts"]] == ["k0000", "k0001"]
        assert first["total"] == 5
