"""The store's attachments and large values, as methods of
:class:`~sdk._store.local.LocalStore` (a module of their own: the store's file would
otherwise hold two reasons to change). The content lives in the tables of
:mod:`sdk._store.attachments`; the encoding of typed values is :mod:`sdk._store.values`.
"""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

from sdk._errors import AttachmentMissingError, ConfigurationError, CorruptStoreError
from sdk._store import attachments as _attachments
from sdk._store.values import (
    Attachment,
    LargeValue,
    ReservedValueError,
    encode_text,
    large_value,
    references,
)

__all__ = ["INLINE_LIMIT", "MAX_INLINE_LIMIT", "MAX_ITEM_CHARS", "AttachmentMethods"]

#: Default of ``LocalStore(inline_limit=...)``: a ``bytes`` or ``str`` value larger than
#: this (encoded) is kept apart from its item, like an attachment.
INLINE_LIMIT = 256 * 1024
#: The largest inline limit: far below a batch's bytes, so one item always fits one.
MAX_INLINE_LIMIT = 1024 * 1024
#: The most JSON an item's data may be once its large values are kept apart (many small
#: values): below a batch's default bytes (8 MiB), so every item fits a batch.
MAX_ITEM_CHARS = 7 * 1024 * 1024


class AttachmentMethods:
    """What :class:`~sdk._store.local.LocalStore` does with attachments and large values."""

    _path: Path
    _inline_limit: int
    #: Fetches content the store knows only by reference (set by the app for a lazy sync).
    fetch_attachment: Callable[[str], None] | None

    def _reading(self, action: str) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # LocalStore's

    def _writing(self, action: str) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # LocalStore's

    @property
    def inline_limit(self) -> int:
        """Bytes above which a ``bytes`` or ``str`` value is kept apart from its item."""
        return self._inline_limit

    def put_attachment(
        self,
        data: bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO,
        *,
        media_type: str = "application/octet-stream",
    ) -> Attachment:
        """Keep content apart from the items (bytes, a file's path, or a binary file
        open for reading) and return the :class:`Attachment` to put in an item's data.
        A file is read a chunk at a time (a 200 MiB recording never sits in memory);
        the same content is stored once, however often it is put.

        >>> import tempfile, pathlib
        >>> from sdk import LocalStore
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     photo = store.put_attachment(b"PNG...", media_type="image/png")
        ...     _ = store.put("cards", "c1", {"front": "hola", "photo": photo})
        ...     card = store.get("cards", "c1")["data"]
        ...     card["photo"] == photo, store.read_attachment(card["photo"])
        (True, b'PNG...')
        >>> tmp.cleanup()
        """
        try:
            Attachment("0" * 64, 0, media_type)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        with contextlib.ExitStack() as stack:
            if isinstance(data, (bytes, bytearray, memoryview)):
                source: IO[bytes] = io.BytesIO(data)
            elif isinstance(data, (str, os.PathLike)):
                try:
                    source = stack.enter_context(open(data, "rb"))
                except OSError as exc:
                    raise ConfigurationError(
                        f"cannot read the attachment {os.fspath(data)!r}: {exc}"
                    ) from exc
            elif callable(getattr(data, "read", None)):
                source = data
            else:
                raise ConfigurationError(
                    "put_attachment takes bytes, a file's path or a binary file open for "
                    f"reading, got {type(data).__name__}"
                )
            with self._writing("store an attachment") as conn:
                sha, size = _attachments.store_content(conn, source, media_type)
        return Attachment(sha, size, media_type)

    def open_attachment(self, attachment: Attachment | str) -> BinaryIO:
        """A readable binary stream of an attachment's content (an :class:`Attachment`,
        or its sha256), read a chunk at a time. Content known only by reference (a lazy
        sync) is fetched first when the store can reach the cloud; otherwise
        :class:`~sdk.AttachmentMissingError` says what to do.

        >>> import tempfile, pathlib
        >>> from sdk import LocalStore
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     note = store.put_attachment(b"hello", media_type="text/plain")
        ...     with store.open_attachment(note) as stream:
        ...         stream.read(2), stream.read()
        (b'he', b'llo')
        >>> tmp.cleanup()
        """
        sha = attachment.sha256 if isinstance(attachment, Attachment) else attachment
        size = self._whole_size(sha)
        raw = _attachments.ChunkReader(lambda index: self._chunk(sha, index), size)
        return io.BufferedReader(raw, buffer_size=64 * 1024)

    def read_attachment(self, attachment: Attachment | str) -> bytes:
        """An attachment's whole content (see :meth:`open_attachment`).

        >>> import tempfile, pathlib
        >>> from sdk import LocalStore
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with LocalStore(pathlib.Path(tmp.name) / "s.sqlite3") as store:
        ...     store.read_attachment(store.put_attachment(b""))
        b''
        >>> tmp.cleanup()
        """
        with self.open_attachment(attachment) as stream:
            return stream.read()

    def _whole_size(self, sha: str) -> int:
        with self._reading("open an attachment") as conn:
            found = _attachments.held(conn, sha) if isinstance(sha, str) else None
        if found is not None and found[1] < found[0] and self.fetch_attachment is not None:
            self.fetch_attachment(sha)
            with self._reading("open an attachment") as conn:
                found = _attachments.held(conn, sha)
        if found is None:
            raise AttachmentMissingError(
                f"the store {self._path} holds no attachment {sha!r}: pass an Attachment "
                "the store returned (put_attachment) or read from an item",
                path=str(self._path),
                sha256=str(sha),
            )
        if found[1] < found[0]:
            raise AttachmentMissingError(
                f"attachment {sha} is in the cloud but not on this device yet: sync while "
                "online (fetch_attachments='eager' fetches every one; 'lazy' fetches each "
                "on first use)",
                path=str(self._path),
                sha256=sha,
            )
        return found[0]

    def _chunk(self, sha: str, index: int) -> bytes:
        with self._reading("read an attachment") as conn:
            chunk = _attachments.read_piece(conn, sha, index)
        if chunk is None:
            raise CorruptStoreError(
                f"{self._path} lost chunk {index} of attachment {sha}; restore the store "
                "from a backup, or put the attachment again",
                path=str(self._path),
            )
        return chunk

    def _encoder(self, conn: sqlite3.Connection) -> Callable[[Any], str]:
        """The app's data as stored: typed values encoded, large values kept apart."""

        def spill(value: bytes | str) -> LargeValue:
            large = large_value(value)
            content = value.encode("utf-8") if isinstance(value, str) else value
            _attachments.store_content(conn, io.BytesIO(content), "application/octet-stream")
            return large

        def encode(data: Any) -> str:
            text = encode_text(data, spill=spill, limit=self._inline_limit, most=MAX_ITEM_CHARS)
            for sha, size in references(text):
                found = _attachments.held(conn, sha)
                if found is None or found[0] != size:
                    raise ReservedValueError(
                        f"it references attachment {sha} of {size} bytes, which this store "
                        "does not know; put the content with put_attachment and use the "
                        "Attachment it returns"
                    )
            return text

        return encode

    def _resolve(self, large: LargeValue) -> bytes | str:
        content = self.read_attachment(large.sha256)
        return content.decode("utf-8") if large.text else content
