"""Detection: what is at the store's path, judged without changing a byte of it.

    >>> import tempfile, pathlib
    >>> tmp = tempfile.TemporaryDirectory()
    >>> detect_local(pathlib.Path(tmp.name) / "store.sqlite3").state
    <LocalState.NO_STORE: 'no_store'>
    >>> tmp.cleanup()

The file is opened read-only (``mode=ro``; never ``immutable=1``, which would miss what
is still in the WAL). SQLite may leave empty ``-wal``/``-shm`` files beside a WAL-mode
database, as any reader needs them; the database file itself is not touched.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sdk._errors import (
    ConfigurationError,
    CorruptStoreError,
    ForeignStoreError,
    StoreBusyError,
    StoreError,
    UnsupportedDataVersionError,
)
from sdk._store.schema import (
    MIGRATION_SET,
    SCHEMA_STEPS,
    STORE_APPLICATION_ID,
    STORE_FORMAT,
    SUPPORTED_DATA_VERSIONS,
    MigrationState,
    connect_read_only,
    migration_state_from,
    store_error,
)

__all__ = ["LocalDetection", "LocalState", "check_local", "detect_local", "store_file"]

logger = logging.getLogger(__name__)

_SQLITE_MAGIC = b"SQLite format 3\x00"
# The wire contract's device ids (StartMigrationRequest.device_id); ours are uuid4 hex.
_DEVICE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEADER_SIZE = 100


class LocalState(str, enum.Enum):
    """What detection found at the store's path.

    >>> LocalState("ready") is LocalState.READY
    True
    """

    NO_STORE = "no_store"
    EMPTY = "empty"
    READY = "ready"
    MIGRATED = "migrated"
    FOREIGN = "foreign"
    CORRUPT = "corrupt"
    UNSUPPORTED_VERSION = "unsupported_version"


_ERRORS: dict[LocalState, type[StoreError]] = {
    LocalState.FOREIGN: ForeignStoreError,
    LocalState.CORRUPT: CorruptStoreError,
    LocalState.UNSUPPORTED_VERSION: UnsupportedDataVersionError,
}


@dataclass(frozen=True)
class LocalDetection:
    """The verdict on one path. ``reason`` says what was found and what to do.

    ``counts`` maps each collection to its item rows, tombstones included; ``item_count``
    is their sum (what a migration uploads) and ``tombstones`` how many are deletions.
    ``size_bytes`` is the database file plus its WAL.

    >>> d = LocalDetection(LocalState.EMPTY, Path("s.sqlite3"), "no items")
    >>> d.has_data, d.raise_for_state() is d
    (False, True)
    """

    state: LocalState
    path: Path
    reason: str
    data_version: int | None = None
    device_id: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    item_count: int = 0
    tombstones: int = 0
    size_bytes: int = 0
    migration: MigrationState | None = None
    #: Local writes the cloud does not hold yet (pushed by the next sync).
    pending_changes: int = 0
    #: Whether the store keeps in step with the cloud (migrated, or bootstrapped from it).
    synced: bool = False

    @property
    def has_data(self) -> bool:
        """Whether there is something to migrate (the state is ``READY``)."""
        return self.state is LocalState.READY

    def raise_for_state(self) -> LocalDetection:
        """Raise the matching ``StoreError`` for a foreign, corrupt or unsupported store;
        return ``self`` otherwise.

        >>> LocalDetection(LocalState.FOREIGN, Path("x"), "not ours").raise_for_state()
        Traceback (most recent call last):
        ...
        sdk._errors.ForeignStoreError: not ours
        """
        error = _ERRORS.get(self.state)
        if error is not None:
            raise error(self.reason, path=str(self.path))
        return self


def store_file(path: object, name: str = "path") -> Path:
    """``path`` as the store's file; a :class:`ConfigurationError` naming ``name`` when it
    is not a path.

    >>> store_file("s.sqlite3").name
    's.sqlite3'
    >>> store_file(5, "store_path")
    Traceback (most recent call last):
    ...
    sdk._errors.ConfigurationError: store_path must be the store's file (a str or a Path), got 5
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ConfigurationError(f"{name} must be the store's file (a str or a Path), got {path!r}")
    return Path(path)


def detect_local(path: str | os.PathLike[str]) -> LocalDetection:
    """Classify the store at ``path``, read-only and cheaply (one GROUP BY for the counts).

    >>> import tempfile, pathlib
    >>> from sdk._store.local import LocalStore
    >>> tmp = tempfile.TemporaryDirectory()
    >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
    ...     _ = store.put("cards", "c1", {"front": "hola"})
    >>> found = detect_local(pathlib.Path(tmp.name) / "s.sqlite3")
    >>> found.state, found.counts
    (<LocalState.READY: 'ready'>, {'cards': 1})
    >>> tmp.cleanup()
    """
    detection = inspect_store(store_file(path), count=True)
    logger.debug("detected %s at %s: %s", detection.state.value, detection.path, detection.reason)
    return detection


