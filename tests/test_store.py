import doctest
import json
import math
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import platformdirs
import pytest
from sqlite_utils import Database

import sdk._store.local
from sdk import MigrationClient, detect_local
from sdk._errors import (
    ConfigurationError,
    CorruptStoreError,
    ForeignStoreError,
    InvalidItemError,
    StoreBusyError,
    StoreError,
    StoreNotFoundError,
    UnsupportedDataVersionError,
)
from sdk._store.local import LocalStore, default_store_path
from sdk._store.schema import (
    CURRENT_DATA_VERSION,
    MIGRATION_SET,
    MIGRATIONS,
    SCHEMA_STEPS,
    STORE_APPLICATION_ID,
    STORE_FORMAT,
    MigrationState,
)
from sdk.contract import canonical_json


@pytest.fixture
def store(tmp_path):
    with LocalStore(tmp_path / "store.sqlite3") as opened:
        yield opened


def raw(path):
    """A plain sqlite3 connection, to look at (or damage) the file behind the SDK's back."""
    return sqlite3.connect(str(path), isolation_level=None)


def test_a_new_store_creates_its_folders_and_says_whose_it_is(tmp_path):
    path = tmp_path / "a" / "b" / "store.sqlite3"
    with LocalStore(path) as store:
        assert store.path == path
        assert store.data_version == CURRENT_DATA_VERSION
        assert len(store.device_id) == 32
        int(store.device_id, 16)
    assert int.from_bytes(path.read_bytes()[68:72], "big") == STORE_APPLICATION_ID
    conn = raw(path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM store_meta"))
        assert meta["format"] == STORE_FORMAT
        assert meta["data_version"] == "1"
        assert int(meta["created_at"]) > 1_600_000_000_000
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'items'").fetchone()
        assert "WITHOUT ROWID" in sql
    finally:
        conn.close()


def test_the_device_id_is_made_once_and_kept(tmp_path):
    with LocalStore(tmp_path / "s.sqlite3") as store:
        first = store.device_id
    with LocalStore(tmp_path / "s.sqlite3") as store:
        assert store.device_id == first
    with LocalStore(tmp_path / "other.sqlite3") as store:
        assert store.device_id != first


def test_put_then_get_returns_the_wire_item(store):
    returned = store.put("lessons", "l1", {"score": 3, "tags": ["a"]}, updated_at=17)
    expected = {
        "collection": "lessons",
        "key": "l1",
        "data": {"score": 3, "tags": ["a"]},
        "updatedAt": 17,
        "deleted": False,
    }
    assert returned == expected
    assert store.get("lessons", "l1") == expected
    assert store.get("lessons", "l2") is None
    assert store.get("other", "l1") is None


def test_put_replaces_the_item_with_the_same_collection_and_key(store):
    store.put("c", "k", {"v": 1}, updated_at=1)
    store.put("c", "k", {"v": 2}, updated_at=2)
    assert store.get("c", "k")["data"] == {"v": 2}
    assert store.count(include_deleted=True) == 1


def test_put_stamps_the_current_time_in_milliseconds_by_default(store):
    before = time.time_ns() // 1_000_000
    item = store.put("c", "k", {})
    after = time.time_ns() // 1_000_000
    assert before <= item["updatedAt"] <= after
    assert store.get("c", "k")["updatedAt"] == item["updatedAt"]


def test_data_is_stored_as_canonical_json(store):
    store.put("c", "k", {"b": 1, "a": {"z": [1.5, "é"], "y": None}}, updated_at=1)
    conn = raw(store.path)
    try:
        (text,) = conn.execute("SELECT data FROM items").fetchone()
    finally:
        conn.close()
    assert text == '{"a":{"y":null,"z":[1.5,"é"]},"b":1}'
    assert text == canonical_json({"b": 1, "a": {"z": [1.5, "é"], "y": None}})


def test_delete_writes_a_tombstone_that_reads_back_as_deleted(store):
    store.put("c", "k", {"v": 1}, updated_at=1)
    assert store.delete("c", "k", updated_at=2) is True
    assert store.get("c", "k") == {
        "collection": "c",
        "key": "k",
        "data": {},
        "updatedAt": 2,
        "deleted": True,
    }
    assert store.delete("c", "k", updated_at=3) is False
    assert store.delete("c", "never", updated_at=3) is False
    assert store.get("c", "never")["deleted"] is True


def test_iter_items_streams_every_item_in_collection_and_key_order(store):
    # More items than one page, in an order the store must sort.
    keys = [f"k{i:04d}" for i in range(1234)]
    store.put_many({"collection": "b", "key": k, "data": {"k": k}, "updatedAt": 1} for k in keys)
    store.put_many([{"collection": "a", "key": "z", "data": {}, "updatedAt": 1}])
    store.delete("a", "y", updated_at=2)
    items = list(store.iter_items())
    assert [(i["collection"], i["key"]) for i in items] == [("a", "y"), ("a", "z")] + [
        ("b", k) for k in keys
    ]
    assert items[0]["deleted"] is True
    assert [i["key"] for i in store.iter_items("a")] == ["y", "z"]
    assert len(list(store.iter_items("b"))) == 1234
    assert list(store.iter_items("none")) == []


def test_counts_leave_out_tombstones_unless_asked(store):
    store.put_many(
        [
            {"collection": "cards", "key": "1", "data": {}},
            {"collection": "cards", "key": "2", "data": {}},
            {"collection": "scores", "key": "1", "data": {}},
        ]
    )
    store.delete("cards", "2")
    store.delete("gone", "x")
    assert store.count() == 2
    assert store.count(include_deleted=True) == 4
    assert store.count("cards") == 1
    assert store.count("cards", include_deleted=True) == 2
    assert store.counts() == {"cards": 1, "gone": 0, "scores": 1}
    assert store.collections() == ["cards", "gone", "scores"]


def test_put_many_writes_everything_or_nothing(store):
    items = [{"collection": "c", "key": str(i), "data": {"i": i}} for i in range(5)]
    items.insert(3, {"collection": "c", "key": "bad", "data": [1]})
    with pytest.raises(InvalidItemError, match="'c'/'bad'"):
        store.put_many(items)
    assert store.count(include_deleted=True) == 0
    assert store.put_many(i for i in items if i["key"] != "bad") == 5
    assert store.count() == 5


def test_put_many_keeps_given_timestamps_and_tombstones(store):
    store.put_many([{"collection": "c", "key": "k", "data": {}, "updatedAt": 9, "deleted": True}])
    assert store.get("c", "k") == {
        "collection": "c",
        "key": "k",
        "data": {},
        "updatedAt": 9,
        "deleted": True,
    }


@pytest.mark.parametrize(
    ("collection", "key", "data", "updated_at", "message"),
    [
        pytest.param("", "k", {}, 1, "collection name", id="empty collection"),
        pytest.param("a b", "k", {}, 1, "collection name", id="space in collection"),
        pytest.param("-a", "k", {}, 1, "collection name", id="collection starting with -"),
        pytest.param("a" * 65, "k", {}, 1, "collection name", id="collection too long"),
        pytest.param("a\n", "k", {}, 1, "collection name", id="collection ending in newline"),
        pytest.param(3, "k", {}, 1, "collection name", id="collection not text"),
        pytest.param("c", "", {}, 1, "key must be", id="empty key"),
        pytest.param("c", "k\n", {}, 1, "key must be", id="key ending in newline"),
        pytest.param("c", "a\x00b", {}, 1, "key must be", id="key with NUL"),
        pytest.param("c", "k" * 513, {}, 1, "key must be", id="key too long"),
        pytest.param("c", 7, {}, 1, "key must be", id="key not text"),
        pytest.param("c", "k", [1], 1, "JSON object", id="data is a list"),
        pytest.param("c", "k", "text", 1, "JSON object", id="data is text"),
        pytest.param("c", "k", None, 1, "JSON object", id="data is None"),
        pytest.param("c", "k", {"v": math.nan}, 1, "encoded as JSON", id="NaN"),
        pytest.param("c", "k", {"v": math.inf}, 1, "encoded as JSON", id="infinity"),
        pytest.param("c", "k", {"v": {1, 2}}, 1, "encoded as JSON", id="a set"),
        pytest.param("c", "k", {1: "a", "b": 2}, 1, "encoded as JSON", id="mixed key types"),
        pytest.param("c", "k", {"v": "\ud800"}, 1, "not valid Unicode", id="lone surrogate"),
        pytest.param("c", "\udcff", {}, 1, "not valid Unicode", id="surrogate in key"),
        pytest.param("c", "k", {}, -1, "updatedAt", id="negative time"),
        pytest.param("c", "k", {}, 1.5, "updatedAt", id="fractional time"),
        pytest.param("c", "k", {}, True, "updatedAt", id="boolean time"),
        pytest.param("c", "k", {}, 2**63, "from 0 to 2\\*\\*63 - 1", id="time beyond 64 bits"),
    ],
)
def test_invalid_items_are_refused_with_a_message_naming_them(
    store, collection, key, data, updated_at, message
):
    with pytest.raises(InvalidItemError, match=message) as caught:
        store.put(collection, key, data, updated_at=updated_at)
    assert str(caught.value).startswith("item ")
    assert store.count(include_deleted=True) == 0


def test_a_self_referencing_dict_is_refused(store):
    data: dict = {}
    data["me"] = data
    with pytest.raises(InvalidItemError, match="encoded as JSON"):
        store.put("c", "k", data)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        pytest.param({"collection": "c", "key": "k"}, "missing fields", id="no data"),
        pytest.param(
            {"collection": "c", "key": "k", "data": {}, "updated_at": 1},
            "unknown fields",
            id="snake_case field",
        ),
        pytest.param(
            {"collection": "c", "key": "k", "data": {}, "deleted": 1}, "deleted", id="deleted 1"
        ),
        pytest.param(["c", "k", {}], "must be a dict", id="a list"),
    ],
)
def test_put_many_refuses_malformed_wire_items(store, item, message):
    with pytest.raises(InvalidItemError, match=message):
        store.put_many([item])


