"""The legacy adapter: an app's own SQLite tables become collections of the SDK's store."""

from __future__ import annotations

import base64
import re
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdk import (
    ConfigurationError,
    InvalidItemError,
    LegacyDatabaseError,
    LegacyTable,
    LocalStore,
    MigrationClient,
    MigrationOptions,
    StoreError,
    import_legacy,
)
from sdk._store.legacy_values import encode_key
from sdk.contract import KEY_PATTERN, dataset_checksum_of

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
    assert cards["es:adiós"]["deleted"] and cards["es:adiós"]["data"] == {"box": 1}  # kept
    assert cards["es:adiós"]["updatedAt"] == T0 * 1000 + 5  # already milliseconds
    (log,) = items_of(store, "log").values()
    assert log["key"] == "1"  # no primary key: the rowid
    assert log["data"]["picture"] == b"\x00\xff"  # a BLOB stays bytes


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

    message = "old.db, table 'b', column 'at': the row with key 1 holds 'yesterday'"
    with pytest.raises(InvalidItemError, match=re.escape(message)):
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
            "old.db, table 'lessons' has no column 'when'; its columns are "
            "['id', 'title', 'score', 'done_at']",
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


def test_a_missing_or_unreadable_legacy_file_is_a_legacy_database_error(tmp_path):
    with pytest.raises(LegacyDatabaseError, match="no legacy database"):
        import_legacy(tmp_path / "absent.db", tmp_path / "s.sqlite3", [LegacyTable(table="a")])
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(LegacyDatabaseError, match=r"junk\.db.*not a SQLite database") as caught:
        import_legacy(junk, tmp_path / "s.sqlite3", [LegacyTable(table="a")])
    assert caught.value.path == str(junk)
    assert not isinstance(caught.value, StoreError)  # the SDK's store is not the one at fault


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


# ----------------------------------------------------------------------- no row is lost


def test_composite_keys_holding_the_separator_stay_two_items(tmp_path):
    legacy = legacy_db(
        tmp_path / "old.db",
        "CREATE TABLE pairs (a TEXT, b TEXT, v INT, PRIMARY KEY (a, b))",
        {"pairs": [("x:y", "z", 1), ("x", "y:z", 2), ("es", "hola", 3)]},
    )

    result = import_legacy(legacy, tmp_path / "s.sqlite3", [LegacyTable(table="pairs")])

    items = items_of(tmp_path / "s.sqlite3", "pairs")
    assert (result.written, len(items), result.verified) == (3, 3, True)
    assert sorted(item["data"]["v"] for item in items.values()) == [1, 2, 3]
    assert items["es:hola"]["data"]["v"] == 3  # a plain key keeps the old encoding


def test_an_untyped_key_holding_one_and_the_text_one_stays_two_items(tmp_path):
    legacy = legacy_db(
        tmp_path / "old.db",
        "CREATE TABLE things (k, v INT)",
        {"things": [(1, 10), ("1", 20), (1.0, 30), (b"1", 40)]},
    )

    result = import_legacy(legacy, tmp_path / "s.sqlite3", [LegacyTable(table="things", key="k")])

    items = items_of(tmp_path / "s.sqlite3", "things")
    assert (result.written, result.verified) == (4, True)
    assert {k: i["data"]["v"] for k, i in items.items()} == {
        "1": 10,
        "~t1": 20,
        "~f1.0": 30,
        "~bMQ==": 40,
    }


def test_a_text_primary_key_keeps_its_plain_key_even_when_it_looks_like_a_number(tmp_path):
    legacy = legacy_db(
        tmp_path / "old.db",
        "CREATE TABLE scores (lesson TEXT PRIMARY KEY, best INT)",
        {"scores": [("42", 1), ("a:b", 2), ("~odd", 3)]},
    )

    import_legacy(legacy, tmp_path / "s.sqlite3", [LegacyTable(table="scores")])

    assert sorted(items_of(tmp_path / "s.sqlite3", "scores")) == ["42", "a:b", "~t~odd"]


