"""Attachments travel apart from the items: before a migration's ``complete`` and before
a sync's push, every blob the items reference is uploaded and completed, so the cloud
never holds an item whose blob it lacks; a pull fetches what the pulled items reference.

An upload asks the server first (``/blobs/query``): a blob it holds costs nothing more,
and of one in progress (a kill at any byte, another device) only the chunks it lacks are
sent. Chunks are read from the store one at a time, so memory stays bounded whatever the
size. A download asks for one chunk-sized ``Range`` at a time and writes it into the
store in its own transaction, so a download cut off resumes where it stopped.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .._errors import (
    AttachmentMissingError,
    ConflictError,
    CorruptStoreError,
    NotFoundError,
    ProtocolError,
)
from .._events import Progress, ProgressPhase
from .._failpoints import failpoint
from .._store import attachments as stored
from .._store.local import LocalStore
from .._store.schema import connect_read_only
from .._store.values import references
from .._transport import blobs
from .._transport.direct import SignedUrlRefused
from .._transport.http import Transport
from .._wire import canonical as c
from .._wire.models import BlobState

__all__ = [
    "BlobUpload",
    "fetch",
    "fetch_referenced",
    "lacking_in_cloud",
    "upload_referenced",
]

logger = logging.getLogger(__name__)

#: Only the blobs of rows a push will send (pending above the migration's watermark).
_PENDING_REFS = (
    "SELECT DISTINCT b.sha256 FROM item_blobs AS b JOIN items AS i"
    " ON i.collection = b.collection AND i.key = b.key WHERE i.pending > coalesce("
    "(SELECT CAST(value AS INTEGER) FROM store_meta WHERE key = 'settled_through'), 0)"
)
_ALL_REFS = "SELECT DISTINCT sha256 FROM item_blobs"


@dataclass(frozen=True)
class BlobUpload:
    """What an upload did: blobs referenced, blobs the server lacked (whole or in part),
    chunks and bytes sent."""

    referenced: int = 0
    uploaded: int = 0
    chunks_sent: int = 0
    bytes_sent: int = 0


def upload_referenced(
    transport: Transport,
    db_path: Path,
    *,
    pending_only: bool = False,
    chunk_bytes: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    phase: ProgressPhase = ProgressPhase.COMPLETING,
    content_from: Path | None = None,
) -> BlobUpload:
    """Upload and complete every blob the items of the store (or snapshot) at ``db_path``
    reference (``pending_only``: those of the changes a push will send), in chunks of
    ``chunk_bytes`` (default: what the server advertised at its last ``detect``, else
    the protocol's 5 MiB). A snapshot
    copied without the attachments' tables is read for its references, and the content
    is read from the store at ``content_from`` (content is named by its hash: a store
    never holds other bytes under it)."""
    conn = connect_read_only(db_path)
    source = conn
    try:
        shas = _referenced(conn, pending_only=pending_only)
        if not shas:
            return BlobUpload()
        if content_from is not None and not _has_table(conn, "attachment_chunks"):
            source, db_path = connect_read_only(content_from), content_from
        states, direct = blobs.query_all(transport, shas)
        missing = [s for s in states if not s.held]
        sizes = {sha: _whole_size(source, db_path, sha) for sha in (s.sha256 for s in missing)}
        if chunk_bytes is None:
            limits = getattr(transport, "limits", None)
            chunk_bytes = limits.blob_chunk_bytes if limits is not None else stored.CHUNK_BYTES
        total = sum(sizes.values())
        sent = _Sent()
        for count, state in enumerate(missing):
            size = sizes[state.sha256]

            def report(count: int = count) -> None:
                if progress is not None:
                    progress(Progress(phase, count, len(missing), sent.bytes, total))

            chunks = _Chunks(source, db_path, state.sha256, size, chunk_bytes)
            _upload_one(transport, chunks, state, sent, report, direct=direct)
        if progress is not None:
            progress(Progress(phase, len(missing), len(missing), total, total))
        return BlobUpload(len(shas), len(missing), sent.chunks, sent.bytes)
    finally:
        if source is not conn:
            source.close()
        conn.close()


@dataclass
class _Sent:
    chunks: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class _Chunks:
    """The chunks of one blob in the store: their lengths, readers and checksums."""

    conn: sqlite3.Connection
    db_path: Path
    sha: str
    size: int
    chunk_bytes: int

    @property
    def count(self) -> int:
        return c.blob_chunk_count(self.size, self.chunk_bytes)

    def length(self, index: int) -> int:
        """The length of chunk ``index``, once sure the store holds all of it."""
        return _check_chunk(self.conn, self.db_path, self.sha, index, self.chunk_bytes, self.size)

    def parts(self, index: int) -> Callable[[], Iterable[bytes]]:
        start, length = index * self.chunk_bytes, self.length(index)
        return functools.partial(stored.read_pieces, self.conn, self.sha, start, length)

    def checksums(self) -> list[str]:
        """The hex SHA-256 of every chunk (one read of the blob, a piece at a time)."""
        found = []
        for index in range(self.count):
            digest = hashlib.sha256()
            for piece in self.parts(index)():
                digest.update(piece)
            found.append(digest.hexdigest())
        return found


def _upload_one(
    transport: Transport,
    chunks: _Chunks,
    state: BlobState,
    sent: _Sent,
    report: Callable[[], None],
    *,
    direct: bool,
) -> None:
    """Send the chunks of one blob the server lacks (through the server, or ``direct``
    to the storage's signed URLs), then complete it; once more if the server lost chunks
    meanwhile (an upload it expired answers ``complete`` with 409)."""
    sha, size = chunks.sha, chunks.size
    # Chunks of an upload announcing another size are not this content's: send them all.
    have = set(state.received_chunks) if state.size in (None, size) else set()
    checksums = chunks.checksums() if direct else []
    for attempt in range(2):
        if direct:
            _send_direct(transport, chunks, checksums, sent, report)
        for index in range(chunks.count) if not direct else ():
            if index in have:
                continue
            length = chunks.length(index)
            blobs.put_chunk(transport, sha, index, chunks.parts(index), size)
            sent.chunks += 1
            sent.bytes += length
            report()
        failpoint("blob.chunks.sent")
        try:
            blobs.complete(transport, sha, size)
        except ConflictError:
            if attempt:
                raise
            (state,) = blobs.query(transport, [sha])
            have = set(state.received_chunks)
            continue
        logger.info("blob %s: %d bytes held by the cloud", sha[:12], size)
        return


def _send_direct(
    transport: Transport,
    chunks: _Chunks,
    checksums: list[str],
    sent: _Sent,
    report: Callable[[], None],
) -> None:
    """Send every chunk the server lacks to the signed URL it gives for it; ask again
    for more URLs, and for fresh ones when the storage refuses one (it expired)."""
    refused = False
    while True:
        state = blobs.query_upload(transport, chunks.sha, chunks.size, checksums)
        if state.held or set(range(chunks.count)) <= set(state.received_chunks):
            return
        if not state.chunk_urls:
            raise ProtocolError(
                f"blob query: the server offers direct upload but gave no URL for the "
                f"missing chunks of {chunks.sha}; update the server"
            )
        for target in state.chunk_urls:
            if not 0 <= target.index < chunks.count:
                raise ProtocolError(f"blob query: a URL for chunk {target.index} of {chunks.sha}")
            length = chunks.length(target.index)
            try:
                blobs.put_chunk_direct(transport, target, chunks.parts(target.index))
            except SignedUrlRefused:
                if refused:  # a URL just signed: not a matter of time
                    raise
                refused = True
                break
            refused = False
            sent.chunks += 1
            sent.bytes += length
            report()


def lacking_in_cloud(transport: Transport, db_path: Path) -> list[str]:
    """The blobs the items at ``db_path`` reference that the cloud does not hold (what
    ``verify`` counts: "verified" needs none)."""
    conn = connect_read_only(db_path)
    try:
        shas = _referenced(conn, pending_only=False)
    finally:
        conn.close()
    return [s.sha256 for s in blobs.query(transport, shas) if not s.held] if shas else []


def fetch(transport: Transport, store: LocalStore, sha256: str) -> None:
    """Download blob ``sha256`` into the store, resuming after what it holds already."""
    with store._reading("fetch an attachment") as conn:
        found = stored.held(conn, sha256)
    if found is None:
        raise AttachmentMissingError(
            f"no item of {store.path} references attachment {sha256}",
            path=str(store.path),
            sha256=sha256,
        )
    size, have, _media = found
    sealed = have >= size
    reader = blobs.Download(transport, sha256)
    while not sealed:
        length = min(stored.PIECE_BYTES - have % stored.PIECE_BYTES, size - have)
        data = reader.read(have, length) if length else b""
        if length and not data:
            raise ProtocolError(f"blob download: the server sent nothing of {sha256}")
        # The last part and the check of the whole content commit together: a reader
        # never sees content whole that was not verified.
        with store._writing("store a downloaded attachment") as conn:
            have = stored.append(conn, sha256, have, data, size)
            if have >= size:
                sealed = stored.seal(conn, sha256)
                if not sealed:
                    have = 0
        if have >= size and not sealed:
            raise CorruptStoreError(
                f"attachment {sha256} as downloaded does not match its hash; it was "
                "discarded: sync again to fetch it anew",
                path=str(store.path),
            )
        failpoint("blob.chunk.fetched")


def fetch_referenced(transport: Transport, store: LocalStore) -> int:
    """Fetch every blob the store's items reference but the store lacks; returns how many
    it fetched. One the cloud does not hold (an item sent by an SDK that did not upload
    it) is left to be fetched on use, so it cannot stop every later sync."""
    with store._reading("list attachments to fetch") as conn:
        wanted = [
            sha
            for (sha,) in conn.execute(
                "SELECT DISTINCT a.sha256 FROM attachments AS a JOIN item_blobs AS b"
                " ON b.sha256 = a.sha256 WHERE a.stored < a.size"
            )
        ]
    fetched = 0
    for sha in wanted:
        try:
            fetch(transport, store, sha)
        except NotFoundError:
            logger.warning("attachment %s is referenced but not in the cloud; skipped", sha)
            continue
        fetched += 1
    return fetched


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return found.fetchone() is not None


def _referenced(conn: sqlite3.Connection, *, pending_only: bool) -> list[str]:
    """The blobs the items reference: from ``item_blobs``, or (a copy without it) from
    the items' JSON, reading only the rows that hold a reference."""
    if _has_table(conn, "item_blobs"):
        return [sha for (sha,) in conn.execute(_PENDING_REFS if pending_only else _ALL_REFS)]
    if not _has_table(conn, "items"):
        return []
    found: set[str] = set()
    for (data,) in conn.execute(
        "SELECT data FROM items WHERE instr(data, '\"$attachment\":') OR instr(data, '\"$large\":')"
    ):
        found.update(sha for sha, _ in references(data))
    return sorted(found)


def _whole_size(conn: sqlite3.Connection, db_path: Path, sha: str) -> int:
    found = stored.held(conn, sha)
    if found is None or found[1] < found[0]:
        raise AttachmentMissingError(
            f"an item of {db_path} references attachment {sha}, which this device does not "
            "hold whole; put it again (put_attachment), or sync to fetch it first",
            path=str(db_path),
            sha256=sha,
        )
    return found[0]


def _check_chunk(
    conn: sqlite3.Connection, db_path: Path, sha: str, index: int, chunk_bytes: int, size: int
) -> int:
    """The length of chunk ``index``, once sure the store holds all of it (SQLite reads
    a blob's length without its content)."""
    length = c.blob_chunk_size(size, chunk_bytes, index)
    first = index * chunk_bytes // stored.PIECE_BYTES
    last = (index * chunk_bytes + length - 1) // stored.PIECE_BYTES
    (held,) = conn.execute(
        "SELECT coalesce(sum(length(c.data)), 0) FROM attachments AS a JOIN attachment_chunks"
        " AS c ON c.blob_id = a.blob_id WHERE a.sha256 = ? AND c.idx BETWEEN ? AND ?",
        (sha, first, last),
    ).fetchone()
    wanted = min(size, (last + 1) * stored.PIECE_BYTES) - first * stored.PIECE_BYTES
    if held != wanted:
        raise CorruptStoreError(
            f"{db_path} lost part of attachment {sha} (chunk {index}); restore the store "
            "from a backup, or put the attachment again",
            path=str(db_path),
        )
    return length