def test_replace_if_unchanged_only_replaces_items_the_app_left_alone(store):
    untouched = store.put("c", "a", {"v": 1}, updated_at=1)
    edited = store.put("c", "b", {"v": 1}, updated_at=1)
    deleted = store.put("c", "c", {"v": 1}, updated_at=1)
    store.put("c", "b", {"v": "edited after the snapshot"}, updated_at=5)
    store.delete("c", "c", updated_at=5)

    def resolved(item):
        return dict(item, data={"v": "server"}, updatedAt=3)

    replaced = store.replace_if_unchanged(
        [(untouched, resolved(untouched)), (edited, resolved(edited)), (deleted, resolved(deleted))]
    )
    assert replaced == 1
    assert store.get("c", "a") == resolved(untouched)
    assert store.get("c", "b")["data"] == {"v": "edited after the snapshot"}
    assert store.get("c", "c")["deleted"] is True


def test_replace_if_unchanged_compares_canonical_content_not_key_order(store):
    stored = store.put("c", "k", {"a": 1, "b": 2}, updated_at=1)
    expected = dict(stored, data={"b": 2, "a": 1})
    assert store.replace_if_unchanged([(expected, dict(stored, deleted=True, data={}))]) == 1
    assert store.get("c", "k")["deleted"] is True


