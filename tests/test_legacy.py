"""The legacy adapter: an app's own SQLite tables become collections of the SDK's store."""

from __future__ import annotations

import base64
import re
import sqlite3
from pathlib import Path

import pytest

from sdk import (
    ConfigurationError,
    InvalidItemError,
    LegacyTable,
    LocalStore,
    MigrationClient,
    MigrationOptions,
    StoreError,
    StoreNotFoundError,
    import_legacy,
)
from sdk.contract import dataset_checksum_of

T0 = 1_700_000_000  # seconds


def legacy_db(path: Path, script: str, rows: dict[str, list[tuple]] | None = None) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(script)
    for table, values in (rows or {}).items():
        marks = ", ".join("?" * len(values[0]))
        conn.executemany(f"INSERT INTO {table} VALUES ({marks})", values)
    conn.commit()
    conn.close()
    return path


def items_of(store: Path, collection: str) -> dict[str, dict]:
    with LocalStore(store, create=False) as s:
        return {i["key"]: i for i in s.iter_items(collection)}


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    return legacy_db(
        tmp_path / "old.db",
        """
        CREATE TABLE lessons (id INTEGER PRIMARY KEY, title TEXT, score REAL, done_at TEXT);
        CREATE TABLE cards (front TEXT, deck TEXT, box INT, seen INT, gone INT,
                            PRIMARY KEY (deck, front));
        CREATE TABLE log (line TEXT, at INT, picture BLOB);
        """,
        {
            "lessons": [
                (1, "Greetings", 80.5, "2024-01-02T03:04:05Z"),
                (2, "Numbers", None, "2024-01-03T00:00:00"),
                (3, "Colours", 10, None),
            ],
            "cards": [
                ("hola", "es", 2, T0, 0),
                ("adiós", "es", 1, T0 * 1000 + 5, 1),
            ],
            "log": [("started", T0, b"\x00\xff")],
        },
    )


def test_each_table_becomes_a_collection_and_each_row_an_item(legacy, tmp_path):
    store = tmp_path / "store.sqlite3"
    tables = [
        LegacyTable(table="lessons", collection="lesson_progress", updated_at="done_at"),
        LegacyTable(table="cards", updated_at="seen", deleted="gone", columns=["box"]),
        LegacyTable(table="log", updated_at="at"),
    ]

    result = import_legacy(legacy, store, tables, now=42)

    assert result.collections == {"lesson_progress": 3, "cards": 2, "log": 1}
    assert (result.written, result.unchanged, result.skipped, result.total) == (6, 0, 0, 6)
    lessons = items_of(store, "lesson_progress")
    assert lessons["1"]["data"] == {
        "id": 1,
        "title": "Greetings",
        "score": 80.5,
        "done_at": "2024-01-02T03:04:05Z",
    }
    assert lessons["1"]["updatedAt"] == 1_704_164_645_000  # ISO 8601 with Z
    assert lessons["2"]["updatedAt"] == 1_704_240_000_000  # naive: taken as UTC
    assert lessons["3"]["updatedAt"] == 42  # no time: the import's
    cards = items_of(store, "cards")
    assert cards["es:hola"]["data"] == {"box": 2}  # composite primary key, in key order
    assert cards["es:hola"]["updatedAt"] == T0 * 1000  # seconds
    assert cards["es:adiós"]["deleted"] and cards["es:adiós"]["data"] == {}  # soft delete
    assert cards["es:adiós"]["updatedAt"] == T0 * 1000 + 5  # already milliseconds
    (log,) = items_of(store, "log").values()
    assert log["key"] == "1"  # no primary key: the rowid
    assert log["data"]["picture"] == base64.b64encode(b"\x00\xff").decode()


def test_a_transform_shapes_the_data_or_leaves_a_row_out(legacy, tmp_path):
    def lesson(row: dict) -> dict | None:
        if row["score"] is None:
            return None
        return {"title": row["title"].lower(), "score": round(row["score"])}

    result = import_legacy(
        legacy, tmp_path / "s.sqlite3", [LegacyTable(table="lessons", transform=lesson)]
    )

    assert (result.written, result.skipped) == (2, 1)
    assert items_of(tmp_path / "s.sqlite3", "lessons")["1"]["data"] == {
        "title": "greetings",
        "score": 80,
    }


