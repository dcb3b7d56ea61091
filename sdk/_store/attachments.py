"""Where the store keeps attachments and large values: content stored once per SHA-256,
in chunk rows, and which items reference which content.

- ``attachments``: one row per content (``sha256``, ``size``, ``media_type``), its chunks
  under ``blob_id``, and ``stored``: how many of its bytes the store holds (``size`` once
  whole; less while a download from the cloud is under way, nothing for content only
  known by reference);
- ``attachment_chunks``: the content in pieces of :data:`PIECE_BYTES` (1 MiB; a
  protocol chunk of 5 MiB is five of them), each read and written whole, so a 200 MiB
  file never sits in memory, and no buffer larger than a piece is ever allocated
  (a row of 5 MiB would make SQLite allocate 5 MiB to read it, and a process that
  allocates and frees such buffers in turn grows by tens of MiB);
- ``item_blobs``: ``(collection, key, sha256)`` for every reference an item's data holds,
  kept in the write's own transaction (see :func:`track`), so finding what the items
  reference never reads their JSON.

Every function runs inside the caller's transaction.

    >>> import sqlite3, io
    >>> conn = sqlite3.connect(":memory:", isolation_level=None)
    >>> create_tables(conn)
    >>> sha, size = store_content(conn, io.BytesIO(b"hola"), "text/plain")
    >>> size, read_range(conn, sha, 1, 2)
    (4, b'ol')
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import IO

from sdk._store.values import references

__all__ = [
    "CHUNK_BYTES",
    "PIECE_BYTES",
    "ChunkReader",
    "append",
    "create_tables",
    "held",
    "read_piece",
    "read_pieces",
    "read_range",
    "seal",
    "store_content",
    "track",
]

#: Bytes per chunk: the protocol's ``blobChunkBytes`` (S3's smallest multipart part).
CHUNK_BYTES = 5 * 1024 * 1024
#: Bytes per row of ``attachment_chunks`` (a chunk of the protocol is 5 of them).
PIECE_BYTES = 1024 * 1024

_EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def create_tables(conn: sqlite3.Connection) -> None:
    """The attachments' schema (the store's schema step 0004)."""
    conn.execute(
        "CREATE TABLE attachments (sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL,"
        " media_type TEXT NOT NULL, blob_id INTEGER UNIQUE,"
        " stored INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
    )
    # A rowid table: rows of megabytes do not belong in a WITHOUT ROWID b-tree.
    conn.execute(
        "CREATE TABLE attachment_chunks (id INTEGER PRIMARY KEY, blob_id INTEGER NOT NULL,"
        " idx INTEGER NOT NULL, data BLOB NOT NULL, UNIQUE (blob_id, idx))"
    )
    conn.execute(
        "CREATE TABLE item_blobs (collection TEXT NOT NULL, key TEXT NOT NULL,"
        " sha256 TEXT NOT NULL, PRIMARY KEY (collection, key, sha256)) WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX item_blobs_sha256 ON item_blobs (sha256)")


def _new_blob_id(conn: sqlite3.Connection) -> int:
    (top,) = conn.execute("SELECT coalesce(max(blob_id), 0) FROM attachments").fetchone()
    (chunks,) = conn.execute("SELECT coalesce(max(blob_id), 0) FROM attachment_chunks").fetchone()
    return int(max(top, chunks)) + 1


def store_content(conn: sqlite3.Connection, source: IO[bytes], media_type: str) -> tuple[str, int]:
    """Store what ``source`` holds, a chunk at a time, and return its ``(sha256, size)``.

    Content the store holds already is not stored twice: the chunks just written go
    (the savepoint rolls back) and the row of the first copy stays."""
    conn.execute("SAVEPOINT store_content")
    try:
        blob_id = _new_blob_id(conn)
        digest = hashlib.sha256()
        size = 0
        index = 0
        while chunk := _read_full(source, PIECE_BYTES):
            digest.update(chunk)
            conn.execute(
                "INSERT INTO attachment_chunks (blob_id, idx, data) VALUES (?, ?, ?)",
                (blob_id, index, chunk),
            )
            size += len(chunk)
            index += 1
        sha = digest.hexdigest()
        row = conn.execute(
            "SELECT size, stored, blob_id FROM attachments WHERE sha256 = ?", (sha,)
        ).fetchone()
        if row is not None and row[1] == row[0]:
            conn.execute("ROLLBACK TO store_content")
        else:
            if row is not None:  # known only by reference, or half downloaded: now whole
                conn.execute("DELETE FROM attachment_chunks WHERE blob_id = ?", (row[2],))
                conn.execute("DELETE FROM attachments WHERE sha256 = ?", (sha,))
            conn.execute(
                "INSERT INTO attachments (sha256, size, media_type, blob_id, stored)"
                " VALUES (?, ?, ?, ?, ?)",
                (sha, size, media_type, blob_id, size),
            )
        conn.execute("RELEASE store_content")
    except BaseException:
        conn.execute("ROLLBACK TO store_content")
        conn.execute("RELEASE store_content")
        raise
    return sha, size


def _read_full(source: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the end (a pipe or socket returns less)."""
    parts = []
    left = size
    while left:
        part = source.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def held(conn: sqlite3.Connection, sha256: str) -> tuple[int, int, str] | None:
    """``(size, stored, media_type)`` of the content, ``None`` if the store never saw it."""
    row = conn.execute(
        "SELECT size, stored, media_type FROM attachments WHERE sha256 = ?", (sha256,)
    ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]), str(row[2]))


