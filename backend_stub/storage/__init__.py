"""What the migration server keeps, and the one protocol every storage backend implements.

The records live in :mod:`backend_stub.storage.records` (re-exported here). A backend
offers plain reads, a few conditional writes, and :meth:`Storage.atomic` to group writes
into one all-or-nothing unit. Sessions carry a ``version``:
:meth:`Storage.update_session` only writes when the stored version is still the one
read, so concurrent requests cannot overwrite each other (the loser gets
:class:`VersionConflict` and retries from a fresh read)::

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> storage.latest_session("alice") is None
    True
    >>> storage.close()

Backends: :mod:`backend_stub.storage.sqlite` (embedded, the default) and
:mod:`backend_stub.storage.aws` (DynamoDB, S3, SQS, EventBridge), behind this protocol.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from backend_stub.storage.blobs import BlobStore, BlobUrls
from backend_stub.storage.records import (
    Backlog,
    Batch,
    CloudItem,
    Conflict,
    DuplicateBatch,
    DuplicateItem,
    DuplicateSession,
    Key,
    NewItems,
    PullPage,
    PushRecord,
    Session,
    StagedItem,
    StagedTally,
    StorageError,
    SyncedItem,
    SyncHead,
    VersionConflict,
)

if TYPE_CHECKING:
    from backend_stub.events import Event

__all__ = [
    "Backlog",
    "Batch",
    "BlobStore",
    "CloudItem",
    "Conflict",
    "DuplicateBatch",
    "DuplicateItem",
    "DuplicateSession",
    "Key",
    "NewItems",
    "PullPage",
    "PushRecord",
    "Session",
    "StagedItem",
    "StagedTally",
    "Storage",
    "StorageError",
    "SyncHead",
    "SyncedItem",
    "VersionConflict",
    "iter_conflicts",
    "iter_staged",
    "tally_staged_pages",
]


class Storage(Protocol):
    """Everything the service layer needs from a backend.

    Reads return what is committed. Writes that must land together go inside
    ``with storage.atomic():``; an exception inside rolls all of them back.

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage: Storage = SQLiteStorage.in_memory()
    >>> with storage.atomic():
    ...     storage.mark_candidate("alice", 0)
    >>> storage.is_candidate("alice")
    True
    >>> storage.close()
    """

    #: Whether the backend keeps the sync's order and checksum (the ``sync`` methods).
    supports_sync: bool
    #: Attachments, content-addressed per user (:mod:`backend_stub.storage.blobs`).
    blobs: BlobStore
    #: Direct transfer of attachments by signed URLs, when the backend offers it.
    blob_urls: BlobUrls | None

    def atomic(self) -> AbstractContextManager[None]:
        """Group the writes inside into one transaction; a nested block can fail alone."""
        ...

    def close(self) -> None:
        """Release the backend's resources."""
        ...

    # sessions

    def get_session(self, session_id: str) -> Session | None:
        """The session with this id, whoever owns it (callers check the owner)."""
        ...

    def session_for_migration(self, user_id: str, migration_id: str) -> Session | None:
        """The user's session created for this client migration id."""
        ...

    def latest_session(self, user_id: str) -> Session | None:
        """The user's most recently created session."""
        ...

    def active_session(self, user_id: str, now: int) -> Session | None:
        """The user's open, unexpired session, if any."""
        ...

    def has_completed(self, user_id: str, device_id: str) -> bool:
        """Whether this device already completed a migration for this user."""
        ...

    def insert_session(self, session: Session) -> None:
        """Store a new session; :class:`DuplicateSession` if its migration id is taken."""
        ...

    def update_session(self, session: Session) -> Session:
        """Write ``session`` if the stored version is still ``session.version``.

        Returns the session as stored (version incremented); raises
        :class:`VersionConflict` when another write got there first.
        """
        ...

    # batches and staged items

    def get_batch(self, session_id: str, seq: int) -> Batch | None:
        """The stored batch ``seq`` of the session."""
        ...

    def received_batches(self, session_id: str) -> list[int]:
        """Sequence numbers of the stored batches, ascending."""
        ...

    def backlog(self, session_id: str) -> Backlog:
        """Held batches not processed yet, and failures (backends that process later)."""
        ...

    def insert_batch(self, batch: Batch, items: Sequence[StagedItem]) -> None:
        """Store a batch and its items.

        Raises :class:`DuplicateBatch` if the seq is taken, :class:`DuplicateItem` if a key
        is already staged in the session.
        """
        ...

    def staged_keys(self, session_id: str, keys: Sequence[Key]) -> list[Key]:
        """Which of ``keys`` are already staged in the session."""
        ...

    def staged_items(self, session_id: str, *, after: Key | None, limit: int) -> list[StagedItem]:
        """One page of staged items in (collection, key) order, after ``after``."""
        ...

    def tally_staged(self, session_id: str, user_id: str) -> StagedTally | None:
        """The session's staged items, tallied; ``None`` when one is a conflict or its
        cloud item is not the one it was staged against (a new version, or one where
        there was none): completion then walks them one by one."""
        ...

    def put_new_staged_items(
        self, session_id: str, user_id: str, *, device_id: str, now: int
    ) -> int:
        """Write every staged item classified ``new`` into the user's cloud data at
        version 1, written by ``device_id``; returns how many were written."""
        ...

    def outcome_counts(self, session_id: str) -> dict[str, int]:
        """Staged items counted by outcome (``new``, ``unchanged``, ``conflict``)."""
        ...

    def set_staged_outcome(
        self, session_id: str, key: Key, outcome: str, cloud_version: int | None
    ) -> None:
        """Reclassify a staged item (the cloud changed after it was staged)."""
        ...

    def purge_session(self, session_id: str) -> None:
        """Delete the session's batches, staged items and conflicts (not the session)."""
        ...

    # conflicts

    def save_conflicts(self, conflicts: Sequence[Conflict]) -> None:
        """Insert or replace conflicts by id."""
        ...

    def delete_conflict(self, conflict_id: str) -> None:
        """Forget a conflict that no longer exists."""
        ...

    def get_conflicts(self, session_id: str, conflict_ids: Sequence[str]) -> list[Conflict]:
        """The session's conflicts among ``conflict_ids`` (unknown ids are left out)."""
        ...

    def list_conflicts(self, session_id: str, *, after: Key | None, limit: int) -> list[Conflict]:
        """One page of the session's conflicts in (collection, key) order."""
        ...

    def conflict_counts(self, session_id: str) -> tuple[int, int]:
        """``(total, unresolved)`` conflicts of the session."""
        ...

    # cloud items

    def cloud_items(self, user_id: str, keys: Sequence[Key]) -> dict[Key, CloudItem]:
        """The user's cloud items among ``keys``."""
        ...

    def put_cloud_items(self, user_id: str, items: Sequence[CloudItem], now: int) -> int:
        """Insert or replace the user's cloud items (distinct keys); returns the seq they
        were written at. Every write of one transaction shares one seq, and moves the
        user's :class:`SyncHead` (seq, checksum, count) with it."""
        ...

    # sync

    def sync_head(self, user_id: str) -> SyncHead:
        """Where the user's cloud data stands (zeros for a user without items)."""
        ...

    def synced_items(self, user_id: str, keys: Sequence[Key]) -> dict[Key, SyncedItem]:
        """The user's cloud items among ``keys``, with their seqs."""
        ...

    def pull_page(
        self,
        user_id: str,
        *,
        after: tuple[int, str, str] | None,
        until: int | None,
        limit: int,
        skip_device: str | None = None,
    ) -> PullPage:
        """Up to ``limit`` items in (seq, collection, key) order after ``after`` (a seq
        alone when collection and key are empty) and at most ``until``, leaving out the
        items whose current version ``skip_device`` wrote, with the head read from the
        same snapshot."""
        ...

    def count_changes(
        self, user_id: str, *, after: tuple[int, str, str] | None, skip_device: str | None
    ) -> int:
        """How many items :meth:`pull_page` would return from ``after`` without a limit."""
        ...

    def full_checksum(self, user_id: str) -> tuple[int, int]:
        """The multiset checksum and item count recomputed from every item's content."""
        ...

    def get_push(self, user_id: str, push_id: str) -> PushRecord | None:
        """The stored answer of an applied push."""
        ...

    def save_push(self, user_id: str, push_id: str, record: PushRecord, now: int) -> None:
        """Keep a push's answer, in the transaction that applied it."""
        ...

    # users and events

    def mark_candidate(self, user_id: str, registered_at: int) -> None:
        """Remember that this user registered and may migrate local data."""
        ...

    def is_candidate(self, user_id: str) -> bool:
        """Whether a ``UserRegistered`` event was seen for this user."""
        ...

    def record_event(self, event: Event) -> None:
        """Append an event to the embedded sink."""
        ...

    def events(self, *, user_id: str | None = None, type: str | None = None) -> list[Event]:
        """Recorded events, oldest first, optionally filtered."""
        ...


