"""The embedded storage backend: one SQLite file in the data folder.

One connection, shared by the server's worker threads, behind one re-entrant lock: a
statement or transaction runs alone, so a reader never sees another thread's
uncommitted writes. WAL journaling keeps the file durable across a killed process and
lets other processes (the CLI's ``seed``) read while the server writes; writers take the
write lock up front (``BEGIN IMMEDIATE``) and wait up to the busy timeout for each other.
The schema is versioned with sqlite-utils ``Migrations``, one transaction per step::

    >>> storage = SQLiteStorage.in_memory()
    >>> storage.cloud_items("alice", [("lessons", "l1")])
    {}
    >>> storage.close()
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

from sqlite_utils import Database, Migrations

from backend_stub.events import Event, EventType
from backend_stub.storage import (
    Backlog,
    Batch,
    CloudItem,
    Conflict,
    DuplicateBatch,
    DuplicateItem,
    DuplicateSession,
    Key,
    NewItems,
    PullPage,
    PushRecord,
    Session,
    StagedItem,
    StagedTally,
    SyncedItem,
    SyncHead,
    VersionConflict,
)
from backend_stub.storage.blobs import BlobStore, BlobUrls
from backend_stub.storage.sqlite_blobs import BLOBS_SCHEMA, FileBlobs
from backend_stub.storage.sqlite_checkpoints import Checkpointer
from sdk._store.bulk import insert_columns, insert_rows
from sdk.contract import (
    CompleteMigrationResponse,
    ItemVersion,
    Manifest,
    MigrationConfig,
    SessionStatus,
    canonical_item_parts,
    multiset_add,
    multiset_checksum,
    multiset_hex,
)

__all__ = ["BLOBS_FOLDER", "DATABASE_NAME", "SQLiteStorage"]

#: File name of the database inside the data folder.
DATABASE_NAME = "migration-server.sqlite"
#: The folder of attachments inside the data folder.
BLOBS_FOLDER = "blobs"

# Large IN lists are split so a batch never passes SQLite's bound-parameter limit.
_KEYS_PER_QUERY = 400

_FINAL = tuple(s.value for s in SessionStatus if s.is_final)

migrations = Migrations("backend_stub")


@migrations()
def m001_initial(db: Database) -> None:
    # Statement by statement: executescript() would commit the migration's transaction.
    for statement in _INITIAL_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


@migrations()
def m002_staged_parts(db: Database) -> None:
    # Staged items keep the cloud's parts (data, updated_at, deleted) instead of the
    # whole item text, so that completion copies them without cutting anything.
    db.execute(
        "CREATE TABLE staged_items_v2 ("
        " session_id TEXT NOT NULL, collection TEXT NOT NULL, key TEXT NOT NULL,"
        " seq INTEGER NOT NULL, data TEXT NOT NULL, updated_at INTEGER NOT NULL,"
        " deleted INTEGER NOT NULL, digest BLOB NOT NULL, outcome TEXT NOT NULL,"
        " cloud_version INTEGER, PRIMARY KEY (session_id, collection, key)) WITHOUT ROWID"
    )
    old = db.execute(
        "SELECT session_id, collection, key, seq, item, digest, outcome, cloud_version"
        " FROM staged_items"
    )
    while rows := old.fetchmany(1000):
        db.conn.executemany(
            "INSERT INTO staged_items_v2 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((row[0], *StagedItem.from_text(*row[1:])) for row in rows),
        )
    db.execute("DROP TABLE staged_items")
    db.execute("ALTER TABLE staged_items_v2 RENAME TO staged_items")


@migrations()
def m003_sync(db: Database) -> None:
    # Sync: every cloud write gets a place in the user's order (seq) and keeps its digest,
    # so the running multiset checksum (sync_heads) follows writes without re-reading.
    db.execute("ALTER TABLE cloud_items ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE cloud_items ADD COLUMN digest BLOB")
    db.execute("CREATE INDEX cloud_items_by_seq ON cloud_items (user_id, seq, collection, key)")
    db.execute(
        "CREATE TABLE sync_heads (user_id TEXT PRIMARY KEY, seq INTEGER NOT NULL,"
        " checksum TEXT NOT NULL, item_count INTEGER NOT NULL)"
    )
    db.execute(
        "CREATE TABLE sync_pushes (user_id TEXT NOT NULL, push_id TEXT NOT NULL,"
        " request_digest TEXT NOT NULL, response TEXT NOT NULL, created_at INTEGER NOT NULL,"
        " PRIMARY KEY (user_id, push_id)) WITHOUT ROWID"
    )
    # Items committed before sync existed: seq 1 of their user, digests computed once.
    heads: dict[str, tuple[int, int]] = {}
    rows = db.execute(
        "SELECT user_id, collection, key, data, updated_at, deleted FROM cloud_items"
    ).fetchall()
    for user_id, collection, key, data, updated_at, deleted in rows:
        digest = hashlib.sha256(
            canonical_item_parts(collection, key, data, updated_at, bool(deleted))
        ).digest()
        db.execute(
            "UPDATE cloud_items SET seq = 1, digest = ? WHERE user_id = ? AND collection = ?"
            " AND key = ?",
            [digest, user_id, collection, key],
        )
        total, count = heads.get(user_id, (0, 0))
        heads[user_id] = (multiset_add(total, digest), count + 1)
    for user_id, (total, count) in heads.items():
        db.execute(
            "INSERT INTO sync_heads VALUES (?, 1, ?, ?)", [user_id, multiset_hex(total), count]
        )


@migrations()
def m004_blobs(db: Database) -> None:
    # Attachments: the blobs each user holds (their files are in the data folder).
    db.execute(BLOBS_SCHEMA)


@migrations()
def m005_session_numbers(db: Database) -> None:
    # Staged rows are keyed by a small number per session instead of its 36-character
    # id, and a new item's outcome and cloud version are the columns' defaults: a staged
    # row binds 8 values instead of 10 and its key is 36 bytes shorter (the insert went
    # from 3.0 to 1.9 us per row at 300k rows).
    db.execute(
        "CREATE TABLE session_numbers (number INTEGER PRIMARY KEY,"
        " session_id TEXT NOT NULL UNIQUE, reclassified INTEGER NOT NULL DEFAULT 0)"
    )
    # Each batch keeps its key range, its items' digests in order and the multiset sum of
    # its new ones, so that completion tallies a session from its batches, not its items
    # (NULL in batches stored before: those sessions are tallied from their items).
    for column in _BATCH_TALLY_COLUMNS.split(", "):
        db.execute(f"ALTER TABLE batches ADD COLUMN {column}")
    db.execute(
        "INSERT INTO session_numbers (session_id) SELECT id FROM sessions"
        " UNION SELECT session_id FROM staged_items"
    )
    db.execute(_STAGED_SCHEMA.replace("staged_items", "staged_items_v3"))
    db.execute(
        f"INSERT INTO staged_items_v3 (session_no, {_STAGED_COLUMNS})"
        f" SELECT n.number, {', '.join('s.' + c for c in _STAGED_COLUMNS.split(', '))}"
        " FROM staged_items s JOIN session_numbers n ON n.session_id = s.session_id"
    )
    db.execute("DROP TABLE staged_items")
    db.execute("ALTER TABLE staged_items_v3 RENAME TO staged_items")


_DIGEST = itemgetter(6)  # of a StagedItem
_FROM_BIG = functools.partial(int.from_bytes, byteorder="big")
_MULTISET = 1 << 256  # multiset sums are taken modulo this (sdk.contract.multiset_add)
_BATCH_TALLY_COLUMNS = "first_collection, first_key, last_collection, last_key, digests, new_sum"
_STAGED_SCHEMA = (
    "CREATE TABLE staged_items (session_no INTEGER NOT NULL, collection TEXT NOT NULL,"
    " key TEXT NOT NULL, seq INTEGER NOT NULL, data TEXT NOT NULL,"
    " updated_at INTEGER NOT NULL, deleted INTEGER NOT NULL, digest BLOB NOT NULL,"
    " outcome TEXT NOT NULL DEFAULT 'new', cloud_version INTEGER,"
    " PRIMARY KEY (session_no, collection, key)) WITHOUT ROWID"
)


_INITIAL_SCHEMA = """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            migration_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            data_version INTEGER NOT NULL,
            manifest TEXT NOT NULL,
            config TEXT,
            status TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            completed_at INTEGER,
            received_count INTEGER NOT NULL,
            staged_count INTEGER NOT NULL,
            conflicts_announced INTEGER NOT NULL,
            result TEXT,
            error TEXT,
            UNIQUE (user_id, migration_id)
        );
        CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
        CREATE TABLE batches (
            session_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            checksum TEXT NOT NULL,
            item_count INTEGER NOT NULL,
            new_count INTEGER NOT NULL,
            unchanged_count INTEGER NOT NULL,
            conflict_count INTEGER NOT NULL,
            received_at INTEGER NOT NULL,
            PRIMARY KEY (session_id, seq)
        ) WITHOUT ROWID;
        CREATE TABLE staged_items (
            session_id TEXT NOT NULL,
            collection TEXT NOT NULL,
            key TEXT NOT NULL,
            seq INTEGER NOT NULL,
            item TEXT NOT NULL,
            digest BLOB NOT NULL,
            outcome TEXT NOT NULL,
            cloud_version INTEGER,
            PRIMARY KEY (session_id, collection, key)
        ) WITHOUT ROWID;
        CREATE TABLE conflicts (
            id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL,
            collection TEXT NOT NULL,
            key TEXT NOT NULL,
            local TEXT NOT NULL,
            server TEXT NOT NULL,
            resolved INTEGER NOT NULL,
            choice TEXT,
            strategy TEXT,
            merged TEXT,
            UNIQUE (session_id, collection, key)
        );
        CREATE TABLE cloud_items (
            user_id TEXT NOT NULL,
            collection TEXT NOT NULL,
            key TEXT NOT NULL,
            data TEXT NOT NULL,
            updated_at INTEGER NOT NULL,
            deleted INTEGER NOT NULL,
            version INTEGER NOT NULL,
            device_id TEXT NOT NULL,
            written_at INTEGER NOT NULL,
            PRIMARY KEY (user_id, collection, key)
        ) WITHOUT ROWID;
        CREATE TABLE candidates (
            user_id TEXT PRIMARY KEY,
            registered_at INTEGER NOT NULL
        );
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            time INTEGER NOT NULL,
            user_id TEXT NOT NULL,
            session_id TEXT,
            detail TEXT NOT NULL
        );
        CREATE INDEX events_by_user ON events (user_id, seq);
