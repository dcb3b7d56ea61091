import doctest
import os
import random
import sqlite3
from pathlib import Path

import pytest

import sdk._store.detect
from sdk._errors import CorruptStoreError, ForeignStoreError, UnsupportedDataVersionError
from sdk._store.detect import LocalDetection, LocalState, check_local, detect_local
from sdk._store.local import LocalStore
from sdk._store.schema import MIGRATION_SET, STORE_APPLICATION_ID


def raw(path):
    return sqlite3.connect(str(path), isolation_level=None)


def filled(path, n=300):
    """A store spread over several pages, closed so that everything is in the main file."""
    with LocalStore(path) as store:
        store.put_many(
            {"collection": f"c{i % 3}", "key": f"k{i:04d}", "data": {"x": "y" * 100}}
            for i in range(n)
        )
    return path


def items_leaf_pages(path):
    """Page numbers of the items table's leaf pages, read from its root (an interior page)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'items'").fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    finally:
        conn.close()
    data = path.read_bytes()
    page = data[(root - 1) * size : root * size]
    assert page[0] == 0x02, "expected an interior index page (the table is WITHOUT ROWID)"
    cells = int.from_bytes(page[3:5], "big")
    children = []
    for i in range(cells):
        offset = int.from_bytes(page[12 + 2 * i : 14 + 2 * i], "big")
        children.append(int.from_bytes(page[offset : offset + 4], "big"))
    children.append(int.from_bytes(page[8:12], "big"))
    return size, children


def damage_leaf(how):
    def make(path):
        filled(path)
        size, leaves = items_leaf_pages(path)
        start = (leaves[len(leaves) // 2] - 1) * size
        data = bytearray(path.read_bytes())
        how(data, start, size)
        path.write_bytes(bytes(data))

    return make


def truncated(keep):
    def make(path):
        filled(path)
        data = path.read_bytes()
        path.write_bytes(data[: keep(len(data))])

    return make


def empty_store(path):
    LocalStore(path).close()


def ready_store(path):
    with LocalStore(path) as store:
        store.put("cards", "c1", {"front": "hola"}, updated_at=1)
        store.put("cards", "c2", {"front": "adiós"}, updated_at=1)
        store.delete("cards", "c2", updated_at=2)
        store.put("scores", "s1", {"points": 7}, updated_at=1)


def migrated_store(path):
    ready_store(path)
    with LocalStore(path) as store:
        store.mark_migrated(migration_id="mig-1", session_id="s-1", cloud_checksum="a" * 64)


def zero_bytes(path):
    path.touch()


def random_bytes(path):
    path.write_bytes(random.Random(7).randbytes(8192))


def text_file(path):
    path.write_text("lessons,score\nl1,3\n")


def other_app(path):
    conn = raw(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('hi')")
    conn.close()


def plain_sqlite(path):
    conn = raw(path)
    conn.execute("CREATE TABLE items (collection, key, data)")
    conn.close()


def ours_without_meta(path):
    conn = raw(path)
    conn.execute(f"PRAGMA application_id = {STORE_APPLICATION_ID}")
    conn.execute("CREATE TABLE t (x)")
    conn.close()


def data_version(version):
    def make(path):
        ready_store(path)
        conn = raw(path)
        conn.execute("UPDATE store_meta SET value = ? WHERE key = 'data_version'", (str(version),))
        conn.close()

    return make


def newer_schema(path):
    ready_store(path)
    conn = raw(path)
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
        " VALUES (?, '0003_from_the_future', '2030-01-01')",
        (MIGRATION_SET,),
    )
    conn.close()


def set_bytes(offset, value):
    def how(data, start, size):
        data[start + offset : start + offset + len(value)] = value

    return how


def flip_page(data, start, size):
    data[start : start + size] = bytes(b ^ 0xFF for b in data[start : start + size])


STATES = [
    pytest.param(empty_store, LocalState.EMPTY, "holds no items", id="empty store"),
    pytest.param(ready_store, LocalState.READY, "ready to migrate", id="ready"),
    pytest.param(migrated_store, LocalState.MIGRATED, "already migrated", id="migrated"),
    pytest.param(zero_bytes, LocalState.FOREIGN, "empty file", id="zero bytes"),
    pytest.param(random_bytes, LocalState.FOREIGN, "not a SQLite database", id="random bytes"),
    pytest.param(text_file, LocalState.FOREIGN, "not a SQLite database", id="text file"),
    pytest.param(
        other_app, LocalState.FOREIGN, "another application's database", id="other app's db"
    ),
    pytest.param(
        plain_sqlite, LocalState.FOREIGN, "another application's database", id="no app id"
    ),
    pytest.param(ours_without_meta, LocalState.CORRUPT, "store_meta", id="ours without meta"),
    pytest.param(
        damage_leaf(set_bytes(0, b"\xff")), LocalState.CORRUPT, "malformed", id="leaf page type"
    ),
    pytest.param(
        damage_leaf(set_bytes(3, b"\xff\xff")),
        LocalState.CORRUPT,
        "malformed",
        id="leaf cell count",
    ),
    pytest.param(
        damage_leaf(set_bytes(8, b"\xff\xff")),
        LocalState.CORRUPT,
        "malformed",
        id="leaf cell pointer",
    ),
    pytest.param(damage_leaf(flip_page), LocalState.CORRUPT, "malformed", id="leaf all flipped"),
    pytest.param(truncated(lambda n: 50), LocalState.CORRUPT, "truncated", id="cut at 50 bytes"),
    pytest.param(truncated(lambda n: 100), LocalState.CORRUPT, "damaged", id="cut at 100 bytes"),
    pytest.param(truncated(lambda n: 4096), LocalState.CORRUPT, "damaged", id="cut at one page"),
    pytest.param(truncated(lambda n: n // 2), LocalState.CORRUPT, "damaged", id="cut in half"),
    pytest.param(
        truncated(lambda n: n - 4096), LocalState.CORRUPT, "damaged", id="last page cut off"
    ),
    pytest.param(
        data_version(99), LocalState.UNSUPPORTED_VERSION, "update the app", id="data version 99"
    ),
    pytest.param(
        data_version(0), LocalState.UNSUPPORTED_VERSION, "older than", id="data version 0"
    ),
    pytest.param(
        newer_schema, LocalState.UNSUPPORTED_VERSION, "0003_from_the_future", id="newer schema"
    ),
]


@pytest.mark.parametrize(("make", "state", "reason"), STATES)
def test_detection_classifies_what_it_finds_and_leaves_the_file_as_it_was(
    tmp_path, make, state, reason
):
    path = tmp_path / "store.sqlite3"
    make(path)
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    found = detect_local(path)
    assert (found.state, found.path) == (state, path)
    assert reason in found.reason
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before
    # A reader may need -wal/-shm beside a WAL database, but must add no content to it.
    wal = tmp_path / "store.sqlite3-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_nothing_at_the_path_is_no_store_and_stays_nothing(tmp_path):
    found = detect_local(tmp_path / "store.sqlite3")
    assert found.state is LocalState.NO_STORE
    assert "nothing to migrate" in found.reason
    assert (found.item_count, found.size_bytes, found.counts) == (0, 0, {})
    assert list(tmp_path.iterdir()) == []


def test_a_directory_at_the_path_is_foreign(tmp_path):
    found = detect_local(tmp_path)
    assert found.state is LocalState.FOREIGN
    assert "not a file" in found.reason


def test_a_ready_store_reports_counts_tombstones_and_identity(tmp_path):
    path = tmp_path / "store.sqlite3"
    ready_store(path)
    with LocalStore(path) as store:
        device_id = store.device_id
    found = detect_local(path)
    assert found.counts == {"cards": 2, "scores": 1}
    assert (found.item_count, found.tombstones) == (3, 1)
    assert (found.data_version, found.device_id) == (1, device_id)
    assert found.size_bytes == path.stat().st_size > 0
    assert found.migration is None
    assert found.has_data


def test_a_migrated_store_reports_its_migration(tmp_path):
    path = tmp_path / "store.sqlite3"
    migrated_store(path)
    found = detect_local(path)
    assert found.migration is not None
    assert (found.migration.migration_id, found.migration.session_id) == ("mig-1", "s-1")
    assert found.migration.cloud_checksum == "a" * 64
    assert found.item_count == 3
    assert not found.has_data


def test_the_foreign_cases_have_distinct_reasons(tmp_path):
    reasons = set()
    for make in (zero_bytes, random_bytes, other_app):
        path = tmp_path / f"{make.__name__}.sqlite3"
        make(path)
        reasons.add(detect_local(path).reason.split(" (")[1].split(")")[0])
    assert reasons == {"empty file", "not a SQLite database", "another application's database"}


def test_detection_sees_commits_that_are_still_only_in_the_wal(tmp_path):
    path = tmp_path / "store.sqlite3"
    ready_store(path)
    writer = raw(path)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute(
            "INSERT INTO items (collection, key, data, updated_at, deleted)"
            " VALUES ('wal_only', 'k', '{}', 1, 0), ('wal_only', 'j', '{}', 1, 1)"
        )
        wal = Path(f"{path}-wal")
        assert wal.stat().st_size > 0
        found = detect_local(path)
        assert found.counts["wal_only"] == 2
        assert found.tombstones == 2
        assert found.size_bytes == path.stat().st_size + wal.stat().st_size
    finally:
        writer.close()


def test_detection_does_not_create_any_table_in_another_apps_database(tmp_path):
    path = tmp_path / "other.sqlite3"
    other_app(path)
    detect_local(path)
    conn = raw(path)
    try:
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert names == {"notes"}


@pytest.mark.parametrize(
    ("state", "error"),
    [
        pytest.param(LocalState.FOREIGN, ForeignStoreError, id="foreign"),
        pytest.param(LocalState.CORRUPT, CorruptStoreError, id="corrupt"),
        pytest.param(LocalState.UNSUPPORTED_VERSION, UnsupportedDataVersionError, id="too new"),
    ],
)
def test_bad_states_raise_their_typed_error_with_the_reason(state, error):
    detection = LocalDetection(state, Path("/data/store.sqlite3"), "what was found; what to do")
    with pytest.raises(error, match="what was found; what to do") as caught:
        check_local(detection)
    assert caught.value.path == str(Path("/data/store.sqlite3"))
    with pytest.raises(error):
        detection.raise_for_state()


@pytest.mark.parametrize(
    "state",
    [LocalState.NO_STORE, LocalState.EMPTY, LocalState.READY, LocalState.MIGRATED],
    ids=lambda s: s.value,
)
def test_good_states_pass_the_check(state):
    detection = LocalDetection(state, Path("s"), "fine")
    assert check_local(detection) is detection


def test_a_real_corrupt_store_fails_the_check_with_corrupt_store_error(tmp_path):
    path = tmp_path / "store.sqlite3"
    damage_leaf(set_bytes(0, b"\xff"))(path)
    with pytest.raises(CorruptStoreError, match="malformed"):
        check_local(detect_local(path))


def test_the_docstring_examples_run():
    result = doctest.testmod(sdk._store.detect)
    assert result.attempted > 5
    assert result.failed == 0
