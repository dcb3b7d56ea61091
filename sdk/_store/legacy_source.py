"""The app's own SQLite database, as the legacy import reads it: opened read-only (or
given as an open connection), each table described, and whatever SQLite says about it
turned into a :class:`~sdk.LegacyDatabaseError` that names the file, the table and the
column and says what to do. SQLite's own words never reach the user: they describe the
SDK's connection, not the user's problem.

    >>> import sqlite3
    >>> conn = sqlite3.connect(":memory:")
    >>> _ = conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b)")
    >>> source = open_source(conn)
    >>> source.name, [(c.name, c.primary_key) for c in describe(source, "t").columns]
    ('the legacy database (in memory)', [('a', 1), ('b', 0)])
"""

from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
from pathlib import Path

from .._errors import ConfigurationError, LegacyDatabaseError
from .schema import connect_read_only

__all__ = [
    "Column",
    "Shape",
    "Source",
    "describe",
    "open_source",
    "quote",
    "source_error",
    "undecodable_column",
    "undecodable_row",
]

_BUILTIN_COLLATIONS = frozenset({"BINARY", "NOCASE", "RTRIM"})
_COLLATE = re.compile(r"\bCOLLATE\s+[\"'`\[]?([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)
_UNDECODABLE = re.compile(r"Could not decode to UTF-8 column '(.*)' with text")


@dataclasses.dataclass(frozen=True)
class Source:
    """An open legacy database and how messages name it."""

    conn: sqlite3.Connection
    name: str
    path: Path | None
    owned: bool  # opened here (and closed here), or the caller's connection


@dataclasses.dataclass(frozen=True)
class Column:
    """One readable column of a legacy table (generated ones included)."""

    name: str
    declared: str
    primary_key: int  # position in the primary key, 1-based; 0 when not part of it


@dataclasses.dataclass(frozen=True)
class Shape:
    """What a table (or view) of the legacy database looks like."""

    name: str
    is_view: bool
    strict: bool
    columns: list[Column]

    def where(self, source: Source) -> str:
        return f"{source.name}, table {self.name!r}"


def open_source(source: str | os.PathLike[str] | sqlite3.Connection) -> Source:
    """Open the legacy database read-only, or take the caller's open connection.

    Collations the app defined for itself (Anki's ``unicase``, say) are stood in for by
    plain code-point order on a connection opened here: the import reads whole tables
    and never compares by them, so their order does not matter, only that SQLite can
    plan the query.
    """
    if isinstance(source, sqlite3.Connection):
        path = _main_file(source)
        name = str(path) if path else "the legacy database (in memory)"
        return Source(source, name, path, owned=False)
    path = Path(source)
    if not path.exists():
        raise LegacyDatabaseError(f"no legacy database at {path}; check the path", path=str(path))
    if not path.is_file():
        raise LegacyDatabaseError(
            f"{path} is a folder, not the legacy database; give the database file itself",
            path=str(path),
        )
    opened = Source(connect_read_only_or_fail(path), str(path), path, owned=True)
    try:
        names = set(_collations(opened)) - _BUILTIN_COLLATIONS
        for collation in sorted(names):
            opened.conn.create_collation(collation, _code_point_order)
    except BaseException:
        opened.conn.close()
        raise
    return opened


def connect_read_only_or_fail(path: Path) -> sqlite3.Connection:
    try:
        return connect_read_only(path)
    except sqlite3.Error as exc:
        raise source_error(exc, Source(_closed(), str(path), path, True), table=None) from exc


def describe(source: Source, table: str) -> Shape:
    """The shape of ``table``, or a ConfigurationError that lists the tables there are."""
    try:
        found = source.conn.execute(
            "SELECT type FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?",
            (table,),
        ).fetchone()
        if found is None:
            known = sorted(
                name
                for (name,) in source.conn.execute(
                    "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
                    " AND name NOT LIKE 'sqlite~_%' ESCAPE '~'"
                )
            )
            raise ConfigurationError(
                f"{source.name} has no table {table!r}; it has {known}: give one of those "
                "as LegacyTable(table=...)"
            )
        rows = source.conn.execute(f"PRAGMA table_xinfo({quote(table)})").fetchall()
        strict = _is_strict(source, table)
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise source_error(exc, source, table=table) from exc
    # hidden: 0 an ordinary column, 2 and 3 generated ones (virtual, stored); 1 is a
    # virtual table's hidden column, which SELECT * leaves out too.
    columns = [Column(r[1], r[2] or "", r[5]) for r in rows if r[6] in (0, 2, 3)]
    return Shape(table, found[0] == "view", strict, columns)


def undecodable_column(exc: BaseException) -> str | None:
    """The column whose text SQLite could not decode as UTF-8, if that is what ``exc`` says."""
    found = _UNDECODABLE.search(str(exc))
    return found.group(1) if found else None


def source_error(
    exc: BaseException,
    source: Source,
    *,
    table: str | None,
    column: str | None = None,
    row: str | None = None,
) -> LegacyDatabaseError:
    """What went wrong reading ``source``, in words that say what to do; ``row`` names
    the row, where known."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    primary = code & 0xFF if isinstance(code, int) else None
    undecodable = undecodable_column(exc)
    if undecodable:
        column = undecodable
    where = source.name + (f", table {table!r}" if table else "")
    where += f", column {column!r}" if column else ""

    def error(message: str, *, retryable: bool = False) -> LegacyDatabaseError:
        return LegacyDatabaseError(
            f"{where}: {message}",
            path=str(source.path) if source.path else None,
            table=table,
            column=column,
            retryable=retryable,
        )

    untouched = "nothing was imported and the SDK's store is as it was"
    if undecodable:
        return error(
            f"{row or 'a row'} holds text that is not valid UTF-8, so it cannot become "
            "JSON; fix that row in the legacy file, or open the file yourself with a "
            "text_factory that decodes it (e.g. lambda b: b.decode('utf-8', 'replace')) "
            f"and pass the connection as source; {untouched}"
        )
    if "no query solution" in text or "no such collation" in text:
        names = sorted(set(_collations(source, table)) - _BUILTIN_COLLATIONS)
        return error(
            f"the table sorts rows by a collation the app defined for itself ({names}); "
            "open a new connection, register it there (conn.create_collation(name, "
            "function)) before any query, and pass that connection as source"
        )
    # READONLY_RECOVERY (264) and READONLY_ROLLBACK (776) are what a crash leaves; the
    # other READONLY codes mean a WAL file in a folder this program may not write.
    if code in (520, 1288, 1544):
        return error(
            "the legacy database is in WAL mode, and reading it needs its -shm file, which "
            "this program may not create in that folder; copy the file (with its -wal "
            f"file) to a folder it may write, and import the copy; {untouched}"
        )
    if primary == 8 or "readonly" in text or "read-only" in text:
        return error(
            "a crash left a transaction unfinished in the legacy database (its -journal "
            "or -wal file), and only a program that may write the file can undo it; open "
            "it once with the old app (or the sqlite3 tool) so that SQLite rolls it back, "
            f"then import again; {untouched}"
        )
    if primary in (5, 6) or "locked" in text:
        return error(
            "another program holds a lock on the legacy database; import again once the "
            f"old app has closed it; {untouched}",
            retryable=True,
        )
    if (
        primary in (11, 26)
        or isinstance(exc, UnicodeDecodeError)
        or any(sign in text for sign in ("malformed", "not a database"))
    ):
        return error(
            "the legacy database is damaged, or is not a SQLite database, so its rows "
            f"cannot be read; {untouched}. Recover what it holds with the sqlite3 tool "
            "(.recover) into a new file and import that one, or restore the app's backup"
        )
    if primary == 14 or "unable to open" in text:
        return error(
            "the legacy database cannot be opened; check that this program may read it "
            f"and the folder it is in; {untouched}"
        )
    if primary == 10 or "disk I/O" in text:
        return error(f"the disk could not be read; check it and import again; {untouched}")
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    return error(
        f"the legacy database could not be read (error {name}); check it with the sqlite3 "
        f"tool (PRAGMA integrity_check) and import again; {untouched}"
    )


def undecodable_row(
    source: Source, table: str, column: str, key_sql: str
) -> tuple[object, ...] | None:
    """The key values of the first row whose ``column`` is not valid UTF-8, if found.

    Only after a failed read: it reads the table again with text as raw bytes.
    """
    conn = source.conn
    previous = conn.text_factory
    conn.text_factory = bytes
    try:
        sql = f"SELECT {key_sql}, {quote(column)} FROM {quote(table)}"
        for *key, value in conn.execute(sql):
            if isinstance(value, bytes):
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    return tuple(
                        k.decode("utf-8", "replace") if isinstance(k, bytes) else k for k in key
                    )
    except sqlite3.Error:
        return None
    finally:
        conn.text_factory = previous
    return None


def quote(name: str) -> str:
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def _collations(source: Source, table: str | None = None) -> list[str]:
    sql = "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"
    params: tuple[str, ...] = ()
    if table is not None:
        sql += " AND tbl_name = ?"
        params = (table,)
    try:
        rows = source.conn.execute(sql, params).fetchall()
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise source_error(exc, source, table=table) from exc
    return [name.upper() for (text,) in rows for name in _COLLATE.findall(text)]


def _is_strict(source: Source, table: str) -> bool:
    try:  # PRAGMA table_list: SQLite >= 3.37, the first with STRICT tables
        rows = source.conn.execute(f"PRAGMA table_list({quote(table)})").fetchall()
    except sqlite3.Error:
        return False
    return any(row[1] == table and row[5] for row in rows)


def _main_file(conn: sqlite3.Connection) -> Path | None:
    try:
        rows = conn.execute("PRAGMA database_list").fetchall()
    except sqlite3.Error as exc:
        raise ConfigurationError(
            "the connection given as source cannot be used (is it closed?); give an open "
            "sqlite3 connection or the legacy file's path"
        ) from exc
    file = next((row[2] for row in rows if row[1] == "main"), "")
    return Path(file) if file else None


def _closed() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.close()
    return conn


def _code_point_order(a: str, b: str) -> int:
    return (a > b) - (a < b)