def iter_staged(
    storage: Storage, session_id: str, *, page: int = 1000
) -> Iterator[list[StagedItem]]:
    """Walk all staged items of a session, one page at a time, in (collection, key) order.

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> list(iter_staged(storage, "nope"))
    []
    >>> storage.close()
    """
    after: Key | None = None
    while True:
        rows = storage.staged_items(session_id, after=after, limit=page)
        if not rows:
            return
        yield rows
        if len(rows) < page:
            return
        after = (rows[-1].collection, rows[-1].key)


def tally_staged_pages(storage: Storage, session_id: str, user_id: str) -> StagedTally | None:
    """:meth:`Storage.tally_staged` from pages of staged items and their cloud items, for
    backends without a faster way.

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> tally_staged_pages(storage, "nope", "alice").outcomes
    Counter()
    >>> storage.close()
    """
    tally = StagedTally(hashlib.sha256(), Counter())
    for page in iter_staged(storage, session_id):
        cloud = storage.cloud_items(user_id, [(s.collection, s.key) for s in page])
        for staged in page:
            current = cloud.get((staged.collection, staged.key))
            now = None if current is None else current.version
            if staged.outcome == "conflict" or now != staged.cloud_version:
                return None
            tally.digests.update(staged.digest)
            tally.outcomes[staged.outcome] += 1
    return tally


def iter_conflicts(storage: Storage, session_id: str, *, page: int = 500) -> Iterator[Conflict]:
    """Every conflict of a session in (collection, key) order.

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> list(iter_conflicts(storage, "nope"))
    []
    >>> storage.close()
    """
    after: Key | None = None
    while True:
        rows = storage.list_conflicts(session_id, after=after, limit=page)
        yield from rows
        if len(rows) < page:
            return
        after = (rows[-1].collection, rows[-1].key)
