"""What one sync carries through its steps (:class:`_Sync`), and what it reports
(:class:`SyncResult`); the push, the pull and the proof share these.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from typing import Any

from .._conflicts.policy import ConflictPolicy
from .._errors import MigrationBlockedError
from .._events import Hooks
from .._stopping import Stopped
from .._store import changes
from .._store.local import LocalStore

__all__ = ["PULL_PAGE", "PUSH_BATCH", "SyncResult"]

#: Changes per push.
PUSH_BATCH = 500
#: Items asked for per pull page: the server's default ``limits.maxBatchItems`` (a server
#: with a lower limit sends fewer). A bootstrap of 1M items went from 106k-112k to
#: 134k-144k items/s against 2000 (`bench/sync.py`), each page held in one write
#: transaction of about 20 ms.
PULL_PAGE = 5000


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyncResult:
    """What one sync did, and where the device stands.

    ``verified`` is true only when nothing is pending on the device and its checksum
    equals the cloud's as of the last page read: the device holds what the cloud holds.

    >>> SyncResult().verified, SyncResult().pending_changes
    (False, 0)
    """

    pushed: int = 0
    pulled: int = 0
    #: Conflicts the policy decided in this sync, by strategy.
    resolutions_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Local writes not yet in the cloud (written during the sync, or waiting on a
    #: conflict the app must decide).
    pending_changes: int = 0
    #: Conflicts waiting for the app (``manual``, or a callback's deferral).
    pending_conflicts: int = 0
    #: The cloud's seq and checksum as of the last page read.
    seq: int = 0
    cloud_checksum: str | None = None
    local_checksum: str | None = None
    verified: bool = False
    #: Whether both checksums were recomputed from every item (``full=True``).
    full: bool = False
    stopped: bool = False
    round_trips: int = 0
    duration_s: float = 0.0
    #: The migration this sync began with, when the store had never been migrated (the
    #: migration is the first sync); see its outcome when it waits for the app.
    migration: Any = None


@dataclasses.dataclass
class _Sync:
    store: LocalStore
    transport: Any  # sdk._transport.http.Transport (a Protocol would only restate it)
    policy: ConflictPolicy
    hooks: Hooks
    stop: threading.Event | None
    started: float = dataclasses.field(default_factory=time.monotonic)
    pushed: int = 0
    pulled: int = 0
    round_trips: int = 0
    kinds: Counter[str] = dataclasses.field(default_factory=Counter)

    def check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Stopped("stop requested")


def _pending(conn: Any) -> int:
    """Rows the cloud does not hold yet: pending above the migration's watermark."""
    (n,) = conn.execute(
        "SELECT count(*) FROM items WHERE pending > ? AND pending > 0", (changes.settled(conn),)
    ).fetchone()
    return int(n)


def _result(run: _Sync) -> SyncResult:
    return SyncResult(
        pushed=run.pushed,
        pulled=run.pulled,
        resolutions_by_kind=dict(sorted(run.kinds.items())),
        round_trips=run.round_trips,
        duration_s=time.monotonic() - run.started,
    )


def refuse_another_user(store: LocalStore, owner: str | None, user_id: str, advice: str) -> None:
    """Raise when the store keeps another user's data in step (``owner``, recorded by the
    first sync or the migration): a store is never synced into, or verified against,
    another account. ``advice`` ends the message."""
    if owner is not None and owner != user_id:
        raise MigrationBlockedError(
            f"the store at {store.path} keeps the data of user {owner!r} in step with the "
            f"cloud, not {user_id!r}'s: {advice}",
            reason="another-user",
        )
