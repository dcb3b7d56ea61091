"""What a migration did: counts, checksums, a fresh verification, advice.

``verified`` is recomputed on every call: the server takes the dataset checksum of the
migrated keys as the cloud holds them now and compares it with the one ``complete``
answered, so a later change by another device shows::

    >>> from contextlib import closing
    >>> from backend_stub.settings import Settings
    >>> from backend_stub.start import EMPTY_START, start_migration
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> with closing(SQLiteStorage.in_memory()) as storage:
    ...     _ = start_migration(storage, Settings(), "alice", EMPTY_START, now=0)
    ...     print(get_summary(storage, "alice", None, now=1).result.value)
    created
"""

from __future__ import annotations

import collections
import hashlib

from backend_stub.problems import ApiError
from backend_stub.service import load_session
from backend_stub.storage import Conflict, Session, Storage, iter_conflicts, iter_staged
from sdk.contract import GetMigrationSummaryResponse, MigrationSummary, ProblemCode, SessionStatus

__all__ = ["cloud_checksum", "get_summary"]


def cloud_checksum(storage: Storage, session: Session) -> str:
    """The dataset checksum of the migrated keys as the cloud holds them now.

    >>> from backend_stub.service import load_session
    >>> from backend_stub.settings import Settings
    >>> from backend_stub.start import EMPTY_START, start_migration
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> sid = start_migration(storage, Settings(), "alice", EMPTY_START, now=0).session_id
    >>> cloud_checksum(storage, load_session(storage, "alice", sid)) == hashlib.sha256().hexdigest()
    True
    >>> storage.close()
    """
    digest = hashlib.sha256()
    for page in iter_staged(storage, session.id):
        cloud = storage.cloud_items(session.user_id, [(s.collection, s.key) for s in page])
        for staged in page:
            item = cloud.get((staged.collection, staged.key))
            if item is not None:
                digest.update(item.digest())
    return digest.hexdigest()


def get_summary(
    storage: Storage, user_id: str, session_id: str | None, *, now: int
) -> GetMigrationSummaryResponse:
    """``GET /summary``: counts, checksums, a fresh verification and what to do next.

    >>> from backend_stub.settings import Settings
    >>> from backend_stub.start import EMPTY_START, start_migration
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> _ = start_migration(storage, Settings(), "alice", EMPTY_START, now=0)
    >>> get_summary(storage, "alice", None, now=1).recommendations
    ['Everything is uploaded: complete the migration.']
    >>> storage.close()
    """
    if session_id is not None:
        session = load_session(storage, user_id, session_id)
    else:
        latest = storage.latest_session(user_id)
        if latest is None:
            raise ApiError(404, ProblemCode.NOT_FOUND, "this user has no migration session")
        session = latest
    status = session.status_at(now)
    outcomes = storage.outcome_counts(session.id)
    conflicts = list(iter_conflicts(storage, session.id))
    by_kind = collections.Counter(
        c.strategy or c.choice or "unknown" for c in conflicts if c.resolved
    )
    result = session.result
    if result is not None and result.item_count and not sum(outcomes.values()):
        # The working set (staged items, conflicts) outlived its retention, and with it
        # the list of migrated keys: what the commit found is in its result, and its
        # cloud checksum was taken from the committed cloud (verified as of completion).
        verified = True
        outcomes = {"new": result.new_items or 0, "unchanged": result.unchanged_items or 0}
        by_kind = collections.Counter(result.resolutions_by_kind)
        conflict_count = result.conflicts or 0
    else:
        verified = result is not None and cloud_checksum(storage, session) == result.cloud_checksum
        conflict_count = len(conflicts)
    end = session.completed_at if session.completed_at is not None else session.updated_at
    summary = MigrationSummary(
        total_items=session.manifest.item_count,
        new_items=outcomes.get("new", 0),
        unchanged_items=outcomes.get("unchanged", 0),
        conflicts=conflict_count,
        resolutions_by_kind=dict(by_kind),
        collections=dict(session.manifest.collections),
        duration_ms=max(0, end - session.created_at),
        dataset_checksum=result.dataset_checksum if result else session.manifest.dataset_checksum,
        cloud_checksum=result.cloud_checksum if result else None,
        verified=verified,
    )
    return GetMigrationSummaryResponse(
        session_id=session.id,
        result=status,
        summary=summary,
        recommendations=_recommendations(session, status, conflicts, verified),
    )


def _recommendations(
    session: Session, status: SessionStatus, conflicts: list[Conflict], verified: bool
) -> list[str]:
    kept_server = sum(1 for c in conflicts if c.resolved and c.choice == "server")
    if status is SessionStatus.COMPLETED:
        advice = []
        if verified:
            advice.append(
                "The cloud holds what this migration wrote; the device may mark its local"
                " data as migrated."
            )
        else:
            advice.append(
                "The cloud changed since this migration wrote it (another device, most"
                " likely): compare before deleting any local data."
            )
        if kept_server:
            advice.append(
                f"{kept_server} item(s) kept the cloud's version over this device's: worth"
                " reviewing with the user."
            )
        if any(c.choice == "merged" for c in conflicts):
            advice.append("Some items were merged: check that the merged values look right.")
        return advice
    if status is SessionStatus.FAILED:
        return [
            f"The migration failed ({session.error or 'see the status errors'}). Nothing was"
            " applied to the cloud and local data is untouched: take a new snapshot and"
            " start a new migration."
        ]
    if status is SessionStatus.CANCELLED:
        return ["The migration was cancelled and its staged data purged: start again when ready."]
    if status is SessionStatus.EXPIRED:
        return [
            "The session expired before completion; nothing was applied: start a new"
            " migration (the device still holds its data)."
        ]
    if not session.all_batches_held:
        return ["Upload the missing batches (ask GET /status which ones the server holds)."]
    unresolved = sum(1 for c in conflicts if not c.resolved)
    if unresolved:
        return [f"Resolve the {unresolved} remaining conflict(s), then complete the migration."]
    return ["Everything is uploaded: complete the migration."]
