import doctest
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

import sdk._store.snapshot
from sdk._errors import (
    ConfigurationError,
    CorruptStoreError,
    ForeignStoreError,
    SnapshotError,
    StoreNotFoundError,
    UnsupportedDataVersionError,
)
from sdk._store.local import LocalStore
from sdk._store.snapshot import PreparedBatch, Snapshot, open_snapshot, take_snapshot
from sdk._wire.models import Manifest  # what the SDK builds
from sdk.contract import (
    batch_body,
    batch_checksum,
    canonical_item,
    dataset_checksum_of,
)

MB = 1 << 20


def raw(path):
    return sqlite3.connect(str(path), isolation_level=None)


def fill(path, n=400):
    """Items of varied sizes in three collections, with unicode and tombstones."""
    with LocalStore(path) as store:
        store.put_many(
            {
                "collection": ("cards", "scores", "prefs.v2")[i % 3],
                "key": f"key-{i:05d}-{'é' * (i % 4)}",
                "data": {"i": i, "text": "x" * (i % 97), "nested": {"ok": i % 2 == 0}},
                "updatedAt": 1_700_000_000_000 + i,
            }
            for i in range(n)
        )
        for i in range(0, n, 10):
            store.delete(("cards", "scores", "prefs.v2")[i % 3], f"key-{i:05d}-{'é' * (i % 4)}")
        return list(store.iter_items())


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "store.sqlite3"
    fill(path)
    return path


@pytest.fixture
def items(store_path):
    with LocalStore(store_path) as store:
        return list(store.iter_items())


def snap(store_path, dest, *, batch_size=50, max_batch_bytes=MB, name=None):
    return take_snapshot(
        store_path, dest, batch_size=batch_size, max_batch_bytes=max_batch_bytes, name=name
    )


def batch_items(snapshot, seqs=None):
    return [
        item for batch in snapshot.iter_batches(seqs) for item in json.loads(batch.body)["items"]
    ]


def test_the_snapshot_holds_every_item_and_the_contracts_checksum(store_path, items, tmp_path):
    with snap(store_path, tmp_path / "snaps", name="s1") as snapshot:
        assert snapshot.path == tmp_path / "snaps" / "s1.sqlite3"
        assert snapshot.item_count == len(items) == 400
        assert snapshot.dataset_checksum == dataset_checksum_of(items)
        assert snapshot.collections == {"cards": 134, "prefs.v2": 133, "scores": 133}
        assert snapshot.batch_count == 8
        assert snapshot.manifest() == Manifest(
            item_count=400,
            collections={"cards": 134, "prefs.v2": 133, "scores": 133},
            batch_size=50,
            batch_count=8,
            dataset_checksum=dataset_checksum_of(items),
        )
    with LocalStore(store_path) as store:
        assert (snapshot.device_id, snapshot.data_version) == (store.device_id, 1)
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["s1.sqlite3"]


def test_batch_bodies_reparse_to_exactly_the_stores_items_in_order(store_path, items, tmp_path):
    with snap(store_path, tmp_path, batch_size=37) as snapshot:
        batches = list(snapshot.iter_batches())
        assert [b.seq for b in batches] == list(range(snapshot.batch_count))
        for batch in batches:
            assert isinstance(batch, PreparedBatch)
            assert batch.checksum == hashlib.sha256(batch.body).hexdigest()
            assert batch.item_count == len(json.loads(batch.body)["items"])
            parsed = json.loads(batch.body)["items"]
            assert batch.body == batch_body(canonical_item(i) for i in parsed)
        assert batch_items(snapshot) == items


def test_the_same_store_gives_the_same_plan_and_checksums(store_path, tmp_path):
    with snap(store_path, tmp_path, name="a") as a, snap(store_path, tmp_path, name="b") as b:
        assert a.batch_sizes() == b.batch_sizes()
        assert [x.checksum for x in a.iter_batches()] == [x.checksum for x in b.iter_batches()]
        assert a.dataset_checksum == b.dataset_checksum
        assert a.path != b.path


