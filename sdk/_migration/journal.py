"""The migration journal: a small SQLite file beside the store, separate from it.

It records the migration id, the server session, the snapshot and its checksum, the
phase reached, the batches the server acknowledged and the conflict resolutions decided
locally. Each record is written (and synced) *before* the side effect it enables, so a
process killed at any moment restarts into the same migration instead of a second one::

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "store.sqlite3.journal"
    >>> with Journal(path) as journal:
    ...     _ = journal.create(JournalRecord.new(user_id="u1", device_id="d1",
    ...         migration_id="mig-0001", snapshot_path="/tmp/s.sqlite3",
    ...         dataset_checksum="0" * 64, item_count=3, batch_count=1))
    ...     journal.advance(Phase.STARTED, session_id="s1").session_id
    's1'
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from .._errors import JournalError
from .._failpoints import failpoint
from .._store.schema import connect_read_only
from .._wire.canonical import canonical_json

__all__ = [
    "Journal",
    "JournalRecord",
    "PendingRecord",
    "Phase",
    "ResolutionRecord",
    "decision_key",
    "journal_path_for",
    "peek_journal",
]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS acked_batches (
    seq INTEGER PRIMARY KEY,
    item_count INTEGER NOT NULL,
    byte_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS resolutions (
    conflict_id TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    choice TEXT NOT NULL,
    strategy TEXT NOT NULL,
    item TEXT NOT NULL,
    posted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS pending_conflicts (
    conflict_id TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    conflict TEXT NOT NULL,
    choice TEXT,
    item TEXT
);
CREATE TABLE IF NOT EXISTS conflict_flags (
    conflict_id TEXT PRIMARY KEY,
    flag TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS carried_decisions (
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    conflict TEXT NOT NULL,
    choice TEXT NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (collection, key)
);
"""


class Phase(str, enum.Enum):
    """How far a migration got. Each phase is journaled before the step that follows it.

    >>> Phase.PREPARED < Phase.COMPLETED, Phase.UPLOADED >= Phase.COMPLETED
    (True, False)
    """

    PREPARED = "prepared"  # snapshot taken and checksummed; nothing sent yet
    STARTED = "started"  # the server session exists
    UPLOADED = "uploaded"  # the server holds every batch
    RESOLVED = "resolved"  # conflicts decided, written locally and posted
    COMPLETED = "completed"  # the server committed; its checksum is journaled
    VERIFIED = "verified"  # checksums matched; the store is marked migrated

    # All four: a str enum would otherwise compare the missing ones as text
    # ("uploaded" >= "completed").
    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Phase):
            return NotImplemented
        return _ORDER.index(self) < _ORDER.index(other)

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Phase):
            return NotImplemented
        return _ORDER.index(self) <= _ORDER.index(other)

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Phase):
            return NotImplemented
        return _ORDER.index(self) > _ORDER.index(other)

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Phase):
            return NotImplemented
        return _ORDER.index(self) >= _ORDER.index(other)


_ORDER = list(Phase)


@dataclasses.dataclass(frozen=True, kw_only=True)
class JournalRecord:
    """What the journal knows about the one migration in progress.

    >>> JournalRecord.new(user_id="u", device_id="d", migration_id="mig-0001",
    ...     snapshot_path="s", dataset_checksum="0" * 64, item_count=0,
    ...     batch_count=0).phase
    <Phase.PREPARED: 'prepared'>
    """

    migration_id: str
    user_id: str
    device_id: str
    phase: Phase
    snapshot_path: str
    dataset_checksum: str
    item_count: int
    batch_count: int
    session_id: str | None = None
    expected_checksum: str | None = None
    cloud_checksum: str | None = None
    #: The device clock minus the server's, measured at detect/start (for newest_wins).
    clock_offset_ms: int | None = None
    clock_uncertainty_ms: int | None = None
    #: Items per collection in the snapshot.
    collections: dict[str, int] = dataclasses.field(default_factory=dict)
    #: The server's counts from ``complete`` (new, unchanged, conflicts, resolutions).
    completion: dict[str, Any] | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    @classmethod
    def new(cls, **fields: Any) -> JournalRecord:
        now = time.time()
        return cls(phase=Phase.PREPARED, created_at=now, updated_at=now, **fields)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self) | {"phase": self.phase.value})

    @classmethod
    def from_json(cls, text: str) -> JournalRecord:
        raw = json.loads(text)
        raw["phase"] = Phase(raw["phase"])
        return cls(**raw)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResolutionRecord:
    """A conflict decided on the device: ``item`` is the wire item both sides will hold.

    >>> ResolutionRecord(conflict_id="c1", collection="a", key="k", choice="server",
    ...     strategy="server_wins", item={}).posted
    False
    """

    conflict_id: str
    collection: str
    key: str
    choice: str
    strategy: str
    item: dict[str, Any]
    posted: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class PendingRecord:
    """A conflict waiting for the app: ``conflict`` as JSON, and the app's decision once
    it made one (``choice`` and the resulting wire ``item``; ``None`` while waiting).

    >>> PendingRecord(conflict_id="c1", collection="a", key="k", conflict={}).choice is None
    True
    """

    conflict_id: str
    collection: str
    key: str
    conflict: dict[str, Any]
    choice: str | None = None
    item: dict[str, Any] | None = None


