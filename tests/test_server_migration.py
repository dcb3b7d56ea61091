"""The migration flow against the real server: happy paths, conflicts, replays, failures."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_fixtures import Backend
from server_fixtures import T0, Plan, Server, items_of, make_plan, running_server

from backend_stub import UserRegistered, handle_user_registered, seed_cloud_items
from sdk.contract import Item, Limits, batch_body, canonical_item, dataset_checksum_of


@pytest.fixture
def server(tmp_path: Path, backend: Backend) -> Iterator[Server]:
    with running_server(tmp_path, backend=backend) as running:
        yield running


def cloud(server: Server, plan: Plan, user: str = "alice") -> dict[str, tuple[Any, ...]]:
    keys = [(i["collection"], i["key"]) for i in plan.items]
    found = server.storage.cloud_items(user, keys)
    return {key[1]: (item.wire(), item.version, item.device_id) for key, item in found.items()}


def observable(server: Server, session_id: str) -> dict[str, Any]:
    """Everything a client or consumer could see of a session and the user's data."""
    return {
        "status": server.status(session_id).json(),
        "conflicts": server.conflicts(session_id).json(),
        "cloud": {
            k: (i.data, i.version)
            for k, i in server.storage.cloud_items(
                "alice", [("lessons", f"k{n:04d}") for n in range(20)]
            ).items()
        },
        "events": [e.id for e in server.storage.events()],
    }


# --------------------------------------------------------------------------- happy paths


def test_a_migration_without_conflicts_puts_every_item_in_the_cloud(server: Server) -> None:
    plan = make_plan(items_of(5), batch_size=2)
    started = server.start(plan)
    assert started.status_code == 200
    assert started.json()["status"] == "created"
    assert started.json()["receivedBatches"] == []
    session_id = started.json()["sessionId"]

    receipts = server.upload_all(session_id, plan)

    assert [r["itemCount"] for r in receipts] == [2, 2, 1]
    if server.backend == "sqlite":  # aws receipts acknowledge storage; the worker counts
        assert [r["newCount"] for r in receipts] == [2, 2, 1]
    status = server.status(session_id).json()
    assert (status["status"], status["progress"], status["receivedBatches"]) == (
        "ready",
        1.0,
        [0, 1, 2],
    )
    done = server.complete(session_id, plan.checksum)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed"
    assert done.json()["appliedCount"] == 5
    assert done.json()["cloudChecksum"] == plan.checksum
    assert {v[1:] for v in cloud(server, plan).values()} == {(1, "phone-1")}
    summary = server.summary().json()
    assert summary["result"] == "completed"
    assert summary["summary"]["newItems"] == 5
    assert summary["summary"]["verified"] is True
    assert summary["summary"]["collections"] == {"lessons": 5}
    assert server.event_types() == ["MigrationStarted", "MigrationCompleted"]


