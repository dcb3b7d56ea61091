"""The snapshot's one pass over the copy: every item row checked, its digest in the dataset
checksum, its encoded length in the batch plan.

A row the store vouches for (see :mod:`sdk._store.rowcheck`) costs no parse and no
re-encoding here: the item is formatted around its data as it is and hashed, and when
that gives the row's digest the row is the valid, canonical item the store vouched for.
The hash stays: it is what finds a row changed since (damage SQLite does not see, a
digest written by hand). Any other row is parsed, checked and encoded as the server
would, and named if it is invalid. Each batch of the plan records the SHA-256 over its
items' digests; rebuilding the batch (``Snapshot._prepare``) hashes every item again and
compares, so damage to the snapshot file is found before the batch is sent::

    >>> import sqlite3
    >>> conn = sqlite3.connect(":memory:", isolation_level=None)
    >>> _ = conn.execute("CREATE TABLE items (collection, key, data, updated_at, deleted,"
    ...                  " digest, PRIMARY KEY (collection, key)) WITHOUT ROWID")
    >>> _ = conn.execute("INSERT INTO items VALUES ('c', 'k', '{ }', 1, 0, NULL)")
    >>> for statement in PLAN_SCHEMA:
    ...     _ = conn.execute(statement)
    >>> planner, invalid, problems = scan_items(conn, 10, 1 << 20)
    >>> invalid, conn.execute("SELECT item_count, byte_count FROM snapshot_batches").fetchall()
    (0, [(1, 80)])
    >>> conn.execute("SELECT data FROM temp.normalized").fetchall()
    [('{}',)]
"""

from __future__ import annotations

import hashlib
import operator
import re
import sqlite3
from collections.abc import Iterable
from itertools import islice
from json.encoder import encode_basestring as _quote  # what the contract quotes with
from typing import Any

from sdk import _fastjson as fastjson
from sdk._errors import SnapshotError
from sdk._store.local import item_label
from sdk._store.rowcheck import UNVOUCHED_META, check_row, lenient_text
from sdk._wire.canonical import KEY_PATTERN, batch_body

__all__ = [
    "BATCHES_TABLE",
    "ENVELOPE",
    "MAX_PROBLEMS",
    "PAGE",
    "PLAN_SCHEMA",
    "Planner",
    "encode_rows",
    "items_checksum",
    "scan_items",
]

ENVELOPE = len(batch_body([]))  # b'{"items":[]}'
MAX_PROBLEMS = 5  # invalid items named in the error
PAGE = 1000  # rows read per lock hold when scanning a snapshot, or written in one call
_JSON_BOOL = {0: "false", 1: "true"}  # the JSON of the deleted column: no other value
#: An item's bytes besides its head, data, key and stamp, when not deleted.
_ITEM_FIXED = len(',"deleted":false,"key":"","updatedAt":}')
_KEY_OK = re.compile(KEY_PATTERN).fullmatch

#: The plan: a row a batch (in the snapshot's file, and where the scan writes it).
BATCHES_TABLE = """snapshot_batches (
    seq INTEGER PRIMARY KEY,
    first_collection TEXT NOT NULL,
    first_key TEXT NOT NULL,
    item_count INTEGER NOT NULL,
    byte_count INTEGER NOT NULL,
    checksum TEXT NOT NULL
)"""
#: What the scan writes, in temporary tables: the store it reads may be read-only.
PLAN_SCHEMA = (
    f"CREATE TEMP TABLE {BATCHES_TABLE}",
    "CREATE TEMP TABLE normalized (collection TEXT, key TEXT, data TEXT)",
)