@pytest.mark.parametrize(
    ("batch_size", "max_batch_bytes"),
    [
        pytest.param(1, MB, id="one item per batch"),
        pytest.param(7, MB, id="seven items per batch"),
        pytest.param(1000, MB, id="everything in one batch"),
        pytest.param(1000, 2000, id="capped by bytes"),
        pytest.param(10, 1500, id="capped by both"),
        pytest.param(1000, 290, id="about one item per batch by bytes"),
    ],
)
def test_every_plan_respects_its_caps_greedily_and_keeps_the_dataset_checksum(
    store_path, items, tmp_path, batch_size, max_batch_bytes
):
    with snap(
        store_path, tmp_path, batch_size=batch_size, max_batch_bytes=max_batch_bytes
    ) as snapshot:
        assert snapshot.dataset_checksum == dataset_checksum_of(items)
        sizes = snapshot.batch_sizes()
        batches = list(snapshot.iter_batches())
        assert sum(n for _, n, _ in sizes) == len(items)
        for (seq, count, size), batch in zip(sizes, batches, strict=True):
            assert (seq, count, size) == (batch.seq, batch.item_count, len(batch.body))
            assert 1 <= count <= batch_size
            assert size <= max_batch_bytes
        # Greedy: a batch closed only because the next item would not have fitted.
        for (_, count, size), following in zip(sizes, batches[1:], strict=False):
            first = canonical_item(json.loads(following.body)["items"][0])
            assert count == batch_size or size + 1 + len(first) > max_batch_bytes
        assert batch_items(snapshot) == items


def test_an_item_too_large_for_any_batch_is_named(tmp_path):
    path = tmp_path / "store.sqlite3"
    with LocalStore(path) as store:
        store.put("cards", "small", {}, updated_at=1)
        store.put("cards", "huge", {"blob": "x" * 5000}, updated_at=1)
    with pytest.raises(SnapshotError, match=r"item 'cards'/'huge' is 50\d\d bytes"):
        snap(path, tmp_path / "snaps", max_batch_bytes=4096)
    assert list((tmp_path / "snaps").iterdir()) == []


@pytest.mark.parametrize("trust", [False, True], ids=["checked", "trusted"])
def test_an_item_larger_than_the_byte_budget_travels_alone_within_the_hard_limit(tmp_path, trust):
    path = tmp_path / "store.sqlite3"
    with LocalStore(path) as store:
        for key in ("a", "b", "d", "e", "f"):
            store.put("cards", key, {"n": key}, updated_at=1)
        store.put("cards", "c", {"blob": "x" * 5000}, updated_at=1)
        items = list(store.iter_items())
    with take_snapshot(
        path,
        tmp_path / "snaps",
        batch_size=10,
        max_batch_bytes=MB,
        batch_bytes=4096,
        trust_digests=trust,
    ) as snapshot:
        sizes = snapshot.batch_sizes()
        assert [count for _, count, _ in sizes] == [2, 1, 3]
        assert sizes[1][2] > 5000 and all(size <= 4096 for _, _, size in (sizes[0], sizes[2]))
        assert batch_items(snapshot) == items
    with pytest.raises(ConfigurationError, match="batch_bytes must be an integer"):
        take_snapshot(path, tmp_path / "snaps", batch_size=10, max_batch_bytes=MB, batch_bytes=9)


def test_commits_still_only_in_the_wal_are_in_the_snapshot(store_path, items, tmp_path):
    writer = raw(store_path)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("BEGIN")
        for i in range(50):
            writer.execute(
                "INSERT INTO items (collection, key, data, updated_at, deleted)"
                " VALUES ('wal_only', ?, '{\"v\":1}', 5, 0)",
                (str(i),),
            )
        writer.execute("COMMIT")
        # The main file alone does not have them: they live in the -wal file only.
        alone = tmp_path / "alone" / "store.sqlite3"
        alone.parent.mkdir()
        shutil.copyfile(store_path, alone)
        conn = raw(alone)
        try:
            assert conn.execute(
                "SELECT count(*) FROM items WHERE collection = 'wal_only'"
            ).fetchone() == (0,)
        finally:
            conn.close()
        with snap(store_path, tmp_path / "snaps") as snapshot:
            assert snapshot.collections["wal_only"] == 50
            assert snapshot.item_count == len(items) + 50
            in_snapshot = batch_items(snapshot)
    finally:
        writer.close()
    assert [i["key"] for i in in_snapshot if i["collection"] == "wal_only"] == sorted(
        str(i) for i in range(50)
    )