def test_conflicts_are_detected_resolved_and_applied_as_decided(server: Server) -> None:
    local = items_of(6)
    seed_cloud_items(
        server.storage,
        "alice",
        [
            local[0],  # identical: unchanged, not a conflict
            {**local[1], "data": {"n": "cloud"}},
            {**local[2], "data": {"n": "cloud"}},
            {**local[3], "deleted": True},  # a tombstone against a live item
        ],
        device_id="tablet",
        now=T0,
    )
    plan = make_plan(local, batch_size=2)
    session_id = server.started(plan)

    receipts = server.upload_all(session_id, plan)

    counts = [(r["newCount"], r["unchangedCount"], r["conflictCount"]) for r in receipts]
    if server.backend == "sqlite":  # aws receipts acknowledge storage; the worker counts
        assert counts == [(0, 1, 1), (0, 0, 2), (2, 0, 0)]
    assert server.status(session_id).json()["status"] == "awaiting_resolution"
    page = server.conflicts(session_id).json()
    assert (page["total"], page["unresolved"]) == (3, 3)
    by_key = {c["key"]: c for c in page["conflicts"]}
    assert list(by_key) == ["k0001", "k0002", "k0003"]
    assert by_key["k0003"]["server"]["deleted"] is True
    assert by_key["k0003"]["server"]["deviceId"] == "tablet"
    assert by_key["k0003"]["server"]["version"] == 1
    assert by_key["k0001"]["local"]["data"] == {"n": 1}
    assert server.complete(session_id, plan.checksum).json()["code"] == "conflicts-unresolved"

    merged = {"data": {"n": 3, "merged": True}, "updatedAt": T0 + 5, "deleted": False}
    resolved = server.resolve(
        session_id,
        [
            {"conflictId": by_key["k0001"]["conflictId"], "choice": "local", "strategy": "newest"},
            {"conflictId": by_key["k0002"]["conflictId"], "choice": "server"},
            {"conflictId": by_key["k0003"]["conflictId"], "choice": "merged", **merged},
        ],
    )
    assert resolved.json() == {"resolvedCount": 3, "remainingConflicts": 0}
    assert server.status(session_id).json()["status"] == "ready"

    done = server.complete(session_id, plan.checksum)

    assert done.status_code == 200, done.text
    assert done.json()["appliedCount"] == 4  # 2 new, 1 local, 1 merged
    held = cloud(server, plan)
    assert held["k0000"][1:] == (1, "tablet")
    assert held["k0001"] == (local[1], 2, "phone-1")
    assert held["k0002"][0]["data"] == {"n": "cloud"}
    assert held["k0002"][1:] == (1, "tablet")
    assert held["k0003"][0]["data"] == merged["data"]
    assert held["k0003"][1:] == (2, "phone-1")
    device_after = [
        local[0],
        local[1],
        {**local[2], "data": {"n": "cloud"}},
        Item(collection="lessons", key="k0003", **merged),  # type: ignore[typeddict-item]
        local[4],
        local[5],
    ]
    assert done.json()["cloudChecksum"] == dataset_checksum_of(device_after)
    summary = server.summary(session_id).json()["summary"]
    assert (summary["newItems"], summary["unchangedItems"], summary["conflicts"]) == (2, 1, 3)
    assert summary["resolutionsByKind"] == {"newest": 1, "server": 1, "merged": 1}
    assert summary["verified"] is True
    assert server.event_types() == [
        "MigrationStarted",
        "DataConflictDetected",
        "MigrationCompleted",
    ]


def test_an_empty_store_migrates_with_zero_batches(server: Server) -> None:
    plan = make_plan([], batch_size=10)
    session_id = server.started(plan)

    assert server.status(session_id).json()["progress"] == 1.0
    done = server.complete(session_id, plan.checksum)

    assert done.json()["itemCount"] == 0
    assert done.json()["cloudChecksum"] == plan.checksum


