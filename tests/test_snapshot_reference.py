"""The snapshot's output (dataset checksum, batch plan, batch bodies, named invalid rows)
against a straightforward reference computed from the store's rows with the stdlib alone,
on stores whose rows come every way a row can: the SDK's writes, writes around it (raw
SQL, repaired or not, some with a digest column set by hand), a legacy import, a store
of the schema before ``items_unchecked`` (upgraded or not), tombstones, non-ASCII keys
and keys that need escaping. The snapshot takes shortcuts for rows the store vouches for
(no parse, no re-encoding); the reference takes none."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlite_utils import Database

from sdk import CorruptStoreError, LegacyTable, LocalStore, SnapshotError, import_legacy
from sdk._store import changes
from sdk._store import snapshot as snapshot_module
from sdk._store.rowcheck import check_store
from sdk._store.schema import MIGRATIONS, STORE_APPLICATION_ID, STORE_FORMAT
from sdk._store.snapshot import Snapshot, open_snapshot, take_snapshot
from sdk.contract import batch_body

#: (batch_size, max_batch_bytes, batch_bytes). The byte budget: below the hard limit
#: (items larger than it pass alone), above it (the limit caps it), and near the bytes of
#: ``batch_size`` items, so that batches close at either.
SIZES = [
    (7, 1 << 20, None),
    (1000, 700, None),
    (50, 4096, None),
    (1000, 1 << 20, 600),
    (1000, 4096, 1 << 20),
    (5, 1 << 20, 700),
]


def reference(
    store: Path, batch_size: int, max_batch_bytes: int, batch_bytes: int | None = None
) -> dict[str, object]:
    """What the snapshot must give, computed the slow and obvious way: a batch closes
    before the next item would take it past ``batch_bytes`` (at most ``max_batch_bytes``)
    or ``batch_size``."""
    budget = min(batch_bytes or max_batch_bytes, max_batch_bytes)
    conn = sqlite3.connect(store)
    try:
        rows = conn.execute("SELECT collection, key, data, updated_at, deleted FROM items")
        encoded = sorted(((c, k), encode(c, k, d, u, x)) for c, k, d, u, x in rows)
    finally:
        conn.close()
    plan: list[tuple[int, str, str, int, int]] = []
    bodies: list[bytes] = []
    batch: list[tuple[tuple[str, str], bytes]] = []

    def close() -> None:
        body = batch_body(item for _, item in batch)
        plan.append((len(plan), *batch[0][0], len(batch), len(body)))
        bodies.append(body)
        batch.clear()

    for key, item in encoded:
        if batch and (
            len(batch) == batch_size or len(batch_body([i for _, i in batch] + [item])) > budget
        ):
            close()
        batch.append((key, item))
    if batch:
        close()
    dataset = hashlib.sha256(b"".join(hashlib.sha256(item).digest() for _, item in encoded))
    keys = [key for key, _ in encoded]
    return {"checksum": dataset.hexdigest(), "plan": plan, "bodies": bodies, "keys": keys}


def encode(collection: str, key: str, data: str, updated_at: int, deleted: int) -> bytes:
    """The canonical item of a row, the obvious way."""
    return json.dumps(
        {
            "collection": collection,
            "data": json.loads(data),
            "deleted": bool(deleted),
            "key": key,
            "updatedAt": updated_at,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


def taken(snapshot: Snapshot) -> dict[str, object]:
    plan = plan_of(snapshot)
    batches = list(snapshot.iter_batches())
    for batch in batches:
        assert batch.checksum == hashlib.sha256(batch.body).hexdigest()
    conn = sqlite3.connect(snapshot.path)
    try:
        keys = conn.execute("SELECT collection, key FROM items ORDER BY collection, key")
        keys = [tuple(row) for row in keys]
    finally:
        conn.close()
    return {
        "checksum": snapshot.dataset_checksum,
        "plan": plan,
        "bodies": [b.body for b in batches],
        "keys": keys,
    }


def assert_like_reference(store: Path, tmp_path: Path) -> None:
    """The snapshot gives the reference; so does the snapshot that takes the digests the
    store vouches for as they are, except that each batch holding a row unlike its
    digest fails when it is rebuilt to be sent, and only then."""
    untrue = vouched_rows_unlike_their_digest(store)
    for n, (batch_size, max_batch_bytes, batch_bytes) in enumerate(SIZES):
        expected = reference(store, batch_size, max_batch_bytes, batch_bytes)
        with take_snapshot(
            store,
            tmp_path / "snaps",
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            batch_bytes=batch_bytes,
            name=f"s{n}",
        ) as snapshot:
            assert not snapshot.trusts_store_digests
            assert taken(snapshot) == expected
        with take_snapshot(
            store,
            tmp_path / "snaps",
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            batch_bytes=batch_bytes,
            name=f"t{n}",
            trust_digests=True,
        ) as snapshot:
            assert snapshot.trusts_store_digests == vouches_for_any(store)
            assert plan_of(snapshot) == expected["plan"]  # sizes worked out, not encoded
            keys = sorted(expected["keys"])  # type: ignore[call-overload]
            for seq, _, _, count, _ in expected["plan"]:  # type: ignore[attr-defined]
                batch_keys, keys = set(keys[:count]), keys[count:]
                if batch_keys & untrue:
                    with pytest.raises(SnapshotError, match="does not match the plan"):
                        list(snapshot.iter_batches([seq]))
                else:
                    (batch,) = snapshot.iter_batches([seq])
                    assert batch.body == expected["bodies"][seq]  # type: ignore[index]
            assert (snapshot.dataset_checksum == expected["checksum"]) == (not untrue)


def plan_of(snapshot: Snapshot) -> list[tuple[int, str, str, int, int]]:
    conn = sqlite3.connect(snapshot.path)
    try:
        return conn.execute(
            "SELECT seq, first_collection, first_key, item_count, byte_count"
            " FROM snapshot_batches ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


def vouched(conn: sqlite3.Connection) -> list[tuple[str, str, str, int, int, bytes]]:
    """The rows the store vouches for: digested, not listed as unchecked, in a store that
    vouches for digests at all."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    if (
        "items_unchecked" not in tables
        or conn.execute("SELECT 1 FROM store_meta WHERE key = 'unvouched_rows'").fetchone()
    ):
        return []
    return conn.execute(
        "SELECT collection, key, data, updated_at, deleted, digest FROM items WHERE digest"
        " IS NOT NULL AND (collection, key) NOT IN (SELECT collection, key FROM items_unchecked)"
    ).fetchall()


