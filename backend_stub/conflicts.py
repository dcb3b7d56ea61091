"""Conflicts: list them page by page, record the device's decisions.

Pages are ordered by (collection, key) and chained by an opaque cursor; a resolution
request is checked whole before anything is written, so an unknown conflict id applies
nothing::

    >>> decode_cursor(encode_cursor(("lessons", "l1")))
    ('lessons', 'l1')
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging

from backend_stub.items import MAX_TIMESTAMP
from backend_stub.problems import ApiError
from backend_stub.service import ensure_open, load_session, retrying, touch
from backend_stub.settings import Settings
from backend_stub.storage import Key, Storage
from sdk.contract import (
    DataConflicts,
    ItemVersion,
    ProblemCode,
    Resolution,
    ResolveConflictsRequest,
    ResolveConflictsResponse,
    SessionStatus,
)

__all__ = ["decode_cursor", "encode_cursor", "list_conflicts", "resolve_conflicts"]

logger = logging.getLogger(__name__)


def encode_cursor(after: Key) -> str:
    """An opaque cursor pointing after ``(collection, key)``.

    >>> encode_cursor(("a", "b"))
    'WyJhIiwgImIiXQ'
    """
    raw = json.dumps(list(after), ensure_ascii=False).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> Key:
    """The position inside a cursor; 400 if it is not one of ours.

    >>> decode_cursor("nonsense")
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: malformed cursor: pass back the nextCursor of the previous page
    """
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(part, str) for part in value)
        ):
            return value[0], value[1]
    except (ValueError, binascii.Error, RecursionError):
        pass
    raise ApiError(
        400,
        ProblemCode.INVALID_REQUEST,
        "malformed cursor: pass back the nextCursor of the previous page",
    )


def list_conflicts(
    storage: Storage,
    settings: Settings,
    user_id: str,
    session_id: str,
    *,
    cursor: str | None,
    limit: int | None,
) -> DataConflicts:
    """``GET .../sessions/{id}/conflicts``: one page; ``limit`` is capped by the settings.

    >>> from backend_stub.start import EMPTY_START, start_migration
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> sid = start_migration(storage, Settings(), "alice", EMPTY_START, now=0).session_id
    >>> list_conflicts(storage, Settings(), "alice", sid, cursor=None, limit=10).total
    0
    >>> storage.close()
    """
    session = load_session(storage, user_id, session_id)
    after = decode_cursor(cursor) if cursor else None
    size = min(limit or settings.limits.conflicts_page_size, settings.limits.conflicts_page_size)
    rows = storage.list_conflicts(session.id, after=after, limit=size + 1)
    page = rows[:size]
    more = len(rows) > size
    total, unresolved = storage.conflict_counts(session.id)
    return DataConflicts(
        conflicts=[conflict.wire() for conflict in page],
        total=total,
        unresolved=unresolved,
        next_cursor=encode_cursor((page[-1].collection, page[-1].key)) if more else None,
    )


def resolve_conflicts(
    storage: Storage,
    settings: Settings,
    user_id: str,
    request: ResolveConflictsRequest,
    *,
    now: int,
) -> ResolveConflictsResponse:
    """``POST /resolve-conflicts``: record decisions; a later one for a conflict wins.

    Every conflict id is checked before anything is written:

    >>> from backend_stub.start import EMPTY_START, start_migration
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> sid = start_migration(storage, Settings(), "alice", EMPTY_START, now=0).session_id
    >>> request = ResolveConflictsRequest(
    ...     session_id=sid, resolutions=[Resolution(conflict_id="c9", choice="server")])
    >>> resolve_conflicts(storage, Settings(), "alice", request, now=1)
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: 1 unknown conflict id(s), first 'c9'; nothing was applied
    >>> storage.close()
    """
    limit = settings.limits.max_resolutions_per_request
    if len(request.resolutions) > limit:
        raise ApiError(
            413,
            ProblemCode.PAYLOAD_TOO_LARGE,
            f"{len(request.resolutions)} resolutions in one request, more than the limit of"
            f" {limit}: send them in several requests",
            extra={"limit": limit},
        )
    decisions: dict[str, Resolution] = {}
    for resolution in request.resolutions:
        _check_resolution(resolution)
        decisions[resolution.conflict_id] = resolution

    def attempt() -> ResolveConflictsResponse:
        session = load_session(storage, user_id, request.session_id)
        ensure_open(session, now)
        found = {c.id: c for c in storage.get_conflicts(session.id, list(decisions))}
        unknown = [conflict_id for conflict_id in decisions if conflict_id not in found]
        if unknown:
            raise ApiError(
                404,
                ProblemCode.NOT_FOUND,
                f"{len(unknown)} unknown conflict id(s), first {unknown[0]!r}; nothing was applied",
                extra={"unknownConflictIds": unknown[:20]},
            )
        changed = []
        for conflict_id, decision in decisions.items():
            conflict = found[conflict_id]
            updated = dataclasses.replace(
                conflict,
                resolved=True,
                choice=decision.choice,
                strategy=decision.strategy,
                merged=_merged(decision),
            )
            if updated != conflict:
                changed.append(updated)
        if not changed:
            # A replay: every decision is already recorded, so nothing is written.
            return ResolveConflictsResponse(
                resolved_count=len(decisions),
                remaining_conflicts=storage.conflict_counts(session.id)[1],
            )
        with storage.atomic():
            storage.save_conflicts(changed)
            _, unresolved = storage.conflict_counts(session.id)
            status = session.status
            if session.all_batches_held:
                status = SessionStatus.AWAITING_RESOLUTION if unresolved else SessionStatus.READY
            storage.update_session(touch(session, settings, now, status=status))
        logger.info(
            "session %s: %d conflict(s) resolved, %d remaining",
            session.id,
            len(changed),
            unresolved,
        )
        return ResolveConflictsResponse(
            resolved_count=len(decisions), remaining_conflicts=unresolved
        )

    return retrying(attempt)


def _check_resolution(resolution: Resolution) -> None:
    if resolution.choice != "merged":
        return
    missing = [
        name
        for name, value in (
            ("data", resolution.data),
            ("updatedAt", resolution.updated_at),
            ("deleted", resolution.deleted),
        )
        if value is None
    ]
    if missing:
        raise ApiError(
            422,
            ProblemCode.VALIDATION_FAILED,
            f"a merged resolution of {resolution.conflict_id!r} needs {', '.join(missing)}",
        )
    if resolution.updated_at is not None and not 0 <= resolution.updated_at <= MAX_TIMESTAMP:
        raise ApiError(
            422, ProblemCode.VALIDATION_FAILED, "updatedAt must be a non-negative 64-bit integer"
        )


def _merged(resolution: Resolution) -> ItemVersion | None:
    if resolution.choice != "merged":
        return None
    assert resolution.data is not None and resolution.updated_at is not None
    return ItemVersion(
        data=resolution.data, updated_at=resolution.updated_at, deleted=bool(resolution.deleted)
    )
