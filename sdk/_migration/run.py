"""What one migration call carries through its steps, and the signals between them.

The engine (:mod:`sdk._migration.engine`) and its conflict phase
(:mod:`sdk._migration.resolving`) share these: the run's state, the exception that starts
a migration over (stopping at a safe point is :mod:`sdk._stopping`'s), and the first
question of every step, whether the server still has the session.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .._conflicts.policy import ClockEstimate
from .._errors import MigrationError, NotFoundError, ServerError
from .._events import Hooks
from .._stopping import Stopped, stoppable_sleep
from .._transport.http import Transport
from .._wire import models as c
from .._wire.canonical import SessionStatus
from .journal import Journal, JournalRecord
from .options import MigrationOptions

__all__ = ["Restart", "Run", "session_id_of", "session_status"]


class Restart(Exception):
    """The server session is gone; start over with a fresh snapshot."""


@dataclasses.dataclass
class Run:
    store_path: Path
    transport: Transport
    journal: Journal
    options: MigrationOptions
    cache_dir: Path
    hooks: Hooks
    started: float = dataclasses.field(default_factory=time.monotonic)
    batches_uploaded: int = 0
    conflicts_seen: int = 0
    compress: bool = False
    stop: threading.Event | None = None
    #: The device clock minus the server's, measured at detect/start in this process.
    clock: ClockEstimate | None = None
    #: Whether snapshots check every item before the upload, instead of taking the
    #: digests the store vouches for (set once one of those failed its batch).
    check_every_item: bool = False

    def check_stop(self) -> None:
        """Leave here if the caller asked to stop; call only where the journal is current."""
        if self.stop is not None and self.stop.is_set():
            raise Stopped("stopped at a safe point")


def session_status(run: Run, session_id: str) -> c.GetMigrationStatusResponse:
    try:
        status = run.transport.status(session_id)
    except NotFoundError as exc:
        raise Restart(f"the server no longer knows session {session_id}") from exc
    if status.status in (SessionStatus.CANCELLED, SessionStatus.EXPIRED):
        raise Restart(f"session {session_id} is {status.status.value}")
    if status.status is SessionStatus.FAILED:
        raise Restart(f"session {session_id} failed: {'; '.join(status.errors) or 'no detail'}")
    return status


def poll_status(
    run: Run,
    session_id: str,
    *,
    while_state: SessionStatus,
    doing: str,
    timeout: float,
    on_status: Callable[[c.GetMigrationStatusResponse], None] | None = None,
) -> c.GetMigrationStatusResponse:
    """Poll ``status`` while the server says ``while_state`` (backing off from 0.05 s to
    2 s, stoppable); the first status that says otherwise. ``doing`` names the wait in
    the error raised after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        status = session_status(run, session_id)
        if on_status is not None:
            on_status(status)
        if status.status is not while_state:
            return status
        if time.monotonic() + delay > deadline:
            raise ServerError(
                f"the server was still {doing} session {session_id} after {timeout:.0f} s;"
                " run the migration again later: it resumes here",
                status=503,
            )
        if run.stop is not None:
            stoppable_sleep(run.stop)(delay)
        else:
            time.sleep(delay)
        delay = min(delay * 2, 2.0)


def session_id_of(record: JournalRecord) -> str:
    if record.session_id is None:
        raise MigrationError(f"the journal of migration {record.migration_id} has no session")
    return record.session_id