def vouches_for_any(store: Path) -> bool:
    conn = sqlite3.connect(store)
    try:
        return bool(vouched(conn))
    finally:
        conn.close()


def vouched_rows_unlike_their_digest(store: Path) -> set[tuple[str, str]]:
    conn = sqlite3.connect(store)
    try:
        return {
            (c, k)
            for c, k, d, u, x, digest in vouched(conn)
            if hashlib.sha256(encode(c, k, d, u, x)).digest() != digest
        }
    finally:
        conn.close()


SUFFIXES = ("é", "ß", "日本", '"q"', "b\\s", "x")  # non-ASCII, and what JSON escapes


def sdk_key(prefix: str, i: int) -> str:
    return f"{prefix}key-{i:04d}-{SUFFIXES[i % 6] * (1 + i % 2)}"


def sdk_rows(store: LocalStore, prefix: str = "") -> None:
    store.put_many(
        {
            "collection": ("cards", "scores", "prefs.v2")[i % 3],
            "key": sdk_key(prefix, i),
            "data": {"i": i, "text": "ü" * (i % 11), "f": i / 7, "nested": {"b": [1, None]}},
            "updatedAt": 1_700_000_000_000 + i,
        }
        for i in range(120)
    )
    store.put("cards", "bytes", {"raw": b"\x00\xff", "small": 1e-05})
    for i in range(0, 120, 9):
        store.delete(("cards", "scores", "prefs.v2")[i % 3], sdk_key(prefix, i))


