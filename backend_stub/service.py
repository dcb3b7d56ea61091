"""The rules every session operation shares, and the status and cancel operations.

Service functions take the storage, the settings, the authenticated user and ``now``
(ms since the epoch), and return a wire model or raise
:class:`~backend_stub.problems.ApiError`. Writes go through the session's optimistic
lock: an operation re-reads and retries when a concurrent request changed the session
first (:func:`retrying`). Sessions are found per user (:func:`load_session`: another
user's session is a 404) and change only while open (:func:`ensure_open`)::

    >>> from contextlib import closing
    >>> from backend_stub.start import EMPTY_START, start_migration
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> with closing(SQLiteStorage.in_memory()) as storage:
    ...     started = start_migration(storage, Settings(), "alice", EMPTY_START, now=0)
    ...     print(get_status(storage, "alice", started.session_id, now=1).status.value)
    created
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from backend_stub.problems import ApiError
from backend_stub.settings import Settings
from backend_stub.storage import (
    DuplicateBatch,
    DuplicateSession,
    Session,
    Storage,
    VersionConflict,
)
from sdk.contract import GetMigrationStatusResponse, ProblemCode, SessionStatus

__all__ = [
    "cancel_migration",
    "ensure_open",
    "get_status",
    "load_session",
    "now_ms",
    "retrying",
    "status_response",
    "touch",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Each lost race means another request committed, so a few attempts per concurrent
# writer always suffice; clients send at most limits.max_parallel_batches at once.
_ATTEMPTS = 16


def now_ms() -> int:
    """The wall clock in milliseconds since the epoch (the server's default clock).

    >>> now_ms() > 1_600_000_000_000
    True
    """
    return int(time.time() * 1000)


def retrying(operation: Callable[[], T], *, attempts: int = _ATTEMPTS) -> T:
    """Run ``operation``; when a concurrent write beat it, run it again from fresh reads.

    After ``attempts`` lost races the client gets 409 ``version-conflict`` (and retries).

    >>> retrying(lambda: 42)
    42
    """
    for _ in range(attempts):
        try:
            return operation()
        except (VersionConflict, DuplicateSession, DuplicateBatch):
            logger.debug("lost an optimistic-locking race; retrying")
    raise ApiError(
        409,
        ProblemCode.VERSION_CONFLICT,
        "the session kept changing under this request: retry it",
    )


def load_session(storage: Storage, user_id: str, session_id: str) -> Session:
    """The user's session, or 404 (another user's session is as unknown as a missing one).

    >>> from contextlib import closing
    >>> from backend_stub.start import EMPTY_START, start_migration
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> with closing(SQLiteStorage.in_memory()) as storage:
    ...     load_session(storage, "alice", "nope")
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: no migration session 'nope'
    """
    session = storage.get_session(session_id)
    if session is None or session.user_id != user_id:
        raise ApiError(404, ProblemCode.NOT_FOUND, f"no migration session {session_id!r}")
    return session


def ensure_open(session: Session, now: int) -> None:
    """409 unless the session still accepts changes (open, not expired, not committing).

    >>> from contextlib import closing
    >>> from backend_stub.start import EMPTY_START, start_migration
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> with closing(SQLiteStorage.in_memory()) as storage:
    ...     started = start_migration(storage, Settings(), "alice", EMPTY_START, now=0)
    ...     session = load_session(storage, "alice", started.session_id)
    >>> ensure_open(session, now=1)
    >>> ensure_open(session, now=session.expires_at)
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: the session expired: start a new migration
    """
    status = session.status_at(now)
    if status is SessionStatus.EXPIRED:
        raise ApiError(
            409,
            ProblemCode.SESSION_EXPIRED,
            "the session expired: start a new migration",
            extra={"sessionId": session.id},
        )
    if status.is_final or status is SessionStatus.COMMITTING:
        raise ApiError(
            409,
            ProblemCode.INVALID_STATE,
            f"the session is {status.value} and accepts no more changes",
            extra={"sessionId": session.id, "sessionStatus": status.value},
        )


def touch(session: Session, settings: Settings, now: int, **changes: Any) -> Session:
    """The session after activity at ``now``: its TTL starts again.

    >>> from contextlib import closing
    >>> from backend_stub.start import EMPTY_START, start_migration
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> with closing(SQLiteStorage.in_memory()) as storage:
    ...     started = start_migration(storage, Settings(), "alice", EMPTY_START, now=0)
    ...     session = load_session(storage, "alice", started.session_id)
    >>> touch(session, Settings(), 5_000).expires_at - session.expires_at
    5000
    """
    return dataclasses.replace(
        session, updated_at=now, expires_at=now + settings.session_ttl_ms, **changes
    )


def get_status(
    storage: Storage, user_id: str, session_id: str | None, *, now: int
) -> GetMigrationStatusResponse:
    """``GET /status``: the given session, else the active one, else the most recent.

    >>> from contextlib import closing
    >>> from backend_stub.start import EMPTY_START, start_migration
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> with closing(SQLiteStorage.in_memory()) as storage:
    ...     started = start_migration(storage, Settings(), "alice", EMPTY_START, now=0)
    ...     status = get_status(storage, "alice", None, now=1)
    >>> status.session_id == started.session_id, status.progress
    (True, 1.0)
    """
    if session_id is not None:
        session = load_session(storage, user_id, session_id)
    else:
        found = storage.active_session(user_id, now) or storage.latest_session(user_id)
        if found is None:
            raise ApiError(404, ProblemCode.NOT_FOUND, "this user has no migration session")
        session = found
    return status_response(storage, session, now)


def cancel_migration(
    storage: Storage, settings: Settings, user_id: str, session_id: str, *, now: int
) -> GetMigrationStatusResponse:
    """``DELETE /sessions/{id}``: cancel and purge the staged data. Idempotent.

    >>> from contextlib import closing
    >>> from backend_stub.start import EMPTY_START, start_migration
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> with closing(SQLiteStorage.in_memory()) as storage:
    ...     started = start_migration(storage, Settings(), "alice", EMPTY_START, now=0)
    ...     for _ in range(2):
    ...         print(cancel_migration(storage, Settings(), "alice", started.session_id,
    ...                                now=1).status.value)
    cancelled
    cancelled
    """

    def attempt() -> GetMigrationStatusResponse:
        session = load_session(storage, user_id, session_id)
        if session.status is SessionStatus.CANCELLED:
            return status_response(storage, session, now)
        if session.status in (SessionStatus.COMPLETED, SessionStatus.COMMITTING):
            raise ApiError(
                409,
                ProblemCode.INVALID_STATE,
                f"a {session.status.value} migration cannot be cancelled",
                extra={"sessionId": session.id, "sessionStatus": session.status.value},
            )
        with storage.atomic():
            storage.purge_session(session.id)
            session = storage.update_session(
                dataclasses.replace(
                    session,
                    status=SessionStatus.CANCELLED,
                    received_count=0,
                    staged_count=0,
                    updated_at=now,
                )
            )
        logger.info("session %s of user %s cancelled", session.id, user_id)
        return status_response(storage, session, now)

    return retrying(attempt)


def status_response(storage: Storage, session: Session, now: int) -> GetMigrationStatusResponse:
    """The wire status of a session, counted from what storage holds.

    >>> from contextlib import closing
    >>> from backend_stub.start import EMPTY_START, start_migration
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> with closing(SQLiteStorage.in_memory()) as storage:
    ...     started = start_migration(storage, Settings(), "alice", EMPTY_START, now=0)
    ...     session = load_session(storage, "alice", started.session_id)
    ...     print(status_response(storage, session, now=1).current_step)
    ready to complete
    """
    status = session.status_at(now)
    received = storage.received_batches(session.id)
    # A backend that processes batches later (AWS) holds some not processed yet.
    backlog = storage.backlog(session.id)
    total, unresolved = storage.conflict_counts(session.id)
    batch_count = session.manifest.batch_count
    processed = len(received) - len(backlog.pending)
    waiting = status in (SessionStatus.CREATED, SessionStatus.UPLOADING)
    if backlog.pending and waiting and len(received) >= batch_count:
        status = SessionStatus.PROCESSING
    step = _step(session, status, len(received), unresolved)
    if status is SessionStatus.PROCESSING:
        step = f"processing: {processed} of {batch_count} batches processed"
    progress = 1.0 if batch_count == 0 else min(1.0, len(received) / batch_count)
    # A backend that commits in slices (aws) says how far its commit is, and queues
    # again one that stalled (its roll-forward goes on after the session completed).
    commit_progress = getattr(storage, "commit_progress", None)
    finishing = status in (SessionStatus.COMMITTING, SessionStatus.COMPLETED)
    if finishing and commit_progress is not None:
        found = commit_progress(session)
        if found is not None and status is SessionStatus.COMMITTING:
            progress, step = found
    return GetMigrationStatusResponse(
        session_id=session.id,
        migration_id=session.migration_id,
        status=status,
        progress=progress,
        current_step=step,
        errors=([session.error] if session.error else []) + backlog.failures,
        batch_count=batch_count,
        received_batches=received,
        processed_batches=processed,
        conflict_count=total,
        unresolved_conflicts=unresolved,
        expires_at=None if status.is_final else session.expires_at,
    )


def _step(session: Session, status: SessionStatus, received: int, unresolved: int) -> str:
    batch_count = session.manifest.batch_count
    if status is SessionStatus.EXPIRED:
        return "expired: start a new migration"
    if status is SessionStatus.FAILED:
        return f"failed: {session.error or 'see errors'}"
    if status.is_final or status is SessionStatus.COMMITTING:
        return str(status.value)
    if received < batch_count:
        return f"uploading: {received} of {batch_count} batches received"
    if unresolved:
        return f"resolving conflicts: {unresolved} unresolved"
    return "ready to complete"