# The digests the store vouches for: none in a store that no SDK with ``items_unchecked``
# opened yet (nor in one without digests); in others every digest but those listed.
_SCAN = (
    "SELECT collection, key, NULL, data, updated_at, deleted FROM items ORDER BY collection, key"
)
_SCAN_STORED = (
    "SELECT collection, key, digest, data, updated_at, deleted FROM items ORDER BY collection, key"
)
_SCAN_UNLISTED = (
    "SELECT i.collection, i.key, iif(u.key IS NULL, i.digest, NULL), i.data, i.updated_at,"
    " i.deleted FROM items AS i LEFT JOIN items_unchecked AS u"
    " ON u.collection = i.collection AND u.key = i.key ORDER BY i.collection, i.key"
)


def _scan_sql(conn: sqlite3.Connection) -> str:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    columns = {row[1] for row in conn.execute("PRAGMA table_info(items)")}
    if "items_unchecked" not in tables or "digest" not in columns:
        return _SCAN
    if conn.execute("SELECT 1 FROM store_meta WHERE key = ?", [UNVOUCHED_META]).fetchone():
        return _SCAN  # rows digested before the store vouched for digests
    listed = conn.execute("SELECT 1 FROM items_unchecked LIMIT 1").fetchone()
    return _SCAN_UNLISTED if listed else _SCAN_STORED


def encode_rows(rows: Iterable[tuple[Any, ...]]) -> list[bytes]:
    """The canonical items of snapshot rows ``(collection, key, data, updated_at,
    deleted)`` whose data is canonical JSON: :func:`~sdk.contract.canonical_item_parts`
    byte for byte, in half its time (the text before the data is made once per
    collection). A field of the wrong type raises ``KeyError``, ``TypeError`` or
    ``ValueError``.

    >>> from sdk._wire.canonical import canonical_item_parts
    >>> encode_rows([("c", 'k"\u00e9', '{"a":1}', 5, 1)]) == [
    ...     canonical_item_parts("c", 'k"\u00e9', '{"a":1}', 5, True)]
    True
    """
    encoded = []
    head_collection = head = ""
    for collection, key, data, updated_at, deleted in rows:
        if collection != head_collection or not head:
            head, head_collection = _item_head(collection), collection
        encoded.append(
            (
                f'{head}{data},"deleted":{_JSON_BOOL[deleted]},"key":{_quote(key)},'
                f'"updatedAt":{updated_at:d}}}'
            ).encode()
        )
    return encoded


def items_checksum(digests: list[bytes]) -> str:
    """What the plan records of a batch: the SHA-256 over its items' digests, in order.

    >>> items_checksum([]) == hashlib.sha256(b"").hexdigest()
    True
    """
    return hashlib.sha256(b"".join(digests)).hexdigest()


def scan_items(
    conn: sqlite3.Connection,
    batch_size: int,
    max_batch_bytes: int,
    *,
    trust: bool = False,
    batch_bytes: int | None = None,
) -> tuple[Planner, int, list[str]]:
    """Check and plan every item row in ``(collection, key)`` order; rows whose data is
    not canonical JSON are noted in ``temp.normalized``. Returns the planner, the number
    of invalid rows and the first of their problems. Of the file, only ``snapshot_batches``
    is written (a row a batch), so another connection may check it meanwhile.

    sqlite3 decodes text itself (in C) unless told otherwise, and fails the scan on bytes
    that are not UTF-8. Only then is the scan redone, decoding such bytes leniently so that
    the item is named: a Python text factory on every value costs about 5% of a snapshot.

    A batch closes before its body would pass ``batch_bytes`` (default: the hard limit,
    ``max_batch_bytes``); an item larger than that alone still travels, in a batch of its
    own, as long as it fits ``max_batch_bytes``.

    With ``trust``, a row the store vouches for is planned with its stored digest and its
    encoded length, worked out from its fields' lengths without encoding or hashing the
    item; rebuilding each batch to send it (``Snapshot._prepare``) is then the one check
    of such a row, and ``Planner.trusted`` says so.
    """
    sql = _scan_sql(conn)
    budget = min(batch_bytes or max_batch_bytes, max_batch_bytes)
    conn.execute("SAVEPOINT scan")
    try:
        scan = _scan_rows(conn, sql, batch_size, max_batch_bytes, budget, trust)
    except sqlite3.OperationalError as exc:
        if "Could not decode" not in str(exc):  # sqlite3's "Could not decode to UTF-8 ..."
            raise
        conn.execute("ROLLBACK TO scan")
        conn.text_factory = lenient_text
        scan = _scan_rows(conn, sql, batch_size, max_batch_bytes, budget, trust)
    conn.execute("RELEASE scan")
    return scan