def raw_writes(path: Path) -> None:
    """Rows written around the SDK: non-canonical JSON, inserted and updated, a row
    deleted outright, and vouched-for rows whose data changed with the digest column
    set by hand (the triggers then do not fire)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executemany(
        "INSERT INTO items (collection, key, data, updated_at, deleted) VALUES (?, ?, ?, ?, ?)",
        [
            ("raw", "spaced", '{ "b" : 2, "a" : [1, 2] }', 5, 0),
            ("raw", "ünïcode-ключ", '{"z": "ü", "a": 1.50}', 6, 0),
            ("raw", "tomb", "{}", 7, 1),
            ("cards", "zz-raw", '{"n": 123456789012345678901234567890}', 8, 0),
        ],
    )
    conn.execute("UPDATE items SET data = '{\"x\" : 1}' WHERE key GLOB 'key-0001-*'")
    conn.execute("DELETE FROM items WHERE key GLOB 'key-0002-*'")
    # The digest column written too: the row stays vouched for, with a digest of other
    # content. The snapshot must notice, and read the row as it is.
    conn.execute(
        "UPDATE items SET data = '{\"y\":2}', digest = zeroblob(32) WHERE key GLOB 'key-0004-*'"
    )
    conn.execute(
        "UPDATE items SET data = '{\"y\" : 3}', digest = randomblob(32) WHERE key = 'key-0005-x'"
    )
    conn.close()


def repair(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    changes.repair(conn)
    conn.execute("COMMIT")
    conn.close()


def test_a_store_written_by_the_sdk_snapshots_like_the_reference(tmp_path):
    path = tmp_path / "store.sqlite3"
    with LocalStore(path) as store:
        sdk_rows(store)
    assert_like_reference(path, tmp_path)


def test_rows_written_around_the_sdk_snapshot_like_the_reference_before_and_after_repair(
    tmp_path,
):
    path = tmp_path / "store.sqlite3"
    with LocalStore(path) as store:
        sdk_rows(store)
    raw_writes(path)
    assert_like_reference(path, tmp_path / "before")
    repair(path)
    assert_like_reference(path, tmp_path / "after")


def test_a_legacy_import_mixed_with_sdk_writes_snapshots_like_the_reference(tmp_path):
    legacy = tmp_path / "old.db"
    conn = sqlite3.connect(legacy)
    conn.executescript(
        """CREATE TABLE lessons (id INTEGER PRIMARY KEY, title TEXT, score REAL, at INT);
        CREATE TABLE cards (front TEXT, deck TEXT, box INT, gone INT, PRIMARY KEY (deck, front));
        """
    )
    conn.executemany(
        "INSERT INTO lessons VALUES (?, ?, ?, ?)",
        [(i, f"Lección {i} «x»", i / 3, 1_700_000_000 + i) for i in range(40)],
    )
    conn.executemany(
        "INSERT INTO cards VALUES (?, ?, ?, ?)",
        [(f'wörd"{i}', ("es", "de")[i % 2], i % 5, int(i % 4 == 0)) for i in range(30)],
    )
    conn.commit()
    conn.close()
    path = tmp_path / "store.sqlite3"
    import_legacy(
        legacy,
        path,
        [
            LegacyTable(table="lessons", updated_at="at"),
            LegacyTable(table="cards", deleted="gone"),
        ],
        now=1_700_000_000_000,
    )
    with LocalStore(path) as store:
        sdk_rows(store, prefix="app-")
    raw_writes(path)
    assert_like_reference(path, tmp_path)


def old_store(path: Path) -> None:
    """A store of the schema step before ``items_unchecked``, as an earlier SDK left it:
    its repair gave digests to rows that are no valid item."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA application_id = {STORE_APPLICATION_ID}")
    MIGRATIONS.apply(Database(conn, execute_plugins=False), stop_before="0005_unchecked_rows")
    conn.executemany(
        "INSERT INTO store_meta VALUES (?, ?)",
        [("format", STORE_FORMAT), ("data_version", "1"), ("device_id", "d" * 32)],
    )
    rows = [
        ("cards", f"k{i}-ü", json.dumps({"i": i}, separators=(",", ":")), 10 + i, 0)
        for i in range(30)
    ]
    rows.append(("cards", "spaced", '{ "a" : 1 }', 3, 0))  # digested as it was, not canonical
    conn.executemany(
        "INSERT INTO items (collection, key, data, updated_at, deleted, digest)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(*row, changes.row_digest(*row)) for row in rows],
    )
    conn.close()