def test_replace_if_unchanged_refuses_a_pair_naming_two_items_and_writes_nothing(store):
    a = store.put("c", "a", {"v": 1}, updated_at=1)
    b = store.put("c", "b", {"v": 1}, updated_at=1)
    with pytest.raises(InvalidItemError, match="same collection and key"):
        store.replace_if_unchanged([(a, dict(a, data={"v": 2})), (a, b)])
    assert store.get("c", "a")["data"] == {"v": 1}


def test_mark_migrated_records_the_migration(store):
    assert store.migration_state() is None
    before = time.time_ns() // 1_000_000
    store.mark_migrated(migration_id="mig-1", session_id="s-1", cloud_checksum="f" * 64)
    state = store.migration_state()
    assert isinstance(state, MigrationState)
    assert (state.migration_id, state.session_id, state.cloud_checksum) == (
        "mig-1",
        "s-1",
        "f" * 64,
    )
    assert state.migrated_at >= before


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(
            {"migration_id": "", "session_id": "s", "cloud_checksum": "f" * 64}, id="empty id"
        ),
        pytest.param(
            {"migration_id": "m", "session_id": "s", "cloud_checksum": "F" * 64},
            id="uppercase checksum",
        ),
        pytest.param(
            {"migration_id": "m", "session_id": "s", "cloud_checksum": "f"}, id="short checksum"
        ),
    ],
)
def test_mark_migrated_refuses_bad_arguments(store, kwargs):
    with pytest.raises(ConfigurationError):
        store.mark_migrated(**kwargs)
    assert store.migration_state() is None