def _scan_rows(
    conn: sqlite3.Connection,
    sql: str,
    batch_size: int,
    max_batch_bytes: int,
    batch_bytes: int,
    trust: bool,
) -> tuple[Planner, int, list[str]]:
    """One pass of :func:`scan_items` with the connection's text factory: a batch closes
    at ``batch_bytes``, and an item is too large beyond ``max_batch_bytes``.

    A row the store vouches for is encoded around its data as it is (no parse) and
    hashed: when that gives the row's digest, the row is the valid, canonical item the
    store vouched for, unchanged since (any change of a field changes the encoding;
    only an integer ``deleted`` of 0 or 1 encodes); with ``trust``, such a row of text
    data and an integer stamp is taken as vouched for, and only its length is worked
    out (a text of ASCII only is as long in UTF-8). Any other row is checked by
    :func:`_check`. The plan's bookkeeping is inlined below (this loop runs once per
    item; a method call per item cost a sixth of the scan); :class:`Planner` closes the
    batches.
    """
    planner = Planner(conn, batch_size, max_batch_bytes)
    planner.trusted = trust = trust and sql != _SCAN
    digests = planner.digests  # of the batch being planned
    collections = planner.collections
    heads: dict[str, str] = {}  # collection checked by check_row -> its item head
    sha256 = hashlib.sha256
    normalized_rows: list[tuple[str, str, str]] = []  # for temp.normalized, a page at a time
    problems: list[str] = []
    invalid = 0
    count = 0  # items planned
    collection_start = 0  # count when the current collection began
    last_collection = last_key = head_collection = head = ""
    head_size = 0  # of the item head, and of the rest of an item around its fields
    first = ("", "")
    size_sum = 0  # bytes of the batch being planned
    head_sizes: dict[str, int] = {}  # collection -> head_size, for _trusted_batch
    cursor = conn.execute(sql)
    while True:
        if len(digests) == batch_size:  # full: closed before the next row, as below
            planner.close(first, size_sum)
        # A fetch ends where the batch would: a whole batch of rows taken as vouched
        # for, in the collection already begun, is planned at once; the others (and so
        # each collection's first batch) a row at a time.
        rows = cursor.fetchmany(batch_size - len(digests))
        if not rows:
            break
        if trust and not digests and not invalid and rows[0][0] == last_collection:
            whole = _trusted_batch(rows, last_key, head_sizes, batch_bytes)
            if whole is not None:
                last_key, stored_digests, size_sum = whole
                first = (last_collection, rows[0][1])
                count += len(rows)
                digests.extend(stored_digests)
                continue
        for row in rows:
            collection, key, stored, data, updated_at, deleted = row
            digest = None
            if stored is not None and type(deleted) is int:
                try:
                    if collection != head_collection:
                        head = _item_head(collection)
                        head_size = len(head.encode()) + _ITEM_FIXED
                        head_collection = collection
                    if trust and type(data) is str and type(key) is str and type(updated_at) is int:
                        digest = stored
                        size = (
                            head_size
                            + (len(data) if data.isascii() else len(data.encode()))
                            + len(str(updated_at))
                            - deleted
                            + (
                                len(key)
                                if key.isascii() and '"' not in key and "\\" not in key
                                else len(_quote(key).encode()) - 2
                            )
                        )
                    else:
                        item = (
                            f'{head}{data},"deleted":{_JSON_BOOL[deleted]},"key":{_quote(key)},'
                            f'"updatedAt":{updated_at:d}}}'
                        ).encode()
                        digest = sha256(item).digest()
                        if digest == stored:
                            size = len(item)
                        else:
                            digest = None
                except (KeyError, TypeError, ValueError):
                    digest = None  # changed since the store vouched for it: checked below
            if digest is None:
                result = _check(row, heads)
                if isinstance(result, str):
                    invalid += 1
                    if len(problems) < MAX_PROBLEMS:
                        problems.append(f"{item_label(collection, key)}: {result}")
                    continue
                encoded, normalized = result
                digest, size = sha256(encoded).digest(), len(encoded)
                if normalized is not None and not invalid:
                    normalized_rows.append((collection, key, normalized))
                    if len(normalized_rows) == PAGE:
                        _save_normalized(conn, normalized_rows)
            if invalid:  # once an item is bad the snapshot fails: stop planning
                continue
            if collection == last_collection:
                if key <= last_key:
                    _out_of_order(collection, key)
            else:
                if collection < last_collection:
                    _out_of_order(collection, key)
                if count:
                    collections[last_collection] = count - collection_start
                last_collection, collection_start = collection, count
            last_key = key
            count += 1
            if digests and (len(digests) == batch_size or size_sum + 1 + size > batch_bytes):
                planner.close(first, size_sum)
            if digests:
                size_sum += 1 + size
            else:
                if ENVELOPE + size > max_batch_bytes:
                    raise SnapshotError(
                        f"item {item_label(collection, key)} is {size} bytes encoded, "
                        f"too large for a batch of max_batch_bytes={max_batch_bytes}; raise "
                        "max_batch_bytes (within the server's limit) or split the item's data"
                    )
                first, size_sum = (collection, key), ENVELOPE + size
            digests.append(digest)
    if count and not invalid:
        collections[last_collection] = count - collection_start
        if digests:
            planner.close(first, size_sum)
    _save_normalized(conn, normalized_rows)
    planner.item_count = count
    return planner, invalid, problems