def check_local(detection: LocalDetection) -> LocalDetection:
    """Raise the typed ``StoreError`` for a foreign, corrupt or unsupported store; return
    the detection otherwise. The same as ``detection.raise_for_state()``.

    >>> check_local(LocalDetection(LocalState.CORRUPT, Path("x"), "damaged"))
    Traceback (most recent call last):
    ...
    sdk._errors.CorruptStoreError: damaged
    """
    return detection.raise_for_state()


def inspect_store(path: Path, *, count: bool) -> LocalDetection:
    """:func:`detect_local`, optionally without counting the items (EMPTY/READY/MIGRATED
    are then not told apart by their items, only the bad states matter)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return LocalDetection(
            LocalState.NO_STORE,
            path,
            f"no store at {path}: the app has not saved anything on this device, so there "
            "is nothing to migrate",
        )
    except OSError as exc:
        return _corrupt(path, 0, f"cannot be read ({exc})")
    if not path.is_file():
        return _foreign(path, 0, "not a file")
    size = stat.st_size + _size_of(path.with_name(path.name + "-wal"))
    if stat.st_size == 0:
        return _foreign(path, size, "empty file")
    try:
        with path.open("rb") as file:
            header = file.read(_HEADER_SIZE)
    except OSError as exc:
        return _corrupt(path, size, f"cannot be read ({exc})")
    if not header.startswith(_SQLITE_MAGIC):
        return _foreign(path, size, "not a SQLite database")
    if len(header) < _HEADER_SIZE:
        return _corrupt(path, size, f"truncated to {len(header)} bytes")
    app_id = int.from_bytes(header[68:72], "big", signed=True)
    if app_id != STORE_APPLICATION_ID:
        return _foreign(path, size, f"another application's database (application id {app_id})")
    try:
        conn = connect_read_only(path)
    except sqlite3.Error as exc:
        return _corrupt(path, size, f"cannot be opened ({exc})")
    try:
        # Check every cell's bounds as pages load: without it a damaged cell pointer is
        # caught or not depending on the bytes that happen to lie where it points.
        conn.execute("PRAGMA cell_size_check = ON")
        return _inspect_ours(conn, path, size, count=count)
    except sqlite3.Error as exc:
        error = store_error(exc, path, "inspect the store")
        if isinstance(error, StoreBusyError):
            raise error from exc  # a verdict of "corrupt" would be wrong: it is only busy
        return _corrupt(path, size, f"unreadable ({exc})")
    except UnicodeDecodeError as exc:
        # sqlite3 raises this instead of DatabaseError when SQLite's own error message
        # quotes damaged bytes (e.g. a malformed schema entry).
        return _corrupt(path, size, f"unreadable (its schema holds bytes that are not text: {exc})")
    finally:
        conn.close()


def _inspect_ours(
    conn: sqlite3.Connection, path: Path, size: int, *, count: bool
) -> LocalDetection:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    if "store_meta" not in tables:
        return _corrupt(path, size, "its store_meta table is missing")
    meta = dict(conn.execute("SELECT key, value FROM store_meta").fetchall())
    if meta.get("format") != STORE_FORMAT:
        return _corrupt(path, size, f"its format is {meta.get('format')!r}")
    try:
        data_version = int(meta["data_version"])
        migration = migration_state_from(meta)
    except (KeyError, ValueError, TypeError):
        return _corrupt(path, size, "its store_meta table lacks a valid data_version")
    device_id = meta.get("device_id")
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        return _corrupt(path, size, f"its device id {device_id!r} is damaged")
    found = _Found(path, size, data_version, meta.get("device_id"))
    applied: set[str] = set()
    if "_sqlite_migrations" in tables:
        applied = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", (MIGRATION_SET,)
            )
        }
    newer = sorted(applied - set(SCHEMA_STEPS))
    if newer or data_version > max(SUPPORTED_DATA_VERSIONS):
        what = f"schema steps {newer}" if newer else f"data version {data_version}"
        return found.verdict(
            LocalState.UNSUPPORTED_VERSION,
            f"the store at {path} was written by a newer version of the app ({what}; this "
            f"SDK supports data versions {sorted(SUPPORTED_DATA_VERSIONS)}): update the app, "
            "then migrate",
        )
    if data_version not in SUPPORTED_DATA_VERSIONS:
        return found.verdict(
            LocalState.UNSUPPORTED_VERSION,
            f"the store at {path} holds data version {data_version}, older than this SDK "
            f"supports ({sorted(SUPPORTED_DATA_VERSIONS)}): open it once with the app "
            "release that upgrades it, or contact support",
        )
    if "0003_sync" in applied:
        damage = _schema_damage(
            conn,
            tables,
            attachments="0004_attachments" in applied,
            unchecked="0005_unchecked_rows" in applied,
        )
        if damage:
            return _corrupt(path, size, damage)
    counts: dict[str, int] = {}
    tombstones = 0
    pending = 0
    if "items" in tables:
        if count:
            for collection, rows, deleted in conn.execute(
                "SELECT collection, count(*), total(deleted) FROM items GROUP BY collection"
            ):
                counts[collection] = rows
                tombstones += int(deleted)
            # Before the sync's schema step nothing was recorded: every row may be unsent.
            pending = (
                conn.execute(
                    "SELECT count(*) FROM items WHERE pending > ? AND pending > 0",
                    (int(meta.get("settled_through", "0")),),
                ).fetchone()[0]
                if "0003_sync" in applied
                else sum(counts.values())
            )
    elif "0002_items" in applied:
        return _corrupt(path, size, "its items table is missing")
    item_count = sum(counts.values())
    synced = migration is not None or "sync_cursor" in meta
    waiting = (
        f"{pending} local change(s) are not in the cloud yet: sync to send them"
        if pending
        else "every local change is in the cloud as of the last sync"
    )
    if synced:
        state = LocalState.MIGRATED
        how = (
            f"was already migrated (migration {migration.migration_id})"
            if migration is not None
            else "keeps in step with the cloud"
        )
        reason = f"the store at {path} {how}: nothing left to migrate; {waiting}"
    elif count and item_count == 0:
        state = LocalState.EMPTY
        reason = f"the store at {path} holds no items: there is nothing to migrate"
    else:
        state = LocalState.READY
        reason = (
            f"the store at {path} holds {item_count} items ({tombstones} deletions) in "
            f"{len(counts)} collections, data version {data_version}: ready to migrate"
        )
    return found.verdict(
        state,
        reason,
        counts=counts,
        item_count=item_count,
        tombstones=tombstones,
        migration=migration,
        pending_changes=pending if synced else 0,
        synced=synced,
    )


#: The columns of our tables once the sync's schema step ran, and its triggers: a store
#: whose schema differs was damaged, and is refused before anything is sent.
_COLUMNS = {
    "store_meta": ("key", "value"),
    "items": (
        "collection",
        "key",
        "data",
        "updated_at",
        "deleted",
        "base_seq",
        "pending",
        "digest",
    ),
    "sync_conflicts": ("collection", "key", "conflict", "server_seq", "pending", "choice", "item"),
    "sync_decisions": (
        "id",
        "decided_at",
        "collection",
        "key",
        "choice",
        "strategy",
        "local",
        "server",
        "server_seq",
    ),
    "sync_repairs": ("id", "collection", "key", "digest", "base_seq", "deleted_row"),
    "sync_outbox": ("push_id", "body", "sent"),
}
#: The tables of the attachments' schema step (0004), a store of the step before lacks.
_ATTACHMENT_COLUMNS = {
    "attachments": ("sha256", "size", "media_type", "blob_id", "stored"),
    "attachment_chunks": ("id", "blob_id", "idx", "data"),
    "item_blobs": ("collection", "key", "sha256"),
}
#: The table of the step (0005) that lists the rows whose digest the store cannot vouch for.
_UNCHECKED_COLUMNS = {"items_unchecked": ("collection", "key")}
_TRIGGERS = ("items_deleted_around", "items_inserted_around", "items_updated_around")


def _schema_damage(
    conn: sqlite3.Connection, tables: set[str], *, attachments: bool, unchecked: bool
) -> str | None:
    expected = {
        **_COLUMNS,
        **(_ATTACHMENT_COLUMNS if attachments else {}),
        **(_UNCHECKED_COLUMNS if unchecked else {}),
    }
    for table, columns in expected.items():
        if table not in tables:
            return f"its {table} table is missing"
        found = tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
        if found != columns:
            return f"its {table} table has the columns {list(found)}, not {list(columns)}"
    triggers = tuple(
        sorted(
            name
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        )
    )
    if triggers != _TRIGGERS:
        return f"its triggers are {list(triggers)}, not {list(_TRIGGERS)}"
    return None


@dataclass(frozen=True)
class _Found:
    """What every verdict on a readable store of ours repeats."""

    path: Path
    size_bytes: int
    data_version: int
    device_id: str | None

    def verdict(
        self,
        state: LocalState,
        reason: str,
        *,
        counts: Mapping[str, int] | None = None,
        item_count: int = 0,
        tombstones: int = 0,
        migration: MigrationState | None = None,
        pending_changes: int = 0,
        synced: bool = False,
    ) -> LocalDetection:
        return LocalDetection(
            state,
            self.path,
            reason,
            data_version=self.data_version,
            device_id=self.device_id,
            counts=counts or {},
            item_count=item_count,
            tombstones=tombstones,
            size_bytes=self.size_bytes,
            migration=migration,
            pending_changes=pending_changes,
            synced=synced,
        )


def _foreign(path: Path, size: int, what: str) -> LocalDetection:
    return LocalDetection(
        LocalState.FOREIGN,
        path,
        f"{path} is not this app's store ({what}); the SDK leaves it alone: move it away "
        "or point the SDK at the right path",
        size_bytes=size,
    )


def _corrupt(path: Path, size: int, what: str) -> LocalDetection:
    return LocalDetection(
        LocalState.CORRUPT,
        path,
        f"{path} is this app's store but it is damaged: {what}; the SDK will not migrate "
        "it: restore it from a backup, or move it away to start afresh",
        size_bytes=size,
    )


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