def _damaged(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if isinstance(code, int):
        return code & 0xFF in (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
    return "malformed" in str(exc) or "not a database" in str(exc)


def journal_path_for(store_path: str | Path) -> Path:
    """Where the journal of the store at ``store_path`` lives: beside it.

    >>> journal_path_for("/data/store.sqlite3").name
    'store.sqlite3.migration-journal'
    """
    path = Path(store_path)
    return path.with_name(path.name + ".migration-journal")


class Journal:
    """The journal file. Thread-safe; every write is one synced transaction.

    >>> import tempfile, pathlib
    >>> with Journal(pathlib.Path(tempfile.mkdtemp()) / "j") as journal:
    ...     journal.load() is None
    True
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(
                f"cannot open the migration journal at {self.path}: {exc}; "
                "check that the folder is writable and the disk is not full"
            ) from exc
        try:
            # FULL: a journaled step must survive power loss, not just a process kill.
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if not _damaged(exc):
                # A full disk, an I/O error or a lock is no reason to delete the journal.
                raise JournalError(
                    f"cannot open the migration journal at {self.path} ({exc}); check that "
                    "the disk is not full and the folder is writable, then migrate again"
                ) from exc
            raise JournalError(
                f"the migration journal at {self.path} is damaged ({exc}); delete it to "
                "start the migration over (the store itself is not affected)"
            ) from exc

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file; the journal stays on disk."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                with self._conn:
                    yield self._conn
                    failpoint("journal.write")  # written, not committed
            except sqlite3.Error as exc:
                raise JournalError(
                    f"cannot write the migration journal at {self.path}: {exc}; "
                    "free disk space and run the migration again: it resumes"
                ) from exc

    def load(self) -> JournalRecord | None:
        """The migration in progress, or ``None``."""
        with self._lock:
            try:
                row = self._conn.execute("SELECT record FROM journal WHERE id = 1").fetchone()
                return None if row is None else JournalRecord.from_json(row[0])
            except (sqlite3.Error, ValueError, TypeError, KeyError) as exc:
                raise JournalError(
                    f"the migration journal at {self.path} cannot be read ({exc}); delete it "
                    "to start over (the store itself is not affected)"
                ) from exc

    def create(self, record: JournalRecord) -> JournalRecord:
        """Start journaling a new migration (replaces any finished one)."""
        with self._write() as conn:
            conn.execute("DELETE FROM acked_batches")
            conn.execute("DELETE FROM resolutions")
            conn.execute("DELETE FROM pending_conflicts")
            conn.execute("DELETE FROM conflict_flags")
            conn.execute("INSERT OR REPLACE INTO journal VALUES (1, ?)", (record.to_json(),))
        return record

    def advance(self, phase: Phase | None = None, **fields: Any) -> JournalRecord:
        """Record a new phase and/or fields of the current migration; returns the record."""
        with self._lock:
            current = self.load()
            if current is None:
                raise JournalError(f"no migration is journaled at {self.path}")
            changes: dict[str, Any] = dict(fields, updated_at=time.time())
            if phase is not None:
                changes["phase"] = phase
            record = dataclasses.replace(current, **changes)
            with self._write() as conn:
                conn.execute("UPDATE journal SET record = ? WHERE id = 1", (record.to_json(),))
            return record

    def clear(self, *, keep_decisions: bool = False) -> None:
        """Forget the migration: after it is verified, or abandoned (a session that
        expired). An abandoned one can ``keep_decisions``: the app's decisions are kept
        for the migration that starts over, which applies each to the same conflict
        (:meth:`carried_decisions`) instead of asking the user again."""
        with self._write() as conn:
            if keep_decisions:  # made, not yet turned into resolutions
                waiting = conn.execute(
                    "SELECT collection, key, conflict, choice, item FROM pending_conflicts"
                    " WHERE choice IS NOT NULL"
                ).fetchall()
                _carry(conn, waiting)
            else:
                conn.execute("DELETE FROM carried_decisions")
            conn.execute("DELETE FROM journal")
            conn.execute("DELETE FROM acked_batches")
            conn.execute("DELETE FROM resolutions")
            conn.execute("DELETE FROM pending_conflicts")
            conn.execute("DELETE FROM conflict_flags")

    def record_batches(self, acked: Iterable[tuple[int, int, int]]) -> None:
        """Remember batches the server acknowledged: (seq, item_count, byte_count)."""
        with self._write() as conn:
            conn.executemany("INSERT OR REPLACE INTO acked_batches VALUES (?, ?, ?)", acked)

    def acked_batches(self) -> set[int]:
        """Sequence numbers acknowledged so far (a hint; the server's status is the truth)."""
        with self._lock:
            return {row[0] for row in self._conn.execute("SELECT seq FROM acked_batches")}

    def save_resolutions(self, records: Iterable[ResolutionRecord]) -> None:
        """Persist decided conflicts before they are applied locally or posted."""
        rows = [
            (r.conflict_id, r.collection, r.key, r.choice, r.strategy, json.dumps(r.item))
            for r in records
        ]
        with self._write() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO resolutions"
                " (conflict_id, collection, key, choice, strategy, item) VALUES (?,?,?,?,?,?)",
                rows,
            )

    def mark_posted(self, conflict_ids: Iterable[str]) -> None:
        """The server has recorded these resolutions."""
        with self._write() as conn:
            conn.executemany(
                "UPDATE resolutions SET posted = 1 WHERE conflict_id = ?",
                ((cid,) for cid in conflict_ids),
            )

    def resolutions(self) -> list[ResolutionRecord]:
        """Every resolution decided for this migration, in (collection, key) order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT conflict_id, collection, key, choice, strategy, item, posted"
                " FROM resolutions ORDER BY collection, key"
            ).fetchall()
        return [
            ResolutionRecord(
                conflict_id=r[0],
                collection=r[1],
                key=r[2],
                choice=r[3],
                strategy=r[4],
                item=json.loads(r[5]),
                posted=bool(r[6]),
            )
            for r in rows
        ]

    # -- conflicts decided by the policy or waiting for the app

    def save_decisions(
        self,
        *,
        resolutions: Iterable[ResolutionRecord] = (),
        pending: Iterable[PendingRecord] = (),
        flags: Mapping[str, dict[str, Any] | None] | None = None,
        drop: Iterable[str] = (),
        listed: Iterable[str] | None = None,
    ) -> int:
        """Record one round of decisions in one transaction; returns how many of the app's
        decisions it turned into resolutions.

        ``resolutions`` replace earlier ones by conflict id (and end their wait);
        ``pending`` conflicts wait for the app, which keeps its decision on one whose
        content is unchanged; ``flags`` sets (or, with ``None``, removes) a conflict's
        flag; ``drop`` forgets decisions on conflicts the server no longer has; pending
        conflicts not in ``listed`` (the server's unresolved ones) are forgotten. Last,
        every decision the app made (:meth:`decide`) becomes a ``manual`` resolution.

        >>> import tempfile, pathlib
        >>> with Journal(pathlib.Path(tempfile.mkdtemp()) / "j") as journal:
        ...     _ = journal.save_decisions(pending=[PendingRecord(conflict_id="c1",
        ...         collection="a", key="k", conflict={"v": 1})])
        ...     journal.decide("c1", "server", {"collection": "a", "key": "k"})
        ...     journal.save_decisions(listed=["c1"]), journal.resolutions()[0].strategy
        True
        (1, 'manual')
        """
        resolution_rows = [
            (r.conflict_id, r.collection, r.key, r.choice, r.strategy, json.dumps(r.item))
            for r in resolutions
        ]
        pending_rows = [
            (p.conflict_id, p.collection, p.key, canonical_json(p.conflict)) for p in pending
        ]
        with self._write() as conn:
            if listed is not None:
                keep = set(listed)
                stale = [
                    (cid,)
                    for (cid,) in conn.execute("SELECT conflict_id FROM pending_conflicts")
                    if cid not in keep
                ]
                conn.executemany("DELETE FROM pending_conflicts WHERE conflict_id = ?", stale)
                conn.executemany("DELETE FROM conflict_flags WHERE conflict_id = ?", stale)
            dropped = [(cid,) for cid in drop]
            conn.executemany("DELETE FROM resolutions WHERE conflict_id = ?", dropped)
            conn.executemany("DELETE FROM conflict_flags WHERE conflict_id = ?", dropped)
            conn.executemany(
                "INSERT OR REPLACE INTO resolutions"
                " (conflict_id, collection, key, choice, strategy, item) VALUES (?,?,?,?,?,?)",
                resolution_rows,
            )
            conn.executemany(
                "DELETE FROM pending_conflicts WHERE conflict_id = ?",
                ((row[0],) for row in resolution_rows),
            )
            conn.executemany(
                "INSERT INTO pending_conflicts (conflict_id, collection, key, conflict)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (conflict_id) DO UPDATE SET"
                " choice = CASE WHEN conflict = excluded.conflict THEN choice END,"
                " item = CASE WHEN conflict = excluded.conflict THEN item END,"
                " conflict = excluded.conflict",
                pending_rows,
            )
            for cid, flag in (flags or {}).items():
                conn.execute("DELETE FROM conflict_flags WHERE conflict_id = ?", (cid,))
                if flag is not None:
                    conn.execute(
                        "INSERT INTO conflict_flags VALUES (?, ?)", (cid, json.dumps(flag))
                    )
            decided = conn.execute(
                "SELECT conflict_id, collection, key, choice, item, conflict"
                " FROM pending_conflicts WHERE choice IS NOT NULL"
            ).fetchall()
            conn.executemany(
                "INSERT OR REPLACE INTO resolutions"
                " (conflict_id, collection, key, choice, strategy, item)"
                " VALUES (?, ?, ?, ?, 'manual', ?)",
                (row[:5] for row in decided),
            )
            _carry(
                conn,
                [(c, k, conflict, choice, item) for _, c, k, choice, item, conflict in decided],
            )
            conn.executemany(
                "DELETE FROM pending_conflicts WHERE conflict_id = ?",
                ((row[0],) for row in decided),
            )
        return len(decided)

    def decide(self, conflict_id: str, choice: str, item: Mapping[str, Any]) -> bool:
        """Record the app's decision on a pending conflict (a later one replaces it);
        ``False`` if no such conflict waits."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE pending_conflicts SET choice = ?, item = ? WHERE conflict_id = ?",
                (choice, json.dumps(dict(item)), conflict_id),
            )
            return cursor.rowcount == 1

    def carried_decisions(self) -> dict[tuple[str, str], tuple[str, str, dict[str, Any]]]:
        """The app's decisions, kept across a start-over: by (collection, key), the
        conflict's :func:`decision_key`, the choice and the resulting wire item."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT collection, key, conflict, choice, item FROM carried_decisions"
            ).fetchall()
        return {(r[0], r[1]): (r[2], r[3], json.loads(r[4])) for r in rows}

    def pending(self) -> list[PendingRecord]:
        """Conflicts waiting for the app (decided or not), in (collection, key) order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT conflict_id, collection, key, conflict, choice, item"
                " FROM pending_conflicts ORDER BY collection, key, conflict_id"
            ).fetchall()
        return [
            PendingRecord(
                conflict_id=r[0],
                collection=r[1],
                key=r[2],
                conflict=json.loads(r[3]),
                choice=r[4],
                item=None if r[5] is None else json.loads(r[5]),
            )
            for r in rows
        ]

    def flags(self) -> list[dict[str, Any]]:
        """The flags of this migration's conflicts, in (collection, key) order."""
        with self._lock:
            rows = self._conn.execute("SELECT flag FROM conflict_flags").fetchall()
        flags: list[dict[str, Any]] = [json.loads(row[0]) for row in rows]
        return sorted(flags, key=lambda f: (f.get("collection", ""), f.get("key", "")))


def decision_key(conflict: Mapping[str, Any]) -> str:
    """What makes two listings of a conflict the same conflict: both versions, not the
    session's conflict id nor the reason it waited.

    >>> a = {"conflict_id": "c1", "key": "k", "local": {"v": 1}, "reason": "manual"}
    >>> decision_key(a) == decision_key(a | {"conflict_id": "c9", "reason": None})
    True
    """
    return canonical_json({k: v for k, v in conflict.items() if k not in ("conflict_id", "reason")})


def _carry(conn: sqlite3.Connection, decided: list[tuple[str, str, str, str, str]]) -> None:
    """Keep decisions (collection, key, conflict JSON, choice, item JSON) for a start-over."""
    conn.executemany(
        "INSERT OR REPLACE INTO carried_decisions VALUES (?, ?, ?, ?, ?)",
        (
            (c, k, decision_key(json.loads(text)), choice, item)
            for c, k, text, choice, item in decided
        ),
    )


def peek_journal(path: Path) -> tuple[JournalRecord, set[int]] | None:
    """The journal's record and acknowledged batches, read without writing or waiting.

    Another process owns the journal: a read-only connection with a short busy timeout
    never blocks it, and is never blocked long by it (the next poll tries again).
    """
    if not path.exists():
        return None
    try:
        conn = connect_read_only(path, timeout=0.2)
        try:
            conn.execute("BEGIN")  # both reads from the same moment
            row = conn.execute("SELECT record FROM journal WHERE id = 1").fetchone()
            if row is None:
                return None
            acked = {int(seq) for (seq,) in conn.execute("SELECT seq FROM acked_batches")}
            return JournalRecord.from_json(row[0]), acked
        finally:
            conn.close()
    except (sqlite3.Error, ValueError, TypeError, KeyError) as exc:
        logger.debug("cannot read the journal at %s now: %s", path, exc)
        return None