def test_a_store_of_the_previous_schema_snapshots_like_the_reference_before_and_after_upgrade(
    tmp_path,
):
    path = tmp_path / "store.sqlite3"
    old_store(path)
    assert_like_reference(path, tmp_path / "before")
    LocalStore(path).close()  # the upgrade vouches for none of the rows already there
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("SELECT value FROM store_meta WHERE key = 'unvouched_rows'").fetchone()
    assert_like_reference(path, tmp_path / "after")

    # Checked once (rebuild does it, after damage), the store vouches for the others.
    check_store(conn)
    assert conn.execute("SELECT collection, key FROM items_unchecked").fetchall() == [
        ("cards", "spaced")
    ]
    assert not conn.execute("SELECT 1 FROM store_meta WHERE key = 'unvouched_rows'").fetchone()
    conn.close()
    assert_like_reference(path, tmp_path / "checked")


def test_an_invalid_row_an_earlier_sdk_gave_a_digest_is_named_before_and_after_upgrade(
    tmp_path,
):
    path = tmp_path / "store.sqlite3"
    old_store(path)
    row = ("cards", "array", "[1,2]", 1, 0)  # what an earlier SDK's repair digested
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "INSERT INTO items (collection, key, data, updated_at, deleted, digest)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (*row, changes.row_digest(*row)),
    )
    conn.close()
    for turn in ("before", "after"):
        with pytest.raises(SnapshotError, match=r"'cards'/'array': data is not a JSON object"):
            take_snapshot(path, tmp_path / turn, batch_size=10, max_batch_bytes=1 << 20)
        LocalStore(path).close()  # the upgrade


def test_an_invalid_row_repaired_by_the_sdk_is_listed_as_unchecked_then_named(tmp_path):
    path = tmp_path / "store.sqlite3"
    with LocalStore(path) as store:
        sdk_rows(store)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "INSERT INTO items (collection, key, data, updated_at, deleted)"
        " VALUES ('cards', 'array', '[1, 2]', 1, 0)"
    )
    conn.close()
    repair(path)
    conn = sqlite3.connect(path)
    listed = conn.execute("SELECT collection, key FROM items_unchecked").fetchall()
    (digest,) = conn.execute("SELECT digest FROM items WHERE key = 'array'").fetchone()
    conn.close()
    assert listed == [("cards", "array")] and digest is not None
    with pytest.raises(SnapshotError, match=r"'cards'/'array': data is not a JSON object"):
        take_snapshot(path, tmp_path / "snaps", batch_size=10, max_batch_bytes=1 << 20)
    # Rewritten validly around the SDK and repaired again: vouched for once more.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE items SET data = '{}' WHERE key = 'array'")
    conn.close()
    repair(path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM items_unchecked").fetchone() == (0,)
    conn.close()
    assert_like_reference(path, tmp_path)


def test_a_snapshot_taken_by_an_earlier_sdk_is_still_verified_by_its_body_checksums(tmp_path):
    path = tmp_path / "store.sqlite3"
    with LocalStore(path) as store:
        sdk_rows(store)
    with take_snapshot(path, tmp_path, batch_size=10, max_batch_bytes=1 << 20, name="s") as s:
        bodies = [b.body for b in s.iter_batches()]
    # What an earlier SDK wrote: its own format name, and each body's SHA-256 in the plan.
    conn = sqlite3.connect(s.path, isolation_level=None)
    conn.execute("UPDATE snapshot_info SET format = 'offline-migrate-snapshot'")
    conn.executemany(
        "UPDATE snapshot_batches SET checksum = ? WHERE seq = ?",
        [(hashlib.sha256(body).hexdigest(), seq) for seq, body in enumerate(bodies)],
    )
    conn.close()
    with open_snapshot(s.path) as reopened:
        assert [b.body for b in reopened.iter_batches()] == bodies
    conn = sqlite3.connect(s.path, isolation_level=None)
    conn.execute("UPDATE items SET data = '{\"i\":-1}' WHERE key = (SELECT min(key) FROM items)")
    conn.close()
    damaged = r"batch 0 .*damaged"
    with open_snapshot(s.path) as reopened, pytest.raises(SnapshotError, match=damaged):
        list(reopened.iter_batches([0]))


def test_damage_quick_check_finds_is_named_before_the_invalid_items_the_scan_finds(tmp_path):
    # quick_check runs beside the scan now; its verdict must still come first.
    path = tmp_path / "store.sqlite3"
    with LocalStore(path) as store:
        sdk_rows(store)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "INSERT INTO items (collection, key, data, updated_at, deleted)"
        " VALUES ('cards', 'array', '[1]', 1, 0)"
    )
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_store_meta_1'"
    ).fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.execute("PRAGMA journal_mode=DELETE")  # everything in the main file
    conn.close()
    with pytest.raises(SnapshotError, match="'cards'/'array'"):
        take_snapshot(path, tmp_path / "a", batch_size=10, max_batch_bytes=1 << 20)
    data = bytearray(path.read_bytes())
    data[(root - 1) * size : root * size] = bytes(size)  # an index detection never reads
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="is damaged"):
        take_snapshot(path, tmp_path / "b", batch_size=10, max_batch_bytes=1 << 20)


