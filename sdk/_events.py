"""What the SDK tells the app while it migrates: progress, and the migration's events.

Events are frozen dataclasses named in the past tense, the same five the server
publishes; progress is a separate, frequent signal for a progress bar. Both reach the
app through plain callables it registers; they run on the migrating thread, so a GUI
should hand them to its own thread (see the README)::

    >>> seen = []
    >>> hooks = Hooks(on_event=seen.append)
    >>> hooks.emit(MigrationStarted(migration_id="m", session_id="s", item_count=3))
    >>> type(seen[0]).__name__
    'MigrationStarted'
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "DataConflictDetected",
    "Event",
    "Hooks",
    "LocalDataDetected",
    "MigrationCompleted",
    "MigrationFailed",
    "MigrationStarted",
    "Progress",
    "ProgressPhase",
    "RemoteChangesApplied",
    "SyncCompleted",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


class ProgressPhase(str, enum.Enum):
    """The steps a progress bar can name.

    >>> ProgressPhase.UPLOADING.value
    'uploading'
    """

    DETECTING = "detecting"
    SNAPSHOTTING = "snapshotting"
    STARTING = "starting"
    UPLOADING = "uploading"
    RESOLVING = "resolving"
    COMPLETING = "completing"
    VERIFYING = "verifying"
    PUSHING = "pushing"
    PULLING = "pulling"
    DONE = "done"


@dataclasses.dataclass(frozen=True)
class Progress:
    """Items and bytes done out of the total, for the phase named.

    >>> Progress(ProgressPhase.UPLOADING, 50, 200, 1000, 4000).fraction
    0.25
    """

    phase: ProgressPhase
    items_done: int
    items_total: int
    bytes_done: int = 0
    bytes_total: int = 0

    @property
    def fraction(self) -> float:
        """Items done over items total, 1.0 when there is nothing to do."""
        return self.items_done / self.items_total if self.items_total else 1.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalDataDetected:
    """The store holds data to migrate.

    >>> LocalDataDetected(item_count=2, collections={"a": 2}, data_version=1).item_count
    2
    """

    item_count: int
    collections: dict[str, int]
    data_version: int | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class MigrationStarted:
    """A server session exists for this migration (new, or resumed).

    >>> MigrationStarted(migration_id="m", session_id="s", item_count=1).resumed
    False
    """

    migration_id: str
    session_id: str
    item_count: int
    resumed: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConflictDetected:
    """The cloud already held different versions of some items.

    >>> DataConflictDetected(session_id="s", count=3).count
    3
    """

    session_id: str
    count: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class MigrationCompleted:
    """The cloud committed the migration and its checksum matched the device's.

    >>> MigrationCompleted(session_id="s", item_count=1, checksum="ab").checksum
    'ab'
    """

    session_id: str
    item_count: int
    checksum: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class MigrationFailed:
    """The migration stopped with an error; ``retryable`` says whether a later run may pass.

    >>> MigrationFailed(session_id=None, error="offline", retryable=True).retryable
    True
    """

    session_id: str | None
    error: str
    retryable: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class RemoteChangesApplied:
    """Items changed in the cloud (by another device) were written into the store: the
    app should refresh what it shows of these collections.

    >>> RemoteChangesApplied(count=2, collections={"cards": 2}).count
    2
    """

    count: int
    collections: dict[str, int]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyncCompleted:
    """A sync ended: what went up and down, what still waits, and whether the device
    now holds exactly what the cloud holds (``verified``).

    >>> SyncCompleted(pushed=1, pulled=0, pending_changes=0, pending_conflicts=0,
    ...               verified=True, seq=4).verified
    True
    """

    pushed: int
    pulled: int
    pending_changes: int
    pending_conflicts: int
    verified: bool
    seq: int


Event = (
    LocalDataDetected
    | MigrationStarted
    | DataConflictDetected
    | MigrationCompleted
    | MigrationFailed
    | RemoteChangesApplied
    | SyncCompleted
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Hooks:
    """The app's callbacks. A callback that raises is logged, never breaks the migration.

    >>> Hooks().emit(DataConflictDetected(session_id="s", count=1))  # no hooks: no-op
    """

    on_progress: Callable[[Progress], object] | None = None
    on_event: Callable[[Event], object] | None = None

    def progress(self, progress: Progress) -> None:
        if self.on_progress is not None:
            _call(self.on_progress, progress)

    def emit(self, event: Event) -> None:
        if self.on_event is not None:
            _call(self.on_event, event)


def _call(callback: Callable[[_T], object], value: _T) -> None:
    try:
        callback(value)
    except Exception:
        # The app's own bug must not corrupt or abort a half-done migration.
        logger.exception("a migration callback raised; ignoring it")