def read_piece(conn: sqlite3.Connection, sha256: str, index: int) -> bytes | None:
    """Piece ``index`` of the content, ``None`` if the store does not hold it."""
    row = conn.execute(
        "SELECT c.data FROM attachments AS a JOIN attachment_chunks AS c"
        " ON c.blob_id = a.blob_id AND c.idx = ? WHERE a.sha256 = ?",
        (index, sha256),
    ).fetchone()
    return None if row is None else bytes(row[0])


def read_range(conn: sqlite3.Connection, sha256: str, offset: int, length: int) -> bytes:
    """``length`` bytes from ``offset`` (fewer at the end of what the store holds)."""
    return b"".join(read_pieces(conn, sha256, offset, length))


def read_pieces(conn: sqlite3.Connection, sha256: str, offset: int, length: int) -> Iterator[bytes]:
    """:func:`read_range` a piece at a time (at most :data:`PIECE_BYTES` each)."""
    while length > 0:
        index, start = divmod(offset, PIECE_BYTES)
        piece = read_piece(conn, sha256, index)
        if piece is None or start >= len(piece):
            return
        part = piece[start : start + length] if start or length < len(piece) else piece
        yield part
        offset += len(part)
        length -= len(part)


def append(conn: sqlite3.Connection, sha256: str, offset: int, data: bytes, size: int) -> int:
    """Add downloaded ``data`` at ``offset`` to content the store holds in part (``data``
    never crosses a piece's end); returns how many bytes it holds now. Only
    :func:`seal` makes it whole."""
    row = conn.execute(
        "SELECT stored, blob_id FROM attachments WHERE sha256 = ?", (sha256,)
    ).fetchone()
    if row is None or row[0] != offset:
        return 0 if row is None else int(row[0])  # another download got ahead: go on from it
    blob_id = row[1]
    if blob_id is None:
        blob_id = _new_blob_id(conn)
        conn.execute("UPDATE attachments SET blob_id = ? WHERE sha256 = ?", (blob_id, sha256))
    index, start = divmod(offset, PIECE_BYTES)
    if not data:
        pass
    elif start == 0:
        conn.execute(
            "INSERT OR REPLACE INTO attachment_chunks (blob_id, idx, data) VALUES (?, ?, ?)",
            (blob_id, index, data),
        )
    else:
        conn.execute(
            "UPDATE attachment_chunks SET data = data || ? WHERE blob_id = ? AND idx = ?",
            (data, blob_id, index),
        )
    held = min(offset + len(data), size)
    # Whole only with the seal, which the caller runs in this same transaction.
    conn.execute("UPDATE attachments SET stored = ? WHERE sha256 = ?", (held, sha256))
    return held