"""


_SESSION_COLUMNS = (
    "id, user_id, migration_id, device_id, data_version, manifest, config, status, version,"
    " created_at, updated_at, expires_at, completed_at, received_count, staged_count,"
    " conflicts_announced, result, error"
)
_STAGED_COLUMNS = "collection, key, seq, data, updated_at, deleted, digest, outcome, cloud_version"
_CONFLICT_COLUMNS = (
    "id, session_id, collection, key, local, server, resolved, choice, strategy, merged"
)
_CLOUD_COLUMNS = "collection, key, data, updated_at, deleted, version, device_id"
_CLOUD_COLUMNS_T = ", ".join("t." + name for name in _CLOUD_COLUMNS.split(", "))


class SQLiteStorage:
    """The :class:`~backend_stub.storage.Storage` backend on one SQLite database.

    >>> storage = SQLiteStorage.in_memory()
    >>> with storage.atomic():
    ...     storage.mark_candidate("alice", 0)
    >>> storage.is_candidate("alice"), storage.is_candidate("bob")
    (True, False)
    >>> storage.close()
    """

    supports_sync = True
    #: The WAL's checkpoints, on their own thread (a database in a file only).
    checkpoints: Checkpointer | None = None
    #: Blobs travel through the API (the server and its files are one machine).
    blob_urls: BlobUrls | None = None

    def __init__(self, conn: sqlite3.Connection, *, blob_root: Path | None = None) -> None:
        self._conn = conn
        self._db = Database(conn)
        self._lock = threading.RLock()
        self._depth = 0
        # The seq each user's writes got in the transaction under way: one per transaction.
        self._txn_seqs: dict[str, int] = {}
        # The multiset sum of a session's new staged digests, from tally_staged's pass,
        # for put_new_staged_items in the same transaction (it would read them again).
        self._txn_new_sums: dict[str, int] = {}
        # The write lock first, so that processes opening a new database at the same time
        # (a server and the CLI's seed) apply the schema one after the other; the
        # migration steps nest inside as savepoints.
        with self.atomic():
            migrations.apply(self._db)
        #: Attachments: files under ``<data>/blobs`` (a temp folder for an in-memory one).
        self.blobs: BlobStore = FileBlobs(blob_root, self._rows, self._write)

    @classmethod
    def open(cls, data_dir: Path, *, busy_timeout: float = 10.0) -> SQLiteStorage:
        """Open (creating if needed) the database in ``data_dir``.

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     SQLiteStorage.open(Path(tmp)).close()
        """
        data_dir.mkdir(parents=True, exist_ok=True)
        conn = cls._connect(str(data_dir / DATABASE_NAME), busy_timeout)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode loses nothing when the process dies, only on power loss.
        conn.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints run on a thread of their own (sqlite_checkpoints); the commit that
        # takes the WAL past 250,000 pages (1 GB) checkpoints itself, should that thread
        # fall behind. The WAL file is cut back to 96 MB after a checkpoint.
        conn.execute("PRAGMA wal_autocheckpoint=250000")
        conn.execute(f"PRAGMA journal_size_limit={96 * 1024 * 1024}")
        storage = cls(conn, blob_root=data_dir / BLOBS_FOLDER)
        storage.checkpoints = Checkpointer(data_dir / DATABASE_NAME)
        return storage

    @classmethod
    def in_memory(cls) -> SQLiteStorage:
        """A private in-memory database (tests, embedding).

        >>> SQLiteStorage.in_memory().close()
        """
        return cls(cls._connect(":memory:", 0.0))

    @staticmethod
    def _connect(target: str, busy_timeout: float) -> sqlite3.Connection:
        # isolation_level=None: transactions are ours (atomic()), never implicit.
        conn = sqlite3.connect(
            target, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        return conn

    def close(self) -> None:
        """Close the connection."""
        if self.checkpoints is not None:
            self.checkpoints.close()
        with self._lock:
            self._conn.close()
        self.blobs.close()

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction around the block; a nested block is a savepoint inside it."""
        with self._lock:
            if self._depth:
                savepoint = f"nested_{self._depth}"
                self._conn.execute(f"SAVEPOINT {savepoint}")
                self._depth += 1
                try:
                    yield
                except BaseException:
                    self._conn.execute(f"ROLLBACK TO {savepoint}")
                    raise
                finally:
                    self._depth -= 1
                    self._conn.execute(f"RELEASE {savepoint}")
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
                self._conn.execute("COMMIT")
                if self.checkpoints is not None:
                    self.checkpoints.written()
            except BaseException:
                # Also after a failed COMMIT: the next transaction must start clean.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
                self._txn_seqs.clear()
                self._txn_new_sums.clear()

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Several reads from one snapshot, even while another process writes."""
        with self._lock:
            if self._depth:
                yield
                return
            self._conn.execute("BEGIN")
            try:
                yield
            finally:
                self._conn.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.atomic():
            return self._conn.execute(sql, params).rowcount

    # ------------------------------------------------------------------ sessions

    def get_session(self, session_id: str) -> Session | None:
        rows = self._rows(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", [session_id])
        return _session(rows[0]) if rows else None

    def session_for_migration(self, user_id: str, migration_id: str) -> Session | None:
        rows = self._rows(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE user_id = ? AND migration_id = ?",
            [user_id, migration_id],
        )
        return _session(rows[0]) if rows else None

    def latest_session(self, user_id: str) -> Session | None:
        rows = self._rows(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE user_id = ?"
            " ORDER BY created_at DESC, rowid DESC LIMIT 1",
            [user_id],
        )
        return _session(rows[0]) if rows else None

    def active_session(self, user_id: str, now: int) -> Session | None:
        marks = ",".join("?" * len(_FINAL))
        rows = self._rows(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE user_id = ?"
            f" AND status NOT IN ({marks}) AND expires_at > ?"
            " ORDER BY created_at DESC, rowid DESC LIMIT 1",
            [user_id, *_FINAL, now],
        )
        return _session(rows[0]) if rows else None

    def has_completed(self, user_id: str, device_id: str) -> bool:
        rows = self._rows(
            "SELECT 1 FROM sessions WHERE user_id = ? AND device_id = ? AND status = ? LIMIT 1",
            [user_id, device_id, SessionStatus.COMPLETED.value],
        )
        return bool(rows)

    def insert_session(self, session: Session) -> None:
        try:
            with self.atomic():
                self._conn.execute(
                    f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES ({','.join('?' * 18)})",
                    _session_row(session),
                )
                self._conn.execute(
                    "INSERT INTO session_numbers (session_id) VALUES (?)", [session.id]
                )
        except sqlite3.IntegrityError as exc:
            raise DuplicateSession(session.migration_id) from exc

    def _session_no(self, session_id: str) -> int:
        """The number a session's staged rows are keyed by (-1, which keys nothing, for a
        session that does not exist)."""
        rows = self._rows("SELECT number FROM session_numbers WHERE session_id = ?", [session_id])
        return int(rows[0][0]) if rows else -1

    def update_session(self, session: Session) -> Session:
        stored = _session_row(session)
        columns = [c.strip() for c in _SESSION_COLUMNS.split(",")]
        assignments = ", ".join(f"{c} = ?" for c in columns if c not in ("id", "version"))
        values = [v for c, v in zip(columns, stored, strict=True) if c not in ("id", "version")]
        changed = self._write(
            f"UPDATE sessions SET {assignments}, version = version + 1"
            " WHERE id = ? AND version = ?",
            [*values, session.id, session.version],
        )
        if changed != 1:
            raise VersionConflict(session.id)
        return dataclasses.replace(session, version=session.version + 1)

    # ------------------------------------------------------------------ batches

    def get_batch(self, session_id: str, seq: int) -> Batch | None:
        rows = self._rows(
            "SELECT session_id, seq, checksum, item_count, new_count, unchanged_count,"
            " conflict_count, received_at FROM batches WHERE session_id = ? AND seq = ?",
            [session_id, seq],
        )
        return Batch(*rows[0]) if rows else None

    def received_batches(self, session_id: str) -> list[int]:
        rows = self._rows("SELECT seq FROM batches WHERE session_id = ? ORDER BY seq", [session_id])
        return [row[0] for row in rows]

    def backlog(self, session_id: str) -> Backlog:
        # Every batch is processed in the request that stores it: nothing ever waits.
        return Backlog([], [])

    def insert_batch(self, batch: Batch, items: Sequence[StagedItem]) -> None:
        if isinstance(items, NewItems):
            self._insert_new_batch(batch, items)
            return
        with self.atomic():
            new = [item for item in items if item.outcome == "new"]
            self._insert_batch_row(
                batch,
                (items[0][:2], items[-1][:2]) if items else None,
                b"".join(map(_DIGEST, items)),
                sum(int.from_bytes(item.digest, "big") for item in new),
            )
            number = self._session_no(batch.session_id)
            try:
                # A new item's outcome and cloud version are the columns' defaults. Rows
                # are bound as exact tuples, made in C: sqlite3 reads a named tuple's
                # fields one Python call at a time; and a hundred to a statement.
                if new:
                    insert_rows(
                        self._conn,
                        "INSERT INTO staged_items (session_no, collection, key, seq, data,"
                        " updated_at, deleted, digest) VALUES",
                        8,
                        list(zip(repeat(number), *list(zip(*new, strict=True))[:7], strict=False)),
                    )
                if len(new) < len(items):
                    self._conn.executemany(
                        f"INSERT INTO staged_items (session_no, {_STAGED_COLUMNS})"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        ((number, *item) for item in items if item.outcome != "new"),
                    )
            except sqlite3.IntegrityError as exc:
                raise DuplicateItem(batch.session_id) from exc

    def _insert_batch_row(
        self, batch: Batch, ends: tuple[Key, Key] | None, digests: bytes, new_sum: int
    ) -> None:
        """The batch's row: its receipt, first and last keys, its items' digests in order
        and the multiset sum of its new items' digests (what the tally adds up)."""
        first, last = ends or (("", ""), ("", ""))
        try:
            self._conn.execute(
                "INSERT INTO batches (session_id, seq, checksum, item_count, new_count,"
                f" unchanged_count, conflict_count, received_at, {_BATCH_TALLY_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    batch.session_id,
                    batch.seq,
                    batch.checksum,
                    batch.item_count,
                    batch.new_count,
                    batch.unchanged_count,
                    batch.conflict_count,
                    batch.received_at,
                    *first,
                    *last,
                    digests,
                    multiset_hex(new_sum),
                ],
            )
        except sqlite3.IntegrityError as exc:
            raise DuplicateBatch(f"{batch.session_id}/{batch.seq}") from exc

    def _insert_new_batch(self, batch: Batch, items: NewItems) -> None:
        """:meth:`insert_batch` of a batch whose items are all new, by column: the same
        rows, with no tuple per item (a new item's outcome and cloud version are the
        columns' defaults)."""
        count = len(items)
        with self.atomic():
            self._insert_batch_row(
                batch,
                ((items.collections[0], items.keys[0]), (items.collections[-1], items.keys[-1]))
                if count
                else None,
                b"".join(items.digests),
                sum(map(_FROM_BIG, items.digests)),
            )
            if not count:
                return
            try:
                insert_columns(
                    self._conn,
                    "INSERT INTO staged_items (session_no, collection, key, seq, data,"
                    " updated_at, deleted, digest) VALUES",
                    [
                        [self._session_no(batch.session_id)] * count,
                        items.collections,
                        items.keys,
                        [items.seq] * count,
                        items.datas,
                        items.stamps,
                        items.deletes,
                        items.digests,
                    ],
                )
            except sqlite3.IntegrityError as exc:
                raise DuplicateItem(batch.session_id) from exc

    def staged_keys(self, session_id: str, keys: Sequence[Key]) -> list[Key]:
        found: list[Key] = []
        with self._snapshot():
            for chunk in _chunks(keys):
                found.extend(
                    (row[0], row[1])
                    for row in self._rows(
                        _keyed("SELECT t.collection, t.key", "staged_items", "session_no", chunk),
                        [*_flatten(chunk), self._session_no(session_id)],
                    )
                )
        return sorted(found)

    def staged_items(self, session_id: str, *, after: Key | None, limit: int) -> list[StagedItem]:
        sql = f"SELECT {_STAGED_COLUMNS} FROM staged_items WHERE session_no = ?"
        params: list[Any] = [self._session_no(session_id)]
        if after is not None:
            sql += " AND (collection, key) > (?, ?)"
            params.extend(after)
        rows = self._rows(sql + " ORDER BY collection, key LIMIT ?", [*params, limit])
        return [
            StagedItem(c, k, seq, data, updated_at, bool(deleted), *rest)
            for c, k, seq, data, updated_at, deleted, *rest in rows
        ]

    def tally_staged(self, session_id: str, user_id: str) -> StagedTally | None:
        # From the session's batches (their digests in order, sums and counts), or else
        # from its staged rows; then the user's cloud items (few, on a first migration) are
        # matched against the staged ones, instead of looking each staged key up in the
        # cloud.
        with self._snapshot():
            tally, new_sum, staged_against = self._tally_batches(session_id) or self._tally_items(
                session_id
            )
            if self._depth:  # only this transaction may use it: no batch lands meanwhile
                self._txn_new_sums[session_id] = new_sum
            if tally.outcomes["conflict"]:
                return None
            # matched: staged against a version, with a cloud item now; changed: the cloud
            # item is not the version staged against (or exists where none did).
            matched, changed = self._conn.execute(
                "SELECT count(s.cloud_version), coalesce(sum(s.cloud_version IS NOT c.version), 0)"
                " FROM cloud_items c JOIN staged_items s ON s.session_no = ?"
                " AND s.collection = c.collection AND s.key = c.key WHERE c.user_id = ?",
                [self._session_no(session_id), user_id],
            ).fetchone()
        return None if changed or matched != staged_against else tally

    def _tally_batches(self, session_id: str) -> tuple[StagedTally, int, int] | None:
        """The tally, the new items' multiset sum and the count of items staged against a
        cloud version, from the batches alone, a row at a time (each holds 32 bytes per
        item); ``None`` when a batch predates the columns, an item was reclassified since
        it was staged, or the batches are not in key order (:meth:`_tally_items` then
        hashes the digests in key order from the items)."""
        if self._rows(
            "SELECT 1 FROM session_numbers WHERE session_id = ? AND reclassified", [session_id]
        ):
            return None
        tally = StagedTally(hashlib.sha256(), Counter())
        counts = [0, 0, 0]  # new, unchanged, conflict
        new_sum = 0
        last: tuple[str, str] | None = None
        cursor = self._conn.execute(
            f"SELECT {_BATCH_TALLY_COLUMNS}, new_count, unchanged_count, conflict_count"
            " FROM batches WHERE session_id = ? ORDER BY seq",
            [session_id],
        )
        for row in cursor:
            if row[4] is None or (last is not None and (row[0], row[1]) <= last):
                return None
            last = (row[2], row[3])
            tally.digests.update(row[4])
            new_sum += int(row[5], 16)
            for index in range(3):
                counts[index] += row[6 + index]
        new, unchanged, conflict = counts
        tally.outcomes.update({"new": new, "unchanged": unchanged, "conflict": conflict})
        return tally, new_sum % _MULTISET, unchanged + conflict

    def _tally_items(self, session_id: str) -> tuple[StagedTally, int, int]:
        """:meth:`_tally_batches` from the staged rows: one pass in key order, a page at a
        time, with no Python per row."""
        tally = StagedTally(hashlib.sha256(), Counter())
        digest, outcome, version = itemgetter(0), itemgetter(1), itemgetter(2)
        staged_against = 0  # items staged against a cloud version
        new_sum, from_bytes = 0, int.from_bytes
        cursor = self._conn.execute(
            "SELECT digest, outcome, cloud_version FROM staged_items WHERE session_no = ?"
            " ORDER BY collection, key",
            [self._session_no(session_id)],
        )
        while rows := cursor.fetchmany(5000):
            tally.digests.update(b"".join(map(digest, rows)))
            outcomes = list(map(outcome, rows))
            tally.outcomes.update(outcomes)
            new_sum += sum(
                from_bytes(row[0], "big")
                for row, kind in zip(rows, outcomes, strict=True)
                if kind == "new"
            )
            staged_against += len(rows) - list(map(version, rows)).count(None)
        return tally, new_sum % _MULTISET, staged_against

    def put_new_staged_items(
        self, session_id: str, user_id: str, *, device_id: str, now: int
    ) -> int:
        # One statement, no row through Python. A plain INSERT: a cloud item where the
        # session staged a new one would be a bug to stop at, not to overwrite.
        with self.atomic():
            number = self._session_no(session_id)
            added = self._txn_new_sums.pop(session_id, None)
            if added is None:
                added = multiset_checksum(
                    digest
                    for (digest,) in self._conn.execute(
                        "SELECT digest FROM staged_items WHERE session_no = ? AND outcome = 'new'",
                        [number],
                    )
                )
            seq = self._next_seq(user_id)
            copied = self._conn.execute(
                f"INSERT INTO cloud_items (user_id, {_CLOUD_COLUMNS}, written_at, seq, digest)"
                " SELECT ?, collection, key, data, updated_at, deleted, 1, ?, ?, ?, digest"
                " FROM staged_items WHERE session_no = ? AND outcome = 'new'",
                [user_id, device_id, now, seq, number],
            ).rowcount
            self._move_head(user_id, seq, added, copied)
            return int(copied)

    def outcome_counts(self, session_id: str) -> dict[str, int]:
        rows = self._rows(
            "SELECT outcome, count(*) FROM staged_items WHERE session_no = ? GROUP BY outcome",
            [self._session_no(session_id)],
        )
        return {outcome: count for outcome, count in rows}

    def set_staged_outcome(
        self, session_id: str, key: Key, outcome: str, cloud_version: int | None
    ) -> None:
        with self.atomic():
            self._conn.execute(
                "UPDATE staged_items SET outcome = ?, cloud_version = ?"
                " WHERE session_no = ? AND collection = ? AND key = ?",
                [outcome, cloud_version, self._session_no(session_id), *key],
            )
            # The batches' sums and counts are the outcomes they were staged with.
            self._conn.execute(
                "UPDATE session_numbers SET reclassified = 1 WHERE session_id = ?", [session_id]
            )

    def purge_session(self, session_id: str) -> None:
        with self.atomic():
            for table in ("batches", "conflicts"):
                self._conn.execute(f"DELETE FROM {table} WHERE session_id = ?", [session_id])
            self._conn.execute(
                "DELETE FROM staged_items WHERE session_no = ?", [self._session_no(session_id)]
            )

    # ------------------------------------------------------------------ conflicts

    def save_conflicts(self, conflicts: Sequence[Conflict]) -> None:
        with self.atomic():
            self._conn.executemany(
                f"INSERT OR REPLACE INTO conflicts ({_CONFLICT_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_conflict_row(c) for c in conflicts),
            )

    def delete_conflict(self, conflict_id: str) -> None:
        self._write("DELETE FROM conflicts WHERE id = ?", [conflict_id])

    def get_conflicts(self, session_id: str, conflict_ids: Sequence[str]) -> list[Conflict]:
        found: list[Conflict] = []
        with self._snapshot():
            for chunk in _chunks(conflict_ids):
                rows = self._rows(
                    f"SELECT {_CONFLICT_COLUMNS} FROM conflicts WHERE session_id = ?"
                    f" AND id IN ({','.join('?' * len(chunk))})",
                    [session_id, *chunk],
                )
                found.extend(_conflict(row) for row in rows)
        return found

    def list_conflicts(self, session_id: str, *, after: Key | None, limit: int) -> list[Conflict]:
        sql = f"SELECT {_CONFLICT_COLUMNS} FROM conflicts WHERE session_id = ?"
        params: list[Any] = [session_id]
        if after is not None:
            sql += " AND (collection, key) > (?, ?)"
            params.extend(after)
        rows = self._rows(sql + " ORDER BY collection, key LIMIT ?", [*params, limit])
        return [_conflict(row) for row in rows]

    def conflict_counts(self, session_id: str) -> tuple[int, int]:
        rows = self._rows(
            "SELECT count(*), coalesce(sum(resolved = 0), 0) FROM conflicts WHERE session_id = ?",
            [session_id],
        )
        return int(rows[0][0]), int(rows[0][1])

    # ------------------------------------------------------------------ cloud items

    def cloud_items(self, user_id: str, keys: Sequence[Key]) -> dict[Key, CloudItem]:
        found: dict[Key, CloudItem] = {}
        if not keys:
            return found
        with self._snapshot():
            # One index probe first: a first migration's batches mostly fall where the
            # user has nothing in the cloud, and then the keys need not be looked up.
            if not self._rows(
                "SELECT 1 FROM cloud_items WHERE user_id = ?"
                " AND (collection, key) BETWEEN (?, ?) AND (?, ?) LIMIT 1",
                [user_id, *min(keys), *max(keys)],
            ):
                return found
            for chunk in _chunks(keys):
                rows = self._rows(
                    _keyed(f"SELECT {_CLOUD_COLUMNS_T}", "cloud_items", "user_id", chunk),
                    [*_flatten(chunk), user_id],
                )
                for row in rows:
                    item = CloudItem(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6])
                    found[(item.collection, item.key)] = item
        return found

    def put_cloud_items(self, user_id: str, items: Sequence[CloudItem], now: int) -> int:
        if not items:
            return self.sync_head(user_id).seq
        with self.atomic():
            old = self._digests(user_id, [(i.collection, i.key) for i in items])
            seq = self._next_seq(user_id)
            delta = 0
            rows = []
            for item in items:
                digest = item.digest()
                delta = multiset_add(delta, digest)
                previous = old.get((item.collection, item.key))
                if previous is not None:
                    delta = multiset_add(delta, previous, sign=-1)
                rows.append((user_id, *item, now, seq, digest))
            self._conn.executemany(
                f"INSERT OR REPLACE INTO cloud_items (user_id, {_CLOUD_COLUMNS}, written_at,"
                " seq, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._move_head(
                user_id, seq, delta, len({(i.collection, i.key) for i in items}) - len(old)
            )
            return seq

    # ------------------------------------------------------------------ sync

    def sync_head(self, user_id: str) -> SyncHead:
        rows = self._rows(
            "SELECT seq, checksum, item_count FROM sync_heads WHERE user_id = ?", [user_id]
        )
        if not rows:
            return SyncHead(0, 0, 0)
        seq, checksum, count = rows[0]
        return SyncHead(seq, int(checksum, 16), count)

    def synced_items(self, user_id: str, keys: Sequence[Key]) -> dict[Key, SyncedItem]:
        found: dict[Key, SyncedItem] = {}
        with self._snapshot():
            for chunk in _chunks(keys):
                rows = self._rows(
                    _keyed(f"SELECT {_CLOUD_COLUMNS_T}, t.seq", "cloud_items", "user_id", chunk),
                    [*_flatten(chunk), user_id],
                )
                for row in rows:
                    item = CloudItem(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6])
                    found[(item.collection, item.key)] = SyncedItem(item, row[7])
        return found

    def pull_page(
        self,
        user_id: str,
        *,
        after: tuple[int, str, str] | None,
        until: int | None,
        limit: int,
        skip_device: str | None = None,
    ) -> PullPage:
        sql, params = _after(
            f"SELECT {_CLOUD_COLUMNS}, seq FROM cloud_items", user_id, after, until
        )
        if skip_device is not None:
            sql += " AND device_id != ?"
            params.append(skip_device)
        sql += " ORDER BY seq, collection, key LIMIT ?"
        params.append(limit)
        with self._snapshot():
            rows = self._rows(sql, params)
            head = self.sync_head(user_id)
        items = [
            SyncedItem(CloudItem(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6]), r[7])
            for r in rows
        ]
        return PullPage(items, head)

    def count_changes(
        self, user_id: str, *, after: tuple[int, str, str] | None, skip_device: str | None
    ) -> int:
        sql, params = _after("SELECT count(*) FROM cloud_items", user_id, after, None)
        if skip_device is not None:
            sql += " AND device_id != ?"
            params.append(skip_device)
        return int(self._rows(sql, params)[0][0])

    def full_checksum(self, user_id: str) -> tuple[int, int]:
        total = count = 0
        with self._snapshot():
            cursor = self._conn.execute(
                "SELECT collection, key, data, updated_at, deleted FROM cloud_items"
                " WHERE user_id = ?",
                [user_id],
            )
            while rows := cursor.fetchmany(5000):
                for collection, key, data, updated_at, deleted in rows:
                    canonical = canonical_item_parts(
                        collection, key, data, updated_at, bool(deleted)
                    )
                    total += int.from_bytes(hashlib.sha256(canonical).digest(), "big")
                count += len(rows)
        return total % (1 << 256), count

    def get_push(self, user_id: str, push_id: str) -> PushRecord | None:
        rows = self._rows(
            "SELECT request_digest, response FROM sync_pushes WHERE user_id = ? AND push_id = ?",
            [user_id, push_id],
        )
        return PushRecord(*rows[0]) if rows else None

    def save_push(self, user_id: str, push_id: str, record: PushRecord, now: int) -> None:
        self._write(
            "INSERT INTO sync_pushes VALUES (?, ?, ?, ?, ?)",
            [user_id, push_id, record.request_digest, record.response, now],
        )

    def _next_seq(self, user_id: str) -> int:
        """The seq of this transaction's writes for ``user_id`` (one per transaction)."""
        seq = self._txn_seqs.get(user_id)
        if seq is None:
            seq = self.sync_head(user_id).seq + 1
            self._txn_seqs[user_id] = seq
        return seq

    def _move_head(self, user_id: str, seq: int, delta: int, added: int) -> None:
        head = self.sync_head(user_id)
        self._conn.execute(
            "INSERT INTO sync_heads VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
            " seq = excluded.seq, checksum = excluded.checksum, item_count = excluded.item_count",
            [user_id, seq, multiset_hex(head.checksum + delta), head.item_count + added],
        )

    def _digests(self, user_id: str, keys: Sequence[Key]) -> dict[Key, bytes]:
        found: dict[Key, bytes] = {}
        for chunk in _chunks(keys):
            rows = self._rows(
                _keyed("SELECT t.collection, t.key, t.digest", "cloud_items", "user_id", chunk),
                [*_flatten(chunk), user_id],
            )
            found.update(((c, k), d) for c, k, d in rows)
        return found

    # ------------------------------------------------------------------ users and events

    def mark_candidate(self, user_id: str, registered_at: int) -> None:
        self._write(
            "INSERT OR IGNORE INTO candidates (user_id, registered_at) VALUES (?, ?)",
            [user_id, registered_at],
        )

    def is_candidate(self, user_id: str) -> bool:
        return bool(self._rows("SELECT 1 FROM candidates WHERE user_id = ?", [user_id]))

    def record_event(self, event: Event) -> None:
        self._write(
            "INSERT INTO events (id, type, time, user_id, session_id, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                event.id,
                event.type.value,
                event.time,
                event.user_id,
                event.session_id,
                json.dumps(event.detail),
            ],
        )

    def events(self, *, user_id: str | None = None, type: str | None = None) -> list[Event]:
        sql = "SELECT id, type, time, user_id, session_id, detail FROM events WHERE 1 = 1"
        params: list[Any] = []
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        if type is not None:
            sql += " AND type = ?"
            params.append(type)
        rows = self._rows(sql + " ORDER BY seq", params)
        return [
            Event(row[0], EventType(row[1]), row[2], row[3], row[4], json.loads(row[5]))
            for row in rows
        ]