def test_open_finds_the_store_in_the_platform_data_folder(tmp_path, monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("XDG_DATA_HOME steers platformdirs on Linux only")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    expected = tmp_path / "flashcards" / "store.sqlite3"
    assert default_store_path("flashcards") == expected
    with LocalStore.open(app_name="flashcards") as store:
        assert store.path == expected
    assert expected.is_file()


def test_the_default_path_is_in_the_platform_data_folder_of_the_app():
    folder = Path(platformdirs.user_data_dir("demo-app", appauthor=False))
    assert default_store_path("demo-app") == folder / "store.sqlite3"


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="neither app_name nor path"),
        pytest.param({"app_name": ""}, id="empty app name"),
        pytest.param({"app_name": "../escape"}, id="app name with a separator"),
    ],
)
def test_open_refuses_bad_arguments(kwargs):
    with pytest.raises(ConfigurationError):
        LocalStore.open(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"data_version": 99}, id="unsupported data version"),
        pytest.param({"busy_timeout": -1}, id="negative busy timeout"),
        pytest.param({"busy_timeout": "5"}, id="busy timeout as text"),
    ],
)
def test_the_constructor_refuses_bad_arguments_before_touching_the_disk(tmp_path, kwargs):
    with pytest.raises(ConfigurationError):
        LocalStore(tmp_path / "s.sqlite3", **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", [5, None, "", b"store.sqlite3"], ids=repr)
def test_a_path_that_is_not_a_path_is_a_configuration_error(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=r"^path must be the store's file \(a str or"):
        LocalStore(path)
    with pytest.raises(ConfigurationError, match=r"^path must be the store's file"):
        detect_local(path)
    if path is not None:  # None: the client asks for store_path= or app_name=
        with pytest.raises(ConfigurationError, match=r"^store_path must be the store's file"):
            MigrationClient(server="http://127.0.0.1:9", user_id="u", token="t", store_path=path)
    assert list(tmp_path.iterdir()) == []


def test_create_false_refuses_a_missing_store(tmp_path):
    with pytest.raises(StoreNotFoundError, match="create=True"):
        LocalStore(tmp_path / "s.sqlite3", create=False)
    assert not (tmp_path / "s.sqlite3").exists()


def test_a_zero_byte_file_is_initialised_as_a_new_store(tmp_path):
    # What a crash between creating the file and the first commit leaves behind.
    path = tmp_path / "s.sqlite3"
    path.touch()
    with LocalStore(path) as store:
        store.put("c", "k", {})
        assert store.count() == 1


def _other_app(path):
    conn = raw(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.close()


def _too_new(path):
    with LocalStore(path) as store:
        store.put("c", "k", {})
    conn = raw(path)
    conn.execute("UPDATE store_meta SET value = '99' WHERE key = 'data_version'")
    conn.close()


def _newer_schema(path):
    LocalStore(path).close()
    conn = raw(path)
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
        " VALUES (?, '0003_from_the_future', '2030-01-01')",
        (MIGRATION_SET,),
    )
    conn.close()


def _no_meta(path):
    conn = raw(path)
    conn.execute(f"PRAGMA application_id = {STORE_APPLICATION_ID}")
    conn.execute("CREATE TABLE t (x)")
    conn.close()


def _garbage(path):
    path.write_bytes(b"this is not a database, just some text\n" * 20)


def _truncated(path):
    with LocalStore(path) as store:
        store.put_many(
            {"collection": "c", "key": str(i), "data": {"x": "y" * 100}} for i in range(300)
        )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("make", "error"),
    [
        pytest.param(_garbage, ForeignStoreError, id="not SQLite"),
        pytest.param(_other_app, ForeignStoreError, id="another app's database"),
        pytest.param(_no_meta, CorruptStoreError, id="ours without meta"),
        pytest.param(_truncated, CorruptStoreError, id="truncated"),
        pytest.param(_too_new, UnsupportedDataVersionError, id="data version 99"),
        pytest.param(_newer_schema, UnsupportedDataVersionError, id="newer schema step"),
    ],
)
def test_a_file_that_is_not_a_usable_store_is_refused_and_left_untouched(tmp_path, make, error):
    path = tmp_path / "s.sqlite3"
    make(path)
    before = path.read_bytes()
    with pytest.raises(error) as caught:
        LocalStore(path)
    assert caught.value.path == str(path)
    assert path.read_bytes() == before