def test_a_snapshot_taken_while_the_app_writes_is_one_point_in_time(tmp_path):
    path = tmp_path / "store.sqlite3"
    fill(path, n=6000)  # big enough that copying and planning take a while
    commits = 0
    started, stop = threading.Event(), threading.Event()
    errors = []

    def write_pairs():
        nonlocal commits
        try:
            with LocalStore(path) as store:
                while not stop.is_set():
                    # Both halves of a pair are committed in one transaction.
                    store.put_many(
                        {"collection": "pairs", "key": f"{commits:06d}-{half}", "data": {}}
                        for half in "ab"
                    )
                    commits += 1
                    if commits == 20:
                        started.set()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
            started.set()

    writer = threading.Thread(target=write_pairs)
    writer.start()
    overlapped = 0
    try:
        assert started.wait(timeout=30)
        for attempt in range(5):
            before = commits
            with snap(path, tmp_path / "snaps", name=f"s{attempt}") as snapshot:
                after = commits
                pairs = [i["key"] for i in batch_items(snapshot) if i["collection"] == "pairs"]
            numbers = sorted({key.split("-")[0] for key in pairs})
            assert pairs == [f"{n}-{half}" for n in numbers for half in "ab"], "half a pair"
            assert numbers == [f"{n:06d}" for n in range(len(numbers))], "not a prefix"
            assert before <= len(numbers) <= after
            overlapped += after > before
            if overlapped:
                break
    finally:
        stop.set()
        writer.join()
    assert errors == []
    assert overlapped, "the writer never committed while a snapshot was being taken"


def _insert(path, *rows):
    conn = raw(path)
    conn.execute("PRAGMA ignore_check_constraints = ON")
    conn.executemany(
        "INSERT INTO items (collection, key, data, updated_at, deleted) VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    conn.close()


def _insert_sql(path, sql):
    conn = raw(path)
    conn.execute(sql)
    conn.close()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        pytest.param(("c", "k", "not json", 1, 0), "not valid JSON", id="not JSON"),
        pytest.param(("c", "k", "[1, 2]", 1, 0), "not a JSON object", id="JSON array"),
        pytest.param(("c", "k", '{"v": NaN}', 1, 0), "encoded canonically", id="NaN"),
        pytest.param(("c", "k", "[" * 100_000 + "]" * 100_000, 1, 0), "JSON", id="too deep"),
        pytest.param(("c", "k", b"{}", 1, 0), "not a JSON object", id="data as a blob"),
        pytest.param(("c", "k", "{}", -5, 0), "updated_at", id="negative time"),
        pytest.param(("c", "k", "{}", "soon", 0), "updated_at", id="time as text"),
        pytest.param(("c", "k", "{}", 1.5, 0), "updated_at", id="fractional time"),
        pytest.param(("c", "k", "{}", 1, 2), "deleted must be 0 or 1", id="deleted 2"),
        pytest.param(("bad name", "k", "{}", 1, 0), "invalid collection", id="collection"),
        pytest.param(("c", "k\n", "{}", 1, 0), "invalid key", id="key with newline"),
        pytest.param(("c", "", "{}", 1, 0), "invalid key", id="empty key"),
    ],
)
def test_an_invalid_item_fails_the_snapshot_naming_it(store_path, tmp_path, row, message):
    _insert(store_path, row)
    with pytest.raises(SnapshotError, match=message) as caught:
        snap(store_path, tmp_path / "snaps")
    assert repr(row[0]) in str(caught.value)
    assert "then take the snapshot again" in str(caught.value)
    assert list((tmp_path / "snaps").iterdir()) == []


def test_text_that_is_not_utf8_fails_the_snapshot_naming_the_item(store_path, tmp_path):
    _insert_sql(
        store_path,
        "INSERT INTO items (collection, key, data, updated_at, deleted)"
        " VALUES ('c', 'bad-bytes', CAST(x'7b2276223a22ff227d' AS TEXT), 1, 0)",
    )
    with pytest.raises(SnapshotError, match="'c'/'bad-bytes': holds text that is not valid UTF-8"):
        snap(store_path, tmp_path)


def test_many_invalid_items_are_counted_and_the_first_ones_named(store_path, tmp_path):
    _insert(store_path, *[("c", f"bad{i}", "[]", 1, 0) for i in range(7)])
    with pytest.raises(SnapshotError, match=r"^7 item") as caught:
        snap(store_path, tmp_path)
    message = str(caught.value)
    assert [f"'bad{i}'" in message for i in range(7)] == [True] * 5 + [False] * 2


def test_a_damaged_store_gives_corrupt_store_error_and_leaves_no_file(store_path, tmp_path):
    conn = raw(store_path)
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'items'").fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    data = bytearray(store_path.read_bytes())
    data[(root - 1) * size] = 0xFF  # the items table's root page is no b-tree page any more
    store_path.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError) as caught:
        snap(store_path, tmp_path / "snaps")
    assert caught.value.path == str(store_path)
    assert list((tmp_path / "snaps").iterdir()) == []


