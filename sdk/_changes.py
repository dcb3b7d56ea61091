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
from collections.abc import Callable, Iterable, Sequence

from sdk.contract import canonical_item_parts, multiset_add, multiset_checksum, multiset_hex

__all__ = [
    "acknowledge",
    "create_tables",
    "full_checksum",
    "local_checksum",
    "meta",
    "next_counter",
    "record_writes",
    "replace_rows",
    "row_digest",
    "set_meta",
    "settle_migration",
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


def row_digest(collection: str, key: str, data: str, updated_at: int, deleted: int) -> bytes:
    """The item digest of a stored row (its data is canonical JSON already)."""
    return hashlib.sha256(
        canonical_item_parts(collection, key, data, updated_at, bool(deleted))
    ).digest()


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
    found: dict[tuple[str, str], tuple[bytes, int]] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        pairs = ",".join(["(?, ?)"] * len(chunk))
        rows = conn.execute(
            f"WITH wanted(collection, key) AS (VALUES {pairs}) SELECT t.collection, t.key,"
            " t.digest, t.pending FROM wanted CROSS JOIN items AS t"
            " ON t.collection = wanted.collection AND t.key = wanted.key",
            [part for key in chunk for part in key],
        )
        found.update(((c, k), (d, p)) for c, k, d, p in rows)
    return found


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
            if previous is not None:
                delta = multiset_add(delta, previous[0], sign=-1)
            old[(row[0], row[1])] = (digest, 0)  # a key twice in one call: the later wins
            upserts.append((*row, digest))
        if upserts:
            counter = counter or next_counter(conn)
            conn.executemany(_UPSERT_PENDING, ((*u, counter) for u in upserts))
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
            replaced += 1
            delta = multiset_add(delta, digest)
            delta = multiset_add(delta, row_digest(*expected), sign=-1)
    _add_checksum(conn, delta)
    return replaced


def take_remote(
    conn: sqlite3.Connection,
    items: Sequence[tuple[Row, int]],
    *,
    only_if_pending: dict[tuple[str, str], int] | None = None,
) -> int:
    """Write cloud versions ``(row, seq)`` as in step with the cloud (pending 0, base
    ``seq``), never over an unpushed local change: a row pending locally is skipped, unless
    ``only_if_pending`` names the pending value it must still have (a conflict decided for
    the cloud's version, or a push answered ``unchanged``). Returns how many were written."""
    old = _existing(conn, [(r[0], r[1]) for r, _ in items])
    delta = 0
    written = 0
    upserts = []
    same: list[tuple[int, str, str]] = []
    for row, seq in items:
        key = (row[0], row[1])
        previous = old.get(key)
        allowed = 0 if only_if_pending is None else only_if_pending.get(key, 0)
        if previous is not None and previous[1] != 0 and previous[1] != allowed:
            continue  # an unpushed local edit: the push's conflict policy decides
        digest = row_digest(*row)
        if previous is not None and previous == (digest, 0):
            same.append((seq, key[0], key[1]))  # held already: only its base moves
            continue
        if previous is not None:
            delta = multiset_add(delta, previous[0], sign=-1)
        delta = multiset_add(delta, digest)
        old[key] = (digest, 0)
        upserts.append((*row, digest, seq))
        written += 1
    conn.executemany(_UPSERT_SYNCED, upserts)
    conn.executemany(
        "UPDATE items SET base_seq = ? WHERE collection = ? AND key = ? AND pending = 0", same
    )
    _add_checksum(conn, delta)
    return written


def acknowledge(conn: sqlite3.Connection, acks: Iterable[tuple[str, str, int, int]]) -> None:
    """The cloud holds what was pushed: ``(collection, key, pending sent, new base)``.
    A row written again since stays pending, now based on the version just pushed."""
    conn.executemany(
        "UPDATE items SET base_seq = ?3, pending = CASE WHEN pending = ?4 THEN 0 ELSE pending"
        " END WHERE collection = ?1 AND key = ?2",
        ((c, k, base, sent) for c, k, sent, base in acks),
    )


def settle_migration(
    conn: sqlite3.Connection,
    *,
    seq: int,
    prior_seq: int,
    counter: int,
    in_snapshot: Callable[[list[tuple[str, str]]], set[tuple[str, str]]],
) -> None:
    """After a verified migration committed at ``seq``: rows unchanged since the snapshot
    (pending at most the snapshot's ``counter``) are in the cloud now, based on ``seq``;
    rows the app wrote since stay pending, based on ``seq`` when the snapshot held them
    (the migrated version is what they replace) and on nothing when they are new."""
    conn.execute(
        "UPDATE items SET base_seq = ?, pending = 0 WHERE pending > 0 AND pending <= ?",
        (seq, counter),
    )
    later = [
        (c, k)
        for c, k in conn.execute("SELECT collection, key FROM items WHERE pending > ?", (counter,))
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
    " digest = excluded.digest, pending = excluded.pending"
)
_UPSERT_SYNCED = (
    "INSERT INTO items (collection, key, data, updated_at, deleted, digest, base_seq, pending)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (collection, key) DO UPDATE SET"
    " data = excluded.data, updated_at = excluded.updated_at, deleted = excluded.deleted,"
    " digest = excluded.digest, base_seq = excluded.base_seq, pending = 0"
)
