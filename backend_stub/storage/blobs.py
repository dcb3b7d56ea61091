"""Attachments (blobs): the protocol both storage backends implement for them.

A blob is named by the SHA-256 of its content and kept once per user (never shared
between users: asking for a hash must not tell whether someone else holds it). It
arrives in chunks (:func:`~sdk.contract.blob_chunk_size`), each checked against its own
SHA-256 before it is kept; :meth:`BlobStore.complete` then streams the whole content
through SHA-256 and only a match makes the blob *held*. A mismatch discards the upload.

Backends: :mod:`backend_stub.storage.sqlite_blobs` (files in the data folder) and
:mod:`backend_stub.storage.aws_blobs` (S3 multipart, DynamoDB records)::

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> storage.blobs.state("alice", EMPTY_SHA256).held
    False
    >>> storage.blobs.complete("alice", EMPTY_SHA256, 0, 0).held
    True
    >>> storage.close()
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO, Protocol

from backend_stub.storage.records import StorageError
from sdk.contract import EMPTY_SHA256, BlobState

__all__ = [
    "EMPTY_SHA256",
    "READ_BYTES",
    "BlobMismatch",
    "BlobStore",
    "BlobUrls",
    "ChunksMissing",
    "copy_hashing",
    "file_pieces",
    "owner_folder",
]

#: The size of every read while hashing or serving a blob: memory stays this small.
READ_BYTES = 1024 * 1024


class ChunksMissing(StorageError):
    """``complete`` before every chunk arrived: ``missing`` chunks are still to come.

    >>> ChunksMissing(3, 5).missing
    3
    """

    def __init__(self, missing: int, count: int) -> None:
        super().__init__(f"{missing} of the blob's {count} chunks have not arrived")
        self.missing = missing
        self.count = count


class BlobMismatch(StorageError):
    """The content does not hash to the blob's name (the upload was discarded).

    >>> str(BlobMismatch("ab" * 32, "cd" * 32))[:30]
    'the content hashes to cdcdcdcd'
    """

    def __init__(self, expected: str, found: str) -> None:
        super().__init__(f"the content hashes to {found[:8]}..., not to {expected[:8]}...")
        self.expected = expected
        self.found = found


class BlobStore(Protocol):
    """Blobs of a backend. ``count`` is the number of chunks a blob of ``size`` bytes
    travels in (the service derives it from the limits; the store keeps no settings).

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> blobs: BlobStore = storage.blobs
    >>> blobs.state("alice", "ab" * 32).received_chunks
    []
    >>> storage.close()
    """

    def state(self, user_id: str, sha256: str) -> BlobState:
        """Held (and its size), or the chunks of an upload in progress."""
        ...

    def states(self, user_id: str, shas: Sequence[str]) -> list[BlobState]:
        """:meth:`state` of each of ``shas``, in order (backends answer them together)."""
        ...

    def put_chunk(self, user_id: str, sha256: str, size: int, index: int, data: bytes) -> list[int]:
        """Keep chunk ``index`` (already checked against its SHA-256) of a blob of ``size``
        bytes; the chunks received now. A chunk for another size than the upload in
        progress starts it over."""
        ...

    def complete(self, user_id: str, sha256: str, size: int, count: int) -> BlobState:
        """Verify the whole content and mark it held (idempotent). Raises
        :class:`ChunksMissing` or :class:`BlobMismatch` (the upload is then gone)."""
        ...

    def read(self, user_id: str, sha256: str, start: int, stop: int) -> Iterator[bytes]:
        """Bytes ``start`` to ``stop`` (exclusive) of a held blob, in reads of
        :data:`READ_BYTES` at most."""
        ...

    def close(self) -> None:
        """Release what the store holds open."""
        ...


class BlobUrls(Protocol):
    """Direct transfer between client and storage by signed URLs (the ``aws`` backend
    with ``MIGRATION_AWS_BLOB_DIRECT``): the API then carries no blob bytes.

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> SQLiteStorage.blob_urls is None
    True
    """

    def upload_urls(
        self, user_id: str, sha256: str, size: int, chunks: Sequence[str], chunk_bytes: int
    ) -> BlobState:
        """Start (or resume) the upload of a blob not held, of ``size`` bytes whose chunks
        hash to ``chunks``: its state, with a signed URL per missing chunk."""
        ...

    def download_url(self, user_id: str, sha256: str) -> str:
        """A signed URL reading a held blob (``Range`` allowed)."""
        ...


def owner_folder(user_id: str) -> str:
    """The name a user's blobs are kept under: a hash, so no user id reaches a path.

    >>> owner_folder("alice")
    '2bd806c97f0e00af1a1fc3328fa763a9'
    """
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:32]


def copy_hashing(pieces: Iterable[bytes], sink: BinaryIO | None, digest: hashlib._Hash) -> int:
    """Feed ``pieces`` to ``digest`` (and write them to ``sink``); the byte count.

    >>> import io, hashlib
    >>> h = hashlib.sha256()
    >>> copy_hashing([b"ab", b"c"], io.BytesIO(), h)
    3
    >>> h.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    True
    """
    total = 0
    for piece in pieces:
        digest.update(piece)
        if sink is not None:
            sink.write(piece)
        total += len(piece)
    return total


def file_pieces(handle: BinaryIO, length: int) -> Iterator[bytes]:
    """Up to ``length`` bytes of ``handle`` from where it stands, :data:`READ_BYTES` at a time.

    >>> import io
    >>> list(file_pieces(io.BytesIO(b"abcdef"), 4))
    [b'abcd']
    """
    left = length
    while left > 0:
        piece = handle.read(min(READ_BYTES, left))
        if not piece:
            return
        left -= len(piece)
        yield piece