def test_a_table_without_key_whose_column_is_named_rowid_is_keyed_by_the_real_rowid(tmp_path):
    legacy = legacy_db(
        tmp_path / "old.db",
        "CREATE TABLE events (rowid TEXT, what TEXT)",
        {"events": [("same", "a"), ("same", "b"), (None, "c")]},
    )

    result = import_legacy(legacy, tmp_path / "s.sqlite3", [LegacyTable(table="events")])

    items = items_of(tmp_path / "s.sqlite3", "events")
    assert (result.written, sorted(items)) == (3, ["1", "2", "3"])
    assert items["2"]["data"] == {"rowid": "same", "what": "b"}


def test_two_rows_with_the_same_chosen_key_are_refused_by_name_and_nothing_is_written(tmp_path):
    legacy = legacy_db(
        tmp_path / "old.db",
        "CREATE TABLE cards (id INTEGER PRIMARY KEY, front TEXT)",
        {"cards": [(1, "hola"), (2, "adiós"), (3, "hola")]},
    )
    store = tmp_path / "s.sqlite3"

    message = "old.db, table 'cards', column(s) 'front': two rows hold the key 'hola'"
    with pytest.raises(InvalidItemError, match=re.escape(message)):
        import_legacy(legacy, store, [LegacyTable(table="cards", key="front")])

    with LocalStore(store, create=False) as s:
        assert s.count(include_deleted=True) == 0


@pytest.mark.parametrize(
    ("flag", "deleted"),
    [
        pytest.param(0, False, id="0"),
        pytest.param("0", False, id="text 0"),
        pytest.param("false", False, id="text false"),
        pytest.param("", False, id="empty text"),
        pytest.param(None, False, id="NULL"),
        pytest.param(0.0, False, id="0.0"),
        pytest.param(1, True, id="1"),
        pytest.param("1", True, id="text 1"),
        pytest.param(2, True, id="2"),
        pytest.param(0.5, True, id="0.5"),
    ],
)
def test_a_soft_delete_column_is_true_as_sqlite_takes_it(tmp_path, flag, deleted):
    legacy = legacy_db(
        tmp_path / "old.db",
        "CREATE TABLE cards (id INTEGER PRIMARY KEY, front TEXT, gone)",
        {"cards": [(1, "hola", flag)]},
    )
    table = LegacyTable(table="cards", deleted="gone", columns=["front"])

    import_legacy(legacy, tmp_path / "s.sqlite3", [table])

    (item,) = items_of(tmp_path / "s.sqlite3", "cards").values()
    assert (item["deleted"], item["data"]) == (deleted, {"front": "hola"})


def test_a_soft_delete_predicate_decides_and_the_tombstone_keeps_the_row_data(tmp_path):
    legacy = legacy_db(
        tmp_path / "old.db",
        "CREATE TABLE cards (id INTEGER PRIMARY KEY, front TEXT, state TEXT)",
        {"cards": [(1, "hola", "active"), (2, "adiós", "trashed")]},
    )
    table = LegacyTable(table="cards", deleted=lambda row: row["state"] == "trashed")

    import_legacy(legacy, tmp_path / "s.sqlite3", [table])

    items = items_of(tmp_path / "s.sqlite3", "cards")
    assert (items["1"]["deleted"], items["2"]["deleted"]) == (False, True)
    assert items["2"]["data"] == {"id": 2, "front": "adiós", "state": "trashed"}