def test_a_reader_never_sees_half_a_migration(server: Server, tmp_path: Path) -> None:
    # Past one DynamoDB transaction (100 items) either way; moto copies the whole table
    # for each transaction, so the aws run stays smaller.
    count = 3000 if server.backend == "sqlite" else 400
    plan = make_plan(items_of(count), batch_size=500 if server.backend == "sqlite" else 100)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)
    keys = [(i["collection"], i["key"]) for i in plan.items]
    seen: set[int] = set()
    done = threading.Event()
    # A second connection, as another process would read: it never waits for the writer.
    reader = server.open_reader()

    def watch() -> None:
        # Paced by the event, so the busy reader does not starve the writer of the GIL.
        while not done.wait(0.002):
            seen.add(len(reader.cloud_items("alice", keys)))
        seen.add(len(reader.cloud_items("alice", keys)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert server.complete(session_id, plan.checksum).status_code == 200
    finally:
        done.set()
        watcher.join()
        reader.close()

    assert seen <= {0, count}
    assert count in seen


def test_gzip_batches_are_inflated_and_checked_against_the_uncompressed_body(
    server: Server,
) -> None:
    plan = make_plan(items_of(3), batch_size=3)
    session_id = server.started(plan)

    response = server.put(session_id, 0, plan.bodies[0], gzipped=True)

    assert response.status_code == 200, response.text
    assert response.json()["itemCount"] == 3


def test_batches_sent_in_parallel_and_out_of_order_are_all_kept(server: Server) -> None:
    plan = make_plan(items_of(40), batch_size=4)
    session_id = server.started(plan)
    order = list(reversed(range(len(plan.bodies))))

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        codes = list(
            pool.map(lambda s: server.put(session_id, s, plan.bodies[s]).status_code, order)
        )

    assert codes == [200] * 10
    status = server.status(session_id).json()
    assert status["receivedBatches"] == list(range(10))
    assert status["status"] == "ready"
    assert server.complete(session_id, plan.checksum).status_code == 200


# --------------------------------------------------------------------------- replays


def test_start_replayed_returns_the_same_session_whatever_its_state(server: Server) -> None:
    plan = make_plan(items_of(4), batch_size=2)
    first = server.start(plan, migration_id="mig-replayed-1")
    session_id = first.json()["sessionId"]
    server.put(session_id, 1, plan.bodies[1])
    before = observable(server, session_id)
    server.clock.advance(60)

    again = server.start(plan, migration_id="mig-replayed-1")

    assert observable(server, session_id) == before
    assert again.json()["sessionId"] == session_id
    assert (again.json()["status"], again.json()["receivedBatches"]) == ("uploading", [1])
    server.put(session_id, 0, plan.bodies[0])
    server.complete(session_id, plan.checksum)
    after = server.start(plan, migration_id="mig-replayed-1")
    assert (after.json()["sessionId"], after.json()["status"]) == (session_id, "completed")
    assert server.event_types().count("MigrationStarted") == 1


def test_start_with_a_used_migration_id_and_another_manifest_is_refused(server: Server) -> None:
    server.started(make_plan(items_of(4), batch_size=2), migration_id="mig-used-once")

    response = server.start(make_plan(items_of(5), batch_size=2), migration_id="mig-used-once")

    assert response.status_code == 409
    assert response.json()["code"] == "invalid-state"


def test_a_replayed_batch_answers_the_stored_receipt_and_changes_nothing(server: Server) -> None:
    seed_cloud_items(server.storage, "alice", [{**items_of(1)[0], "data": {"x": 1}}], now=T0)
    plan = make_plan(items_of(4), batch_size=2)
    session_id = server.started(plan)
    first = server.put(session_id, 0, plan.bodies[0]).json()
    before = observable(server, session_id)
    server.clock.advance(60)

    again = server.put(session_id, 0, plan.bodies[0])

    assert again.status_code == 200
    assert again.json() == {**first, "replayed": True}
    assert observable(server, session_id) == before


def test_another_body_for_a_stored_seq_is_refused_and_changes_nothing(server: Server) -> None:
    plan = make_plan(items_of(4), batch_size=2)
    other = make_plan(items_of(4, extra="changed"), batch_size=2)
    session_id = server.started(plan)
    server.put(session_id, 0, plan.bodies[0])
    before = observable(server, session_id)

    response = server.put(session_id, 0, other.bodies[0])

    assert response.status_code == 409
    assert response.json()["code"] == "batch-mismatch"
    assert observable(server, session_id) == before


def test_replayed_resolutions_change_nothing(server: Server) -> None:
    local = items_of(2)
    seed_cloud_items(server.storage, "alice", [{**i, "data": {"x": 0}} for i in local], now=T0)
    plan = make_plan(local, batch_size=2)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)
    ids = [c["conflictId"] for c in server.conflicts(session_id).json()["conflicts"]]
    decisions = [{"conflictId": i, "choice": "server"} for i in ids]
    assert server.resolve(session_id, decisions).json()["remainingConflicts"] == 0
    before = observable(server, session_id)
    server.clock.advance(60)

    again = server.resolve(session_id, decisions)

    assert again.json() == {"resolvedCount": 2, "remainingConflicts": 0}
    assert observable(server, session_id) == before


def test_a_later_resolution_of_the_same_conflict_wins(server: Server) -> None:
    local = items_of(1)
    seed_cloud_items(server.storage, "alice", [{**local[0], "data": {"x": 0}}], now=T0)
    plan = make_plan(local, batch_size=1)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)
    conflict_id = server.conflicts(session_id).json()["conflicts"][0]["conflictId"]

    server.resolve(session_id, [{"conflictId": conflict_id, "choice": "server"}])
    server.resolve(session_id, [{"conflictId": conflict_id, "choice": "local"}])
    server.complete(session_id, plan.checksum)

    assert cloud(server, plan)["k0000"][0] == local[0]


