"""Blobs of the embedded backend: files in the data folder, recorded in its database.

Layout under ``<data>/blobs``: a held blob is ``<owner>/<sha[:2]>/<sha>`` (``owner`` a
hash of the user id, :func:`~backend_stub.storage.blobs.owner_folder`); the chunks of an
upload in progress are ``uploads/<owner>/<sha>/<size>/<index>``. Every file is written
under a temporary name, flushed to disk and renamed into place, so a killed server
leaves whole files or none. A blob counts as held only once its row is in the
``blobs`` table, which is written after its file is in place; the chunks are removed
last, so a crash at any point leaves either a held blob or an upload to complete again::

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> sha = hashlib.sha256(b"hello").hexdigest()
    >>> storage.blobs.put_chunk("alice", sha, 5, 0, b"hello")
    [0]
    >>> storage.blobs.state("alice", sha).received_chunks
    [0]
    >>> storage.blobs.complete("alice", sha, 5, 1).held
    True
    >>> b"".join(storage.blobs.read("alice", sha, 1, 4))
    b'ell'
    >>> storage.close()
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from backend_stub.failpoints import failpoint
from backend_stub.storage.blobs import (
    BlobMismatch,
    ChunksMissing,
    copy_hashing,
    file_pieces,
    owner_folder,
)
from backend_stub.storage.records import VersionConflict
from sdk.contract import BlobState

__all__ = ["BLOBS_SCHEMA", "FileBlobs"]

#: The table recording held blobs (created by the database's migration ``m004``).
BLOBS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS blobs (user_id TEXT NOT NULL, sha256 TEXT NOT NULL,"
    " size INTEGER NOT NULL, PRIMARY KEY (user_id, sha256)) WITHOUT ROWID"
)

Rows = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
Write = Callable[[str, Sequence[Any]], int]


class FileBlobs:
    """The :class:`~backend_stub.storage.blobs.BlobStore` on files under ``root``;
    ``rows`` and ``write`` run statements on the server's database.

    >>> import tempfile, sqlite3
    >>> conn = sqlite3.connect(":memory:"); _ = conn.execute(BLOBS_SCHEMA)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     blobs = FileBlobs(Path(tmp), lambda q, p: conn.execute(q, p).fetchall(),
    ...                       lambda q, p: conn.execute(q, p).rowcount)
    ...     blobs.complete("alice", hashlib.sha256(b"").hexdigest(), 0, 0).held
    True
    """

    def __init__(self, root: Path | None, rows: Rows, write: Write) -> None:
        self._root = root
        self._rows = rows
        self._write = write
        # Two completes of one blob would race on its chunks: one at a time per blob.
        self._locks = [threading.Lock() for _ in range(64)]
        self._made = threading.Lock()
        self._temporary: Path | None = None

    @property
    def root(self) -> Path:
        """The folder of the blobs. Without one (an in-memory server), a temporary folder
        of its own, made when first needed and removed by :meth:`close`."""
        with self._made:
            if self._root is None:
                self._root = self._temporary = Path(tempfile.mkdtemp(prefix="migration-blobs-"))
            return self._root

    def close(self) -> None:
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)

    # ------------------------------------------------------------------ paths

    def _held_path(self, user_id: str, sha256: str) -> Path:
        return self.root / owner_folder(user_id) / sha256[:2] / sha256

    def _upload_dir(self, user_id: str, sha256: str) -> Path:
        return self.root / "uploads" / owner_folder(user_id) / sha256

    def _lock(self, user_id: str, sha256: str) -> threading.Lock:
        return self._locks[hash((user_id, sha256)) % len(self._locks)]

    # ------------------------------------------------------------------ reads

    def _held_size(self, user_id: str, sha256: str) -> int | None:
        rows = self._rows(
            "SELECT size FROM blobs WHERE user_id = ? AND sha256 = ?", [user_id, sha256]
        )
        return int(rows[0][0]) if rows else None

    def _upload(self, user_id: str, sha256: str) -> tuple[int, list[int]] | None:
        """The size and received chunks of the upload in progress, if any."""
        folder = self._upload_dir(user_id, sha256)
        sizes = sorted(p for p in _listing(folder) if p.name.isdigit())
        if not sizes:
            return None
        chunks = sorted(int(p.name) for p in _listing(sizes[-1]) if p.name.isdigit())
        return int(sizes[-1].name), chunks

    def states(self, user_id: str, shas: Sequence[str]) -> list[BlobState]:
        return [self.state(user_id, sha) for sha in shas]

    def state(self, user_id: str, sha256: str) -> BlobState:
        size = self._held_size(user_id, sha256)
        if size is not None:
            return BlobState(sha256=sha256, held=True, size=size)
        upload = self._upload(user_id, sha256)
        if upload is None:
            return BlobState(sha256=sha256, held=False)
        return BlobState(sha256=sha256, held=False, size=upload[0], received_chunks=upload[1])

    def read(self, user_id: str, sha256: str, start: int, stop: int) -> Iterator[bytes]:
        # Opened now, not when the answer starts streaming: a missing file fails the
        # request before its status is sent.
        handle = self._held_path(user_id, sha256).open("rb")
        handle.seek(start)
        return _closing(handle, file_pieces(handle, stop - start))

    # ------------------------------------------------------------------ writes

    def put_chunk(self, user_id: str, sha256: str, size: int, index: int, data: bytes) -> list[int]:
        folder = self._upload_dir(user_id, sha256)
        for _attempt in range(3):
            for other in _listing(folder):
                if other.name != str(size):
                    # Another size for the same content: only one of them can be right, and
                    # this client says it is this one. The other upload could never complete.
                    shutil.rmtree(other, ignore_errors=True)
            try:
                _place(folder / str(size) / str(index), [data])
            except FileNotFoundError:
                # A complete (or a chunk announcing another size) removed the upload's
                # folder while this chunk was written: a held blob needs it no more,
                # otherwise look again.
                if self._held_size(user_id, sha256) is not None:
                    return []
                continue
            failpoint("blob.chunk.stored")
            return sorted(int(p.name) for p in _listing(folder / str(size)) if p.name.isdigit())
        raise VersionConflict(f"the upload of blob {sha256[:8]}... kept changing: retry")

    def complete(self, user_id: str, sha256: str, size: int, count: int) -> BlobState:
        with self._lock(user_id, sha256):
            held = self._held_size(user_id, sha256)
            if held is None:
                held = self._assemble(user_id, sha256, size, count)
            # Left behind by a crash between the record and the cleanup, or never made.
            shutil.rmtree(self._upload_dir(user_id, sha256), ignore_errors=True)
        return BlobState(sha256=sha256, held=True, size=held)

    def _assemble(self, user_id: str, sha256: str, size: int, count: int) -> int:
        folder = self._upload_dir(user_id, sha256) / str(size)
        present = {p.name for p in _listing(folder)}
        missing = sum(1 for index in range(count) if str(index) not in present)
        if missing:
            raise ChunksMissing(missing, count)
        target = self._held_path(user_id, sha256)
        for stale in _listing_all(target.parent, f".{sha256}."):
            stale.unlink(missing_ok=True)  # an assembly a killed server left half-written
        digest = hashlib.sha256()
        try:
            found = _place(target, _chunk_pieces(folder, count), digest=digest, check=sha256)
        except FileNotFoundError:
            # A chunk for another size started the upload over meanwhile.
            raise ChunksMissing(count, count) from None
        if found != sha256:
            shutil.rmtree(self._upload_dir(user_id, sha256), ignore_errors=True)
            raise BlobMismatch(sha256, found)
        failpoint("blob.complete.placed")
        self._write(
            "INSERT OR IGNORE INTO blobs (user_id, sha256, size) VALUES (?, ?, ?)",
            [user_id, sha256, size],
        )
        return size


def _closing(handle: BinaryIO, pieces: Iterator[bytes]) -> Iterator[bytes]:
    with handle:
        yield from pieces


def _chunk_pieces(folder: Path, count: int) -> Iterator[bytes]:
    for index in range(count):
        with (folder / str(index)).open("rb") as handle:
            yield from file_pieces(handle, os.fstat(handle.fileno()).st_size)


def _listing(folder: Path) -> list[Path]:
    """The entries of ``folder`` that are in place (no temporary files), if it exists."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return [p for p in folder.iterdir() if not p.name.startswith(".")]
    return []


def _listing_all(folder: Path, prefix: str) -> list[Path]:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return [p for p in folder.iterdir() if p.name.startswith(prefix)]
    return []


def _place(
    target: Path,
    pieces: Iterator[bytes] | list[bytes],
    *,
    digest: Any = None,
    check: str | None = None,
) -> str:
    """Write ``pieces`` to ``target`` crash-safely: a temporary file beside it, flushed to
    disk, renamed into place, and the folder flushed. With ``check``, the file is put in
    place only if the content hashes to it; the hex digest is returned either way."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    digest = digest or hashlib.sha256()
    try:
        with temporary.open("wb") as sink:
            copy_hashing(pieces, sink, digest)
            sink.flush()
            os.fsync(sink.fileno())
        found: str = digest.hexdigest()
        if check is not None:
            failpoint("blob.complete.assembled")
            if found != check:
                return found
        os.replace(temporary, target)
        _sync_folder(target.parent)
        return found
    finally:
        temporary.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk too.
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
