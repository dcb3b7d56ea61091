"""The snapshot: one point in time of the store, validated, checksummed and cut into batches.

The copy is made with SQLite's online backup API (a file copy would lose what is still in
the WAL, and could tear while the app writes). The batch plan is deterministic: the same
store gives the same batches, and the dataset checksum does not depend on the batching::

    >>> import tempfile, pathlib
    >>> from sdk._store.local import LocalStore
    >>> from sdk._wire.canonical import dataset_checksum_of
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> with LocalStore(tmp / "store.sqlite3") as store:
    ...     _ = store.put_many({"collection": "cards", "key": f"c{i}", "data": {"n": i}}
    ...                        for i in range(5))
    ...     items = list(store.iter_items())
    >>> with take_snapshot(tmp / "store.sqlite3", tmp, batch_size=2,
    ...                    max_batch_bytes=1 << 20, name="snap") as snap:
    ...     snap.batch_sizes()[0][:2], snap.dataset_checksum == dataset_checksum_of(items)
    ((0, 2), True)
    >>> import shutil; shutil.rmtree(tmp)

Memory stays bounded whatever the store's size: items are streamed through cursors, and a
batch is rebuilt on demand from its plan row with one keyset query.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from sdk._errors import (
    ConfigurationError,
    CorruptStoreError,
    ForeignStoreError,
    SnapshotError,
    StoreBusyError,
    StoreNotFoundError,
    UnsupportedDataVersionError,
)
from sdk._failpoints import failpoint
from sdk._store.detect import LocalState, inspect_store
from sdk._store.local import check_item, item_label
from sdk._store.rowcheck import lenient_text
from sdk._store.schema import (
    STORE_APPLICATION_ID,
    STORE_FORMAT,
    SUPPORTED_DATA_VERSIONS,
    connect_read_only,
    store_error,
)
from sdk._store.snapshot_plan import (
    BATCHES_TABLE,
    ENVELOPE,
    MAX_PROBLEMS,
    PAGE,
    PLAN_SCHEMA,
    encode_rows,
    items_checksum,
    scan_items,
)
from sdk._wire.canonical import (
    Item,
    batch_body,
    batch_checksum,
    canonical_item_parts,
    item_digest,
)
from sdk._wire.models import Manifest

__all__ = ["PreparedBatch", "Snapshot", "open_snapshot", "take_snapshot"]

logger = logging.getLogger(__name__)

#: Each batch of the plan records the SHA-256 over its items' digests.
SNAPSHOT_FORMAT = "offline-migrate-snapshot-2"
#: As :data:`SNAPSHOT_FORMAT`, with the digests the store vouches for taken as they are
#: (``take_snapshot(trust_digests=True)``): rebuilding a batch is their one check.
_TRUSTED_FORMAT = "offline-migrate-snapshot-2-vouched"
#: Snapshots taken by earlier SDKs: each batch records the SHA-256 of its body.
_BODY_CHECKSUM_FORMAT = "offline-migrate-snapshot"
_FORMATS = (SNAPSHOT_FORMAT, _TRUSTED_FORMAT, _BODY_CHECKSUM_FORMAT)
_SNAPSHOT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

_INFO_SCHEMA = """CREATE TABLE snapshot_info (
    format TEXT NOT NULL,
    dataset_checksum TEXT NOT NULL,
    item_count INTEGER NOT NULL,
    collections TEXT NOT NULL,
    batch_size INTEGER NOT NULL,
    max_batch_bytes INTEGER NOT NULL,
    batch_count INTEGER NOT NULL,
    data_version INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    source_path TEXT NOT NULL,
    created_at INTEGER NOT NULL
)"""
_INFO_COLUMNS = (
    "dataset_checksum, item_count, collections, batch_size, max_batch_bytes, batch_count,"
    " data_version, device_id, source_path, created_at"
)
_ITEMS = "SELECT collection, key, data, updated_at, deleted FROM items"


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """One batch ready to send: the exact body and its SHA-256 (``X-Content-SHA256``).

    >>> PreparedBatch(seq=0, body=b'{"items":[]}', checksum="0" * 64, item_count=0).seq
    0
    """

    seq: int
    body: bytes
    checksum: str
    item_count: int


@dataclass(frozen=True)
class _Info:
    dataset_checksum: str
    item_count: int
    collections: dict[str, int]
    batch_size: int
    max_batch_bytes: int
    batch_count: int
    data_version: int
    device_id: str
    source_path: str
    created_at: int
    format: str = field(default=SNAPSHOT_FORMAT, kw_only=True)


class Snapshot:
    """A taken snapshot: its metadata (fixed) and its batches (rebuilt on demand).

    Safe to share between threads: metadata are plain values, and every read of the file
    goes through one lock held for a single query, so one thread may iterate the batches
    while others read metadata, fetch items or iterate too.

    >>> import tempfile, pathlib
    >>> from sdk._store.local import LocalStore
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> LocalStore(tmp / "s.sqlite3").close()
    >>> snap = take_snapshot(tmp / "s.sqlite3", tmp, batch_size=10, max_batch_bytes=4096)
    >>> snap.item_count, snap.batch_count, list(snap.iter_batches())
    (0, 0, [])
    >>> snap.delete(); snap.path.exists()
    False
    >>> import shutil; shutil.rmtree(tmp)
    """

    def __init__(self, path: Path, info: _Info) -> None:
        self._path = path
        self._info = info
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    # -- metadata

    @property
    def path(self) -> Path:
        """The snapshot's file."""
        return self._path

    @property
    def item_count(self) -> int:
        """Items in the snapshot, tombstones included."""
        return self._info.item_count

    @property
    def collections(self) -> dict[str, int]:
        """Items per collection, tombstones included (a copy)."""
        return dict(self._info.collections)

    @property
    def dataset_checksum(self) -> str:
        """Hex SHA-256 over the item digests in ``(collection, key)`` order."""
        return self._info.dataset_checksum

    @property
    def batch_size(self) -> int:
        """Most items in one batch."""
        return self._info.batch_size

    @property
    def max_batch_bytes(self) -> int:
        """Most bytes in one batch body."""
        return self._info.max_batch_bytes

    @property
    def batch_count(self) -> int:
        """Batches in the plan, numbered ``0 .. batch_count - 1``."""
        return self._info.batch_count

    @property
    def trusts_store_digests(self) -> bool:
        """Whether the plan took the digests the store vouches for as they are; then a
        batch that does not rebuild as planned may mean an item of the store does not
        match its digest (written around the SDK, digest included, or damaged), and a
        snapshot that checks every item reads it as it is."""
        return self._info.format == _TRUSTED_FORMAT

    @property
    def data_version(self) -> int:
        """Data version of the store the snapshot was taken from."""
        return self._info.data_version

    @property
    def device_id(self) -> str:
        """Device id of the store the snapshot was taken from."""
        return self._info.device_id

    @property
    def source_path(self) -> str:
        """The store the snapshot was taken from."""
        return self._info.source_path

    @property
    def created_at(self) -> int:
        """When the snapshot was taken, in milliseconds since the epoch."""
        return self._info.created_at

    def manifest(self) -> Manifest:
        """The manifest sent with ``start``.

        >>> import tempfile, pathlib
        >>> from sdk._store.local import LocalStore
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> LocalStore(tmp / "s.sqlite3").close()
        >>> with take_snapshot(tmp / "s.sqlite3", tmp, batch_size=10,
        ...                    max_batch_bytes=4096) as snap:
        ...     snap.manifest().item_count
        0
        >>> import shutil; shutil.rmtree(tmp)
        """
        return Manifest(
            item_count=self.item_count,
            collections=self.collections,
            batch_size=self.batch_size,
            batch_count=self.batch_count,
            dataset_checksum=self.dataset_checksum,
        )

    # -- reading

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                if self._conn is None:
                    if not self._path.is_file():
                        raise SnapshotError(
                            f"the snapshot {self._path} is gone; take a new snapshot"
                        )
                    self._conn = connect_read_only(self._path)
                yield self._conn
            except sqlite3.Error as exc:
                raise SnapshotError(
                    f"cannot read the snapshot {self._path} ({exc}); delete it and take a "
                    "new snapshot"
                ) from exc

    def batch_sizes(self) -> list[tuple[int, int, int]]:
        """The plan as ``(seq, item_count, byte_count)`` rows.

        >>> import tempfile, pathlib
        >>> from sdk._store.local import LocalStore
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> with LocalStore(tmp / "s.sqlite3") as store:
        ...     _ = store.put("c", "k", {}, updated_at=1)
        >>> with take_snapshot(tmp / "s.sqlite3", tmp, batch_size=10,
        ...                    max_batch_bytes=4096) as snap:
        ...     snap.batch_sizes()
        [(0, 1, 80)]
        >>> import shutil; shutil.rmtree(tmp)
        """
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT seq, item_count, byte_count FROM snapshot_batches ORDER BY seq"
            ).fetchall()
        return [(int(seq), int(n), int(size)) for seq, n, size in rows]

    def iter_batches(self, seqs: Iterable[int] | None = None) -> Iterator[PreparedBatch]:
        """Rebuild batches (all, in order, or the given ``seqs``) and verify each against
        the plan; a mismatch means the file was damaged or tampered with (``SnapshotError``).

        >>> import tempfile, pathlib, json
        >>> from sdk._store.local import LocalStore
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> with LocalStore(tmp / "s.sqlite3") as store:
        ...     _ = store.put("c", "k", {"v": 1}, updated_at=1)
        >>> with take_snapshot(tmp / "s.sqlite3", tmp, batch_size=10,
        ...                    max_batch_bytes=4096) as snap:
        ...     [json.loads(b.body)["items"][0]["data"] for b in snap.iter_batches([0])]
        [{'v': 1}]
        >>> import shutil; shutil.rmtree(tmp)
        """
        for seq in range(self.batch_count) if seqs is None else seqs:
            if type(seq) is not int or not 0 <= seq < self.batch_count:
                raise ConfigurationError(
                    f"batch {seq!r} is not in the plan of {self._path} "
                    f"(batches 0 to {self.batch_count - 1})"
                )
            yield self._prepare(seq)

    def _prepare(self, seq: int) -> PreparedBatch:
        with self._reading() as conn:
            plan = conn.execute(
                "SELECT first_collection, first_key, item_count, byte_count, checksum"
                " FROM snapshot_batches WHERE seq = ?",
                (seq,),
            ).fetchone()
            if plan is None:
                raise SnapshotError(
                    f"batch {seq} is missing from the plan in {self._path}; the snapshot is "
                    "damaged: delete it and take a new one"
                )
            first_collection, first_key, count, byte_count, checksum = plan
            rows = _rows(
                conn,
                f"{_ITEMS} WHERE (collection, key) >= (?, ?) ORDER BY collection, key LIMIT ?",
                (first_collection, first_key, count),
            )
        try:
            # The snapshot's data is canonical JSON (normalized when it was taken), so
            # the item is formatted around it: no parse and re-encode per row.
            encoded = encode_rows(rows)
        except (KeyError, ValueError, TypeError) as exc:
            raise self._tampered(seq, f"an item cannot be encoded ({exc})") from exc
        body = batch_body(encoded)
        actual = batch_checksum(body)
        if self._info.format != _BODY_CHECKSUM_FORMAT:
            # Every item hashed again: what the dataset checksum holds is what is sent.
            sha256 = hashlib.sha256
            planned = items_checksum([sha256(item).digest() for item in encoded])
        else:
            planned = actual
        if len(rows) != count or len(body) != byte_count or planned != checksum:
            raise self._tampered(seq, "its content does not match the plan's checksum")
        return PreparedBatch(seq=seq, body=body, checksum=actual, item_count=count)

    def _tampered(self, seq: int, what: str) -> SnapshotError:
        return SnapshotError(
            f"batch {seq} of the snapshot {self._path} was damaged or changed: {what}; "
            "delete the snapshot and take a new one"
        )

    def get_items(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        """The snapshot's version of the given items; keys not in it are left out.

        >>> import tempfile, pathlib
        >>> from sdk._store.local import LocalStore
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> with LocalStore(tmp / "s.sqlite3") as store:
        ...     _ = store.put("c", "k", {"v": 1}, updated_at=1)
        >>> with take_snapshot(tmp / "s.sqlite3", tmp, batch_size=10,
        ...                    max_batch_bytes=4096) as snap:
        ...     snap.get_items([("c", "k"), ("c", "nope")])[("c", "k")]["data"]
        {'v': 1}
        >>> import shutil; shutil.rmtree(tmp)
        """
        found: dict[tuple[str, str], Item] = {}
        with self._reading() as conn:
            for collection, key in keys:
                for row in _rows(
                    conn, f"{_ITEMS} WHERE collection = ? AND key = ?", (collection, key)
                ):
                    found[(collection, key)] = _item(row)
        return found

    def dataset_checksum_with(self, overrides: Mapping[tuple[str, str], Item]) -> str:
        """The dataset checksum after replacing some items' versions, e.g. by resolved
        conflicts. Every key must be in the snapshot (the cloud checksum covers exactly the
        migrated keys).

        >>> import tempfile, pathlib
        >>> from sdk._store.local import LocalStore
        >>> from sdk._wire.canonical import dataset_checksum_of
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> with LocalStore(tmp / "s.sqlite3") as store:
        ...     item = store.put("c", "k", {"v": 1}, updated_at=1)
        >>> new = dict(item, data={"v": 2})
        >>> with take_snapshot(tmp / "s.sqlite3", tmp, batch_size=10,
        ...                    max_batch_bytes=4096) as snap:
        ...     snap.dataset_checksum_with({("c", "k"): new}) == dataset_checksum_of([new])
        True
        >>> import shutil; shutil.rmtree(tmp)
        """
        pending = dict(overrides)
        for (collection, key), item in pending.items():
            check_item(
                item.get("collection"),
                item.get("key"),
                item.get("data"),
                item.get("updatedAt"),
                item.get("deleted"),
            )
            if (item["collection"], item["key"]) != (collection, key):
                raise ConfigurationError(
                    f"the override for {item_label(collection, key)} is the item "
                    f"{item_label(item['collection'], item['key'])}; key each override by its "
                    "own (collection, key)"
                )
        hasher = hashlib.sha256()
        for row in self._scan():
            override = pending.pop((row[0], row[1]), None)
            if override is None:
                # Canonical data (normalized when the snapshot was taken): no re-encoding.
                c, k, d, u, x = row
                hasher.update(hashlib.sha256(canonical_item_parts(c, k, d, u, bool(x))).digest())
            else:
                hasher.update(item_digest(override))
        if pending:
            names = ", ".join(item_label(*key) for key in sorted(pending)[:MAX_PROBLEMS])
            raise ConfigurationError(
                f"{len(pending)} override(s) name items that are not in the snapshot "
                f"({names}); only the snapshot's items are migrated"
            )
        return hasher.hexdigest()

    def _scan(self) -> Iterator[tuple[Any, ...]]:
        """Every item row in ``(collection, key)`` order, a page per lock hold."""
        after: tuple[Any, ...] = ("", "")
        while True:
            with self._reading() as conn:
                rows = _rows(
                    conn,
                    f"{_ITEMS} WHERE (collection, key) > (?, ?) ORDER BY collection, key"
                    f" LIMIT {PAGE}",
                    after,
                )
            yield from rows
            if len(rows) < PAGE:
                return
            after = rows[-1][:2]

    # -- lifetime

    def close(self) -> None:
        """Close the read connection (it reopens on the next read)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def delete(self) -> None:
        """Close and remove the snapshot's file."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Snapshot {str(self._path)!r} items={self.item_count} "
            f"batches={self.batch_count} checksum={self.dataset_checksum[:12]}>"
        )