def test_a_store_damaged_where_detection_does_not_look_fails_quick_check(store_path, tmp_path):
    # store_meta's key index is emptied; detection scans the table and never reads it.
    conn = raw(store_path)
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_store_meta_1'"
    ).fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    data = bytearray(store_path.read_bytes())
    data[(root - 1) * size : root * size] = bytes(size)
    store_path.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError):
        snap(store_path, tmp_path / "snaps")
    assert list((tmp_path / "snaps").iterdir()) == []


def test_what_is_not_a_usable_store_is_refused_with_its_typed_error(tmp_path):
    with pytest.raises(StoreNotFoundError):
        snap(tmp_path / "missing.sqlite3", tmp_path)
    foreign = tmp_path / "foreign.sqlite3"
    foreign.write_bytes(b"hello")
    with pytest.raises(ForeignStoreError):
        snap(foreign, tmp_path)
    newer = tmp_path / "newer.sqlite3"
    fill(newer, n=3)
    _insert_sql(newer, "UPDATE store_meta SET value = '99' WHERE key = 'data_version'")
    with pytest.raises(UnsupportedDataVersionError):
        snap(newer, tmp_path / "snaps")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"batch_size": 0}, "batch_size", id="batch size 0"),
        pytest.param({"batch_size": True}, "batch_size", id="batch size True"),
        pytest.param({"batch_size": 2.0}, "batch_size", id="batch size float"),
        pytest.param({"max_batch_bytes": 12}, "max_batch_bytes", id="no room for an item"),
        pytest.param({"max_batch_bytes": None}, "max_batch_bytes", id="no byte cap"),
        pytest.param({"name": "../escape"}, "name", id="name with a path"),
        pytest.param({"name": ".hidden"}, "name", id="hidden name"),
        pytest.param({"name": ""}, "name", id="empty name"),
    ],
)
def test_bad_arguments_are_configuration_errors(store_path, tmp_path, kwargs, message):
    arguments = {"batch_size": 10, "max_batch_bytes": MB, **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        take_snapshot(store_path, tmp_path / "snaps", **arguments)
    assert not (tmp_path / "snaps").exists()


def test_a_name_already_taken_is_refused_and_the_old_snapshot_kept(store_path, tmp_path):
    first = snap(store_path, tmp_path, name="same")
    before = first.path.read_bytes()
    with pytest.raises(ConfigurationError, match="already exists"):
        snap(store_path, tmp_path, name="same")
    assert first.path.read_bytes() == before


def test_a_partial_file_left_by_a_crash_is_replaced(store_path, items, tmp_path):
    (tmp_path / "s.partial").write_bytes(b"half a snapshot")
    with snap(store_path, tmp_path, name="s") as snapshot:
        assert snapshot.dataset_checksum == dataset_checksum_of(items)
    assert not (tmp_path / "s.partial").exists()


def test_a_full_disk_gives_snapshot_error_and_removes_the_partial_file(
    store_path, tmp_path, monkeypatch
):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SnapshotError, match=r"No space left on device.*free space"):
        snap(store_path, tmp_path / "snaps", name="s")
    assert list((tmp_path / "snaps").iterdir()) == []


def test_a_destination_that_is_a_file_gives_snapshot_error(store_path, tmp_path):
    (tmp_path / "dest").write_text("a file, not a folder")
    with pytest.raises(SnapshotError, match="writable"):
        snap(store_path, tmp_path / "dest")