def seal(conn: sqlite3.Connection, sha256: str) -> bool:
    """Check downloaded content against its hash: whole and kept if it matches, else
    discarded (to be downloaded anew). Returns whether it matched."""
    row = conn.execute(
        "SELECT size, blob_id FROM attachments WHERE sha256 = ?", (sha256,)
    ).fetchone()
    size, blob_id = int(row[0]), row[1]
    digest = hashlib.sha256()
    total = 0
    for (data,) in conn.execute(
        "SELECT data FROM attachment_chunks WHERE blob_id = ? ORDER BY idx", (blob_id,)
    ):
        digest.update(data)
        total += len(data)
    if total == size and digest.hexdigest() == sha256:
        conn.execute("UPDATE attachments SET stored = size WHERE sha256 = ?", (sha256,))
        return True
    conn.execute("DELETE FROM attachment_chunks WHERE blob_id = ?", (blob_id,))
    conn.execute("UPDATE attachments SET stored = 0 WHERE sha256 = ?", (sha256,))
    return False


def track(conn: sqlite3.Connection, rows: Iterable[tuple[str, str, str]]) -> None:
    """Record which content the written ``(collection, key, data)`` rows reference, in
    place of what they referenced before. While no item of the store references
    anything, this costs one lookup in an empty table and a substring test per row."""
    try:
        any_held = conn.execute("SELECT 1 FROM item_blobs LIMIT 1").fetchone() is not None
    except sqlite3.OperationalError:
        return  # a bare connection (the sync's doctests): no attachments' schema
    if not any_held:
        # Nothing referenced before, and nothing now unless some text holds the mark
        # (one search over them all: a bootstrap's pages pay it per page, not per row).
        rows = rows if isinstance(rows, list) else list(rows)
        if '"$' not in "".join(map(itemgetter(2), rows)):
            return
    written = []
    refs = []
    sizes: dict[str, int] = {}
    for collection, key, data in rows:
        if any_held:
            written.append((collection, key))
        for sha, size in references(data):
            refs.append((collection, key, sha))
            sizes[sha] = size
    if written:
        conn.executemany("DELETE FROM item_blobs WHERE collection = ? AND key = ?", written)
    if refs:
        conn.executemany("INSERT OR IGNORE INTO item_blobs VALUES (?, ?, ?)", refs)
        # Content known only by reference (pulled from the cloud, not fetched yet).
        conn.executemany(
            "INSERT OR IGNORE INTO attachments (sha256, size, media_type, blob_id, stored)"
            " VALUES (?, ?, 'application/octet-stream', NULL, 0)",
            sizes.items(),
        )


class ChunkReader(io.RawIOBase):
    """A readable, seekable binary stream over content kept in chunks: one chunk in
    memory at a time, read through ``read_piece(index)`` (the store's lock is held per
    piece, not for the stream's life)."""

    def __init__(self, read_piece: Callable[[int], bytes], size: int) -> None:
        super().__init__()
        self._read_piece = read_piece
        self._size = size
        self._pos = 0
        self._index = -1
        self._chunk = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("I/O operation on closed attachment")
        if self._pos >= self._size:
            return 0
        index, start = divmod(self._pos, PIECE_BYTES)
        if index != self._index:
            self._chunk = self._read_piece(index)
            self._index = index
        part = self._chunk[start : start + len(buffer)]
        buffer[: len(part)] = part
        self._pos += len(part)
        return len(part)
