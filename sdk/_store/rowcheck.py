"""Whether a row of ``items`` is an item the migration can send, and whether the store may
vouch for it.

The store vouches for a row when its ``digest`` was set by a write that checked it (the
SDK's own writes), or by a check that found it valid, canonical and matching its digest;
every other row with a digest (one written around the SDK and found invalid by
``repair``, one of a store written by an earlier SDK that does not check out) is listed
in ``items_unchecked``. A row inserted around the SDK together with a digest of its own
making looks like the SDK's write to the triggers, and is taken at its word, as the
sync's running checksum takes it. The snapshot formats a vouched-for row around its
data as it is and compares the hash with the digest (no parse, no re-encoding); only the
others are parsed and checked::

    >>> encoded, normalized = check_row(("cards", "k", '{"b":1, "a":2}', 5, 0))
    >>> encoded
    b'{"collection":"cards","data":{"a":2,"b":1},"deleted":false,"key":"k","updatedAt":5}'
    >>> normalized
    '{"a":2,"b":1}'
    >>> check_row(("cards", "k", "[1]", 5, 0))
    'data is not a JSON object'
    >>> vouches(("cards", "k", "{}", 5, 0), row_digest("cards", "k", "{}", 5, 0))
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
from typing import Any

from sdk import _fastjson as fastjson
from sdk._wire.canonical import KEY_PATTERN, NAME_PATTERN, canonical_item_parts

__all__ = [
    "UNCHECKED_TABLE",
    "UNVOUCHED_META",
    "check_row",
    "check_store",
    "lenient_text",
    "mark",
    "row_digest",
    "start_vouching",
    "vouches",
]

_NAME_RE = re.compile(NAME_PATTERN)
_KEY_RE = re.compile(KEY_PATTERN)

#: Rows holding a digest the store does not vouch for (see the module's docstring).
UNCHECKED_TABLE = (
    "CREATE TABLE IF NOT EXISTS items_unchecked (collection TEXT NOT NULL, key TEXT NOT NULL,"
    " PRIMARY KEY (collection, key)) WITHOUT ROWID"
)


def row_digest(collection: str, key: str, data: str, updated_at: int, deleted: int) -> bytes:
    """The item digest of a stored row (its data is canonical JSON already)."""
    return hashlib.sha256(
        canonical_item_parts(collection, key, data, updated_at, bool(deleted))
    ).digest()


def check_row(row: tuple[Any, ...]) -> tuple[bytes, str | None] | str:
    """The canonical bytes of an item row ``(collection, key, data, updated_at, deleted)``
    and, when its data text is not canonical JSON, the canonical text to store instead;
    or what is wrong with the row."""
    collection, key, data, updated_at, deleted = row
    if type(collection) is not str or not _NAME_RE.fullmatch(collection):
        return "invalid collection name"
    if type(key) is not str or not _KEY_RE.fullmatch(key):
        return "invalid key"
    if type(updated_at) is not int or updated_at < 0:
        return f"updated_at must be an integer >= 0, is {updated_at!r}"
    if type(deleted) is not int or deleted not in (0, 1):
        return f"deleted must be 0 or 1, is {deleted!r}"
    try:
        value = fastjson.loads(data) if type(data) is str else None
    except (ValueError, RecursionError):
        return "data is not valid JSON"
    if type(value) is not dict:
        return "data is not a JSON object"
    try:
        text = fastjson.canonical(value)
        canonical = canonical_item_parts(collection, key, text, updated_at, bool(deleted))
        return canonical, (None if text == data else text)
    except UnicodeEncodeError:
        return "holds text that is not valid UTF-8"
    except (ValueError, TypeError, RecursionError) as exc:
        return f"data cannot be encoded canonically ({exc})"


def vouches(row: tuple[Any, ...], digest: object) -> bool:
    """Whether the store may vouch for ``row`` with ``digest``: a valid item, its data
    canonical already, and ``digest`` its item digest."""
    checked = check_row(row)
    return (
        not isinstance(checked, str)
        and checked[1] is None
        and hashlib.sha256(checked[0]).digest() == digest
    )


def mark(conn: sqlite3.Connection, collection: object, key: object, *, vouched: bool) -> None:
    """Record whether the store vouches for the row's digest (called where a digest is
    given to a row no write of the SDK checked). Without ``items_unchecked`` (a bare
    connection, before :func:`check_store` ran) the store vouches for no row at all, so
    there is nothing to record."""
    if vouched:
        sql, args = (
            "DELETE FROM items_unchecked WHERE collection = ? AND key = ?",
            (collection, key),
        )
    else:
        sql, args = "INSERT OR IGNORE INTO items_unchecked VALUES (?, ?)", (collection, key)
    try:
        conn.execute(sql, args)
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise


#: ``store_meta`` key: the store holds rows digested before it vouched for digests.
UNVOUCHED_META = "unvouched_rows"


def start_vouching(conn: sqlite3.Connection) -> None:
    """The store's schema step: from now on it vouches for the digests it checked. SDKs
    before it gave digests to rows written around them without checking them, so a store
    that already holds digested rows vouches for none (``UNVOUCHED_META``): its
    snapshots check every row, as before, until :func:`check_store` has. The step costs
    O(1) when the app opens the store (checking every row took 3 s at 1M items).

    >>> conn = sqlite3.connect(":memory:")
    >>> _ = conn.execute("CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT)")
    >>> _ = conn.execute("CREATE TABLE items (collection, key, digest)")
    >>> _ = conn.execute("INSERT INTO items VALUES ('c', 'k', x'00')")
    >>> start_vouching(conn)
    >>> conn.execute("SELECT value FROM store_meta").fetchall()
    [('1',)]
    """
    conn.execute(UNCHECKED_TABLE)
    if conn.execute("SELECT 1 FROM items WHERE digest IS NOT NULL LIMIT 1").fetchone():
        conn.execute(
            "INSERT OR REPLACE INTO store_meta (key, value) VALUES (?, '1')", [UNVOUCHED_META]
        )


def check_store(conn: sqlite3.Connection) -> None:
    """List the rows the store cannot vouch for, after one check of every row (O(items)),
    and vouch for the others from then on (``UNVOUCHED_META`` goes).

    >>> conn = sqlite3.connect(":memory:")
    >>> _ = conn.execute("CREATE TABLE items (collection, key, data, updated_at, deleted,"
    ...                  " digest, PRIMARY KEY (collection, key)) WITHOUT ROWID")
    >>> _ = conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", [
    ...     ("c", "good", "{}", 1, 0, row_digest("c", "good", "{}", 1, 0)),
    ...     ("c", "array", "[]", 1, 0, row_digest("c", "array", "[]", 1, 0)),
    ...     ("c", "spaced", "{ }", 1, 0, row_digest("c", "spaced", "{ }", 1, 0))])
    >>> check_store(conn)
    >>> conn.execute("SELECT key FROM items_unchecked").fetchall()
    [('array',), ('spaced',)]
    """
    conn.execute(UNCHECKED_TABLE)
    factory = conn.text_factory
    try:
        try:
            listed = _unvouched(conn)
        except sqlite3.OperationalError as exc:
            if "Could not decode" not in str(exc):  # sqlite3's "Could not decode to UTF-8"
                raise
            # Bytes that are not UTF-8 (damage): such a row is listed, not fatal to the
            # store's upgrade. Only then is every value decoded in Python.
            conn.text_factory = lenient_text
            listed = _unvouched(conn)
    finally:
        conn.text_factory = factory
    # Keys go back as the bytes they were read from, whatever damage they hold.
    conn.executemany(
        "INSERT OR IGNORE INTO items_unchecked VALUES (CAST(? AS TEXT), CAST(? AS TEXT))",
        [
            (c.encode("utf-8", "surrogateescape"), k.encode("utf-8", "surrogateescape"))
            for c, k in listed
        ],
    )
    with contextlib.suppress(sqlite3.OperationalError):  # a bare connection: no meta
        conn.execute("DELETE FROM store_meta WHERE key = ?", [UNVOUCHED_META])


def _unvouched(conn: sqlite3.Connection) -> list[tuple[Any, Any]]:
    """The keys of the rows with a digest the store cannot vouch for. The common row
    (text fields, data already canonical JSON) costs one orjson round trip and a hash."""
    listed = []
    sha256, canonical_text = hashlib.sha256, fastjson.canonical_text
    name_ok, key_ok = _NAME_RE.fullmatch, _KEY_RE.fullmatch
    for row in conn.execute(
        "SELECT collection, key, data, updated_at, deleted, digest FROM items"
        " WHERE digest IS NOT NULL"
    ):
        collection, key, data, updated_at, deleted, digest = row
        if (
            type(collection) is str
            and type(key) is str
            and type(data) is str
            and type(updated_at) is int
            and updated_at >= 0
            and (deleted == 0 or deleted == 1)
            and type(deleted) is int
            and name_ok(collection)
            and key_ok(key)
            and data[:1] == "{"
        ):
            try:
                if canonical_text(data) == data:  # an object, canonical already
                    item = canonical_item_parts(collection, key, data, updated_at, bool(deleted))
                    if sha256(item).digest() == digest:
                        continue
            except (ValueError, TypeError, RecursionError):
                pass  # the full check below decides
        if not vouches(row[:5], digest):
            listed.append((collection, key))
    return listed


def lenient_text(raw: bytes) -> str:
    """A text factory for sqlite3: bytes that are not UTF-8 become lone surrogates, so a
    check can name the row instead of the cursor failing on the whole query."""
    return raw.decode("utf-8", "surrogateescape")
