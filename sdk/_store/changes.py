"""What the store records with every write, for the sync: pending changes and a checksum.

Each row of ``items`` carries, besides its content:

- ``pending``: 0 when the cloud holds this content; otherwise the store's change counter
  at the write (``store_meta.change_counter``, one value per write transaction), so a
  push acknowledges exactly the version it sent, and a write made meanwhile stays pending
  (a row written around the SDK gets 1, so even that one is pushed);
- ``base_seq``: the seq of the cloud version this content derives from (``NULL``: the
  device never saw the item in the cloud), which a push sends as its base;
- ``digest``: the SHA-256 of the item's canonical encoding, so the running multiset
  checksum (``store_meta.local_checksum``, see :func:`sdk.contract.multiset_add`) follows
  every write in O(1) without re-reading the item.

Every function here runs inside the caller's write transaction (``LocalStore._writing``),
so a change is recorded in the same transaction as the write, or not at all::

    >>> import sqlite3
    >>> conn = sqlite3.connect(":memory:", isolation_level=None)
    >>> create_tables(conn)
    >>> record_writes(conn, [("c", "k", "{}", 1, 0)])
    1
    >>> conn.execute("SELECT pending, base_seq FROM items").fetchall()
    [(1, None)]
    >>> local_checksum(conn) == multiset_checksum([row_digest("c", "k", "{}", 1, 0)])
    True
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any, Literal, NamedTuple

from sdk._store import attachments as _attachments
from sdk._store.bulk import insert_columns
from sdk._store.rowcheck import UNVOUCHED_META, check_row, check_store, mark, row_digest, vouches
from sdk._wire.canonical import multiset_add, multiset_checksum, multiset_hex

__all__ = [
    "Pulled",
    "acknowledge",
    "create_tables",
    "full_checksum",
    "keyed_rows",
    "local_checksum",
    "meta",
    "next_counter",
    "rebuild",
    "record_writes",
    "repair",
    "replace_rows",
    "row_digest",
    "set_meta",
    "settle_migration",
    "settled",
    "take_pulled",
    "take_remote",
]

#: ``(collection, key, data_json, updated_at, deleted)``: an item as the store keeps it.
Row = tuple[str, str, str, int, int]

_CHUNK = 400  # keys per lookup: well within SQLite's bound-parameter limit


def create_tables(conn: sqlite3.Connection) -> None:
    """The sync's schema on a bare connection (the store's schema step, and doctests)."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    if "store_meta" not in tables:
        conn.execute("CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    if "items" not in tables:
        conn.execute(
            "CREATE TABLE items (collection TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL,"
            " updated_at INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,"
            " PRIMARY KEY (collection, key)) WITHOUT ROWID"
        )
    conn.execute("ALTER TABLE items ADD COLUMN base_seq INTEGER")
    conn.execute("ALTER TABLE items ADD COLUMN pending INTEGER NOT NULL DEFAULT 1")
    conn.execute("ALTER TABLE items ADD COLUMN digest BLOB")
    conn.execute("CREATE INDEX items_pending ON items (pending) WHERE pending > 0")
    # Conflicts of the sync that wait for the app (a manual policy, or a deferral).
    conn.execute(
        "CREATE TABLE sync_conflicts (collection TEXT NOT NULL, key TEXT NOT NULL,"
        " conflict TEXT NOT NULL, server_seq INTEGER NOT NULL, pending INTEGER NOT NULL,"
        " choice TEXT, item TEXT, PRIMARY KEY (collection, key)) WITHOUT ROWID"
    )
    # Every conflict the sync's policy (or the app) decided: what was overridden, and why.
    conn.execute(
        "CREATE TABLE sync_decisions (id INTEGER PRIMARY KEY, decided_at INTEGER NOT NULL,"
        " collection TEXT NOT NULL, key TEXT NOT NULL, choice TEXT NOT NULL,"
        " strategy TEXT NOT NULL, local TEXT NOT NULL, server TEXT NOT NULL,"
        " server_seq INTEGER NOT NULL)"
    )
    # Writes made around the SDK (plain SQL on ``items``) are caught by triggers: the row
    # becomes pending at a new change counter value with no digest, and the digest it had
    # waits here to leave the running checksum; a row deleted outright comes back as a
    # tombstone, so the deletion is synced too. :func:`repair` settles both.
    conn.execute(
        "CREATE TABLE sync_repairs (id INTEGER PRIMARY KEY, collection TEXT NOT NULL,"
        " key TEXT NOT NULL, digest BLOB, base_seq INTEGER, deleted_row INTEGER NOT NULL)"
    )
    conn.execute("CREATE INDEX items_undigested ON items (collection, key) WHERE digest IS NULL")
    for statement in _TRIGGERS:
        conn.execute(statement)
    # The push in flight: sent again, byte for byte, after a crash (applied once).
    conn.execute(
        "CREATE TABLE sync_outbox (push_id TEXT PRIMARY KEY, body TEXT NOT NULL,"
        " sent TEXT NOT NULL)"
    )
    # Items written before this step: pending (the cloud may not hold them), with digests.
    total = 0
    rows = conn.execute("SELECT collection, key, data, updated_at, deleted FROM items").fetchall()
    for row in rows:
        digest = row_digest(*row)
        total = multiset_add(total, digest)
        conn.execute(
            "UPDATE items SET digest = ?, pending = 1 WHERE collection = ? AND key = ?",
            (digest, row[0], row[1]),
        )
    set_meta(conn, change_counter=str(1 if rows else 0), local_checksum=multiset_hex(total))


#: A row's base as it leaves the watermark (see :func:`settled`): a row still in it with
#: no base of its own derives from the migration's seq.
_SETTLED_BASE = (
    "CASE WHEN {t}.base_seq IS NULL AND {t}.pending > 0 AND {t}.pending <= coalesce("
    "(SELECT CAST(value AS INTEGER) FROM store_meta WHERE key = 'settled_through'), 0)"
    " THEN (SELECT CAST(value AS INTEGER) FROM store_meta WHERE key = 'settled_seq')"
    " ELSE {t}.base_seq END"
)
_BUMP = "UPDATE store_meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'change_counter'"
_COUNTER = "(SELECT CAST(value AS INTEGER) FROM store_meta WHERE key = 'change_counter')"
#: The triggers that record writes made around the SDK (its own writes always set the
#: digest, so they never fire them).
_TRIGGERS = (
    f"""CREATE TRIGGER items_inserted_around AFTER INSERT ON items WHEN NEW.digest IS NULL
    BEGIN
        {_BUMP};
        UPDATE items SET pending = {_COUNTER}
        WHERE collection = NEW.collection AND key = NEW.key;
    END""",
    f"""CREATE TRIGGER items_updated_around
    AFTER UPDATE OF collection, key, data, updated_at, deleted ON items
    WHEN NEW.digest IS OLD.digest
    BEGIN
        INSERT INTO sync_repairs (collection, key, digest, base_seq, deleted_row)
        VALUES (OLD.collection, OLD.key, OLD.digest, NULL, 0);
        {_BUMP};
        UPDATE items SET digest = NULL, pending = {_COUNTER},
            base_seq = {_SETTLED_BASE.format(t="items")}
        WHERE collection = NEW.collection AND key = NEW.key;
    END""",
    f"""CREATE TRIGGER items_deleted_around AFTER DELETE ON items
    BEGIN
        INSERT INTO sync_repairs (collection, key, digest, base_seq, deleted_row)
        VALUES (OLD.collection, OLD.key, OLD.digest, {_SETTLED_BASE.format(t="OLD")}, 1);
    END""",
)


def repair(conn: sqlite3.Connection) -> int:
    """Settle what the triggers recorded of writes made around the SDK: digests that left
    are taken out of the running checksum, rows without a digest get one (their data
    rewritten canonically, the same JSON), a row deleted outright comes back as a pending
    tombstone. A row that is no valid item still gets a digest (the checksum counts it),
    and is listed in ``items_unchecked`` (the snapshot then checks it, and names it).
    Costs O(such writes); returns how many records (digests taken out, rows given one)
    it settled.

    >>> conn = sqlite3.connect(":memory:", isolation_level=None)
    >>> create_tables(conn)
    >>> _ = record_writes(conn, [("c", "k", '{"a":1}', 1, 0)])
    >>> _ = conn.execute("UPDATE items SET data = ?", ['{ "a": 2 }'])  # around the SDK
    >>> repair(conn), conn.execute("SELECT data FROM items").fetchone()
    (2, ('{"a":2}',))
    >>> local_checksum(conn) == multiset_checksum([row_digest("c", "k", '{"a":2}', 1, 0)])
    True
    """
    from sdk import _fastjson  # the parser the snapshot uses: the same canonical text

    delta = 0
    settled = 0
    gone = conn.execute(
        "SELECT id, collection, key, digest, base_seq, deleted_row FROM sync_repairs"
    ).fetchall()
    for ident, collection, key, digest, base, deleted_row in gone:
        if digest is not None:
            delta = multiset_add(delta, digest, sign=-1)
        conn.execute("DELETE FROM sync_repairs WHERE id = ?", (ident,))
        exists = conn.execute(
            "SELECT 1 FROM items WHERE collection = ? AND key = ?", (collection, key)
        ).fetchone()
        if deleted_row and not exists:
            tomb = (collection, key, "{}", _now_ms(), 1)
            tomb_digest = row_digest(*tomb)
            delta = multiset_add(delta, tomb_digest)
            conn.execute(_INSERT_TOMBSTONE, (*tomb, tomb_digest, base, next_counter(conn)))
            mark(conn, collection, key, vouched=not isinstance(check_row(tomb), str))
            _attachments.track(conn, [tomb[:3]])
        settled += 1
    for row in conn.execute(
        "SELECT collection, key, data, updated_at, deleted FROM items WHERE digest IS NULL"
    ).fetchall():
        collection, key, data, updated_at, deleted = row
        checked = check_row(row)
        if isinstance(checked, str):
            try:
                text = _fastjson.canonical_text(data)  # a tombstone may keep its data too
            except (TypeError, ValueError, RecursionError):
                text = data  # not JSON: the snapshot names it; the digest still counts it
            digest = row_digest(collection, key, text, updated_at, deleted)
        else:
            text = data if checked[1] is None else checked[1]
            digest = hashlib.sha256(checked[0]).digest()
        mark(conn, collection, key, vouched=not isinstance(checked, str))
        delta = multiset_add(delta, digest)
        conn.execute(
            "UPDATE items SET data = ?, digest = ? WHERE collection = ? AND key = ?",
            (text, digest, collection, key),
        )
        _attachments.track(conn, [(collection, key, text)])
        settled += 1
    _add_checksum(conn, delta)
    return settled


def _now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


def meta(conn: sqlite3.Connection, *keys: str) -> dict[str, str]:
    """Some ``store_meta`` values (absent keys are left out)."""
    marks = ",".join("?" * len(keys))
    rows = conn.execute(f"SELECT key, value FROM store_meta WHERE key IN ({marks})", keys)
    return dict(rows.fetchall())


def set_meta(conn: sqlite3.Connection, **values: str | None) -> None:
    """Write (or, with ``None``, remove) ``store_meta`` values."""
    for key, value in values.items():
        if value is None:
            conn.execute("DELETE FROM store_meta WHERE key = ?", (key,))
        else:
            conn.execute(
                "INSERT INTO store_meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )


def settled(conn: sqlite3.Connection) -> int:
    """The watermark a migration left: a row whose ``pending`` is at most this is in the
    cloud (based on ``settled_seq`` when its own ``base_seq`` is NULL). A row is pending
    when its ``pending`` is above it. 0 for a store never migrated.

    >>> conn = sqlite3.connect(":memory:", isolation_level=None)
    >>> create_tables(conn)
    >>> settled(conn)
    0
    """
    return int(meta(conn, "settled_through").get("settled_through", "0"))


def next_counter(conn: sqlite3.Connection) -> int:
    """A new change counter value (call once per write transaction)."""
    counter = int(meta(conn, "change_counter").get("change_counter", "0")) + 1
    set_meta(conn, change_counter=str(counter))
    return counter


def local_checksum(conn: sqlite3.Connection) -> int:
    """The running multiset checksum of every row of ``items``."""
    return int(meta(conn, "local_checksum").get("local_checksum", "0" * 64), 16)


def _add_checksum(conn: sqlite3.Connection, delta: int) -> None:
    if delta:
        set_meta(conn, local_checksum=multiset_hex(local_checksum(conn) + delta))


def _existing(
    conn: sqlite3.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[bytes, int]]:
    """``(digest, pending)`` of the rows among ``keys``."""
    return {(c, k): (d, p) for c, k, d, p in keyed_rows(conn, keys, "t.digest, t.pending")}


def keyed_rows(
    conn: sqlite3.Connection, keys: Sequence[tuple[str, str]], columns: str = ""
) -> Iterator[tuple[Any, ...]]:
    """``(collection, key, *columns)`` of the ``items`` rows among ``keys`` (``columns``
    names them on the alias ``t``), looked up by the primary key from a VALUES list, a
    chunk of keys at a time (an ``IN`` over pairs would scan the table per query)."""
    select = "t.collection, t.key" + (f", {columns}" if columns else "")
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        pairs = ",".join(["(?, ?)"] * len(chunk))
        yield from conn.execute(
            f"WITH wanted(collection, key) AS (VALUES {pairs}) SELECT {select}"
            " FROM wanted CROSS JOIN items AS t"
            " ON t.collection = wanted.collection AND t.key = wanted.key",
            [part for key in chunk for part in key],
        )


def _any_between(conn: sqlite3.Connection, low: tuple[str, str], high: tuple[str, str]) -> bool:
    """Whether any row lies in the key range: a page pulled into a new device's store
    (a bootstrap) falls where there is nothing yet, and then needs no lookup per key."""
    return (
        conn.execute(
            "SELECT 1 FROM items WHERE (collection, key) BETWEEN (?, ?) AND (?, ?) LIMIT 1",
            (*low, *high),
        ).fetchone()
        is not None
    )


def record_writes(conn: sqlite3.Connection, rows: Iterable[Row]) -> int:
    """The app's writes: upsert ``rows``, each pending at one new change counter value.
    A row whose content the store holds already is left as it is (no change to push).
    Returns how many rows changed."""
    counter = 0
    delta = 0
    changed = 0
    batch: list[Row] = []

    def flush() -> None:
        nonlocal counter, delta, changed
        old = _existing(conn, [(r[0], r[1]) for r in batch])
        upserts = []
        for row in batch:
            digest = row_digest(*row)
            previous = old.get((row[0], row[1]))
            if previous is not None and previous[0] == digest:
                continue
            delta = multiset_add(delta, digest)
            if previous is not None and previous[0] is not None:  # None: a damaged row
                delta = multiset_add(delta, previous[0], sign=-1)
            old[(row[0], row[1])] = (digest, 0)  # a key twice in one call: the later wins
            upserts.append((*row, digest))
        if upserts:
            counter = counter or next_counter(conn)
            conn.executemany(_UPSERT_PENDING, ((*u, counter) for u in upserts))
            _attachments.track(conn, ((u[0], u[1], u[2]) for u in upserts))
            changed += len(upserts)
        batch.clear()

    for row in rows:
        batch.append(row)
        if len(batch) >= _CHUNK:
            flush()
    if batch:
        flush()
    _add_checksum(conn, delta)
    return changed


def replace_rows(conn: sqlite3.Connection, pairs: Iterable[tuple[Row, Row]]) -> int:
    """For each ``(expected, new)``, write ``new`` where the row is still ``expected``,
    keeping its pending mark and base (the migration writes resolved conflicts so: they
    are committed by the migration itself). Returns how many were replaced."""
    replaced = 0
    delta = 0
    for expected, new in pairs:
        digest = row_digest(*new)
        cursor = conn.execute(
            "UPDATE items SET data = ?, updated_at = ?, deleted = ?, digest = ?"
            " WHERE collection = ? AND key = ? AND data = ? AND updated_at = ? AND deleted = ?",
            (new[2], new[3], new[4], digest, *expected),
        )
        if cursor.rowcount:
            _attachments.track(conn, [new[:3]])
            replaced += 1
            delta = multiset_add(delta, digest)
            delta = multiset_add(delta, row_digest(*expected), sign=-1)
    _add_checksum(conn, delta)
    return replaced


class Pulled(NamedTuple):
    """Pulled cloud versions as columns: each row ``(collections[i], keys[i], datas[i],
    stamps[i], deletes[i])`` at ``seqs[i]``, whose :func:`row_digest` is ``digests[i]``."""

    collections: Sequence[str]
    keys: Sequence[str]
    datas: Sequence[str]
    stamps: Sequence[int]
    deletes: Sequence[int]
    seqs: Sequence[int]
    digests: Sequence[bytes]

    @classmethod
    def of(cls, items: Sequence[tuple[Row, int]], digests: Sequence[bytes]) -> Pulled:
        """The columns of ``(row, seq)`` pairs and their rows' digests."""
        if not items:
            return cls((), (), (), (), (), (), ())
        collections, keys, datas, stamps, deletes = zip(*(row for row, _ in items), strict=True)
        return cls(collections, keys, datas, stamps, deletes, [seq for _, seq in items], digests)

    def items(self) -> list[tuple[Row, int]]:
        """The rows with their seqs, as :func:`take_remote` takes them."""
        rows = zip(self.collections, self.keys, self.datas, self.stamps, self.deletes, strict=True)
        return list(zip(rows, self.seqs, strict=True))


def take_pulled(conn: sqlite3.Connection, pulled: Pulled) -> int:
    """:func:`take_remote` of rows given as columns. Where the store holds none of their
    keys (a bootstrap's pages) they go in as they are, with no tuple per row.

    >>> conn = sqlite3.connect(":memory:")
    >>> _ = conn.execute("CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT)")
    >>> _ = conn.execute("CREATE TABLE items (collection, key, data, updated_at, deleted,"
    ...                  " digest, base_seq, pending, PRIMARY KEY (collection, key))")
    >>> take_pulled(conn, Pulled(["c"], ["k"], ["{}"], [1], [0], [7], [bytes(32)]))
    1
    >>> conn.execute("SELECT key, base_seq, pending FROM items").fetchall()
    [('k', 7, 0)]
    """
    if not pulled.keys:
        return 0
    keys = list(zip(pulled.collections, pulled.keys, strict=True))
    if _any_between(conn, min(keys), max(keys)):
        return _merge_remote(conn, pulled.items(), keys, None, pulled.digests)
    return _insert_pulled(conn, pulled)


def _insert_pulled(conn: sqlite3.Connection, pulled: Pulled) -> int:
    """Where the store holds none of these keys (a bootstrap): no lookups, no checks per
    row, one plain insert."""
    count = len(pulled.keys)
    insert_columns(conn, _INSERT_SYNCED, [*pulled[:5], pulled.digests, pulled.seqs, [0] * count])
    _attachments.track(conn, list(zip(pulled.collections, pulled.keys, pulled.datas, strict=True)))
    big: Literal["big"] = "big"
    total = sum(map(int.from_bytes, pulled.digests, repeat(big)))
    _add_checksum(conn, total % (1 << 256))
    return count


def take_remote(
    conn: sqlite3.Connection,
    items: Sequence[tuple[Row, int]],
    *,
    only_if_pending: dict[tuple[str, str], int] | None = None,
    digests: Sequence[bytes] | None = None,
) -> int:
    """Write cloud versions ``(row, seq)`` as in step with the cloud (pending 0, base
    ``seq``), never over an unpushed local change: a row pending locally is skipped, unless
    ``only_if_pending`` names the pending value it must still have (a conflict decided for
    the cloud's version, or a push answered ``unchanged``). ``digests``, when the caller
    has them already, are the rows' :func:`row_digest`. Returns how many were written."""
    if not items:
        return 0
    keys = [(r[0], r[1]) for r, _ in items]
    if digests is not None and not _any_between(conn, min(keys), max(keys)):
        return _insert_pulled(conn, Pulled.of(items, digests))
    return _merge_remote(conn, items, keys, only_if_pending, digests)


def _merge_remote(
    conn: sqlite3.Connection,
    items: Sequence[tuple[Row, int]],
    keys: list[tuple[str, str]],
    only_if_pending: dict[tuple[str, str], int] | None,
    digests: Sequence[bytes] | None,
) -> int:
    """:func:`take_remote` row by row, where the store may hold some of ``keys`` (the
    items' keys, in order)."""
    old = _existing(conn, keys)
    through = settled(conn)
    delta = 0
    written = 0
    upserts = []
    same: list[tuple[int, str, str, int]] = []
    for index, (row, seq) in enumerate(items):
        key = (row[0], row[1])
        previous = old.get(key)
        allowed = 0 if only_if_pending is None else only_if_pending.get(key, 0)
        if previous is not None and previous[1] > through and previous[1] != allowed:
            continue  # an unpushed local edit: the push's conflict policy decides
        digest = row_digest(*row) if digests is None else digests[index]
        if previous is not None and previous[0] == digest and previous[1] <= through:
            same.append((seq, key[0], key[1], through))  # held already: its base moves
            continue
        if previous is not None and previous[0] is not None:  # None: a damaged row
            delta -= int.from_bytes(previous[0], "big")
        delta += int.from_bytes(digest, "big")  # reduced once, below
        old[key] = (digest, 0)
        upserts.append((*row, digest, seq))
        written += 1
    conn.executemany(_UPSERT_SYNCED, upserts)
    _attachments.track(conn, (u[:3] for u in upserts))
    conn.executemany(
        "UPDATE items SET base_seq = ?, pending = 0 WHERE collection = ? AND key = ?"
        " AND pending <= ?",
        same,
    )
    _add_checksum(conn, delta % (1 << 256))
    return written


def acknowledge(conn: sqlite3.Connection, acks: Iterable[tuple[str, str, int, int]]) -> None:
    """The cloud holds what was pushed: ``(collection, key, pending sent, new base)``.
    A row written again since stays pending, now based on the version just pushed."""
    conn.executemany(
        "UPDATE items SET base_seq = ?3, pending = CASE WHEN pending = ?4 THEN 0 ELSE pending"
        " END WHERE collection = ?1 AND key = ?2",
        ((c, k, base, sent) for c, k, sent, base in acks),
    )


def rebuild(conn: sqlite3.Connection) -> int:
    """Recompute every row's digest and the running checksum from the rows themselves
    (O(items)): after damage the SDK could not see (a flipped byte in a digest, a write
    around it with triggers dropped). A row given a new digest keeps the store's voucher
    only if it checks out (``items_unchecked``). Returns the checksum."""
    total = 0
    cursor = conn.execute("SELECT collection, key, data, updated_at, deleted, digest FROM items")
    fixes = []
    while rows := cursor.fetchmany(2000):
        for collection, key, data, updated_at, deleted, stored in rows:
            digest = row_digest(collection, key, data, updated_at, deleted)
            total = multiset_add(total, digest)
            if digest != stored:
                fixes.append((digest, collection, key, data, updated_at, deleted))
    for digest, collection, key, data, updated_at, deleted in fixes:
        conn.execute(
            "UPDATE items SET digest = ? WHERE collection = ? AND key = ?",
            (digest, collection, key),
        )
        row = (collection, key, data, updated_at, deleted)
        mark(conn, collection, key, vouched=vouches(row, digest))
    if meta(conn, UNVOUCHED_META):  # rows digested before the store vouched: check them
        check_store(conn)
    set_meta(conn, local_checksum=multiset_hex(total))
    return total


def settle_migration(
    conn: sqlite3.Connection,
    *,
    seq: int,
    prior_seq: int,
    counter: int,
    in_snapshot: Callable[[list[tuple[str, str]]], set[tuple[str, str]]],
    user_id: str = "",
) -> None:
    """After a verified migration committed at ``seq``: rows unchanged since the snapshot
    (pending at most the snapshot's ``counter``) are in the cloud now, based on ``seq``
    (in O(1): the watermark); rows the app wrote since stay pending, based on ``seq`` when
    the snapshot held them (the migrated version is what they replace) and on nothing
    when they are new."""
    # Rows unchanged since the snapshot are not rewritten one by one (a million rows
    # would take seconds): the watermark says that every row pending at most ``counter``
    # is in the cloud, based on ``seq`` (see :func:`settled`).
    through = max(settled(conn), counter)
    set_meta(conn, settled_through=str(through), settled_seq=str(seq))
    later = [
        (c, k)
        for c, k in conn.execute(
            "SELECT collection, key FROM items WHERE pending > ? AND pending > 0", (counter,)
        )
    ]
    for start in range(0, len(later), _CHUNK):
        held = in_snapshot(later[start : start + _CHUNK])
        conn.executemany(
            "UPDATE items SET base_seq = ? WHERE collection = ? AND key = ?",
            ((seq, c, k) for c, k in held),
        )
    set_meta(
        conn,
        sync_cursor=str(seq),
        sync_seq=str(seq),
        sync_backfill_until=str(prior_seq) if prior_seq > 0 else None,
        sync_backfill_cursor=None,
        sync_user=user_id or None,
    )


def full_checksum(conn: sqlite3.Connection) -> tuple[int, int]:
    """The multiset checksum and row count recomputed from every row's content (not from
    the stored digests): what ``verify --full`` compares."""
    cursor = conn.execute("SELECT collection, key, data, updated_at, deleted FROM items")
    count = 0
    total = 0
    while rows := cursor.fetchmany(2000):
        total += multiset_checksum(row_digest(*r) for r in rows)
        count += len(rows)
    return total % (1 << 256), count


_UPSERT_PENDING = (
    "INSERT INTO items (collection, key, data, updated_at, deleted, digest, pending)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (collection, key) DO UPDATE SET"
    " data = excluded.data, updated_at = excluded.updated_at, deleted = excluded.deleted,"
    " digest = excluded.digest, pending = excluded.pending,"
    f" base_seq = {_SETTLED_BASE.format(t='items')}"
)
_INSERT_TOMBSTONE = (
    "INSERT INTO items (collection, key, data, updated_at, deleted, digest, base_seq, pending)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SYNCED = (  # for insert_rows
    "INSERT INTO items (collection, key, data, updated_at, deleted, digest, base_seq, pending)"
    " VALUES"
)
_UPSERT_SYNCED = (
    "INSERT INTO items (collection, key, data, updated_at, deleted, digest, base_seq, pending)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (collection, key) DO UPDATE SET"
    " data = excluded.data, updated_at = excluded.updated_at, deleted = excluded.deleted,"
    " digest = excluded.digest, base_seq = excluded.base_seq, pending = 0"
)