def test_complete_is_idempotent_and_publishes_one_migration_completed(server: Server) -> None:
    plan = make_plan(items_of(3), batch_size=3)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)
    first = server.complete(session_id, plan.checksum)
    before = observable(server, session_id)
    server.clock.advance(60)

    again = server.complete(session_id, plan.checksum)

    assert again.status_code == 200
    assert again.json() == first.json()
    assert observable(server, session_id) == before
    assert server.event_types().count("MigrationCompleted") == 1


def test_cancel_purges_staged_data_and_is_idempotent(server: Server) -> None:
    local = items_of(4)
    seed_cloud_items(server.storage, "alice", [{**local[0], "data": {"x": 0}}], now=T0)
    plan = make_plan(local, batch_size=2)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)

    cancelled = server.cancel(session_id)

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["receivedBatches"] == []
    assert server.storage.staged_items(session_id, after=None, limit=10) == []
    assert server.storage.conflict_counts(session_id) == (0, 0)
    before = observable(server, session_id)
    assert server.cancel(session_id).json() == cancelled.json()
    assert observable(server, session_id) == before
    assert server.put(session_id, 0, plan.bodies[0]).json()["code"] == "invalid-state"
    assert server.started(plan) != session_id  # no longer blocks a new session


def test_a_completed_migration_cannot_be_cancelled(server: Server) -> None:
    plan = make_plan(items_of(1), batch_size=1)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)
    server.complete(session_id, plan.checksum)

    response = server.cancel(session_id)

    assert response.status_code == 409
    assert response.json()["code"] == "invalid-state"


# --------------------------------------------------------------------------- start checks


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"itemCount": 5}, id="collections-do-not-add-up"),
        pytest.param({"batchCount": 1}, id="too-few-batches"),
        pytest.param({"batchCount": 5}, id="more-batches-than-items"),
        pytest.param({"batchCount": 0}, id="items-without-batches"),
        pytest.param({"batchSize": 100_000, "batchCount": 1}, id="batch-size-over-limit"),
        pytest.param({"collections": {"bad name": 4}}, id="malformed-collection"),
        pytest.param({"datasetChecksum": "xyz"}, id="malformed-checksum"),
        pytest.param({"surprise": 1}, id="unknown-field"),
    ],
)
def test_an_inconsistent_manifest_is_refused(server: Server, change: dict[str, Any]) -> None:
    plan = make_plan(items_of(4), batch_size=2)
    bad = Plan(plan.items, plan.bodies, {**plan.manifest, **change})

    response = server.start(bad)

    assert response.status_code == 422
    assert response.json()["code"] == "validation-failed"
    assert server.storage.latest_session("alice") is None


def test_an_unsupported_data_version_is_refused_at_start(server: Server) -> None:
    response = server.start(make_plan(items_of(1), batch_size=1), data_version=7)

    assert response.status_code == 422
    assert response.json()["code"] == "unsupported-data-version"


def test_a_second_active_session_is_refused_with_the_active_id(server: Server) -> None:
    active = server.started(make_plan(items_of(2), batch_size=1))

    response = server.start(make_plan(items_of(3), batch_size=1))

    assert response.status_code == 409
    assert response.json()["code"] == "active-session"
    assert response.json()["activeSessionId"] == active


