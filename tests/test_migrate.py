"""End-to-end migrations: the SDK against the real server app, in-process and on loopback."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sdk_fixtures import learning_items, make_store

from backend_stub import seed_cloud_items
from sdk import (
    ConfigurationError,
    DataConflictDetected,
    ForeignStoreError,
    LocalDataDetected,
    LocalState,
    LocalStore,
    MigrationBlockedError,
    MigrationClient,
    MigrationCompleted,
    MigrationFailed,
    MigrationOptions,
    MigrationOutcome,
    MigrationStarted,
    OfflineError,
    Progress,
    ProgressPhase,
    RemoteChangesApplied,
    RetryPolicy,
    SyncCompleted,
    VerificationError,
    detect_local,
)
from sdk._migration.journal import Journal, journal_path_for
from sdk.contract import Item, batch_body, canonical_item, dataset_checksum_of


def client_for(server, store: Path, user: str, tmp_path: Path, **kwargs) -> MigrationClient:
    kwargs.setdefault("options", MigrationOptions(batch_size=50, cache_dir=tmp_path / "cache"))
    kwargs.setdefault("retry", RetryPolicy.none())
    return MigrationClient(
        http_client=server.client,
        user_id=user,
        token=server.token(user),
        store_path=store,
        **kwargs,
    )


def cloud_of(server, user: str, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Item]:
    return {k: v.wire() for k, v in server.storage.cloud_items(user, keys).items()}


def local_of(store: Path) -> dict[tuple[str, str], Item]:
    with LocalStore(store, create=False) as s:
        return {(i["collection"], i["key"]): i for i in s.iter_items()}


def test_a_store_migrates_end_to_end_and_the_cloud_then_equals_the_device(server, tmp_path):
    items = learning_items(400)
    store = make_store(tmp_path / "store.sqlite3", items)
    # Another device already uploaded some: 20 identical, 10 different, 5 the device lacks.
    different = [dict(i, data={"score": 100}) for i in items[20:30]]
    cloud_only = [
        Item(
            collection="lesson_progress",
            key=f"other-{n}",
            data={"n": n},
            updatedAt=1,
            deleted=False,
        )
        for n in range(5)
    ]
    seed_cloud_items(
        server.storage, "alice", items[:20] + different + cloud_only, device_id="tablet"
    )
    events: list[object] = []
    progress: list[Progress] = []

    with client_for(
        server, store, "alice", tmp_path, on_event=events.append, on_progress=progress.append
    ) as client:
        result = client.migrate()

    assert result.outcome is MigrationOutcome.COMPLETED
    assert result.verified
    assert result.item_count == len(items)
    assert (result.new_items, result.unchanged_items, result.conflicts) == (len(items) - 30, 20, 10)
    assert result.resolutions_by_kind == {"server_wins": 10}
    # Server wins by default: the device now holds the cloud's version of the 10 conflicts,
    # and for every migrated key the cloud and the device hold the same item.
    local = local_of(store)
    cloud = cloud_of(server, "alice", list(local))
    assert cloud == local
    assert all(local[(d["collection"], d["key"])]["data"] == {"score": 100} for d in different)
    others = {(i["collection"], i["key"]) for i in cloud_only}
    migrated = [item for key, item in local.items() if key not in others]
    assert result.cloud_checksum == dataset_checksum_of(migrated)
    # The cloud-only items are untouched, and the sync that ended the migration brought
    # them to the device.
    assert len(cloud_of(server, "alice", list(others))) == 5
    assert others <= set(local) and result.sync is not None and result.sync.pulled == 5
    # The store is marked migrated, the journal is empty and the snapshot is gone.
    assert detect_local(store).state is LocalState.MIGRATED
    with Journal(journal_path_for(store)) as journal:
        assert journal.load() is None
    assert list((tmp_path / "cache").glob("*.sqlite3*")) == []
    # Events in order, progress never backwards within the upload.
    kinds = [type(e) for e in events]
    assert kinds == [
        LocalDataDetected,
        MigrationStarted,
        DataConflictDetected,
        MigrationCompleted,
        RemoteChangesApplied,  # the cloud-only items, pulled by the sync that ends it
        SyncCompleted,
    ]
    uploads = [p.items_done for p in progress if p.phase is ProgressPhase.UPLOADING]
    assert uploads == sorted(uploads) and uploads[-1] == len(items)
    assert progress[-1].phase is ProgressPhase.DONE


def test_a_migrated_store_is_not_migrated_twice(server, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(30))
    with client_for(server, store, "bob", tmp_path) as client:
        first = client.migrate()
        second = client.migrate()
    assert second.outcome is MigrationOutcome.ALREADY_MIGRATED
    assert second.session_id == first.session_id
    started = server.storage.events(user_id="bob", type="MigrationStarted")
    assert len(started) == 1


@pytest.mark.parametrize(
    "prepare",
    [
        pytest.param(lambda p: None, id="no store"),
        pytest.param(lambda p: LocalStore(p).close(), id="empty store"),
    ],
)
def test_nothing_is_sent_when_there_is_nothing_to_migrate(server, tmp_path, prepare):
    store = tmp_path / "store.sqlite3"
    prepare(store)
    with client_for(server, store, "carol", tmp_path) as client:
        result = client.migrate()
    assert result.outcome is MigrationOutcome.NOTHING_TO_MIGRATE
    assert server.storage.events(user_id="carol") == []


def test_a_foreign_database_is_refused_with_a_typed_error_and_nothing_is_uploaded(server, tmp_path):
    import sqlite3

    store = tmp_path / "store.sqlite3"
    conn = sqlite3.connect(store)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('hello')")
    conn.commit()
    conn.close()
    before = store.read_bytes()
    failures: list[object] = []
    with (
        client_for(server, store, "dave", tmp_path, on_event=failures.append) as client,
        pytest.raises(ForeignStoreError, match="another application"),
    ):
        client.migrate()
    assert store.read_bytes() == before
    assert server.storage.latest_session("dave") is None
    assert [type(e) for e in failures] == [MigrationFailed]


def test_an_interrupted_upload_resumes_in_the_same_session_and_sends_only_what_is_missing(
    server, tmp_path
):
    items = learning_items(300)
    store = make_store(tmp_path / "store.sqlite3", items)
    puts = {"n": 0}

    def go_offline_after_four_batches(request: httpx.Request) -> None:
        if request.method == "PUT":
            puts["n"] += 1
            if puts["n"] > 4:
                raise httpx.ConnectError("network is unreachable", request=request)

    server.client.event_hooks["request"].append(go_offline_after_four_batches)
    options = MigrationOptions(batch_size=20, max_in_flight=1, cache_dir=tmp_path / "cache")
    with client_for(server, store, "erin", tmp_path, options=options) as client:
        with pytest.raises(OfflineError, match="resume"):
            client.migrate()
        first_session = server.storage.latest_session("erin")
        assert first_session is not None
        assert len(server.storage.received_batches(first_session.id)) == 4
        assert detect_local(store).state is LocalState.READY  # not marked before verification

        server.client.event_hooks["request"].clear()
        result = client.migrate()

    assert result.verified and result.resumed
    assert result.session_id == first_session.id
    assert result.batches_uploaded == -(-len(items) // 20) - 4
    local = local_of(store)
    assert cloud_of(server, "erin", list(local)) == local


def test_a_second_migration_of_the_same_store_waits_for_the_first(server, tmp_path):
    from sdk._migration.lock import MigrationLock, lock_path_for

    store = make_store(tmp_path / "store.sqlite3", learning_items(10))
    with (
        MigrationLock(lock_path_for(store)),
        client_for(server, store, "fay", tmp_path) as c,
        pytest.raises(MigrationBlockedError, match="already migrating"),
    ):
        c.migrate()


def verification_fault(real: httpx.BaseTransport) -> httpx.BaseTransport:
    """The real app, except that `complete` reports a wrong cloud checksum (a fault the
    real server cannot be made to produce)."""

    class Lying(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = real.handle_request(request)
            if request.url.path.endswith("/complete") and response.status_code == 200:
                body = json.loads(response.read())
                body["cloudChecksum"] = "0" * 64
                return httpx.Response(200, json=body)
            return response

    return Lying()


def test_a_checksum_mismatch_after_completion_leaves_the_store_unmarked(server, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(20))
    lying = httpx.Client(
        transport=verification_fault(server.client._transport), base_url="http://testserver"
    )
    client = MigrationClient(
        http_client=lying,
        user_id="gus",
        token=server.token("gus"),
        store_path=store,
        retry=RetryPolicy.none(),
        options=MigrationOptions(cache_dir=tmp_path / "cache"),
    )
    with client, lying, pytest.raises(VerificationError, match="not marked migrated"):
        client.migrate()
    assert detect_local(store).state is LocalState.READY
    assert len(local_of(store)) == 22


def test_the_app_can_keep_writing_while_it_migrates_and_its_writes_reach_the_cloud(
    server, tmp_path
):
    store = make_store(tmp_path / "store.sqlite3", learning_items(100))
    writes: list[int] = []

    def write_during_upload(p: Progress) -> None:
        if p.phase is ProgressPhase.UPLOADING and len(writes) < 3:
            with LocalStore(store) as s:
                s.put("lesson_progress", f"late-{len(writes)}", {"score": 1})
            writes.append(1)

    with client_for(server, store, "hal", tmp_path, on_progress=write_during_upload) as client:
        result = client.migrate()
    # The snapshot held 102 items; the sync that ends the migration sent the 3 written
    # after it, so when migrate() returns the cloud holds what the device holds.
    assert result.verified and result.item_count == 102
    assert result.sync is not None and result.sync.pushed == 3
    local = local_of(store)
    assert len(local) == 105 and cloud_of(server, "hal", list(local)) == local
    assert detect_local(store).pending_changes == 0


def test_a_migration_runs_over_a_real_loopback_socket_in_parallel_and_gzipped(
    live_server, tmp_path
):
    items = learning_items(2_000)
    store = make_store(tmp_path / "store.sqlite3", items)
    options = MigrationOptions(
        batch_size=97, max_in_flight=4, compress=True, cache_dir=tmp_path / "cache"
    )
    with MigrationClient(
        server=live_server.url,
        user_id="ivy",
        token=live_server.token("ivy"),
        store_path=store,
        options=options,
    ) as client:
        result = client.migrate()
        summary = client.summary()
    assert result.verified
    assert result.batches_uploaded == -(-len(items) // 97)
    assert summary.summary.verified and summary.summary.total_items == len(items)
    assert result.cloud_checksum == dataset_checksum_of(items)


def planned_batches(items: list[Item], batch_size: int, budget: int) -> list[int]:
    """Items per batch, worked out the obvious way: in key order, a batch closes before
    the next item would take it past ``batch_size`` items or ``budget`` bytes."""
    encoded = [canonical_item(i) for i in sorted(items, key=lambda i: (i["collection"], i["key"]))]
    counts: list[int] = []
    batch: list[bytes] = []
    for item in encoded:
        if batch and (len(batch) == batch_size or len(batch_body([*batch, item])) > budget):
            counts.append(len(batch))
            batch = []
        batch.append(item)
    return [*counts, len(batch)]


@pytest.mark.parametrize(
    ("options", "batch_size", "budget"),
    [
        # The default: 5,000 items (the server's limit) or 1 MiB, whichever comes first.
        pytest.param({}, 5000, 1 << 20, id="default"),
        pytest.param({"batch_bytes": 4096}, 5000, 4096, id="a byte budget"),
        pytest.param({"batch_size": 10**6, "batch_bytes": 10**9}, 5000, 8 << 20, id="capped"),
        pytest.param({"batch_size": 300, "batch_bytes": 60_000}, 300, 60_000, id="items first"),
    ],
)
def test_batches_close_at_the_item_count_or_the_byte_budget_and_the_servers_limits_cap_both(
    server, tmp_path, options, batch_size, budget
):
    items = learning_items(6_000)
    store = make_store(tmp_path / "store.sqlite3", items)
    expected = planned_batches(items, batch_size, budget)
    with client_for(
        server,
        store,
        "uma",
        tmp_path,
        options=MigrationOptions(cache_dir=tmp_path / "cache", **options),
    ) as client:
        result = client.migrate()
    assert result.verified and result.cloud_checksum == dataset_checksum_of(items)
    assert result.batches_uploaded == len(expected)
    received = server.storage._conn.execute(
        "SELECT item_count FROM batches WHERE session_id = ? ORDER BY seq", (result.session_id,)
    ).fetchall()
    assert [count for (count,) in received] == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_bytes": 0}, "batch_bytes must be an integer >= 4096, got 0"),
        ({"batch_bytes": 4095}, "batch_bytes must be an integer >= 4096, got 4095"),
        ({"batch_bytes": 1.5e6}, "batch_bytes must be an integer >= 4096, got 1500000.0"),
        ({"batch_bytes": "1MiB"}, "batch_bytes must be an integer >= 4096, got '1MiB'"),
        ({"batch_bytes": True}, "batch_bytes must be an integer >= 4096, got True"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"batch_size": "500"}, "batch_size must be an integer, got '500'"),
        ({"batch_size": 2.5}, "batch_size must be an integer, got 2.5"),
        ({"batch_size": True}, "batch_size must be an integer, got True"),
        ({"max_in_flight": 0}, "max_in_flight must be at least 1, got 0"),
        ({"max_in_flight": None}, "max_in_flight must be an integer, got None"),
        ({"compress": "yes"}, "compress must be True or False, got 'yes'"),
        ({"cache_dir": 5}, "cache_dir must be a folder's path (a str or a Path), got 5"),
        ({"cache_dir": ""}, "cache_dir must be a folder's path (a str or a Path), got ''"),
    ],
)
def test_bad_options_are_configuration_errors_that_name_the_option(options, message):
    with pytest.raises(ConfigurationError) as raised:
        MigrationOptions(**options)
    assert str(raised.value) == message


def test_the_cache_folder_may_be_given_as_a_str(server, tmp_path):
    items = learning_items(30)
    store = make_store(tmp_path / "store.sqlite3", items)
    options = MigrationOptions(cache_dir=str(tmp_path / "snapshots"))
    assert options.cache_dir == tmp_path / "snapshots"
    with client_for(server, store, "vic", tmp_path, options=options) as client:
        result = client.migrate()
    assert result.verified and result.cloud_checksum == dataset_checksum_of(items)


def make_token_source(server, user: str) -> Callable[[], str]:
    calls = {"n": 0}

    def token() -> str:
        calls["n"] += 1
        return server.token(user)

    token.calls = calls  # type: ignore[attr-defined]
    return token


def test_a_token_callable_is_asked_for_every_request(server, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(10))
    token = make_token_source(server, "jay")
    with MigrationClient(
        http_client=server.client,
        user_id="jay",
        token=token,
        store_path=store,
        options=MigrationOptions(cache_dir=tmp_path / "c"),
    ) as client:
        assert client.migrate().verified
    assert token.calls["n"] >= 5  # type: ignore[attr-defined]


def test_data_written_around_the_store_in_non_canonical_json_still_migrates_verified(
    server, tmp_path
):
    import sqlite3

    items = learning_items(30)
    store = make_store(tmp_path / "store.sqlite3", items)
    conn = sqlite3.connect(store)
    conn.execute(
        "UPDATE items SET data = ? WHERE key = ?", ('{ "b": 1,  "a": [1, 2] }', "item-000003")
    )
    conn.commit()
    conn.close()
    with client_for(server, store, "kim", tmp_path) as client:
        result = client.migrate()
    assert result.verified
    cloud = cloud_of(server, "kim", [("lesson_progress", "item-000003")])
    assert cloud[("lesson_progress", "item-000003")]["data"] == {"a": [1, 2], "b": 1}


def test_an_item_written_around_the_store_with_its_digest_makes_the_upload_start_over(
    server, tmp_path
):
    # The snapshot takes the digests the store vouches for as they are; the upload checks
    # each item when it builds its batch. A row whose data and digest were written by hand
    # fails that check before its batch is sent: the session is cancelled and the
    # migration starts over with a snapshot that checks every item, which reads the row
    # as it is.
    import sqlite3

    items = learning_items(200)
    store = make_store(tmp_path / "store.sqlite3", items)
    conn = sqlite3.connect(store)
    conn.execute(
        "UPDATE items SET data = '{\"y\" : 3}', digest = randomblob(32) WHERE key = ?",
        ["item-000120"],
    )
    conn.commit()
    conn.close()
    events: list[object] = []
    with (
        client_for(server, store, "lee", tmp_path, on_event=events.append) as client,
        # The migration commits and verifies; the sync that ends it then finds the store's
        # running checksum off by the digest written by hand, as it did before snapshots
        # took digests as they are (the store's rebuild recounts it).
        pytest.raises(VerificationError),
    ):
        client.migrate()
    first, second = [e.session_id for e in events if isinstance(e, MigrationStarted)]
    assert [type(e) for e in events].count(MigrationCompleted) == 1
    assert server.storage.get_session(first).status.value == "cancelled"
    assert server.storage.get_session(second).status.value == "completed"
    cloud = cloud_of(server, "lee", [(i["collection"], i["key"]) for i in items])
    assert len(cloud) == len(items)
    assert cloud[("lesson_progress", "item-000120")]["data"] == {"y": 3}


def test_request_timeout_bounds_each_request_to_a_server_that_never_answers(tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(3))
    outcome: list[BaseException] = []
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)  # connections queue up; nothing ever reads or answers them
        url = f"http://127.0.0.1:{hole.getsockname()[1]}"
        with MigrationClient(
            server=url,
            user_id="u1",
            token="t",
            store_path=store,
            request_timeout=0.2,
            retry=RetryPolicy.none(),
        ) as client:

            def ask() -> None:
                try:
                    client.status()
                except BaseException as exc:  # recorded for the assert below
                    outcome.append(exc)

            worker = threading.Thread(target=ask, daemon=True)
            worker.start()
            worker.join(10)  # the default (30 s) would still be waiting here

    assert outcome and isinstance(outcome[0], OfflineError), outcome


@pytest.mark.parametrize("bad", [0, -1.0, "5", True])
def test_a_bad_request_timeout_is_a_configuration_error(tmp_path, bad):
    with pytest.raises(ConfigurationError, match="timeout"):
        MigrationClient(
            server="http://127.0.0.1:9",
            user_id="u1",
            token="t",
            store_path=tmp_path / "s.sqlite3",
            request_timeout=bad,
        )


@pytest.mark.parametrize("kind", ["missing", "folder", "foreign"])
def test_the_client_leaves_nothing_beside_a_path_that_holds_no_store_of_ours(
    server, tmp_path, kind
):
    import sqlite3

    path = tmp_path / "here" / "store.sqlite3"
    path.parent.mkdir()
    if kind == "folder":
        path.mkdir()
    elif kind == "foreign":
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE notes (body TEXT)")
    before = sorted(p.name for p in path.parent.iterdir())

    with client_for(server, path, "ivy", tmp_path) as client:
        if kind == "missing":
            assert client.migrate().outcome is MigrationOutcome.NOTHING_TO_MIGRATE
            assert client.cancel() is False
        else:
            with pytest.raises(ForeignStoreError):
                client.migrate()
            with pytest.raises(ForeignStoreError):
                client.sync()
            with pytest.raises(ForeignStoreError):
                client.cancel()

    assert sorted(p.name for p in path.parent.iterdir()) == before  # no journal, no lock