def test_schema_steps_are_recorded_once_with_sqlite_utils_migrations(tmp_path):
    path = tmp_path / "s.sqlite3"
    LocalStore(path).close()
    LocalStore(path).close()
    conn = raw(path)
    try:
        rows = conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY id",
            (MIGRATION_SET,),
        ).fetchall()
    finally:
        conn.close()
    assert [name for (name,) in rows] == list(SCHEMA_STEPS)


def test_a_store_with_an_older_schema_is_upgraded_when_opened(tmp_path):
    path = tmp_path / "s.sqlite3"
    conn = raw(path)
    conn.execute(f"PRAGMA application_id = {STORE_APPLICATION_ID}")
    db = Database(conn, execute_plugins=False)
    MIGRATIONS.apply(db, stop_before="0002_items")
    conn.executemany(
        "INSERT INTO store_meta VALUES (?, ?)",
        [("format", STORE_FORMAT), ("data_version", "1"), ("device_id", "d" * 32)],
    )
    db.close()
    with LocalStore(path) as store:
        assert store.device_id == "d" * 32
        store.put("c", "k", {"v": 1})
        assert store.count() == 1
    conn = raw(path)
    try:
        assert [n for (n,) in conn.execute("SELECT name FROM _sqlite_migrations")] == list(
            SCHEMA_STEPS
        )
    finally:
        conn.close()


def test_one_store_object_can_be_shared_between_threads(store):
    errors = []

    def write(worker):
        try:
            for i in range(100):
                store.put(f"w{worker}", str(i), {"i": i})
                assert store.get(f"w{worker}", str(i))["data"] == {"i": i}
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.counts() == {f"w{n}": 100 for n in range(4)}


def test_two_stores_on_one_file_write_at_the_same_time(tmp_path):
    path = tmp_path / "s.sqlite3"
    LocalStore(path).close()
    start = threading.Barrier(2)
    errors = []

    def write(name):
        try:
            with LocalStore(path) as mine:
                start.wait()
                for i in range(150):
                    mine.put(name, str(i), {"i": i})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with LocalStore(path) as store:
        assert store.counts() == {"left": 150, "right": 150}


def test_another_process_writes_the_same_store_while_this_one_does(tmp_path):
    path = tmp_path / "s.sqlite3"
    script = (
        "import sys\n"
        "from sdk._store.local import LocalStore\n"
        "with LocalStore(sys.argv[1]) as s:\n"
        "    print('ready', flush=True)\n"
        "    sys.stdin.readline()\n"
        "    for i in range(200):\n"
        "        s.put('child', str(i), {'i': i})\n"
    )
    with LocalStore(path) as store:
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout.readline() == "ready\n"
            child.stdin.write("go\n")
            child.stdin.flush()
            for i in range(200):
                store.put("parent", str(i), {"i": i})
            assert child.wait(timeout=30) == 0
        finally:
            child.stdin.close()
            child.stdout.close()
            if child.poll() is None:  # pragma: no cover - only on failure
                child.kill()
                child.wait()
        assert store.counts() == {"child": 200, "parent": 200}


def test_a_writer_holding_the_lock_past_the_busy_timeout_gives_store_busy(tmp_path):
    path = tmp_path / "s.sqlite3"
    with LocalStore(path, busy_timeout=0.05) as store:
        other = raw(path)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreBusyError, match="locked") as caught:
                store.put("c", "k", {})
            assert caught.value.retryable
        finally:
            other.execute("ROLLBACK")
            other.close()
        store.put("c", "k", {})
        assert store.count() == 1


def test_a_closed_store_says_so(tmp_path):
    store = LocalStore(tmp_path / "s.sqlite3")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get("c", "k")
    with pytest.raises(StoreError, match="closed"):
        store.put("c", "k", {})
    assert "closed" in repr(store)


def test_stored_data_reads_back_exactly_as_json_gives_it(store):
    data = {"unicode": "日本語 ✓", "nested": [{"a": None}, True, 10**20, -0.5], "": ""}
    store.put("c", "k", data, updated_at=1)
    assert store.get("c", "k")["data"] == json.loads(json.dumps(data))


def test_the_docstring_examples_run():
    result = doctest.testmod(sdk._store.local)
    assert result.attempted > 10
    assert result.failed == 0