# ---------------------------------------------------------------------- row mapping


def _after(
    select: str, user_id: str, after: tuple[int, str, str] | None, until: int | None
) -> tuple[str, list[Any]]:
    """``select`` over the user's cloud items after a pull position, up to ``until``."""
    sql = f"{select} WHERE user_id = ?"
    params: list[Any] = [user_id]
    if after is not None:
        seq, collection, key = after
        if collection or key:
            sql += " AND (seq, collection, key) > (?, ?, ?)"
            params.extend(after)
        else:
            sql += " AND seq > ?"
            params.append(seq)
    if until is not None:
        sql += " AND seq <= ?"
        params.append(until)
    return sql, params


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), _KEYS_PER_QUERY):
        yield values[start : start + _KEYS_PER_QUERY]


def _keyed(select: str, table: str, owner: str, keys: Sequence[Key]) -> str:
    """``select`` from ``table`` (aliased ``t``) for these keys of one owner.

    Driven from a VALUES list joined on the primary key: ``(collection, key) IN (...)``
    makes SQLite scan every row of the owner once per query, quadratic over a migration.
    """
    pairs = ",".join(["(?, ?)"] * len(keys))
    return (
        f"WITH wanted(collection, key) AS (VALUES {pairs}) {select} FROM wanted"
        f" CROSS JOIN {table} AS t ON t.{owner} = ?"
        " AND t.collection = wanted.collection AND t.key = wanted.key"
    )