def test_rows_without_a_time_keep_theirs_so_importing_an_unchanged_file_writes_nothing(
    tmp_path,
):
    legacy = legacy_db(
        tmp_path / "old.db",
        "CREATE TABLE lessons (id INTEGER PRIMARY KEY, score INT, seen INT)",
        {"lessons": [(1, 5, None), (2, 6, T0)]},
    )
    store = tmp_path / "s.sqlite3"
    tables = [LegacyTable(table="lessons", updated_at="seen", time_unit="s")]
    import_legacy(legacy, store, tables, now=1_000)
    first = items_of(store, "lessons")

    again = import_legacy(legacy, store, tables, now=2_000)

    assert (again.written, again.unchanged, again.verified) == (0, 2, True)
    assert items_of(store, "lessons") == first
    assert first["1"]["updatedAt"] == 1_000
    with sqlite3.connect(legacy) as conn:
        conn.execute("UPDATE lessons SET score = 9 WHERE id = 1")
    conn.close()
    changed = import_legacy(legacy, store, tables, now=3_000)
    assert (changed.written, items_of(store, "lessons")["1"]["updatedAt"]) == (1, 3_000)


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        pytest.param(T0, "s", T0 * 1000, id="seconds"),
        pytest.param(T0 * 1000 + 5, "ms", T0 * 1000 + 5, id="milliseconds"),
        pytest.param(T0 * 1_000_000 + 5_000, "us", T0 * 1000 + 5, id="microseconds"),
        pytest.param(T0 * 1_000_000_000 + 5_000_000, "ns", T0 * 1000 + 5, id="nanoseconds"),
        pytest.param("2023-11-14T22:13:20Z", "iso", T0 * 1000, id="iso"),
        pytest.param(str(T0), "s", T0 * 1000, id="seconds as text"),
        pytest.param(T0 + 0.25, "s", T0 * 1000 + 250, id="fractional seconds"),
    ],
)
def test_the_stated_time_unit_is_the_one_used(tmp_path, value, unit, expected):
    legacy = legacy_db(
        tmp_path / "old.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, at)", {"t": [(1, value)]}
    )

    import_legacy(
        legacy, tmp_path / "s.sqlite3", [LegacyTable(table="t", updated_at="at", time_unit=unit)]
    )

    assert items_of(tmp_path / "s.sqlite3", "t")["1"]["updatedAt"] == expected


@pytest.mark.parametrize(
    ("value", "unit", "message"),
    [
        pytest.param(
            T0 * 1_000_000,
            None,
            "as milliseconds since the epoch that is the year",
            id="us guessed",
        ),
        pytest.param(
            T0 * 1000,
            "s",
            "as seconds since the epoch (time_unit='s') that is the year",
            id="ms as s",
        ),
        pytest.param("soon", "s", "it is not a number of seconds", id="text as s"),
        pytest.param(T0, "iso", "it is not ISO 8601 text", id="number as iso"),
    ],
)
def test_an_implausible_time_is_refused_and_asks_for_the_unit(tmp_path, value, unit, message):
    legacy = legacy_db(
        tmp_path / "old.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, at)", {"t": [(1, value)]}
    )
    table = LegacyTable(table="t", updated_at="at", time_unit=unit)

    with pytest.raises(InvalidItemError, match=re.escape(message)) as caught:
        import_legacy(legacy, tmp_path / "s.sqlite3", [table])
    assert "old.db, table 't', column 'at': the row with key 1 holds" in str(caught.value)


def test_generated_columns_are_read_and_can_be_the_key(tmp_path):
    legacy = legacy_db(
        tmp_path / "old.db",
        """CREATE TABLE cards (front TEXT, deck TEXT,
               slug TEXT GENERATED ALWAYS AS (deck || '/' || front) VIRTUAL,
               size INT AS (length(front)) STORED)""",
        {},
    )
    with sqlite3.connect(legacy) as conn:
        conn.execute("INSERT INTO cards (front, deck) VALUES ('hola', 'es')")
    conn.close()

    import_legacy(legacy, tmp_path / "s.sqlite3", [LegacyTable(table="cards", key="slug")])

    items = items_of(tmp_path / "s.sqlite3", "cards")
    assert items["es/hola"]["data"] == {"front": "hola", "deck": "es", "slug": "es/hola", "size": 4}


# ------------------------------------------------------------------ errors that say where