def _trusted_batch(
    rows: list[tuple[Any, ...]], after: str, head_sizes: dict[str, int], max_batch_bytes: int
) -> tuple[str, list[bytes], int] | None:
    """A whole batch of rows planned at once, when the store vouches for every one, all
    are of one collection in strictly ascending keys after ``after``, and they fit
    ``max_batch_bytes``: their last key, stored digests and body's bytes, worked out
    from the fields' total lengths. ``None`` otherwise: the rows are then planned one by
    one, which also names what is wrong. (Only the lengths are trusted here: rebuilding
    the batch checks every item against its digest, as in the one-by-one plan.)"""
    collections, keys, stored, data, stamps, deleted = zip(*rows, strict=True)
    collection = collections[0]
    if collections.count(collection) != len(rows) or None in stored:
        return None
    try:
        head_size = head_sizes.get(collection)
        if head_size is None:
            head_size = head_sizes[collection] = len(_item_head(collection).encode()) + _ITEM_FIXED
        texts, names = "".join(data), "".join(keys)
        if keys[0] <= after or not all(map(operator.lt, keys, islice(keys, 1, None))):
            return None
        low, high = min(stamps), max(stamps)
        digits = len(str(low))
        if type(low) is not int or low < 0 or digits != len(str(high)):
            digits_total = sum(map(len, map(str, stamps)))
        else:
            digits_total = digits * len(rows)
        size = (
            ENVELOPE
            + len(rows) * (head_size + 1)
            - 1  # the commas between items
            + (len(texts) if texts.isascii() else len(texts.encode()))
            + (
                len(names)
                if names.isascii() and '"' not in names and "\\" not in names
                else sum(len(_quote(key).encode()) - 2 for key in keys)
            )
            + digits_total
            - sum(deleted)
        )
    except (TypeError, ValueError):  # a field of another type: planned one by one
        return None
    if size > max_batch_bytes:
        return None
    return keys[-1], list(stored), size


