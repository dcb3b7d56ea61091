"""The server's SQLite storage, optimistic locking and settings, below the HTTP layer."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend_stub import Settings, SQLiteStorage
from backend_stub.events import Event, EventType
from backend_stub.problems import ApiError
from backend_stub.service import retrying
from backend_stub.settings import DEV_JWT_SECRET
from backend_stub.storage import Session, VersionConflict
from sdk.contract import Manifest, SessionStatus


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLiteStorage]:
    opened = SQLiteStorage.open(tmp_path)
    yield opened
    opened.close()


def a_session(**changes: object) -> Session:
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
    return dataclasses.replace(session, **changes)  # type: ignore[arg-type]


def test_an_update_from_a_stale_read_loses_and_changes_nothing(storage: SQLiteStorage) -> None:
    storage.insert_session(a_session())
    read = storage.get_session("s1")
    assert read is not None
    storage.update_session(dataclasses.replace(read, status=SessionStatus.UPLOADING))

    with pytest.raises(VersionConflict):
        storage.update_session(dataclasses.replace(read, status=SessionStatus.CANCELLED))

    stored = storage.get_session("s1")
    assert stored is not None
    assert (stored.status, stored.version) == (SessionStatus.UPLOADING, 2)


def test_concurrent_updates_of_one_version_have_exactly_one_winner(storage: SQLiteStorage) -> None:
    storage.insert_session(a_session())
    read = storage.get_session("s1")
    assert read is not None
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def update(n: int) -> None:
        barrier.wait()
        try:
            storage.update_session(dataclasses.replace(read, received_count=n))
            outcomes.append("won")
        except VersionConflict:
            outcomes.append("lost")

    threads = [threading.Thread(target=update, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["lost"] * 7 + ["won"]


def test_a_failed_transaction_leaves_nothing_behind(storage: SQLiteStorage) -> None:
    with pytest.raises(RuntimeError), storage.atomic():
        storage.insert_session(a_session())
        storage.mark_candidate("alice", 0)
        raise RuntimeError("boom")

    assert storage.get_session("s1") is None
    assert not storage.is_candidate("alice")


def test_the_database_survives_reopening(tmp_path: Path) -> None:
    first = SQLiteStorage.open(tmp_path)
    first.insert_session(a_session())
    first.close()

    second = SQLiteStorage.open(tmp_path)
    try:
        assert second.get_session("s1") is not None
    finally:
        second.close()


def test_an_open_session_reads_as_expired_once_its_ttl_passed(storage: SQLiteStorage) -> None:
    storage.insert_session(a_session())

    assert storage.active_session("alice", now=999) is not None
    assert storage.active_session("alice", now=1_000) is None
    assert a_session().status_at(1_000) is SessionStatus.EXPIRED
    assert a_session(status=SessionStatus.COMPLETED).status_at(1_000) is SessionStatus.COMPLETED


def test_events_are_kept_in_order_and_filtered(storage: SQLiteStorage) -> None:
    for kind, user in [
        (EventType.MIGRATION_STARTED, "alice"),
        (EventType.LOCAL_DATA_DETECTED, "bob"),
        (EventType.MIGRATION_COMPLETED, "alice"),
    ]:
        storage.record_event(Event.new(kind, user_id=user, session_id=None, detail={}, now=0))

    assert [e.type for e in storage.events(user_id="alice")] == [
        EventType.MIGRATION_STARTED,
        EventType.MIGRATION_COMPLETED,
    ]
    assert [e.user_id for e in storage.events(type="LocalDataDetected")] == ["bob"]


def test_a_race_lost_too_often_becomes_a_version_conflict_problem() -> None:
    calls = 0

    def always_loses() -> None:
        nonlocal calls
        calls += 1
        raise VersionConflict("s1")

    with pytest.raises(ApiError) as caught:
        retrying(always_loses, attempts=3)

    assert (caught.value.status, caught.value.code.value, calls) == (409, "version-conflict", 3)


@pytest.mark.parametrize(
    ("environ", "field", "expected"),
    [
        pytest.param({}, "jwt_secret", DEV_JWT_SECRET, id="dev-secret-by-default"),
        pytest.param({}, "data_dir", Path("migration-data"), id="default-data-dir"),
        pytest.param({"MIGRATION_DATA_DIR": "/srv/m"}, "data_dir", Path("/srv/m"), id="data-dir"),
        pytest.param(
            {"MIGRATION_SUPPORTED_DATA_VERSIONS": "1, 2"},
            "supported_data_versions",
            (1, 2),
            id="data-versions",
        ),
    ],
)
def test_settings_come_from_the_environment(
    environ: dict[str, str], field: str, expected: object
) -> None:
    assert getattr(Settings.from_env(environ), field) == expected


def test_limits_and_ttl_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {"MIGRATION_LIMITS": '{"maxBatchItems": 7}', "MIGRATION_SESSION_TTL": "30"}
    )

    assert settings.limits.max_batch_items == 7
    assert settings.session_ttl_ms == 30_000


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"MIGRATION_JWT_SECRET": "short"}, id="short-secret"),
        pytest.param({"MIGRATION_LIMITS": '{"nope": 1}'}, id="unknown-limit"),
        pytest.param({"MIGRATION_SESSION_TTL": "soon"}, id="ttl-not-a-number"),
        pytest.param({"MIGRATION_SUPPORTED_DATA_VERSIONS": ","}, id="no-data-version"),
    ],
)
def test_bad_settings_are_refused(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Settings.from_env(environ)


def test_a_failed_nested_block_rolls_back_alone(storage: SQLiteStorage) -> None:
    with storage.atomic():
        storage.mark_candidate("alice", 0)
        with pytest.raises(RuntimeError), storage.atomic():
            storage.mark_candidate("bob", 0)
            raise RuntimeError("boom")

    assert (storage.is_candidate("alice"), storage.is_candidate("bob")) == (True, False)


def test_a_database_of_the_first_schema_keeps_its_staged_items_when_upgraded(
    tmp_path: Path,
) -> None:
    import sqlite3

    from sqlite_utils import Database

    from backend_stub.storage.sqlite import DATABASE_NAME, migrations
    from sdk.contract import canonical_item

    # A data folder written before staged items were kept in parts: the first schema,
    # holding one staged item as its whole canonical text.
    path = tmp_path / DATABASE_NAME
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.apply(Database(conn), stop_before="m002_staged_parts")
    wire = {
        "collection": "c",
        "key": "k\u00e9",
        "data": {"b": [1e-05], "a": None},
        "updatedAt": 7,
        "deleted": True,
    }
    text = canonical_item(wire).decode()
    conn.execute(
        "INSERT INTO staged_items VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ["s1", "c", "k\u00e9", 3, text, b"d" * 32, "conflict", 2],
    )
    conn.close()

    upgraded = SQLiteStorage.open(tmp_path)
    try:
        (staged,) = upgraded.staged_items("s1", after=None, limit=10)
        assert (staged.seq, staged.digest, staged.outcome, staged.cloud_version) == (
            3,
            b"d" * 32,
            "conflict",
            2,
        )
        assert staged.item == text and staged.wire() == wire
        assert (staged.data, staged.updated_at, staged.deleted) == (
            '{"a":null,"b":[1e-05]}',
            7,
            True,
        )
    finally:
        upgraded.close()


def _staged_session(
    storage: SQLiteStorage, items: list[Any], batch_size: int, order: list[int]
) -> str:
    """A session with ``items`` uploaded in batches of ``batch_size``, sent in ``order``."""
    from server_fixtures import make_plan

    from backend_stub.batches import put_batch
    from backend_stub.bodies import Upload
    from backend_stub.start import start_migration
    from sdk.contract import StartMigrationRequest, batch_checksum

    plan = make_plan(items, batch_size)
    settings = Settings()
    request = StartMigrationRequest.model_validate(
        {
            "migrationId": "mig-tally-1",
            "deviceId": "d1",
            "dataVersion": 1,
            "manifest": plan.manifest,
        }
    )
    session_id = start_migration(storage, settings, "alice", request, now=0).session_id
    for seq in sorted(range(len(plan.bodies)), key=lambda s: order[s % len(order)]):
        body = plan.bodies[seq]
        put_batch(
            storage, settings, "alice", session_id, seq, Upload(body, batch_checksum(body)), now=1
        )
    return session_id


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    count=st.integers(1, 30),
    batch_size=st.integers(1, 7),
    in_cloud=st.sets(st.integers(0, 29)),
    changed=st.sets(st.integers(0, 29)),
    order=st.permutations(range(8)),
)
def test_a_session_tallied_from_its_batches_adds_up_as_tallied_from_its_items(
    tmp_path_factory: pytest.TempPathFactory,
    count: int,
    batch_size: int,
    in_cloud: set[int],
    changed: set[int],
    order: list[int],
) -> None:
    from server_fixtures import items_of

    from backend_stub import seed_cloud_items

    storage = SQLiteStorage.open(tmp_path_factory.mktemp("tally"))
    try:
        items = items_of(count)
        seed_cloud_items(
            storage,
            "alice",
            [
                dict(items[i], data={"other": 1}) if i in changed else items[i]
                for i in sorted(in_cloud)
                if i < count
            ],
        )
        session_id = _staged_session(storage, items, batch_size, order)
        from_batches = storage._tally_batches(session_id)
        from_items = storage._tally_items(session_id)
        assert from_batches is not None
        (tally, new_sum, against), (expected, expected_sum, expected_against) = (
            from_batches,
            from_items,
        )
        assert tally.digests.hexdigest() == expected.digests.hexdigest()
        assert +tally.outcomes == +expected.outcomes
        assert (new_sum, against) == (expected_sum, expected_against)
    finally:
        storage.close()


def test_a_batch_of_new_items_is_stored_by_column_as_it_is_row_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A first migration's batches reach the store as columns (NewItems); handed over as
    # StagedItem rows instead, the same batches must leave the same rows behind.
    from server_fixtures import items_of

    from backend_stub import batches
    from backend_stub.storage import NewItems

    items = items_of(9, collection="lessons") + items_of(4, collection="notes", deleted=1)
    items[3]["deleted"] = True
    classify = batches.classify
    dumps = []
    for by_column in (True, False):
        staged_as: list[type] = []

        def handing_over(
            *args: Any,
            by_column: bool = by_column,
            staged_as: list[type] = staged_as,
            **kwargs: Any,
        ) -> Any:
            staged, conflicts = classify(*args, **kwargs)
            staged_as.append(type(staged))
            return (staged if by_column else list(staged)), conflicts

        monkeypatch.setattr(batches, "classify", handing_over)
        storage = SQLiteStorage.open(tmp_path / f"by-column-{by_column}")
        try:
            _staged_session(storage, items, 4, [2, 0, 1, 3])
            assert staged_as == [NewItems] * 4
            batch_rows = storage._conn.execute("SELECT * FROM batches ORDER BY seq").fetchall()
            dumps.append(
                [
                    [row[1:] for row in batch_rows],  # but the session's (random) id
                    storage._conn.execute("SELECT * FROM staged_items ORDER BY 2, 3").fetchall(),
                ]
            )
        finally:
            storage.close()
    by_column_rows, by_row = dumps
    assert len(by_row[1]) == len(items) and by_column_rows == by_row


def test_a_session_is_tallied_from_its_items_once_one_was_reclassified_or_out_of_order(
    storage: SQLiteStorage,
) -> None:
    from server_fixtures import items_of

    items = items_of(6)
    session_id = _staged_session(storage, items, 2, [0])
    assert storage._tally_batches(session_id) is not None
    storage.set_staged_outcome(session_id, ("lessons", "k0001"), "unchanged", 1)
    assert storage._tally_batches(session_id) is None  # the batches' sums are stale

    # A client whose batches are not in key order: batch 0 holds the later keys.
    with storage.atomic():
        storage._conn.execute("UPDATE batches SET first_key = 'k9', last_key = 'k9' WHERE seq = 0")
        storage._conn.execute("UPDATE session_numbers SET reclassified = 0")
    assert storage._tally_batches(session_id) is None


def test_the_wal_is_checkpointed_beside_the_requests_not_in_them(tmp_path: Path) -> None:
    from server_fixtures import items_of

    from backend_stub import seed_cloud_items
    from backend_stub.storage.sqlite import DATABASE_NAME

    storage = SQLiteStorage.open(tmp_path)
    try:
        assert storage.checkpoints is not None
        assert storage.checkpoints.wait_idle(timeout=30)
        database = tmp_path / DATABASE_NAME
        before = database.stat().st_size
        for start in range(0, 2000, 500):  # several commits, far below wal_autocheckpoint
            seed_cloud_items(storage, "alice", items_of(2000)[start : start + 500])
        assert storage.checkpoints.wait_idle(timeout=30)
        # The pages reached the database file: only a checkpoint writes them there.
        assert database.stat().st_size > before + 100_000
        (mode,) = storage._conn.execute("PRAGMA wal_autocheckpoint").fetchone()
        assert mode > 2000 * 4  # the commits above could not have checkpointed themselves
    finally:
        storage.close()