def anki_like(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.create_collation("unicase", lambda a, b: (a.lower() > b.lower()) - (a.lower() < b.lower()))
    conn.executescript(
        """CREATE TABLE tags (tag TEXT NOT NULL PRIMARY KEY COLLATE unicase, usn INTEGER)
               WITHOUT ROWID;
           INSERT INTO tags VALUES ('Verbs', 1), ('nouns', 2);"""
    )
    conn.commit()
    conn.close()
    return path


def test_a_table_with_the_apps_own_collation_is_read_like_any_other(tmp_path):
    legacy = anki_like(tmp_path / "collection.anki2")

    result = import_legacy(legacy, tmp_path / "s.sqlite3", [LegacyTable(table="tags")])

    assert (result.written, sorted(items_of(tmp_path / "s.sqlite3", "tags"))) == (
        2,
        ["Verbs", "nouns"],
    )


def test_an_open_connection_can_be_the_source_and_says_what_it_lacks(tmp_path):
    legacy = anki_like(tmp_path / "collection.anki2")
    bare = sqlite3.connect(legacy)
    with pytest.raises(LegacyDatabaseError, match="collation the app defined for itself") as caught:
        import_legacy(bare, tmp_path / "s.sqlite3", [LegacyTable(table="tags")])
    assert "collection.anki2, table 'tags'" in str(caught.value)
    assert "no query solution" not in str(caught.value)

    bare.close()

    conn = sqlite3.connect(legacy)
    conn.create_collation("unicase", lambda a, b: (a.lower() > b.lower()) - (a.lower() < b.lower()))
    result = import_legacy(conn, tmp_path / "s.sqlite3", [LegacyTable(table="tags")])
    assert result.written == 2
    assert conn.execute("SELECT count(*) FROM tags").fetchone() == (2,)  # still open for its owner
    conn.close()


def test_text_that_is_not_utf8_in_the_legacy_file_names_the_file_table_column_and_row(tmp_path):
    legacy = legacy_db(
        tmp_path / "old.db",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",
        {"notes": [(1, "fine"), (2, "also fine")]},
    )
    with sqlite3.connect(legacy) as conn:
        conn.execute("UPDATE notes SET body = CAST(x'ff41' AS TEXT) WHERE id = 2")
    conn.close()
    store = tmp_path / "store.sqlite3"
    LocalStore(store).close()

    with pytest.raises(LegacyDatabaseError) as caught:
        import_legacy(legacy, store, [LegacyTable(table="notes")])

    message = str(caught.value)
    assert message.startswith(
        f"{legacy}, table 'notes', column 'body': the row with key 2 holds text that is not "
        "valid UTF-8"
    )
    assert str(store) not in message and "Could not decode" not in message
    assert (caught.value.path, caught.value.table, caught.value.column) == (
        str(legacy),
        "notes",
        "body",
    )


def test_a_damaged_legacy_file_is_blamed_and_the_store_is_left_alone(tmp_path):
    legacy = legacy_db(
        tmp_path / "old.db",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body BLOB)",
        {"notes": [(n, bytes(500)) for n in range(200)]},
    )
    page = 4096
    with legacy.open("r+b") as file:
        file.seek(3 * page)
        file.write(b"\xde\xad" * (page // 2))
    store = tmp_path / "store.sqlite3"
    with LocalStore(store) as s:
        s.put("notes", "keep", {"v": 1}, updated_at=1)

    with pytest.raises(LegacyDatabaseError, match=r"the legacy database is damaged") as caught:
        import_legacy(legacy, store, [LegacyTable(table="notes")])

    message = str(caught.value)
    assert message.startswith(f"{legacy}, table 'notes'") and str(store) not in message
    assert "malformed" not in message and "move it away" not in message
    assert items_of(store, "notes") == {
        "keep": {
            "collection": "notes",
            "key": "keep",
            "data": {"v": 1},
            "updatedAt": 1,
            "deleted": False,
        }
    }


def test_a_legacy_file_with_a_hot_journal_says_how_to_roll_it_back(tmp_path):
    crashed = tmp_path / "live.db"
    conn = sqlite3.connect(crashed, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA cache_size=1")  # spill to the file before the commit
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.executemany("INSERT INTO t VALUES (?)", [(bytes(500),)] * 300)
    conn.execute("BEGIN")
    conn.execute("UPDATE t SET x = randomblob(500)")
    legacy = tmp_path / "old.db"  # what a crash at this moment leaves on disk
    legacy.write_bytes(crashed.read_bytes())
    Path(f"{legacy}-journal").write_bytes(Path(f"{crashed}-journal").read_bytes())
    conn.execute("ROLLBACK")
    conn.close()

    with pytest.raises(
        LegacyDatabaseError, match="a crash left a transaction unfinished"
    ) as caught:
        import_legacy(legacy, tmp_path / "s.sqlite3", [LegacyTable(table="t")])

    assert str(caught.value).startswith(f"{legacy}")
    assert "readonly" not in str(caught.value) and "attempt to write" not in str(caught.value)


def test_a_row_without_a_key_value_names_the_column_and_no_internal_name(tmp_path):
    legacy = legacy_db(
        tmp_path / "old.db",
        "CREATE TABLE cards (front TEXT PRIMARY KEY, back TEXT)",
        {"cards": [("hola", "hello"), (None, "orphan")]},
    )

    with pytest.raises(InvalidItemError) as caught:
        import_legacy(legacy, tmp_path / "s.sqlite3", [LegacyTable(table="cards")])

    message = str(caught.value)
    assert message.startswith(f"{legacy}, table 'cards', column 'front': row 2 has no value")
    assert "_legacy" not in message


def test_a_legacy_folder_is_refused_by_name(tmp_path):
    with pytest.raises(LegacyDatabaseError, match="is a folder, not the legacy database"):
        import_legacy(tmp_path, tmp_path / "s.sqlite3", [LegacyTable(table="t")])


# ---------------------------------------------------------------- the check after import


def test_the_import_reports_counts_and_checksums_of_source_and_store(legacy, tmp_path):
    store = tmp_path / "s.sqlite3"
    skip_untimed = LegacyTable(
        table="lessons", transform=lambda row: None if row["done_at"] is None else row
    )

    result = import_legacy(legacy, store, [skip_untimed, LegacyTable(table="cards")])

    lessons, cards = result.checks["lessons"], result.checks["cards"]
    assert (lessons.read, lessons.skipped, lessons.items, lessons.held) == (3, 1, 2, 2)
    assert (cards.read, cards.items, cards.held, result.verified) == (2, 2, 2, True)
    with LocalStore(store, create=False) as s:
        assert cards.store_checksum == dataset_checksum_of(s.iter_items("cards"))
        assert lessons.source_checksum == dataset_checksum_of(s.iter_items("lessons"))


# ------------------------------------------------------------------------ properties

ANY_VALUE = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(),
    st.floats(allow_nan=False),
    st.binary(),
)
TEXT_VALUE = st.one_of(st.text(), st.binary())  # what a TEXT column can hold


def typed(values: tuple) -> tuple:
    """Values as SQLite tells them apart: 1, 1.0, '1' and b'1' are four keys."""
    return tuple((type(v).__name__, repr(v)) for v in values)


def no_two_share_a_key(keys: list[tuple], mixed: list[bool]) -> None:
    seen: dict[str, tuple] = {}
    for values in keys:
        key = encode_key(values, mixed)
        assert re.fullmatch(KEY_PATTERN, key[:512]), key
        assert seen.setdefault(key, typed(values)) == typed(values), (key, values)


@given(st.integers(1, 3).flatmap(lambda n: st.lists(st.tuples(*[ANY_VALUE] * n), max_size=30)))
def test_no_two_distinct_keys_of_untyped_columns_map_onto_one_item_key(keys):
    if keys:
        no_two_share_a_key(keys, [True] * len(keys[0]))


@given(st.integers(1, 3).flatmap(lambda n: st.lists(st.tuples(*[TEXT_VALUE] * n), max_size=30)))
def test_no_two_distinct_keys_of_text_columns_map_onto_one_item_key(keys):
    if keys:
        no_two_share_a_key(keys, [False] * len(keys[0]))


KEY_PART = st.one_of(
    st.integers(-5, 5), st.sampled_from(["1", "x", "x:y", "y:z", ":", "~t1", "", "-0"])
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(KEY_PART, KEY_PART), max_size=12, unique_by=typed))
def test_every_row_of_an_untyped_composite_key_becomes_its_own_item(keys):
    with tempfile.TemporaryDirectory() as tmp:
        legacy = legacy_db(Path(tmp) / "old.db", "CREATE TABLE t (a, b, n INT)")
        with sqlite3.connect(legacy) as conn:
            conn.executemany(
                "INSERT INTO t VALUES (?, ?, ?)", [(*k, i) for i, k in enumerate(keys)]
            )
        conn.close()

        result = import_legacy(
            legacy, Path(tmp) / "s.sqlite3", [LegacyTable(table="t", key=["a", "b"])]
        )

        assert (result.written, result.checks["t"].held, result.verified) == (
            len(keys),
            len(keys),
            True,
        )
        with LocalStore(Path(tmp) / "s.sqlite3", create=False) as s:
            assert sorted(i["data"]["n"] for i in s.iter_items("t")) == list(range(len(keys)))


ROW = st.tuples(
    st.one_of(st.none(), st.integers(0, 4_000_000_000)),  # a time in seconds, or none
    st.one_of(st.none(), st.integers(-1, 2), st.sampled_from(["0", "1", "false", "true", ""])),
    st.one_of(st.none(), st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False)),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(ROW, max_size=10), st.integers(1, 10**12), st.integers(1, 10**12))