def test_a_device_that_completed_a_migration_cannot_start_another(server: Server) -> None:
    plan = make_plan(items_of(1), batch_size=1)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)
    server.complete(session_id, plan.checksum)

    response = server.start(make_plan(items_of(2), batch_size=1))

    assert response.status_code == 409
    assert response.json()["code"] == "already-migrated"
    assert server.start(make_plan(items_of(2), batch_size=1), device_id="laptop").status_code == 200


# --------------------------------------------------------------------------- detect


def test_detect_reports_what_the_server_knows_and_publishes_local_data_detected(
    server: Server,
) -> None:
    handle_user_registered(server.storage, UserRegistered(user_id="alice", registered_at=T0))
    session_id = server.started(make_plan(items_of(2), batch_size=1))

    response = server.client.get(
        server.url("/detect"),
        params={"hasLocalData": "true", "itemCount": 2, "dataVersion": 1, "deviceId": "phone-1"},
        headers=server.auth(),
    )

    body = response.json()
    assert body["canMigrate"] is True
    assert body["migrationCandidate"] is True
    assert body["activeSessionId"] == session_id
    assert {"gzip", "plan"} <= set(body["capabilities"])
    assert body["limits"]["maxBatchItems"] == Limits().max_batch_items
    assert body["serverTime"] == server.clock.now
    assert server.event_types()[-1] == "LocalDataDetected"


@pytest.mark.parametrize(
    ("params", "already"),
    [
        pytest.param({"dataVersion": 9}, False, id="unsupported-data-version"),
        pytest.param({"deviceId": "phone-1"}, True, id="already-migrated"),
    ],
)
def test_detect_says_why_a_device_cannot_migrate(
    server: Server, params: dict[str, Any], already: bool
) -> None:
    plan = make_plan(items_of(1), batch_size=1)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)
    server.complete(session_id, plan.checksum)

    body = server.client.get(server.url("/detect"), params=params, headers=server.auth()).json()

    assert body["canMigrate"] is False
    assert body["reason"]
    assert body["alreadyMigrated"] is already


# --------------------------------------------------------------------------- completion


def test_complete_before_every_batch_is_held_lists_the_missing_ones(server: Server) -> None:
    plan = make_plan(items_of(6), batch_size=2)
    session_id = server.started(plan)
    server.put(session_id, 1, plan.bodies[1])

    response = server.complete(session_id, plan.checksum)

    assert response.status_code == 409
    assert response.json()["code"] == "batches-missing"
    assert response.json()["missingBatches"] == [0, 2]


def test_complete_with_another_checksum_is_refused_and_leaves_the_session(server: Server) -> None:
    plan = make_plan(items_of(2), batch_size=2)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)

    response = server.complete(session_id, "0" * 64)

    assert response.status_code == 409
    assert response.json()["code"] == "checksum-mismatch"
    assert server.status(session_id).json()["status"] == "ready"


def test_items_that_do_not_match_the_manifest_checksum_fail_the_migration(server: Server) -> None:
    plan = make_plan(items_of(2), batch_size=2)
    wrong = Plan(plan.items, plan.bodies, {**plan.manifest, "datasetChecksum": "a" * 64})
    session_id = server.started(wrong)
    server.upload_all(session_id, wrong)

    response = server.complete(session_id, "a" * 64)

    assert response.status_code == 409
    assert response.json()["code"] == "checksum-mismatch"
    status = server.status(session_id).json()
    assert status["status"] == "failed"
    assert status["errors"]
    assert cloud(server, plan) == {}
    assert server.event_types()[-1] == "MigrationFailed"
    assert server.summary(session_id).json()["recommendations"]