def test_importing_again_changes_nothing_unless_the_legacy_rows_changed(legacy, tmp_path):
    store = tmp_path / "store.sqlite3"
    tables = [LegacyTable(table="lessons"), LegacyTable(table="cards", updated_at="seen")]
    before = legacy.read_bytes()
    first = import_legacy(legacy, store, tables, now=1)
    stamped = items_of(store, "lessons")

    again = import_legacy(legacy, store, tables, now=2)
    assert (again.written, again.unchanged) == (0, 5)
    assert items_of(store, "lessons") == stamped  # not even the timestamps moved

    with sqlite3.connect(legacy) as conn:
        conn.execute("UPDATE lessons SET score = 99 WHERE id = 2")
    conn.close()
    changed = import_legacy(legacy, store, tables, now=3)
    assert (first.written, changed.written, changed.unchanged) == (5, 1, 4)
    rewritten = dict(stamped["2"], data=dict(stamped["2"]["data"], score=99), updatedAt=3)
    assert items_of(store, "lessons")["2"] == rewritten
    assert before != legacy.read_bytes()  # only the test's UPDATE touched the legacy file


def test_the_legacy_file_is_only_read(legacy, tmp_path):
    before = legacy.read_bytes()
    import_legacy(legacy, tmp_path / "s.sqlite3", [LegacyTable(table="lessons")])
    assert legacy.read_bytes() == before


def test_an_invalid_row_writes_nothing_at_all(tmp_path):
    legacy = legacy_db(
        tmp_path / "old.db",
        "CREATE TABLE a (id INTEGER PRIMARY KEY, at TEXT); CREATE TABLE b (id TEXT, at TEXT)",
        {"a": [(1, "2024-01-01T00:00:00Z")], "b": [("x", "yesterday")]},
    )
    store = tmp_path / "store.sqlite3"
    tables = [LegacyTable(table="a", updated_at="at"), LegacyTable(table="b", updated_at="at")]

    with pytest.raises(InvalidItemError, match="table 'b', row '1': column 'at' holds 'yesterday'"):
        import_legacy(legacy, store, tables)

    with LocalStore(store, create=False) as s:
        assert s.count(include_deleted=True) == 0


@pytest.mark.parametrize(
    ("tables", "error", "message"),
    [
        pytest.param(
            [LegacyTable(table="lesson")], ConfigurationError, "no table 'lesson'", id="table"
        ),
        pytest.param(
            [LegacyTable(table="lessons", updated_at="when")],
            ConfigurationError,
            "no column 'when'; its columns are ['id', 'title', 'score', 'done_at']",
            id="column",
        ),
        pytest.param(
            [LegacyTable(table="lessons"), LegacyTable(table="cards", collection="lessons")],
            ConfigurationError,
            "two tables map onto the same collection",
            id="collection twice",
        ),
        pytest.param([], ConfigurationError, "at least one LegacyTable", id="no tables"),
    ],
)
def test_a_mapping_that_does_not_fit_the_schema_is_refused_with_the_names_it_has(
    legacy, tmp_path, tables, error, message
):
    with pytest.raises(error, match=re.escape(message)):
        import_legacy(legacy, tmp_path / "s.sqlite3", tables)


def test_a_missing_or_unreadable_legacy_file_is_a_store_error(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no legacy database"):
        import_legacy(tmp_path / "absent.db", tmp_path / "s.sqlite3", [LegacyTable(table="a")])
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match=r"junk\.db"):
        import_legacy(junk, tmp_path / "s.sqlite3", [LegacyTable(table="a")])


def test_an_imported_legacy_database_migrates_like_any_store(server, legacy, tmp_path):
    store = tmp_path / "store.sqlite3"
    import_legacy(
        legacy,
        store,
        [LegacyTable(table="lessons", updated_at="done_at"), LegacyTable(table="cards")],
    )
    with MigrationClient(
        http_client=server.client,
        user_id="lex",
        token=server.token("lex"),
        store_path=store,
        options=MigrationOptions(cache_dir=tmp_path / "cache"),
    ) as client:
        result = client.migrate()
    with LocalStore(store, create=False) as s:
        local = list(s.iter_items())
    assert result.verified and result.item_count == 5
    assert result.cloud_checksum == dataset_checksum_of(local)