def _rows(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The query's rows, text decoded by sqlite3 in C; only when some bytes are not UTF-8
    (damage) again, decoded leniently, so the damage is named as the item's and not as an
    unreadable file (a Python text factory on every value cost a fifth of a batch)."""
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "Could not decode" not in str(exc):  # sqlite3's "Could not decode to UTF-8 ..."
            raise
    conn.text_factory = lenient_text
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.text_factory = str


def _item(row: tuple[Any, ...]) -> Item:
    collection, key, data, updated_at, deleted = row
    return {
        "collection": collection,
        "key": key,
        "data": json.loads(data),
        "updatedAt": updated_at,
        "deleted": bool(deleted),
    }


# ----------------------------------------------------------------------------- taking


def take_snapshot(
    store_path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    batch_size: int,
    max_batch_bytes: int,
    batch_bytes: int | None = None,
    name: str | None = None,
    trust_digests: bool = False,
) -> Snapshot:
    """Snapshot the store into ``dest_dir/<name>.sqlite3``, while the app may keep writing.

    The copy is checked (``quick_check``, ours, every item valid), checksummed and planned
    into batches of at most ``batch_size`` items and ``max_batch_bytes`` bytes, written to
    ``<name>.partial``, synced, then renamed into place: a snapshot file is always complete.
    ``batch_bytes`` (at most ``max_batch_bytes``, the default) is the budget that closes a
    batch: an item larger than it alone travels in a batch of its own.

    ``trust_digests`` takes the digests the store vouches for as they are, without reading
    or hashing those items (half the snapshot's time): each is checked once instead, when
    its batch is rebuilt to be sent (:meth:`Snapshot.iter_batches`), and an item that does
    not match its digest then fails its batch (see :attr:`Snapshot.trusts_store_digests`).
    By default every item is checked here, before anything is sent.

    >>> import tempfile, pathlib
    >>> from sdk._store.local import LocalStore
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> LocalStore(tmp / "s.sqlite3").close()
    >>> take_snapshot(tmp / "s.sqlite3", tmp, batch_size=0, max_batch_bytes=4096)
    Traceback (most recent call last):
    ...
    sdk._errors.ConfigurationError: batch_size must be an integer >= 1, got 0
    >>> import shutil; shutil.rmtree(tmp)
    """
    if type(batch_size) is not int or batch_size < 1:
        raise ConfigurationError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if type(max_batch_bytes) is not int or max_batch_bytes <= ENVELOPE:
        raise ConfigurationError(
            f"max_batch_bytes must be an integer > {ENVELOPE} (the empty body), "
            f"got {max_batch_bytes!r}"
        )
    if batch_bytes is not None and (type(batch_bytes) is not int or batch_bytes <= ENVELOPE):
        raise ConfigurationError(
            f"batch_bytes must be an integer > {ENVELOPE} (the empty body), got {batch_bytes!r}"
        )
    if name is None:
        name = f"snapshot-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    elif not isinstance(name, str) or not _SNAPSHOT_NAME_RE.fullmatch(name):
        raise ConfigurationError(
            f"name must be 1 to 128 letters, digits, '_', '.' or '-', not starting with "
            f"'.', '_' or '-', got {name!r}"
        )
    source, dest = Path(store_path), Path(dest_dir)
    final, partial = dest / f"{name}.sqlite3", dest / f"{name}.partial"
    if final.exists():
        raise ConfigurationError(
            f"a snapshot named {name!r} already exists in {dest}; pick another name or "
            "delete it first"
        )
    detection = inspect_store(source, count=False)
    if detection.state is LocalState.NO_STORE:
        raise StoreNotFoundError(f"no store at {source}: nothing to snapshot", path=str(source))
    detection.raise_for_state()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        _remove(partial)  # left by a crash during an earlier attempt
        info = _build(source, partial, batch_size, max_batch_bytes, batch_bytes, trust_digests)
        _fsync(partial)
        os.replace(partial, final)
        _fsync_dir(dest)
    except OSError as exc:
        _remove(partial)
        raise SnapshotError(
            f"could not write the snapshot {final} ({exc}); check that {dest} is writable "
            "and has free space, then take the snapshot again"
        ) from exc
    except BaseException:
        _remove(partial)
        raise
    logger.info(
        "snapshot %s: %d items in %d batches, checksum %s",
        final,
        info.item_count,
        info.batch_count,
        info.dataset_checksum,
    )
    return Snapshot(final, info)


def open_snapshot(path: str | os.PathLike[str]) -> Snapshot:
    """Open a snapshot taken earlier (e.g. before the process restarted).

    >>> open_snapshot("/nonexistent/snap.sqlite3")
    Traceback (most recent call last):
    ...
    sdk._errors.SnapshotError: no snapshot at /nonexistent/snap.sqlite3; take a new snapshot
    """
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"no snapshot at {path}; take a new snapshot")
    try:
        conn = connect_read_only(path)
    except sqlite3.Error as exc:
        raise SnapshotError(f"cannot open the snapshot {path} ({exc})") from exc
    try:
        row = conn.execute(f"SELECT format, {_INFO_COLUMNS} FROM snapshot_info").fetchall()
        (batches,) = conn.execute("SELECT count(*) FROM snapshot_batches").fetchone()
        if len(row) != 1 or row[0][0] not in _FORMATS:
            raise ValueError("snapshot_info must hold exactly one row of our format")
        values = list(row[0][1:])
        values[2] = json.loads(values[2])  # collections
        info = _Info(*values, format=row[0][0])
        if batches != info.batch_count:
            raise ValueError(f"the plan has {batches} batches, the info says {info.batch_count}")
    except (sqlite3.Error, ValueError, TypeError) as exc:
        raise SnapshotError(
            f"{path} is not a usable snapshot ({exc}); delete it and take a new snapshot"
        ) from exc
    finally:
        conn.close()
    return Snapshot(path, info)


def _build(
    source: Path,
    partial: Path,
    batch_size: int,
    max_batch_bytes: int,
    batch_bytes: int | None,
    trust: bool,
) -> _Info:
    dst = sqlite3.connect(str(partial), isolation_level=None, check_same_thread=False)
    copy: _Copy | None = None
    reader: sqlite3.Connection | None = None
    try:
        try:
            pinned = _pinned(source)
            if pinned is None:  # the app kept committing: scan the copy once it is made
                copy = _Copy(connect_read_only(source), dst, partial, source)
                copy.copied.wait()
                copy.verdict(source, checked=False)
                reader = dst
            else:
                src, reader = pinned
                copy = _Copy(src, dst, partial, source)
            failpoint("snapshot.during")
            try:
                info = _plan(reader, source, batch_size, max_batch_bytes, batch_bytes, trust, copy)
            except BaseException:
                copy.verdict(source)  # damage explains any other failure: it is named first
                raise
            _write_copy(dst, reader, info)
            return info
        except sqlite3.Error as exc:
            error = store_error(exc, partial, "write the snapshot")
            if isinstance(error, CorruptStoreError) or _schema_error(exc):
                raise CorruptStoreError(
                    f"the store {source} is damaged ({exc}); restore it from a backup",
                    path=str(source),
                ) from exc
            raise SnapshotError(
                f"could not write the snapshot {partial} ({exc}); check free space and "
                "take the snapshot again"
            ) from exc
    except UnicodeDecodeError as exc:
        # sqlite3 raises this instead of DatabaseError when SQLite's message quotes
        # damaged bytes (a malformed schema entry copied from the store).
        raise CorruptStoreError(
            f"the store {source} is damaged (its schema holds bytes that are not text); "
            "restore it from a backup",
            path=str(source),
        ) from exc
    finally:
        if copy is not None:
            copy.join_quietly()  # it writes into dst: never closed under it
        if reader is not None and reader is not dst:
            reader.close()
        dst.close()


def _pinned(source: Path) -> tuple[sqlite3.Connection, sqlite3.Connection] | None:
    """Two read transactions of the store at one point in time, for the copy and for the
    scan beside it; ``None`` when the app committed between them three times running.
    ``PRAGMA data_version`` on a third connection changes when anyone commits: unchanged
    from before the first began to after the second did, both hold the same state.
    (The backup API copies the open read transaction of its source connection.)"""
    for _attempt in range(3):
        probe = connect_read_only(source)
        pair: list[sqlite3.Connection] = []
        try:
            (before,) = probe.execute("PRAGMA data_version").fetchone()
            for _ in range(2):
                conn = connect_read_only(source)
                pair.append(conn)
                conn.isolation_level = None
                conn.execute("BEGIN")
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the read
            (after,) = probe.execute("PRAGMA data_version").fetchone()
        except BaseException as exc:
            for conn in pair:
                conn.close()
            if isinstance(exc, sqlite3.Error):  # locked or damaged: the store's doing
                raise store_error(exc, source, "read the store") from exc
            raise
        finally:
            probe.close()
        if before == after:
            return pair[0], pair[1]
        for conn in pair:
            conn.close()
    return None


def _schema_error(exc: sqlite3.Error) -> bool:
    """SQLITE_ERROR from our own queries on the copy ("no such column: updated_at"): the
    store's schema is not the one its version promises, so the store is damaged."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if isinstance(code, int):
        return code & 0xFF == 1
    return str(exc).startswith("no such ")


class _Copy(threading.Thread):
    """The copy (SQLite's backup API, from ``src``'s read transaction of the store into
    ``dst``), made a plain file with the store's triggers dropped, then ``PRAGMA
    quick_check`` of it on a connection of its own: on a thread of their own while the
    scan reads the same point in time beside them. SQLite releases the GIL for the copy
    and the check, so the three overlap where there is a second core. Its verdict comes
    first, as if it had run first; ``copied`` is set once the copy is made (or failed)."""

    def __init__(self, src: sqlite3.Connection, dst: sqlite3.Connection, path: Path, source: Path):
        super().__init__(name="snapshot-copy", daemon=True)
        self._src, self._dst, self._path, self._source = src, dst, path, source
        self.copied = threading.Event()
        self._problems: list[str] = []
        self._error: BaseException | None = None
        try:
            self.start()
        except RuntimeError:  # no thread to be had: copy and check here and now instead
            self.run()

    def run(self) -> None:
        try:
            try:
                self._copy()
            finally:
                self._src.close()
                self.copied.set()
            conn = connect_read_only(self._path)
            try:
                self._problems = [
                    msg
                    for (msg,) in conn.execute("PRAGMA quick_check(5)")
                    # A broken CHECK or NOT NULL is a bad item, not a damaged file: the
                    # item validation names it.
                    if msg != "ok"
                    and not msg.startswith(("CHECK constraint failed", "NULL value in"))
                ]
            finally:
                conn.close()
        except BaseException as exc:  # raised in the snapshot's thread, by verdict()
            self._error = exc

    def _copy(self) -> None:
        source, dst = self._source, self._dst
        try:
            # One step (pages=-1): the whole copy is the source's one read transaction.
            self._src.backup(dst)
        except sqlite3.Error as exc:
            error = store_error(exc, source, "copy the store")
            if isinstance(error, (StoreBusyError, CorruptStoreError)):
                raise error from exc
            # Anything else (disk full, I/O error) is most likely the destination's doing.
            raise SnapshotError(
                f"could not copy {source} into {self._path} ({exc}); check that the folder "
                "is writable and has free space, then take the snapshot again"
            ) from exc
        dst.execute("PRAGMA journal_mode=DELETE")
        # The copy is no store: the store's triggers (which record writes made around the
        # SDK) must not count this copy's own rewrites as the app's.
        for (trigger,) in dst.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        ).fetchall():
            dst.execute(f'DROP TRIGGER "{trigger}"')

    def join_quietly(self) -> None:
        """Wait for the thread, whatever it found."""
        if self.ident is not None:
            self.join()

    def verdict(self, source: Path, *, checked: bool = True) -> None:
        """Wait for the copy and, unless not ``checked``, the check; raise what they found."""
        if checked:
            self.join_quietly()
        else:
            self.copied.wait()
        if self._error is not None:
            raise self._error
        if checked and self._problems:
            raise CorruptStoreError(
                f"the store {source} is damaged ({'; '.join(self._problems)}); restore it "
                "from a backup, or move it away to start afresh",
                path=str(source),
            )


def _plan(
    conn: sqlite3.Connection,
    source: Path,
    batch_size: int,
    max_batch_bytes: int,
    batch_bytes: int | None,
    trust: bool,
    copy: _Copy,
) -> _Info:
    """Check and plan every item, reading ``conn`` (the store at the copy's point in
    time, or the copy) while ``copy`` is made and checked: the plan goes into
    ``conn``'s temporary tables, and into the copy once it is checked."""
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    meta = dict(conn.execute("SELECT key, value FROM store_meta").fetchall())
    if app_id != STORE_APPLICATION_ID or meta.get("format") != STORE_FORMAT:
        raise ForeignStoreError(f"{source} is not this app's store", path=str(source))
    data_version = int(meta.get("data_version", -1))
    if data_version not in SUPPORTED_DATA_VERSIONS:
        raise UnsupportedDataVersionError(
            f"{source} holds data version {data_version}; this SDK supports "
            f"{sorted(SUPPORTED_DATA_VERSIONS)}",
            path=str(source),
        )
    for statement in PLAN_SCHEMA:
        conn.execute(statement)
    planner, invalid, problems = scan_items(
        conn, batch_size, max_batch_bytes, trust=trust, batch_bytes=batch_bytes
    )
    copy.verdict(source)
    if invalid:
        raise SnapshotError(
            f"{invalid} item(s) in {source} cannot be migrated: {'; '.join(problems)}; "
            "rewrite them with valid data (LocalStore.put) or delete them, then take the "
            "snapshot again"
        )
    return _Info(
        dataset_checksum=planner.dataset.hexdigest(),
        item_count=planner.item_count,
        collections=planner.collections,
        batch_size=batch_size,
        max_batch_bytes=max_batch_bytes,
        batch_count=planner.seq,
        data_version=data_version,
        device_id=str(meta.get("device_id", "")),
        source_path=str(source),
        created_at=time.time_ns() // 1_000_000,
        format=_TRUSTED_FORMAT if planner.trusted else SNAPSHOT_FORMAT,
    )


def _write_copy(dst: sqlite3.Connection, plan: sqlite3.Connection, info: _Info) -> None:
    """Write the plan (``plan``'s temporary tables) and ``info`` into the checked copy, in
    one transaction. Data written by the store is canonical already; anything else (a row
    written around the store) is rewritten in the copy, so batches can be built without
    parsing and still match the digests the scan computed."""
    dst.execute("BEGIN")
    for statement in (_INFO_SCHEMA, f"CREATE TABLE {BATCHES_TABLE}"):
        dst.execute(statement)
    dst.executemany(  # streamed from the cursors: memory stays bounded
        "INSERT INTO main.snapshot_batches VALUES (?, ?, ?, ?, ?, ?)",
        plan.execute("SELECT * FROM temp.snapshot_batches ORDER BY seq"),
    )
    dst.executemany(
        "UPDATE main.items SET data = ? WHERE collection = ? AND key = ?",
        plan.execute("SELECT data, collection, key FROM temp.normalized"),
    )
    dst.execute(
        f"INSERT INTO snapshot_info (format, {_INFO_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            info.format,
            info.dataset_checksum,
            info.item_count,
            json.dumps(info.collections, sort_keys=True),
            info.batch_size,
            info.max_batch_bytes,
            info.batch_count,
            info.data_version,
            info.device_id,
            info.source_path,
            info.created_at,
        ),
    )
    dst.execute("COMMIT")


def _fsync(path: Path) -> None:
    with path.open("rb+") as file:
        os.fsync(file.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes the rename durable; directories cannot be opened this way on Windows.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(partial: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            partial.with_name(partial.name + suffix).unlink()
