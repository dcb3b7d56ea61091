"""Checkpoints of the embedded database's write-ahead log, on a thread of their own.

Every write transaction appends its pages to the WAL, and a checkpoint copies them into
the database file. Left to SQLite, the checkpoint runs inside whichever commit takes the
WAL past ``wal_autocheckpoint``: that request holds the server's one connection while
hundreds of megabytes are copied and synced (a 1M-item migration's ``complete`` waited
about 0.7 s for it, and its upload as long again, batch by batch). Here a thread with
its own connection runs a PASSIVE checkpoint soon after writes, which never blocks a
writer, and sqlite3 releases the GIL while it runs: the copy goes on beside the
requests, on the machine's other core. ``wal_autocheckpoint`` stays as a backstop, in
case this thread falls behind::

    >>> import tempfile, pathlib, sqlite3
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "db.sqlite"
    >>> conn = sqlite3.connect(path, isolation_level=None)
    >>> _ = conn.execute("PRAGMA journal_mode=WAL")
    >>> checkpoints = Checkpointer(path, interval=0.0)
    >>> _ = conn.execute("CREATE TABLE t (x)")
    >>> checkpoints.written()
    >>> checkpoints.wait_idle(timeout=10)
    True
    >>> checkpoints.close(); conn.close()
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

__all__ = ["Checkpointer"]

logger = logging.getLogger(__name__)


class Checkpointer:
    """Checkpoints the WAL of the database at ``path`` after :meth:`written`, at most once
    per ``interval`` seconds (a checkpoint syncs the files: one per commit would cost more
    than it saves).

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "db.sqlite"
    >>> sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").fetchone()
    ('wal',)
    >>> checkpoints = Checkpointer(path)
    >>> checkpoints.written(); checkpoints.wait_idle(timeout=10)
    True
    >>> checkpoints.close()
    """

    def __init__(self, path: Path, *, interval: float = 0.25) -> None:
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._interval = interval
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._reported = 0  # calls of written(), and how many a checkpoint has covered
        self._covered = 0
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True)
        self._thread.start()

    def written(self) -> None:
        """Writes were committed: checkpoint them soon."""
        with self._idle:
            self._reported += 1
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until a checkpoint has run after every write reported so far (tests)."""
        with self._idle:
            target = self._reported
            return self._idle.wait_for(lambda: self._covered >= target, timeout)

    def close(self) -> None:
        """Stop the thread (after the checkpoint under way) and close its connection."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self._conn.close()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stopping.is_set():
                return
            self._wake.clear()
            with self._idle:
                covering = self._reported
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # the backstop checkpoints instead
                logger.warning("background checkpoint failed: %s", exc)
            with self._idle:
                self._covered = covering
                self._idle.notify_all()
            if self._stopping.wait(self._interval):
                return