def test_the_snapshot_file_is_a_plain_database_with_its_plan(store_path, tmp_path):
    with snap(store_path, tmp_path, name="s") as snapshot:
        conn = raw(snapshot.path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
            plan = conn.execute("SELECT seq, item_count FROM snapshot_batches").fetchall()
            (info,) = conn.execute("SELECT dataset_checksum, source_path FROM snapshot_info")
        finally:
            conn.close()
        assert plan == [(seq, n) for seq, n, _ in snapshot.batch_sizes()]
        assert info == (snapshot.dataset_checksum, str(store_path))


def test_a_snapshot_reopened_after_a_restart_is_the_same(store_path, tmp_path):
    with snap(store_path, tmp_path, batch_size=33, max_batch_bytes=3000, name="s") as taken:
        bodies = [b.body for b in taken.iter_batches()]
        manifest = taken.manifest()
        created_at = taken.created_at
    with open_snapshot(taken.path) as reopened:
        assert reopened.manifest() == manifest
        assert (reopened.max_batch_bytes, reopened.created_at) == (3000, created_at)
        assert reopened.source_path == str(store_path)
        assert [b.body for b in reopened.iter_batches()] == bodies


def _sqlite_without_info(path):
    conn = raw(path)
    conn.execute("CREATE TABLE t (x)")
    conn.close()


def _two_info_rows(path):
    conn = raw(path)
    conn.execute("INSERT INTO snapshot_info SELECT * FROM snapshot_info")
    conn.close()


def _plan_row_lost(path):
    conn = raw(path)
    conn.execute("DELETE FROM snapshot_batches WHERE seq = 0")
    conn.close()


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda p: p.unlink(), id="missing"),
        pytest.param(lambda p: p.write_bytes(b"garbage" * 100), id="not a database"),
        pytest.param(lambda p: (p.unlink(), _sqlite_without_info(p)), id="no snapshot_info"),
        pytest.param(_two_info_rows, id="two info rows"),
        pytest.param(_plan_row_lost, id="a plan row lost"),
    ],
)
def test_open_snapshot_refuses_what_is_not_a_whole_snapshot(store_path, tmp_path, spoil):
    path = snap(store_path, tmp_path, name="s").path
    spoil(path)
    with pytest.raises(SnapshotError, match="snapshot"):
        open_snapshot(path)


def test_open_snapshot_refuses_the_store_itself(store_path):
    with pytest.raises(SnapshotError, match="not a usable snapshot"):
        open_snapshot(store_path)


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param(
            "UPDATE items SET data = '{\"i\":1}' WHERE key = (SELECT min(key) FROM items)",
            id="an item's data changed",
        ),
        pytest.param(
            "UPDATE items SET updated_at = updated_at + 1 WHERE key = (SELECT min(key) FROM items)",
            id="an item's time changed",
        ),
        pytest.param(
            "DELETE FROM items WHERE key = (SELECT min(key) FROM items)", id="an item removed"
        ),
        pytest.param(
            "INSERT INTO items (collection, key, data, updated_at, deleted)"
            " VALUES ('cards', 'key-00000-x', '{}', 1, 0)",
            id="an item added",
        ),
        pytest.param(
            "UPDATE snapshot_batches SET checksum = replace(checksum, substr(checksum, 1, 1), 'x')"
            " WHERE seq = 0",
            id="a plan checksum changed",
        ),
        pytest.param(
            "UPDATE items SET data = '[1' WHERE key = (SELECT min(key) FROM items)",
            id="an item's data broken",
        ),
    ],
)
def test_a_tampered_snapshot_is_detected_batch_by_batch(store_path, tmp_path, sql):
    with snap(store_path, tmp_path, name="s") as snapshot:
        list(snapshot.iter_batches())
        _insert_sql(snapshot.path, sql)
        with pytest.raises(SnapshotError, match=r"batch 0 .* damaged or changed"):
            list(snapshot.iter_batches([0]))


def test_a_tampered_batch_does_not_spoil_the_others(store_path, tmp_path):
    with snap(store_path, tmp_path, name="s") as snapshot:
        _insert_sql(snapshot.path, "DELETE FROM items WHERE key = (SELECT min(key) FROM items)")
        assert [b.seq for b in snapshot.iter_batches(range(2, snapshot.batch_count))] == list(
            range(2, snapshot.batch_count)
        )


def test_iter_batches_gives_the_requested_batches_and_refuses_unknown_ones(store_path, tmp_path):
    with snap(store_path, tmp_path) as snapshot:
        everything = {b.seq: b for b in snapshot.iter_batches()}
        assert [b.seq for b in snapshot.iter_batches([5, 2])] == [5, 2]
        assert next(snapshot.iter_batches([3])) == everything[3]
        for bad in (-1, snapshot.batch_count, "1"):
            with pytest.raises(ConfigurationError, match="not in the plan"):
                list(snapshot.iter_batches([bad]))


def test_get_items_returns_the_snapshots_versions(store_path, items, tmp_path):
    with snap(store_path, tmp_path) as snapshot:
        with LocalStore(store_path) as store:
            store.put(items[0]["collection"], items[0]["key"], {"changed": "after"})
        wanted = [
            (items[0]["collection"], items[0]["key"]),
            (items[9]["collection"], items[9]["key"]),
        ]
        found = snapshot.get_items([*wanted, ("cards", "not-there")])
    assert found == {wanted[0]: items[0], wanted[1]: items[9]}


