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
import threading
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


#: Where each phase starts and ends in the overall fraction of a migration (and the sync
#: that ends it). Fixed shares, not measured ones: the upload is most of the time; the
#: pull after a migration brings another device's items, which may be many.
_MIGRATION_SPAN: dict[ProgressPhase, tuple[float, float]] = {
    ProgressPhase.DETECTING: (0.0, 0.01),
    ProgressPhase.SNAPSHOTTING: (0.01, 0.1),
    ProgressPhase.STARTING: (0.1, 0.12),
    ProgressPhase.UPLOADING: (0.12, 0.7),
    ProgressPhase.RESOLVING: (0.7, 0.75),
    ProgressPhase.COMPLETING: (0.75, 0.82),
    ProgressPhase.VERIFYING: (0.82, 0.88),
    ProgressPhase.PUSHING: (0.88, 0.92),
    ProgressPhase.PULLING: (0.92, 0.99),
    ProgressPhase.DONE: (1.0, 1.0),
}
#: The same for a sync that migrates nothing.
_SYNC_SPAN: dict[ProgressPhase, tuple[float, float]] = {
    **_MIGRATION_SPAN,
    ProgressPhase.PUSHING: (0.0, 0.3),
    ProgressPhase.PULLING: (0.3, 0.99),
}
#: The phases that only a migration reports (``DETECTING`` opens a sync's call too).
_MIGRATING = frozenset(_MIGRATION_SPAN) - {
    ProgressPhase.DETECTING,
    ProgressPhase.PUSHING,
    ProgressPhase.PULLING,
    ProgressPhase.DONE,
}


@dataclasses.dataclass(frozen=True)
class Progress:
    """Items and bytes done out of the total, for the phase named, and how far the whole
    call is (``overall``, 0.0 to 1.0, for a single bar).

    ``fraction`` is the phase's own and starts at 0 in each phase; ``overall`` spans every
    phase of the call (the migration, then the sync that ends it) and, as reported through
    :class:`Hooks` (every ``on_progress``), never goes backwards: a call that resumes one
    interrupted in the same process continues from where the bar stood. A progress made by
    hand gets the phase's place in a migration.

    >>> Progress(ProgressPhase.UPLOADING, 50, 200, 1000, 4000).fraction
    0.25
    >>> Progress(ProgressPhase.UPLOADING, 50, 200).overall
    0.265
    """

    phase: ProgressPhase
    items_done: int
    items_total: int
    bytes_done: int = 0
    bytes_total: int = 0
    overall: float = -1.0

    def __post_init__(self) -> None:
        if self.overall < 0:
            object.__setattr__(self, "overall", _placed(self, _MIGRATION_SPAN))

    @property
    def fraction(self) -> float:
        """Items done over items total, 1.0 when there is nothing to do."""
        return self.items_done / self.items_total if self.items_total else 1.0


def _placed(progress: Progress, spans: dict[ProgressPhase, tuple[float, float]]) -> float:
    start, end = spans[progress.phase]
    return round(start + (end - start) * min(max(progress.fraction, 0.0), 1.0), 4)


class _Overall:
    """The overall fraction reported last in this call, and what kind of call it is."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.floor = 0.0
        self.migrating = False
        self.ended = False

    def place(self, progress: Progress) -> Progress:
        with self.lock:
            if self.ended:  # the last call reached DONE: this report opens a new call
                self.floor, self.migrating, self.ended = 0.0, False, False
            self.migrating = self.migrating or progress.phase in _MIGRATING
            spans = _MIGRATION_SPAN if self.migrating else _SYNC_SPAN
            self.floor = max(self.floor, _placed(progress, spans))
            self.ended = progress.phase is ProgressPhase.DONE
            return dataclasses.replace(progress, overall=self.floor)


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

    Progress reaches ``on_progress`` with its ``overall`` fraction placed in the call and
    never lower than the one reported before it (a ``DONE`` ends a call: the next report
    starts the next call's bar at 0)::

        >>> seen = []
        >>> hooks = Hooks(on_progress=seen.append)
        >>> hooks.progress(Progress(ProgressPhase.PULLING, 1, 2))
        >>> hooks.progress(Progress(ProgressPhase.PULLING, 1, 4))  # the total grew
        >>> [p.overall for p in seen]
        [0.645, 0.645]
        >>> Hooks().emit(DataConflictDetected(session_id="s", count=1))  # no hooks: no-op
    """

    on_progress: Callable[[Progress], object] | None = None
    on_event: Callable[[Event], object] | None = None
    _overall: _Overall = dataclasses.field(
        default_factory=_Overall, init=False, repr=False, compare=False
    )

    def progress(self, progress: Progress) -> None:
        if self.on_progress is not None:
            _call(self.on_progress, self._overall.place(progress))

    def emit(self, event: Event) -> None:
        if self.on_event is not None:
            _call(self.on_event, event)


def _call(callback: Callable[[_T], object], value: _T) -> None:
    try:
        callback(value)
    except Exception:
        # The app's own bug must not corrupt or abort a half-done migration.
        logger.exception("a migration callback raised; ignoring it")