def test_a_cloud_change_after_staging_becomes_a_conflict_and_nothing_is_applied(
    server: Server,
) -> None:
    local = items_of(4)
    plan = make_plan(local, batch_size=2)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)
    seed_cloud_items(server.storage, "alice", [{**local[3], "data": {"late": True}}], now=T0)

    response = server.complete(session_id, plan.checksum)

    assert response.status_code == 409
    assert response.json()["code"] == "conflicts-unresolved"
    assert server.status(session_id).json()["status"] == "awaiting_resolution"
    assert set(cloud(server, plan)) == {"k0003"}  # the other three were not half-applied
    conflict = server.conflicts(session_id).json()["conflicts"][0]
    assert conflict["server"]["data"] == {"late": True}
    server.resolve(session_id, [{"conflictId": conflict["conflictId"], "choice": "local"}])
    assert server.complete(session_id, plan.checksum).status_code == 200
    assert cloud(server, plan)["k0003"][1] == 2


@pytest.mark.parametrize("late", [{"late": True}, None], ids=["other data", "same data"])
def test_a_new_cloud_version_of_an_unchanged_item_is_seen_at_completion(
    server: Server, late: dict[str, Any] | None
) -> None:
    local = items_of(4)
    seed_cloud_items(server.storage, "alice", [local[1]], now=T0)  # staged as unchanged
    plan = make_plan(local, batch_size=2)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)
    # Another device writes version 2 of it: other data, or the same data again.
    again = {**local[1], "data": late} if late else local[1]
    seed_cloud_items(server.storage, "alice", [again], now=T0)

    response = server.complete(session_id, plan.checksum)

    if late:
        assert response.status_code == 409
        assert response.json()["code"] == "conflicts-unresolved"
        assert set(cloud(server, plan)) == {"k0001"}
        assert cloud(server, plan)["k0001"][1] == 2
    else:  # still the same item: the migration completes against version 2
        assert response.status_code == 200, response.text
        assert set(cloud(server, plan)) == {"k0000", "k0001", "k0002", "k0003"}


def test_an_expired_session_refuses_changes_and_no_longer_blocks_a_new_one(
    server: Server,
) -> None:
    plan = make_plan(items_of(2), batch_size=1)
    session_id = server.started(plan)
    server.clock.advance(Limits().session_ttl_seconds + 1)

    assert server.status(session_id).json()["status"] == "expired"
    response = server.put(session_id, 0, plan.bodies[0])
    assert response.status_code == 409
    assert response.json()["code"] == "session-expired"
    assert server.started(plan) != session_id


def test_activity_keeps_a_session_open_past_its_first_ttl(server: Server) -> None:
    plan = make_plan(items_of(2), batch_size=1)
    session_id = server.started(plan)
    ttl = Limits().session_ttl_seconds

    server.clock.advance(ttl * 0.75)
    server.put(session_id, 0, plan.bodies[0])
    server.clock.advance(ttl * 0.75)

    assert server.status(session_id).json()["status"] == "uploading"


# --------------------------------------------------------------------------- batch rules


def test_an_item_already_staged_by_another_batch_is_refused(server: Server) -> None:
    items = items_of(4)
    plan = make_plan(items, batch_size=2)
    session_id = server.started(plan)
    server.put(session_id, 0, plan.bodies[0])
    overlapping = batch_body(canonical_item(i) for i in items[1:3])

    response = server.put(session_id, 1, overlapping)

    status = server.status(session_id).json()
    if server.backend == "aws":
        # Stored, then refused by the worker: reported, and no longer held.
        assert response.status_code == 200
        assert "batch 1 could not be processed" in status["errors"][0]
        assert "already uploaded in another batch" in status["errors"][0]
    else:
        assert response.status_code == 409
        assert response.json()["code"] == "duplicate-item"
    assert status["receivedBatches"] == [0]


def test_batches_can_never_stage_more_items_than_the_manifest(server: Server) -> None:
    items = items_of(4)
    plan = make_plan(items[:3], batch_size=2)  # 3 items in 2 batches
    session_id = server.started(plan)
    server.put(session_id, 0, plan.bodies[0])

    response = server.put(session_id, 1, batch_body(canonical_item(i) for i in items[2:4]))

    assert response.status_code == 409
    assert server.status(session_id).json()["receivedBatches"] == [0]


