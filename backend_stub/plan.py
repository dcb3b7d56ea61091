"""The plan: what a migration would find, predicted from keys and digests alone.

``POST /plan`` takes one page of ``{collection, key, digest}`` entries and answers, per
entry and in the request's order, whether the cloud holds nothing under that key
(``new``), the same canonical item (``unchanged``) or another version (``conflict``),
with the cloud's version of every conflict so the device can predict what its policy
will do. It is read-only: no session, no staging, no event. The classification is the
one batch upload uses, so a plan predicts exactly what the upload then reports::

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> from backend_stub.items import seed_cloud_items
    >>> from sdk.contract import item_digest
    >>> storage = SQLiteStorage.in_memory()
    >>> item = {"collection": "c", "key": "k", "data": {}, "updatedAt": 1, "deleted": False}
    >>> _ = seed_cloud_items(storage, "alice", [item])
    >>> request = PlanRequest(entries=[
    ...     {"collection": "c", "key": "k", "digest": item_digest(item).hex()},
    ...     {"collection": "c", "key": "l", "digest": "0" * 64}])
    >>> plan_items(storage, Settings(), "alice", request, now=5).outcomes
    ['unchanged', 'new']
    >>> storage.close()
"""

from __future__ import annotations

import logging

from backend_stub.problems import ApiError
from backend_stub.settings import Settings
from backend_stub.storage import Key, Storage
from sdk.contract import PlanConflict, PlanOutcome, PlanRequest, PlanResponse, ProblemCode

__all__ = ["plan_items"]

logger = logging.getLogger(__name__)


def plan_items(
    storage: Storage, settings: Settings, user_id: str, request: PlanRequest, *, now: int
) -> PlanResponse:
    """``POST /plan``: classify one page of entries against the user's cloud items.

    A page holds at most ``limits.max_batch_items`` entries (413 above), strictly
    ascending by (collection, key) (422 otherwise, which also refuses duplicates):

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> twice = PlanRequest(entries=[{"collection": "c", "key": "k", "digest": "0" * 64}] * 2)
    >>> plan_items(storage, Settings(), "alice", twice, now=0)
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: entries must be strictly ascending ...; entry 1 (c/k) is not
    >>> storage.close()
    """
    entries = request.entries
    limit = settings.limits.max_batch_items
    if len(entries) > limit:
        raise ApiError(
            413,
            ProblemCode.PAYLOAD_TOO_LARGE,
            f"the page holds {len(entries)} entries, more than the limit of {limit}:"
            " send smaller pages",
            extra={"limit": limit, "maxEntries": limit},
        )
    keys: list[Key] = [(entry["collection"], entry["key"]) for entry in entries]
    for index in range(1, len(keys)):
        if keys[index] <= keys[index - 1]:
            raise ApiError(
                422,
                ProblemCode.VALIDATION_FAILED,
                "entries must be strictly ascending by (collection, key);"
                f" entry {index} ({keys[index][0]}/{keys[index][1]}) is not",
            )
    cloud = storage.cloud_items(user_id, keys)
    outcomes: list[PlanOutcome] = []
    conflicts: list[PlanConflict] = []
    for entry, key in zip(entries, keys, strict=True):
        current = cloud.get(key)
        if current is None:
            outcomes.append("new")
        elif current.digest().hex() == entry["digest"]:
            outcomes.append("unchanged")
        else:
            outcomes.append("conflict")
            conflicts.append(
                PlanConflict(collection=key[0], key=key[1], server=current.as_version())
            )
    new = outcomes.count("new")
    logger.info(
        "user %s planned %d items: %d new, %d conflicts", user_id, len(keys), new, len(conflicts)
    )
    return PlanResponse(
        outcomes=outcomes,
        conflicts=conflicts,
        new_count=new,
        unchanged_count=len(outcomes) - new - len(conflicts),
        conflict_count=len(conflicts),
        server_time=now,
    )
