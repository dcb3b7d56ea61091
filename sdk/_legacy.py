"""Bring an app's own SQLite schema into the SDK's store: each legacy table becomes a
collection, each row an item.

An app that kept its data in tables of its own before it adopted the SDK describes each
table with a :class:`LegacyTable` and calls :func:`import_legacy`; the rows land in the
SDK's store (one transaction), which then migrates like any other. The legacy file is
only read, never changed, and calling the import again changes nothing unless the legacy
rows changed::

    >>> import sqlite3, tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> with sqlite3.connect(tmp / "old.db") as db:
    ...     _ = db.execute("CREATE TABLE lessons (id INTEGER PRIMARY KEY, score INT, seen TEXT)")
    ...     _ = db.execute("INSERT INTO lessons VALUES (7, 90, '2024-05-01T10:00:00+00:00')")
    >>> tables = [LegacyTable(table="lessons", updated_at="seen")]
    >>> import_legacy(tmp / "old.db", tmp / "store.sqlite3", tables).written
    1
    >>> import_legacy(tmp / "old.db", tmp / "store.sqlite3", tables).unchanged
    1
    >>> from sdk import LocalStore
    >>> with LocalStore(tmp / "store.sqlite3") as store:
    ...     store.get("lessons", "7")["data"], store.get("lessons", "7")["updatedAt"]
    ({'id': 7, 'score': 90, 'seen': '2024-05-01T10:00:00+00:00'}, 1714557600000)
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ._errors import ConfigurationError, InvalidItemError, StoreNotFoundError
from ._store import LocalStore, connect_read_only, now_ms, store_error
from .contract import Item, canonical_json

__all__ = ["LegacyImport", "LegacyTable", "import_legacy"]

#: Numbers above this are taken as milliseconds since the epoch, below as seconds.
_MS_THRESHOLD = 100_000_000_000

Transform = Callable[[dict[str, Any]], "dict[str, Any] | None"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LegacyTable:
    """How one table of the app's own schema maps onto a collection.

    - ``table``: the table (or view) to read;
    - ``collection``: the collection its rows become (default: the table's name);
    - ``key``: the column, or columns, that identify a row (default: the table's primary
      key, else its rowid); several columns are joined with ``:``;
    - ``updated_at``: the column holding when the row last changed, in seconds or
      milliseconds since the epoch or ISO 8601 text (default: the time of the import);
    - ``deleted``: a column whose true value marks a soft-deleted row (a tombstone);
    - ``columns``: the columns that make up the item's data (default: all);
    - ``transform``: a function from the whole row (a dict) to the item's data, or
      ``None`` to leave the row out; it replaces ``columns``.

    Blobs become base64 text (use ``transform`` to do otherwise).

    >>> LegacyTable(table="tbl_cards", collection="flashcards", key="front").collection
    'flashcards'
    """

    table: str
    collection: str | None = None
    key: str | Sequence[str] | None = None
    updated_at: str | None = None
    deleted: str | None = None
    columns: Sequence[str] | None = None
    transform: Transform | None = None

    @property
    def target(self) -> str:
        """The collection the rows go to."""
        return self.collection or self.table


@dataclasses.dataclass(frozen=True)
class LegacyImport:
    """What an import did: rows read per collection, items written (new or changed),
    items the store already held as they are, and rows ``transform`` left out.

    >>> LegacyImport(collections={"lessons": 3}, written=1, unchanged=2, skipped=0).total
    3
    """

    collections: dict[str, int]
    written: int
    unchanged: int
    skipped: int

    @property
    def total(self) -> int:
        """Rows read, over all tables."""
        return sum(self.collections.values())


def import_legacy(
    source: str | os.PathLike[str],
    store: str | os.PathLike[str] | LocalStore,
    tables: Sequence[LegacyTable],
    *,
    now: int | None = None,
) -> LegacyImport:
    """Copy the rows of ``tables`` of the SQLite database ``source`` into the SDK's
    ``store`` (a path, created if missing, or an open :class:`~sdk.LocalStore`).

    All tables are read in one read transaction (a consistent view even while the old
    code still writes) and written in one transaction: all rows, or none when one is
    invalid. Rows the store already holds with the same data (and timestamp, when the
    table has an ``updated_at`` column) are not rewritten, so calling it at every start
    until the legacy file is retired is safe. ``now`` (ms) stamps rows without a time.

    >>> import_legacy("/nonexistent/old.db", "/tmp/s.sqlite3", [])
    Traceback (most recent call last):
    ...
    sdk._errors.StoreNotFoundError: no legacy database at /nonexistent/old.db; check the path
    """
    source_path = Path(source)
    if not source_path.is_file():
        raise StoreNotFoundError(
            f"no legacy database at {source_path}; check the path", path=str(source_path)
        )
    if not tables:
        raise ConfigurationError("give at least one LegacyTable to import")
    targets = [t.target for t in tables]
    if len(set(targets)) != len(targets):
        raise ConfigurationError(f"two tables map onto the same collection: {targets}")
    stamp = now_ms() if now is None else now
    try:
        conn = connect_read_only(source_path)
    except sqlite3.Error as exc:
        raise store_error(exc, source_path, "open the legacy database") from exc
    try:
        conn.execute("BEGIN")  # one read transaction: every table seen at the same moment
        plans = [_plan(conn, table) for table in tables]
        if isinstance(store, LocalStore):
            return _copy(conn, plans, store, stamp, source_path)
        if Path(store).resolve() == source_path.resolve():
            raise ConfigurationError(
                "the SDK's store must be a new file, not the legacy database itself"
            )
        with LocalStore(store) as opened:
            return _copy(conn, plans, opened, stamp, source_path)
    except sqlite3.Error as exc:
        raise store_error(exc, source_path, "read the legacy database") from exc
    finally:
        conn.close()


@dataclasses.dataclass
class _Plan:
    table: LegacyTable
    sql: str
    key_columns: list[str]
    rows: int = 0
    skipped: int = 0


def _plan(conn: sqlite3.Connection, table: LegacyTable) -> _Plan:
    known = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
        )
    }
    if table.table not in known:
        raise ConfigurationError(
            f"the legacy database has no table {table.table!r}; it has {sorted(known)}"
        )
    info = conn.execute(f"PRAGMA table_info({_quote(table.table)})").fetchall()
    columns = [row[1] for row in info]
    if isinstance(table.key, str):
        keys = [table.key]
    elif table.key is not None:
        keys = list(table.key)
    else:
        primary = sorted((row[5], row[1]) for row in info if row[5])
        keys = [name for _, name in primary]
    use_rowid = not keys
    named = [*keys, *(c for c in (table.updated_at, table.deleted) if c)]
    named += list(table.columns or [])
    unknown = sorted(set(named) - set(columns))
    if unknown:
        raise ConfigurationError(
            f"table {table.table!r} has no column {', '.join(map(repr, unknown))}; "
            f"its columns are {columns}"
        )
    select = ", ".join(_quote(c) for c in columns)
    if use_rowid:
        select = f"rowid AS _legacy_rowid, {select}"
        keys = ["_legacy_rowid"]
    return _Plan(table, f"SELECT {select} FROM {_quote(table.table)}", keys)


def _copy(
    conn: sqlite3.Connection,
    plans: list[_Plan],
    store: LocalStore,
    stamp: int,
    source: Path,
) -> LegacyImport:
    counts = {"written": 0, "unchanged": 0}

    def changed_items() -> Iterator[Item]:
        for plan in plans:
            for item, compare_time in _items(conn, plan, stamp):
                held = store.get(item["collection"], item["key"])
                if (
                    held is not None
                    and held["deleted"] == item["deleted"]
                    and canonical_json(held["data"]) == canonical_json(item["data"])
                    and (not compare_time or held["updatedAt"] == item["updatedAt"])
                ):
                    counts["unchanged"] += 1
                    continue
                counts["written"] += 1
                yield item

    store.put_many(changed_items())
    return LegacyImport(
        collections={p.table.target: p.rows for p in plans},
        written=counts["written"],
        unchanged=counts["unchanged"],
        skipped=sum(p.skipped for p in plans),
    )


def _items(conn: sqlite3.Connection, plan: _Plan, stamp: int) -> Iterator[tuple[Item, bool]]:
    table = plan.table
    cursor = conn.execute(plan.sql)
    names = [d[0] for d in cursor.description]
    for values in cursor:
        row = dict(zip(names, values, strict=True))
        plan.rows += 1
        if any(row[c] is None for c in plan.key_columns):
            raise InvalidItemError(
                f"table {table.table!r}: a row has no value in its key column(s) "
                f"{plan.key_columns}; give another key, or fill the column"
            )
        key = ":".join(_text(row[c]) for c in plan.key_columns)
        row.pop("_legacy_rowid", None)
        where = f"table {table.table!r}, row {key!r}"
        updated_at = stamp
        if table.updated_at is not None:
            updated_at = _timestamp(row[table.updated_at], where, table.updated_at, stamp)
        deleted = table.deleted is not None and bool(row[table.deleted])
        if deleted:
            data: dict[str, Any] | None = {}
        elif table.transform is not None:
            data = table.transform(dict(row))
            if data is None:
                plan.skipped += 1
                continue
        else:
            wanted = table.columns or list(row)
            data = {c: _json_value(row[c]) for c in wanted}
        if not isinstance(data, dict):
            raise InvalidItemError(
                f"{where}: transform must return a dict or None, got {type(data).__name__}"
            )
        item: Item = {
            "collection": table.target,
            "key": key,
            "data": data,
            "updatedAt": updated_at,
            "deleted": deleted,
        }
        yield item, table.updated_at is not None


def _timestamp(value: Any, where: str, column: str, default: int) -> int:
    """Milliseconds since the epoch from seconds, milliseconds or ISO 8601 text."""
    if value is None:
        return default
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidItemError(
                    f"{where}: column {column!r} holds {value!r}, which is neither a number "
                    "of seconds or milliseconds since the epoch nor ISO 8601 text; give a "
                    "transform, or another updated_at column"
                ) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.timezone.utc)  # naive: taken as UTC
            return round(parsed.timestamp() * 1000)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidItemError(
            f"{where}: column {column!r} holds {value!r}, not a time; give a transform, or "
            "another updated_at column"
        )
    return round(value) if value >= _MS_THRESHOLD else round(value * 1000)


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