def test_items_out_of_order_inside_a_batch_are_refused(server: Server) -> None:
    items = items_of(2)
    plan = make_plan(items, batch_size=2)
    session_id = server.started(plan)

    response = server.put(session_id, 0, batch_body(canonical_item(i) for i in reversed(items)))

    assert response.status_code == 422


# --------------------------------------------------------------------------- conflicts API


def test_conflicts_come_in_pages_chained_by_a_cursor(tmp_path: Path) -> None:
    with running_server(tmp_path, limits=Limits(conflicts_page_size=3)) as server:
        local = items_of(7)
        seed_cloud_items(server.storage, "alice", [{**i, "data": {}} for i in local], now=T0)
        plan = make_plan(local, batch_size=7)
        session_id = server.started(plan)
        server.upload_all(session_id, plan)

        keys: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 50}
            if cursor:
                params["cursor"] = cursor
            page = server.conflicts(session_id, **params).json()
            assert len(page["conflicts"]) <= 3
            keys += [c["key"] for c in page["conflicts"]]
            pages += 1
            cursor = page["nextCursor"]
            if cursor is None:
                break

        assert keys == [i["key"] for i in plan.items]
        assert pages == 3
        assert server.conflicts(session_id, cursor="garbage").status_code == 400


def test_an_unknown_conflict_id_applies_nothing(server: Server) -> None:
    local = items_of(2)
    seed_cloud_items(server.storage, "alice", [{**i, "data": {}} for i in local], now=T0)
    plan = make_plan(local, batch_size=2)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)
    known = server.conflicts(session_id).json()["conflicts"][0]["conflictId"]

    response = server.resolve(
        session_id,
        [{"conflictId": known, "choice": "local"}, {"conflictId": "nope", "choice": "local"}],
    )

    assert response.status_code == 404
    assert server.conflicts(session_id).json()["unresolved"] == 2


@pytest.mark.parametrize(
    "resolution",
    [
        pytest.param(
            {"choice": "merged", "updatedAt": 1, "deleted": False}, id="merged-without-data"
        ),
        pytest.param({"choice": "merged", "data": {}, "deleted": False}, id="merged-without-time"),
        pytest.param({"choice": "mine"}, id="unknown-choice"),
        pytest.param({"choice": "local", "extra": 1}, id="unknown-field"),
    ],
)
def test_a_malformed_resolution_is_refused(server: Server, resolution: dict[str, Any]) -> None:
    local = items_of(1)
    seed_cloud_items(server.storage, "alice", [{**local[0], "data": {}}], now=T0)
    plan = make_plan(local, batch_size=1)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)
    conflict_id = server.conflicts(session_id).json()["conflicts"][0]["conflictId"]

    response = server.resolve(session_id, [{"conflictId": conflict_id, **resolution}])

    assert response.status_code == 422
    assert server.conflicts(session_id).json()["unresolved"] == 1


def test_more_resolutions_than_the_limit_are_refused(tmp_path: Path) -> None:
    with running_server(tmp_path, limits=Limits(max_resolutions_per_request=2)) as server:
        session_id = server.started(make_plan(items_of(1), batch_size=1))
        decisions = [{"conflictId": f"c{i}", "choice": "server"} for i in range(3)]

        response = server.resolve(session_id, decisions)

        assert response.status_code == 413


# --------------------------------------------------------------------------- status


def test_status_without_a_session_id_reports_the_active_then_the_latest(server: Server) -> None:
    assert server.status().status_code == 404
    plan = make_plan(items_of(1), batch_size=1)
    first = server.started(plan)
    assert server.status().json()["sessionId"] == first
    server.cancel(first)
    assert server.status().json()["sessionId"] == first
    assert server.summary().json()["result"] == "cancelled"