def _check(row: tuple[Any, ...], heads: dict[str, str]) -> tuple[bytes, str | None] | str:
    """The canonical bytes of a row the store does not vouch for and, when its data is
    not canonical JSON, the canonical text to store instead; or what is wrong with it.

    The common row (a collection already seen, fields of the right types, data that
    parses to an object and encodes) is encoded right here; any other goes through
    :func:`~sdk._store.rowcheck.check_row`, which gives the same answer for a valid row
    and says what is wrong with an invalid one; it is also what checks each collection
    name, on its first row (``heads`` then holds it).
    """
    collection, key, _, data, updated_at, deleted = row
    head = heads.get(collection)
    if (
        head is not None
        and type(key) is str
        and _KEY_OK(key)
        and type(updated_at) is int
        and updated_at >= 0
        and type(deleted) is int
        and (deleted == 0 or deleted == 1)
        and type(data) is str
    ):
        try:
            text = fastjson.canonical_text(data)
            if text[0] == "{":  # an object: nothing else prints so
                encoded = (
                    f'{head}{text},"deleted":{_JSON_BOOL[deleted]},"key":{_quote(key)},'
                    f'"updatedAt":{updated_at}}}'
                ).encode()
                return encoded, (None if text == data else text)
        except (ValueError, TypeError, RecursionError):
            pass  # check_row names the problem
    result = check_row((collection, key, data, updated_at, deleted))
    if not isinstance(result, str) and collection not in heads:
        heads[collection] = _item_head(collection)
    return result


def _out_of_order(collection: str, key: str) -> None:
    # A damaged page can hold a key out of order, which quick_check does not look at;
    # the batches (and the server) need strictly ascending keys. This is what
    # integrity_check would report, and the snapshot names the store as damaged.
    raise sqlite3.DatabaseError(
        f"database disk image is malformed: items out of order at {item_label(collection, key)}"
    )


def _save_normalized(conn: sqlite3.Connection, rows: list[tuple[str, str, str]]) -> None:
    """Move rows whose data is to be rewritten into ``temp.normalized``, in one call."""
    conn.executemany("INSERT INTO temp.normalized VALUES (?, ?, ?)", rows)
    rows.clear()


def _item_head(collection: str) -> str:
    """The canonical item's text before its data, for a valid collection name; the rest
    follows as in :func:`~sdk.contract.canonical_item_parts`:

    >>> from sdk._wire.canonical import canonical_item_parts
    >>> text = _item_head("cards") + '{},"deleted":true,"key":"k\u00e9","updatedAt":5}'
    >>> text.encode() == canonical_item_parts("cards", "k\u00e9", "{}", 5, True)
    True
    """
    return f'{{"collection":{_quote(collection)},"data":'


class Planner:
    """What the scan plans: batches closed into ``snapshot_batches``, the dataset
    checksum, counts per collection; one small object per batch, none per item."""

    def __init__(self, conn: sqlite3.Connection, batch_size: int, max_bytes: int) -> None:
        self.conn = conn
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.dataset = hashlib.sha256()
        self.collections: dict[str, int] = {}
        self.item_count = 0
        self.seq = 0
        self.trusted = False  # whether vouched-for digests were taken as they are
        self.digests: list[bytes] = []  # of the batch being planned, in order

    def close(self, first: tuple[str, str], size: int) -> None:
        """Record the batch of :attr:`digests` (``first``: its first key; ``size``: its
        body's bytes) and start the next."""
        digests = self.digests
        joined = b"".join(digests)
        self.dataset.update(joined)  # the digests in order, a batch at a time
        checksum = hashlib.sha256(joined).hexdigest()  # what items_checksum gives
        self.conn.execute(
            "INSERT INTO snapshot_batches VALUES (?, ?, ?, ?, ?, ?)",
            (self.seq, *first, len(digests), size, checksum),
        )
        self.seq += 1
        digests.clear()