def test_bytes_that_are_not_utf8_in_an_earlier_sdks_store_are_listed_when_checked_and_named(
    tmp_path,
):
    path = tmp_path / "store.sqlite3"
    old_store(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "INSERT INTO items (collection, key, data, updated_at, deleted, digest) VALUES"
        " ('cards', CAST(x'6b2dff' AS TEXT), CAST(x'7b2276223a22ff227d' AS TEXT), 1, 0,"
        " zeroblob(32))"
    )
    conn.close()
    LocalStore(path).close()  # the upgrade vouches for no row already there
    with pytest.raises(SnapshotError, match="holds text that is not valid UTF-8"):
        take_snapshot(path, tmp_path / "snaps", batch_size=10, max_batch_bytes=1 << 20)
    conn = sqlite3.connect(path, isolation_level=None)
    check_store(conn)  # must not fail on them either
    conn.text_factory = bytes
    listed = conn.execute("SELECT collection, key FROM items_unchecked").fetchall()
    conn.close()
    assert sorted(listed) == [(b"cards", b"k-\xff"), (b"cards", b"spaced")]
    with pytest.raises(SnapshotError, match="holds text that is not valid UTF-8"):
        take_snapshot(path, tmp_path / "snaps2", batch_size=10, max_batch_bytes=1 << 20)


def test_without_a_thread_to_spare_quick_check_runs_in_line_with_the_same_verdicts(
    tmp_path, monkeypatch
):
    path = tmp_path / "store.sqlite3"
    with LocalStore(path) as store:
        sdk_rows(store)

    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    assert_like_reference(path, tmp_path)


def test_a_snapshot_whose_scan_cannot_be_pinned_beside_the_copy_scans_the_copy(
    tmp_path, monkeypatch
):
    # The scan reads the store beside the copy, at the copy's point in time, when no
    # commit falls between their two read transactions. Here the app commits every time
    # a connection opens (its items unchanged), so the scan reads the copy once made.
    path = tmp_path / "store.sqlite3"
    with LocalStore(path) as store:
        sdk_rows(store)
    real = snapshot_module.connect_read_only
    opened: list[Path] = []

    def committing(target: Path, **kwargs: object) -> sqlite3.Connection:
        opened.append(Path(target))
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("UPDATE store_meta SET value = value WHERE key = 'format'")
        writer.close()
        return real(target, **kwargs)

    monkeypatch.setattr(snapshot_module, "connect_read_only", committing)
    assert_like_reference(path, tmp_path)
    assert any(p.suffix == ".partial" for p in opened)  # the scan read the copy


def test_a_snapshot_taken_while_the_app_commits_is_one_point_in_time(tmp_path):
    path = tmp_path / "store.sqlite3"
    with LocalStore(path) as store:
        sdk_rows(store)
    stop = threading.Event()
    wrote: list[int] = []

    def app() -> None:
        with LocalStore(path) as store:
            while not stop.is_set():
                n = len(wrote)
                store.put("cards", f"live-{n % 50:02d}", {"n": n})
                wrote.append(n)

    writer = threading.Thread(target=app)
    writer.start()
    try:
        snapshots = []
        for n in range(6):
            for trust in (False, True):
                snapshots.append(
                    take_snapshot(
                        path,
                        tmp_path / "snaps",
                        batch_size=7,
                        max_batch_bytes=1 << 20,
                        name=f"s{n}{trust}",
                        trust_digests=trust,
                    )
                )
    finally:
        stop.set()
        writer.join()
    assert wrote  # the app did commit during the snapshots
    for snapshot in snapshots:
        with snapshot:  # every batch rebuilds as planned, from the copy
            expected = reference(snapshot.path, 7, 1 << 20)
            assert taken(snapshot) == expected
