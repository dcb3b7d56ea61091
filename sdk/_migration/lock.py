"""One migrating process per store: an OS file lock beside the store.

The operating system releases the lock when the holder dies (even by SIGKILL), so a
crashed migration never blocks the next one::

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "store.sqlite3.migration-lock"
    >>> with MigrationLock(path) as first:
    ...     MigrationLock(path).try_acquire()
    False
"""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path
from types import TracebackType

from .._errors import MigrationBlockedError, StoreError

__all__ = ["MigrationLock", "lock_path_for"]


# What the OS answers when another process holds the lock (flock, or msvcrt.locking).
_HELD = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK})
# How long acquire() tries before saying the lock is held. `status` (and a second
# auto_migrate) only peek: they take the lock for a moment to see whether a migration
# runs, and a migration starting in that moment must not fail for it. A real holder
# keeps the lock for its whole migration.
_PEEK_GRACE_S = 0.5
_RETRY_EVERY_S = 0.02


def lock_path_for(store_path: str | Path) -> Path:
    """The lock file of the store at ``store_path``.

    >>> lock_path_for("/data/store.sqlite3").name
    'store.sqlite3.migration-lock'
    """
    path = Path(store_path)
    return path.with_name(path.name + ".migration-lock")


class MigrationLock:
    """A non-blocking, process-wide exclusive lock on a file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; ``False`` if another process holds it."""
        if self._fd is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(
                f"cannot create the migration lock {self.path} ({exc}); check that the "
                "store's folder is writable and the disk is not full",
                path=str(self.path),
            ) from exc
        try:
            _lock(fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in _HELD:
                return False
            raise StoreError(
                f"cannot lock {self.path} ({exc}); the file system may not support locks",
                path=str(self.path),
            ) from exc
        self._fd = fd
        return True

    def acquire(self) -> None:
        """Take the lock, waiting out a moment's peek by another process, or raise
        :class:`MigrationBlockedError` saying who holds it."""
        deadline = time.monotonic() + _PEEK_GRACE_S
        while not self.try_acquire():
            if time.monotonic() < deadline:
                time.sleep(_RETRY_EVERY_S)
                continue
            raise MigrationBlockedError(
                f"another process is already migrating this store (lock {self.path}); "
                "wait for it to finish, or watch its progress with `status`",
                reason="in-progress",
            )

    def release(self) -> None:
        """Give the lock back (closing the file releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> MigrationLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


if sys.platform == "win32":  # pragma: no cover - exercised on Windows clients only
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