def test_dataset_checksum_with_overrides_matches_the_contract(store_path, items, tmp_path):
    resolved = [dict(items[3], data={"from": "server"}, updatedAt=9), dict(items[7], deleted=True)]
    overrides = {(i["collection"], i["key"]): i for i in resolved}
    expected = [overrides.get((i["collection"], i["key"]), i) for i in items]
    with snap(store_path, tmp_path) as snapshot:
        assert snapshot.dataset_checksum_with({}) == snapshot.dataset_checksum
        assert snapshot.dataset_checksum_with(overrides) == dataset_checksum_of(expected)
        assert snapshot.dataset_checksum_with(overrides) != snapshot.dataset_checksum


@pytest.mark.parametrize(
    ("key", "item", "message"),
    [
        pytest.param(
            ("cards", "new"),
            {"collection": "cards", "key": "new", "data": {}, "updatedAt": 1, "deleted": False},
            "not in the snapshot",
            id="unknown item",
        ),
        pytest.param(
            ("cards", "a"),
            {"collection": "cards", "key": "b", "data": {}, "updatedAt": 1, "deleted": False},
            "its own",
            id="keyed by another item",
        ),
    ],
)
def test_dataset_checksum_with_refuses_bad_overrides(store_path, tmp_path, key, item, message):
    with snap(store_path, tmp_path) as snapshot, pytest.raises(ConfigurationError, match=message):
        snapshot.dataset_checksum_with({key: item})


def test_an_empty_store_gives_an_empty_plan(tmp_path):
    LocalStore(tmp_path / "store.sqlite3").close()
    with snap(tmp_path / "store.sqlite3", tmp_path) as snapshot:
        assert (snapshot.item_count, snapshot.batch_count, snapshot.collections) == (0, 0, {})
        assert snapshot.dataset_checksum == hashlib.sha256(b"").hexdigest()
        assert list(snapshot.iter_batches()) == []
        assert snapshot.batch_sizes() == []


def test_threads_can_read_batches_and_metadata_at_the_same_time(store_path, tmp_path):
    with snap(store_path, tmp_path, batch_size=10) as snapshot:
        expected = [b.checksum for b in snapshot.iter_batches()]
        results = {}

        def read(name):
            results[name] = [
                (b.checksum, snapshot.item_count, snapshot.manifest().batch_count)
                for b in snapshot.iter_batches()
            ]

        threads = [threading.Thread(target=read, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(
        [c for c, _, _ in rows] == expected and {(n, b) for _, n, b in rows} == {(400, 40)}
        for rows in results.values()
    )
    assert len(results) == 4


def test_delete_removes_the_file_and_later_reads_say_it_is_gone(store_path, tmp_path):
    snapshot = snap(store_path, tmp_path, name="s")
    list(snapshot.iter_batches([0]))
    snapshot.delete()
    assert not snapshot.path.exists()
    with pytest.raises(SnapshotError, match="gone"):
        list(snapshot.iter_batches([0]))
    snapshot.delete()  # twice is fine


def test_a_snapshot_object_describes_itself(store_path, tmp_path):
    with snap(store_path, tmp_path, name="s") as snapshot:
        assert isinstance(snapshot, Snapshot)
        assert "items=400" in repr(snapshot)
        assert snapshot.batch_size == 50
        assert (
            batch_checksum(next(snapshot.iter_batches()).body)
            == next(snapshot.iter_batches()).checksum
        )


def test_the_docstring_examples_run():
    result = doctest.testmod(sdk._store.snapshot)
    assert result.attempted > 10
    assert result.failed == 0


def test_the_snapshot_file_never_appears_half_written(store_path, tmp_path, monkeypatch):
    # The final name appears only through the rename, after the file was complete.
    seen = []
    real_replace = os.replace

    def watching_replace(src, dst):
        seen.append((Path(src).name, Path(dst).name, Path(dst).exists()))
        with open_snapshot_copy(src) as complete:
            seen.append(complete.item_count)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    snap(store_path, tmp_path, name="s").close()
    assert seen == [("s.partial", "s.sqlite3", False), 400]


def open_snapshot_copy(src):
    copy = Path(str(src) + ".check.sqlite3")
    shutil.copyfile(src, copy)
    return open_snapshot(copy)
