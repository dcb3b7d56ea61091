"""Events the server publishes, and the one it consumes.

Published (recorded by the embedded sink, the ``events`` table, in the same transaction
as the change they announce, so an event exists exactly when its change does):
``MigrationStarted``, ``LocalDataDetected``, ``DataConflictDetected``,
``MigrationCompleted``, ``MigrationFailed``. Each has an ``id`` consumers dedupe by.

Consumed: :class:`UserRegistered`, which marks the user as a migration candidate::

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> handle_user_registered(storage, UserRegistered(user_id="alice", registered_at=0))
    >>> storage.is_candidate("alice")
    True
    >>> storage.close()
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backend_stub.storage import Storage

__all__ = ["Event", "EventType", "UserRegistered", "handle_user_registered"]

logger = logging.getLogger(__name__)


class EventType(str, enum.Enum):
    """The published event types.

    >>> EventType("MigrationCompleted") is EventType.MIGRATION_COMPLETED
    True
    """

    MIGRATION_STARTED = "MigrationStarted"
    LOCAL_DATA_DETECTED = "LocalDataDetected"
    DATA_CONFLICT_DETECTED = "DataConflictDetected"
    MIGRATION_COMPLETED = "MigrationCompleted"
    MIGRATION_FAILED = "MigrationFailed"


@dataclasses.dataclass(frozen=True)
class Event:
    """Something that happened to a migration. ``time`` is in ms since the epoch.

    >>> e = Event.new(EventType.MIGRATION_STARTED, user_id="alice", session_id="s1",
    ...               detail={"itemCount": 3}, now=0)
    >>> e.wire()["type"], e.wire()["detail"]
    ('MigrationStarted', {'itemCount': 3})
    """

    id: str
    type: EventType
    time: int
    user_id: str
    session_id: str | None
    detail: dict[str, Any]

    @classmethod
    def new(
        cls,
        type: EventType,
        *,
        user_id: str,
        session_id: str | None,
        detail: dict[str, Any],
        now: int,
    ) -> Event:
        """A new event with a fresh id."""
        return cls(str(uuid.uuid4()), type, now, user_id, session_id, detail)

    def wire(self) -> dict[str, Any]:
        """The JSON form a consumer (or an event bus) receives."""
        return {
            "id": self.id,
            "type": self.type.value,
            "time": self.time,
            "userId": self.user_id,
            "sessionId": self.session_id,
            "detail": self.detail,
        }


@dataclasses.dataclass(frozen=True)
class UserRegistered:
    """Inbound: a user created an account (``registered_at`` in ms since the epoch).

    >>> UserRegistered(user_id="alice", registered_at=1700000000000).user_id
    'alice'
    """

    user_id: str
    registered_at: int


def handle_user_registered(storage: Storage, event: UserRegistered) -> None:
    """Mark the user as a migration candidate; ``GET /detect`` reports it. Idempotent.

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> for _ in range(2):
    ...     handle_user_registered(storage, UserRegistered(user_id="bob", registered_at=1))
    >>> storage.is_candidate("bob")
    True
    >>> storage.close()
    """
    with storage.atomic():
        storage.mark_candidate(event.user_id, event.registered_at)
    logger.info("user %s registered: marked as migration candidate", event.user_id)
