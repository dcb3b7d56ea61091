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
from pathlib import Path

from .._conflicts.policy import ClockEstimate
from .._errors import MigrationError, NotFoundError
from .._events import Hooks
from .._stopping import Stopped
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


def session_id_of(record: JournalRecord) -> str:
    if record.session_id is None:
        raise MigrationError(f"the journal of migration {record.migration_id} has no session")
    return record.session_id