def test_importing_an_unchanged_file_again_writes_nothing_and_changes_nothing(rows, now1, now2):
    with tempfile.TemporaryDirectory() as tmp:
        legacy = legacy_db(Path(tmp) / "old.db", "CREATE TABLE t (at INT, gone, v)")
        with sqlite3.connect(legacy) as conn:
            conn.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
        conn.close()
        store = Path(tmp) / "s.sqlite3"
        tables = [LegacyTable(table="t", updated_at="at", time_unit="s", deleted="gone")]
        first = import_legacy(legacy, store, tables, now=now1)
        before = items_of(store, "t")

        again = import_legacy(legacy, store, tables, now=now2)

        assert (first.written, first.verified) == (len(rows), True)
        assert (again.written, again.unchanged, again.verified) == (0, len(rows), True)
        assert items_of(store, "t") == before


def test_blob_columns_come_back_as_bytes_and_travel_typed(tmp_path):
    big = bytes(range(256)) * 4096 * 7  # 7 MiB: kept apart from its item
    legacy = legacy_db(
        tmp_path / "old.db",
        "CREATE TABLE media (id INTEGER PRIMARY KEY, body BLOB, note TEXT)",
        {"media": [(1, b"\x00\xff", "a"), (2, b"", "empty"), (3, None, "null"), (4, big, "big")]},
    )
    store = tmp_path / "store.sqlite3"

    first = import_legacy(legacy, store, [LegacyTable(table="media")])
    again = import_legacy(legacy, store, [LegacyTable(table="media")])

    media = items_of(store, "media")
    assert [media[k]["data"]["body"] for k in "1234"] == [b"\x00\xff", b"", None, big]
    with LocalStore(store) as s:
        wire = {i["key"]: i["data"]["body"] for i in s.iter_items("media", wire=True)}
    assert wire["1"] == {"$bytes": base64.b64encode(b"\x00\xff").decode()}
    assert wire["2"] == {"$bytes": ""}
    assert set(wire["4"]) == {"$large"} and wire["4"]["$large"]["size"] == len(big)
    assert (first.written, again.written, again.unchanged) == (4, 0, 4)
    assert again.checks["media"].source_checksum == again.checks["media"].store_checksum
