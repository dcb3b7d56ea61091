"""The SDK's local store: the SQLite file the app writes its offline data to.

One table of items keyed by ``(collection, key)``, with the data kept as canonical JSON,
so what the store holds is byte for byte what the migration hashes and sends::

    >>> import tempfile, pathlib
    >>> tmp = tempfile.TemporaryDirectory()
    >>> with LocalStore(pathlib.Path(tmp.name) / "store.sqlite3") as store:
    ...     _ = store.put("lessons", "l1", {"score": 3}, updated_at=1700000000000)
    ...     store.get("lessons", "l1")["data"]
    {'score': 3}
    >>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import platformdirs
from sqlite_utils import Database

from sdk._errors import (
    ConfigurationError,
    CorruptStoreError,
    InvalidItemError,
    StoreError,
    StoreNotFoundError,
    UnsupportedDataVersionError,
)
from sdk._store import changes as _changes
from sdk._store.detect import LocalState, inspect_store, store_file
from sdk._store.local_attachments import INLINE_LIMIT, MAX_INLINE_LIMIT, AttachmentMethods
from sdk._store.schema import (
    CURRENT_DATA_VERSION,
    MIGRATIONS,
    STORE_APPLICATION_ID,
    STORE_FORMAT,
    SUPPORTED_DATA_VERSIONS,
    MigrationState,
    migration_state_from,
    store_error,
)
from sdk._store.values import LargeValue, ReservedValueError, decode_text
from sdk._wire.canonical import KEY_PATTERN, MAX_INTEGER, NAME_PATTERN, Item, canonical_json

__all__ = [
    "LocalStore",
    "MigratedSync",
    "default_store_path",
    "unwatch_writes",
    "watch_writes",
]

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(NAME_PATTERN)
_KEY_RE = re.compile(KEY_PATTERN)
_ITEM_FIELDS = frozenset({"collection", "key", "data", "updatedAt", "deleted"})
_PAGE = 500  # rows read per lock hold while streaming


def default_store_path(app_name: str) -> Path:
    """Where the store of ``app_name`` lives by default: the platform's user data folder.

    >>> default_store_path("flashcards").name
    'store.sqlite3'
    """
    if not isinstance(app_name, str) or not app_name.strip() or re.search(r"[/\\]", app_name):
        raise ConfigurationError(
            f"app_name must be a non-empty name without path separators, got {app_name!r}"
        )
    return Path(platformdirs.user_data_dir(app_name, appauthor=False)) / "store.sqlite3"


@dataclass(frozen=True)
class MigratedSync:
    """Where the sync continues after a migration: the commit's ``seq``, the cloud's seq
    before it (``prior_seq``: what other devices put there, pulled once), the store's
    change counter in the snapshot, and which keys the snapshot held.

    >>> MigratedSync(seq=2, prior_seq=1, snapshot_counter=5, in_snapshot=set).seq
    2
    """

    seq: int
    prior_seq: int
    snapshot_counter: int
    in_snapshot: Callable[[list[tuple[str, str]]], set[tuple[str, str]]]
    #: The user whose data the store now keeps in step.
    user_id: str = ""


_watchers_lock = threading.Lock()
_watchers: dict[str, set[threading.Event]] = {}


def watch_writes(path: str | os.PathLike[str], *also: threading.Event) -> threading.Event:
    """An event set whenever this process writes app data into the store at ``path``
    (``put``, ``put_many``, ``delete``): how the startup hook pushes soon after a write
    without polling; ``also`` are set with it. Writes by other processes are seen by its
    periodic sync.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "s.sqlite3"
    >>> written = watch_writes(path)
    >>> with LocalStore(path) as store:
    ...     _ = store.put("c", "k", {})
    >>> written.is_set()
    True
    >>> unwatch_writes(path, written)
    """
    event = _Signal(also)
    with _watchers_lock:
        _watchers.setdefault(_watch_key(path), set()).add(event)
    return event


class _Signal(threading.Event):
    """An event that also sets others (a write wakes the hook's thread too)."""

    def __init__(self, also: tuple[threading.Event, ...]) -> None:
        super().__init__()
        self._also = also

    def set(self) -> None:
        super().set()
        for event in self._also:
            event.set()


def unwatch_writes(path: str | os.PathLike[str], event: threading.Event) -> None:
    """Stop setting ``event`` (from :func:`watch_writes`)."""
    with _watchers_lock:
        events = _watchers.get(_watch_key(path))
        if events is not None:
            events.discard(event)
            if not events:
                del _watchers[_watch_key(path)]


def _watch_key(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


def _written(path: Path) -> None:
    if not _watchers:
        return
    with _watchers_lock:
        events = list(_watchers.get(_watch_key(path), ()))
    for event in events:
        event.set()


def now_ms() -> int:
    """Milliseconds since the epoch, the unit of ``updatedAt``.

    >>> now_ms() > 1_600_000_000_000
    True
    """
    return time.time_ns() // 1_000_000


# ----------------------------------------------------------------------------- helpers


def item_label(collection: object, key: object) -> str:
    """How messages name an item: unambiguous, and short even for huge keys."""
    label = f"{collection!r}/{key!r}"
    return label if len(label) <= 80 else label[:77] + "..."


def check_item(
    collection: Any,
    key: Any,
    data: Any,
    updated_at: Any,
    deleted: Any,
    *,
    encode: Callable[[Any], str] = canonical_json,
) -> str:
    """Validate one item and return its data as canonical JSON text (``encode``: a faster
    encoder that writes byte for byte what :func:`~sdk.contract.canonical_json` does, or
    the store's encoder of typed values, :func:`~sdk._store.values.encode_text`)."""
    if (
        type(collection) is str
        and type(key) is str
        and type(data) is dict
        and type(updated_at) is int
        and 0 <= updated_at <= MAX_INTEGER
        and type(deleted) is bool
        and _NAME_RE.fullmatch(collection)
        and _KEY_RE.fullmatch(key)
    ):
        # The common case: only the encoding is left to check (no label built per item).
        try:
            text = encode(data)
            text.encode("utf-8")
            key.encode("utf-8")
            return text
        except (UnicodeEncodeError, TypeError, ValueError, RecursionError):
            pass  # the full checks below name the problem
    where = item_label(collection, key)
    if not isinstance(collection, str) or not _NAME_RE.fullmatch(collection):
        raise InvalidItemError(
            f"item {where}: the collection name must be 1 to 64 letters, digits, '_', '.' "
            "or '-', not starting with '.' or '-'; rename the collection"
        )
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise InvalidItemError(
            f"item {where}: the key must be text of 1 to 512 characters without control "
            "characters; choose another key"
        )
    if not isinstance(data, dict):
        raise InvalidItemError(
            f"item {where}: data must be a JSON object (a dict), got {type(data).__name__}; "
            "wrap the value, e.g. {'value': ...}"
        )
    if type(updated_at) is not int or not 0 <= updated_at <= MAX_INTEGER:
        raise InvalidItemError(
            f"item {where}: updatedAt must be an integer from 0 to 2**63 - 1 (milliseconds "
            f"since the epoch), got {updated_at!r}"
        )
    if type(deleted) is not bool:
        raise InvalidItemError(f"item {where}: deleted must be True or False, got {deleted!r}")
    try:
        text = encode(data)
        text.encode("utf-8")
        key.encode("utf-8")
    except ReservedValueError as exc:
        raise InvalidItemError(f"item {where}: {exc}") from exc
    except UnicodeEncodeError as exc:
        raise InvalidItemError(
            f"item {where}: holds text that is not valid Unicode (a lone surrogate); "
            "fix the text before storing it"
        ) from exc
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidItemError(
            f"item {where}: data cannot be encoded as JSON ({exc}); use only dicts with "
            "text keys, lists, text, bytes, attachments, finite numbers, booleans and None"
        ) from exc
    return text


def _row_item(
    row: tuple[str, str, str, int, int], resolve: Callable[[LargeValue], Any] | None
) -> Item:
    collection, key, data, updated_at, deleted = row
    return {
        "collection": collection,
        "key": key,
        "data": json.loads(data) if resolve is None else decode_text(data, resolve),
        "updatedAt": updated_at,
        "deleted": bool(deleted),
    }


# ----------------------------------------------------------------------------- store


class LocalStore(AttachmentMethods):
    """The offline-first store the app writes to; safe to share between threads.

    Other processes open the same file with their own ``LocalStore``; SQLite's locking
    keeps them apart (``StoreBusyError`` after ``busy_timeout`` seconds of waiting).
    An existing file that is not ours, is damaged, or is too new is refused with the
    matching ``StoreError`` and left untouched. A zero-byte file (such as one left by a
    crash while the store was being created) is initialised like a missing one.

    >>> import tempfile, pathlib
    >>> tmp = tempfile.TemporaryDirectory()
    >>> store = LocalStore(pathlib.Path(tmp.name) / "app" / "store.sqlite3")
    >>> store.put("cards", "c1", {"front": "hola"}, updated_at=5)["updatedAt"]
    5
    >>> store.delete("cards", "c1", updated_at=6)
    True
    >>> store.count(), store.count(include_deleted=True)
    (0, 1)
    >>> store.close(); tmp.cleanup()
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        data_version: int = CURRENT_DATA_VERSION,
        busy_timeout: float = 5.0,
        inline_limit: int = INLINE_LIMIT,
    ) -> None:
        if type(inline_limit) is not int or not 64 <= inline_limit <= MAX_INLINE_LIMIT:
            raise ConfigurationError(
                f"inline_limit must be bytes from 64 to {MAX_INLINE_LIMIT}, got {inline_limit!r}"
            )
        self._inline_limit = inline_limit
        #: Fetches content the store knows only by reference (set by a lazy sync).
        self.fetch_attachment: Callable[[str], None] | None = None
        if data_version not in SUPPORTED_DATA_VERSIONS or type(data_version) is not int:
            raise ConfigurationError(
                f"data_version must be one of {sorted(SUPPORTED_DATA_VERSIONS)}, "
                f"got {data_version!r}"
            )
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float)):
            raise ConfigurationError(f"busy_timeout must be seconds >= 0, got {busy_timeout!r}")
        if busy_timeout < 0:
            raise ConfigurationError(f"busy_timeout must be seconds >= 0, got {busy_timeout!r}")
        self._path = store_file(path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._conn = self._connect(create=create, data_version=data_version, timeout=busy_timeout)
        try:
            meta = dict(self._conn.execute("SELECT key, value FROM store_meta").fetchall())
            self._device_id = str(meta["device_id"])
            self._data_version = int(meta["data_version"])
        except (sqlite3.Error, KeyError, ValueError) as exc:
            self.close()
            raise CorruptStoreError(
                f"{self._path} has an unreadable store_meta table ({exc!r}); restore the "
                "store from a backup or move it away",
                path=str(self._path),
            ) from exc
        if self._data_version not in SUPPORTED_DATA_VERSIONS:
            self.close()
            raise UnsupportedDataVersionError(
                f"{self._path} holds data version {self._data_version}, this SDK supports "
                f"{sorted(SUPPORTED_DATA_VERSIONS)}; update the app",
                path=str(self._path),
            )

    @classmethod
    def open(
        cls,
        *,
        app_name: str | None = None,
        path: str | os.PathLike[str] | None = None,
        create: bool = True,
        data_version: int = CURRENT_DATA_VERSION,
        busy_timeout: float = 5.0,
        inline_limit: int = INLINE_LIMIT,
    ) -> LocalStore:
        """Open the store at ``path``, or at :func:`default_store_path` for ``app_name``.

        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore.open(path=pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     store.data_version
        1
        >>> tmp.cleanup()
        """
        if path is None:
            if app_name is None:
                raise ConfigurationError(
                    "LocalStore.open needs app_name (to use the platform's data folder) or path"
                )
            path = default_store_path(app_name)
        return cls(
            path,
            create=create,
            data_version=data_version,
            busy_timeout=busy_timeout,
            inline_limit=inline_limit,
        )

    def _connect(self, *, create: bool, data_version: int, timeout: float) -> sqlite3.Connection:
        path = self._path
        detection = inspect_store(path, count=False)
        fresh = detection.state is LocalState.NO_STORE or (
            path.is_file() and path.stat().st_size == 0
        )
        if fresh and not create:
            raise StoreNotFoundError(
                f"no store at {path}; pass create=True to create one", path=str(path)
            )
        if not fresh:
            # Judged read-only first, so a foreign or damaged file is never written to.
            detection.raise_for_state()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of {path}: {exc}", path=str(path)) from exc
        try:
            conn = sqlite3.connect(
                str(path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise store_error(exc, path, "open the store") from exc
        try:
            self._initialise(conn, data_version)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            conn.close()
            raise store_error(exc, path, "open the store") from exc
        except (ValueError, LookupError, TypeError) as exc:
            # What damaged schema bookkeeping looks like from here: sqlite3 raises
            # UnicodeDecodeError when SQLite's message quotes damaged bytes, sqlite-utils
            # a KeyError when a column of its migrations table lost its name.
            conn.close()
            raise CorruptStoreError(
                f"could not open the store: {path} is damaged ({type(exc).__name__}: {exc});"
                " restore it from a backup or move it away",
                path=str(path),
            ) from exc
        except BaseException:
            conn.close()
            raise
        logger.debug("opened local store %s (created: %s)", path, fresh)
        return conn

    def _initialise(self, conn: sqlite3.Connection, data_version: int) -> None:
        db = Database(conn, execute_plugins=False)
        if not MIGRATIONS.pending(db):
            return
        # Every schema step runs in this one IMMEDIATE transaction (each step a savepoint of
        # it): two processes opening a new store at once then serialise instead of both
        # applying the same step, and no reader ever sees a half-upgraded schema.
        conn.execute("BEGIN IMMEDIATE")
        try:
            (app_id,) = conn.execute("PRAGMA application_id").fetchone()
            if app_id == 0 and not conn.execute("SELECT 1 FROM sqlite_master").fetchone():
                conn.execute(f"PRAGMA application_id = {STORE_APPLICATION_ID}")
            elif app_id != STORE_APPLICATION_ID:
                raise StoreError(
                    f"{self._path} became another application's database while it was being "
                    "opened; point the SDK at its own file",
                    path=str(self._path),
                )
            MIGRATIONS.apply(db)
            conn.executemany(
                "INSERT OR IGNORE INTO store_meta (key, value) VALUES (?, ?)",
                [
                    ("format", STORE_FORMAT),
                    ("data_version", str(data_version)),
                    ("device_id", uuid.uuid4().hex),
                    ("created_at", str(now_ms())),
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    # -- plumbing

    @contextlib.contextmanager
    def _bulk_writes(self) -> Iterator[None]:
        """Checkpoint the WAL every 10,000 pages (40 MB) instead of every 1,000 while many
        writes follow each other (a bootstrap's pages): each checkpoint syncs the disk
        (`bench/sync.py`: about 0.5 us per row pulled). The setting is this connection's
        alone, and goes back after.

        >>> import tempfile, pathlib
        >>> with LocalStore(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite3") as store:
        ...     with store._bulk_writes():
        ...         during = store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()
        ...     during, store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()
        ((10000,), (1000,))
        """
        with self._reading("pull changes") as conn:
            (before,) = conn.execute("PRAGMA wal_autocheckpoint").fetchone()
            conn.execute("PRAGMA wal_autocheckpoint=10000")
        try:
            yield
        finally:
            with contextlib.suppress(StoreError), self._reading("pull changes") as conn:
                conn.execute(f"PRAGMA wal_autocheckpoint={int(before)}")

    @contextlib.contextmanager
    def _reading(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StoreError(
                    f"cannot {action}: the store {self._path} is closed; open it again",
                    path=str(self._path),
                )
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise store_error(exc, self._path, action) from exc

    @contextlib.contextmanager
    def _writing(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._reading(action) as conn:
            # IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so a
            # read-then-write can never fail half way on another writer's commit.
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    # -- properties

    @property
    def path(self) -> Path:
        """The store's file."""
        return self._path

    @property
    def device_id(self) -> str:
        """This device's id: a uuid4 hex made when the store was created, then kept."""
        return self._device_id

    @property
    def data_version(self) -> int:
        """The data version the store's items are written in."""
        return self._data_version

    # -- writes

    def put(
        self, collection: str, key: str, data: dict[str, Any], *, updated_at: int | None = None
    ) -> Item:
        """Store (or replace) one item and return it as a wire item.

        ``updated_at`` defaults to now, in milliseconds since the epoch.

        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     store.put("prefs", "theme", {"v": "dark"}, updated_at=1)["deleted"]
        False
        >>> tmp.cleanup()
        """
        stamp = now_ms() if updated_at is None else updated_at
        with self._writing("store an item") as conn:
            text = check_item(collection, key, data, stamp, False, encode=self._encoder(conn))
            _changes.record_writes(conn, [(collection, key, text, stamp, 0)])
        _written(self._path)
        return _row_item((collection, key, text, stamp, 0), self._resolve)

    def put_many(self, items: Iterable[Mapping[str, Any]]) -> int:
        """Store wire items in one transaction: all of them, or none if one is invalid.

        ``updatedAt`` defaults to now and ``deleted`` to False. Returns how many were written.

        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     store.put_many([{"collection": "c", "key": str(i), "data": {}} for i in range(3)])
        3
        >>> tmp.cleanup()
        """
        given = 0

        def checked(encode: Callable[[Any], str]) -> Iterator[tuple[str, str, str, int, int]]:
            nonlocal given
            for item in items:
                given += 1
                yield _item_row(item, encode)

        with self._writing("store items") as conn:
            _changes.record_writes(conn, checked(self._encoder(conn)))
        _written(self._path)
        return given

    def delete(self, collection: str, key: str, *, updated_at: int | None = None) -> bool:
        """Delete an item by writing a tombstone (``data`` ``{}``, ``deleted`` True), so the
        deletion is migrated too. Returns whether a live item was there.

        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     store.delete("cards", "never-stored")
        ...     store.get("cards", "never-stored")["deleted"]
        False
        True
        >>> tmp.cleanup()
        """
        stamp = now_ms() if updated_at is None else updated_at
        check_item(collection, key, {}, stamp, True)
        with self._writing("delete an item") as conn:
            row = conn.execute(
                "SELECT deleted FROM items WHERE collection = ? AND key = ?", (collection, key)
            ).fetchone()
            _changes.record_writes(conn, [(collection, key, "{}", stamp, 1)])
        _written(self._path)
        return row is not None and row[0] == 0

    def replace_if_unchanged(self, pairs: Iterable[tuple[Item, Item]]) -> int:
        """For each ``(expected, new)`` pair, replace the item with ``new`` only where the
        store still holds exactly ``expected``; one transaction. Returns how many were
        replaced. This writes resolved conflicts back without clobbering what the app
        changed since the snapshot.

        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     old = store.put("c", "k", {"v": 1}, updated_at=1)
        ...     new = dict(old, data={"v": 2}, updatedAt=2)
        ...     store.replace_if_unchanged([(old, new), (old, new)])
        1
        >>> tmp.cleanup()
        """
        checked = []
        for expected, new in pairs:
            row = _item_row(new)
            old = _item_row(expected)
            if old[:2] != row[:2]:
                raise InvalidItemError(
                    f"item {item_label(*row[:2])} cannot replace "
                    f"{item_label(*old[:2])}: a pair must name the same collection and key"
                )
            checked.append((old, row))
        with self._writing("write resolved items") as conn:
            return _changes.replace_rows(conn, checked)

    def mark_migrated(
        self,
        *,
        migration_id: str,
        session_id: str,
        cloud_checksum: str,
        sync: MigratedSync | None = None,
    ) -> None:
        """Record that the store's content now lives in the cloud (after verification).

        With ``sync`` (what the commit told of the cloud's order), the migrated items stop
        being pending and the sync continues from the commit: what the app wrote after the
        snapshot stays pending, based on the migrated version, for the next push.

        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     store.mark_migrated(migration_id="mig-0001", session_id="s1",
        ...                         cloud_checksum="a" * 64)
        ...     store.migration_state().session_id
        's1'
        >>> tmp.cleanup()
        """
        for name, value in (("migration_id", migration_id), ("session_id", session_id)):
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"{name} must be a non-empty string, got {value!r}")
        if not isinstance(cloud_checksum, str) or not re.fullmatch(r"[0-9a-f]{64}", cloud_checksum):
            raise ConfigurationError(
                f"cloud_checksum must be 64 lowercase hex digits, got {cloud_checksum!r}"
            )
        for attempt in range(2):
            try:
                with self._writing("mark the store migrated") as conn:
                    conn.executemany(
                        "INSERT INTO store_meta (key, value) VALUES (?, ?)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        [
                            ("migrated_at", str(now_ms())),
                            ("migration_id", migration_id),
                            ("session_id", session_id),
                            ("cloud_checksum", cloud_checksum),
                        ],
                    )
                    if sync is not None:
                        _changes.settle_migration(
                            conn,
                            seq=sync.seq,
                            prior_seq=sync.prior_seq,
                            counter=sync.snapshot_counter,
                            in_snapshot=sync.in_snapshot,
                            user_id=sync.user_id,
                        )
                return
            except CorruptStoreError:
                if attempt:
                    raise
                # The rows are whole (the snapshot read them all), so the damage is in an
                # index, which quick_check does not read: indexes are derived, rebuild them.
                logger.warning("rebuilding the indexes of %s: one was damaged", self._path)
                with self._writing("rebuild the store's indexes") as conn:
                    conn.execute("REINDEX items")

    # -- reads

    def get(self, collection: str, key: str, *, wire: bool = False) -> Item | None:
        """The item as a wire item, ``None`` if absent; a tombstone has ``deleted`` True.

        Typed values read back as what was put (``bytes``, :class:`Attachment`, a large
        value itself); ``wire=True`` gives the data as the wire carries it instead.

        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     store.get("cards", "nope") is None
        True
        >>> tmp.cleanup()
        """
        with self._reading("read an item") as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM items WHERE collection = ? AND key = ?", (collection, key)
            ).fetchone()
        return None if row is None else _row_item(row, None if wire else self._resolve)

    def iter_items(self, collection: str | None = None, *, wire: bool = False) -> Iterator[Item]:
        """Stream items (tombstones included) in ``(collection, key)`` order; ``wire`` as
        in :meth:`get`.

        Read a page at a time, so memory stays small and other threads are not held up;
        items written meanwhile may or may not appear (use a snapshot for one point in time).

        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     _ = store.put_many([{"collection": "c", "key": k, "data": {}} for k in "ba"])
        ...     [item["key"] for item in store.iter_items("c")]
        ['a', 'b']
        >>> tmp.cleanup()
        """
        where = "" if collection is None else "collection = ? AND "
        sql = (
            f"SELECT {_COLUMNS} FROM items WHERE {where}(collection, key) > (?, ?)"
            f" ORDER BY collection, key LIMIT {_PAGE}"
        )
        after: tuple[Any, ...] = ("", "")
        while True:
            params = after if collection is None else (collection, *after)
            with self._reading("read items") as conn:
                rows = conn.execute(sql, params).fetchall()
            resolve = None if wire else self._resolve
            for row in rows:
                yield _row_item(row, resolve)
            if len(rows) < _PAGE:
                return
            after = rows[-1][:2]

    def count(self, collection: str | None = None, *, include_deleted: bool = False) -> int:
        """How many items (optionally of one collection); tombstones only if asked.

        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     store.count("cards")
        0
        >>> tmp.cleanup()
        """
        clauses = ([] if collection is None else ["collection = ?"]) + (
            [] if include_deleted else ["deleted = 0"]
        )
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        params = () if collection is None else (collection,)
        with self._reading("count items") as conn:
            (n,) = conn.execute(f"SELECT count(*) FROM items{where}", params).fetchone()
        return int(n)

    def counts(self) -> dict[str, int]:
        """Live (not deleted) items per collection, for every collection in the store.

        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     _ = store.put("cards", "c1", {})
        ...     store.delete("old", "o1")
        ...     store.counts()
        False
        {'cards': 1, 'old': 0}
        >>> tmp.cleanup()
        """
        with self._reading("count items") as conn:
            rows = conn.execute(
                "SELECT collection, count(*) - sum(deleted) FROM items GROUP BY collection"
                " ORDER BY collection"
            ).fetchall()
        return {collection: int(n) for collection, n in rows}

    def collections(self) -> list[str]:
        """Names of the collections holding at least one item or tombstone, sorted.

        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     store.collections()
        []
        >>> tmp.cleanup()
        """
        with self._reading("list collections") as conn:
            rows = conn.execute("SELECT DISTINCT collection FROM items ORDER BY collection")
            return [name for (name,) in rows]

    def migration_state(self) -> MigrationState | None:
        """The recorded migration, or ``None`` if the store was never marked migrated.

        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     store.migration_state() is None
        True
        >>> tmp.cleanup()
        """
        with self._reading("read the migration state") as conn:
            meta = dict(conn.execute("SELECT key, value FROM store_meta").fetchall())
        return migration_state_from(meta)

    # -- lifetime

    def close(self) -> None:
        """Close the connection; later calls raise ``StoreError``. Closing twice is fine."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"<LocalStore {str(self._path)!r} {state}>"


_COLUMNS = "collection, key, data, updated_at, deleted"


def _item_row(
    item: Mapping[str, Any], encode: Callable[[Any], str] = canonical_json
) -> tuple[str, str, str, int, int]:
    """A wire item as a row; ``updatedAt`` defaults to now and ``deleted`` to False."""
    if not isinstance(item, Mapping):
        raise InvalidItemError(f"an item must be a dict, got {type(item).__name__}")
    unknown = set(item) - _ITEM_FIELDS
    missing = {"collection", "key", "data"} - set(item)
    if unknown or missing:
        raise InvalidItemError(
            f"item {item_label(item.get('collection'), item.get('key'))}: "
            + (f"unknown fields {sorted(unknown)}; " if unknown else "")
            + (f"missing fields {sorted(missing)}; " if missing else "")
            + "an item has collection, key, data, updatedAt and deleted"
        )
    collection, key = item["collection"], item["key"]
    updated_at = item.get("updatedAt")
    updated_at = now_ms() if updated_at is None else updated_at
    deleted = item.get("deleted", False)
    text = check_item(collection, key, item["data"], updated_at, deleted, encode=encode)
    return (collection, key, text, updated_at, int(deleted))