def _flatten(keys: Sequence[Key]) -> list[str]:
    return [part for key in keys for part in key]


def _session_row(s: Session) -> list[Any]:
    return [
        s.id,
        s.user_id,
        s.migration_id,
        s.device_id,
        s.data_version,
        s.manifest.model_dump_json(by_alias=True),
        s.config.model_dump_json(by_alias=True) if s.config else None,
        s.status.value,
        s.version,
        s.created_at,
        s.updated_at,
        s.expires_at,
        s.completed_at,
        s.received_count,
        s.staged_count,
        int(s.conflicts_announced),
        s.result.model_dump_json(by_alias=True) if s.result else None,
        s.error,
    ]


def _session(row: tuple[Any, ...]) -> Session:
    return Session(
        id=row[0],
        user_id=row[1],
        migration_id=row[2],
        device_id=row[3],
        data_version=row[4],
        manifest=Manifest.model_validate_json(row[5]),
        config=MigrationConfig.model_validate_json(row[6]) if row[6] else None,
        status=SessionStatus(row[7]),
        version=row[8],
        created_at=row[9],
        updated_at=row[10],
        expires_at=row[11],
        completed_at=row[12],
        received_count=row[13],
        staged_count=row[14],
        conflicts_announced=bool(row[15]),
        result=CompleteMigrationResponse.model_validate_json(row[16]) if row[16] else None,
        error=row[17],
    )


def _conflict_row(c: Conflict) -> list[Any]:
    return [
        c.id,
        c.session_id,
        c.collection,
        c.key,
        c.local.model_dump_json(by_alias=True),
        c.server.model_dump_json(by_alias=True),
        int(c.resolved),
        c.choice,
        c.strategy,
        c.merged.model_dump_json(by_alias=True) if c.merged else None,
    ]


def _conflict(row: tuple[Any, ...]) -> Conflict:
    return Conflict(
        id=row[0],
        session_id=row[1],
        collection=row[2],
        key=row[3],
        local=ItemVersion.model_validate_json(row[4]),
        server=ItemVersion.model_validate_json(row[5]),
        resolved=bool(row[6]),
        choice=row[7],
        strategy=row[8],
        merged=ItemVersion.model_validate_json(row[9]) if row[9] else None,
    )
