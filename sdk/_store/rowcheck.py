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

import hashlib
import re
import sqlite3
from typing import Any

from sdk import _fastjson as fastjson
from sdk._wire.canonical import KEY_PATTERN, NAME_PATTERN, canonical_item_parts

__all__ = ["UNCHECKED_TABLE", "check_row", "check_store", "mark", "row_digest", "vouches"]

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


def check_store(conn: sqlite3.Connection) -> None:
    """The store's schema step that lists the rows it cannot vouch for: SDKs before it
    gave digests to rows written around them without checking them. Costs one check of
    every row, once.

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
    # Text is passed as bytes and decoded leniently here: a row holding bytes that are
    # not UTF-8 must be listed, not fail the store's upgrade.
    conn.create_function("sdk_vouches", 6, _vouches_for_sql)
    try:
        conn.execute(
            "INSERT OR IGNORE INTO items_unchecked SELECT collection, key FROM items"
            " WHERE digest IS NOT NULL AND NOT sdk_vouches(CAST(collection AS BLOB),"
            " CAST(key AS BLOB), CAST(data AS BLOB), updated_at, deleted, digest)"
        )
    finally:
        conn.create_function("sdk_vouches", 6, None)


def _vouches_for_sql(
    collection: bytes, key: bytes, data: bytes, updated_at: object, deleted: object, digest: object
) -> bool:
    def text(raw: object) -> object:
        return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw

    row = (text(collection), text(key), text(data), updated_at, deleted)
    return vouches(row, digest)
