"""Batch upload: verify, validate, detect conflicts, stage, all or nothing.

``PUT .../sessions/{id}/batches/{seq}`` lands here once the body is read
(:mod:`backend_stub.bodies`). A batch is stored with its items, conflicts and receipt in
one transaction; the same batch again replays the stored receipt, a different body for
the same seq is refused and changes nothing::

    >>> _outcome_counts(["new", "conflict", "new"])
    (2, 0, 1)
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from backend_stub.bodies import Upload
from backend_stub.events import Event, EventType
from backend_stub.items import EncodedItem, ParsedBatch, parse_batch
from backend_stub.problems import ApiError
from backend_stub.service import ensure_open, load_session, retrying, touch
from backend_stub.settings import Settings
from backend_stub.storage import (
    Batch,
    CloudItem,
    Conflict,
    DuplicateItem,
    Key,
    NewItems,
    Session,
    StagedItem,
    Storage,
)
from sdk.contract import BatchReceipt, Item, ItemVersion, ProblemCode, SessionStatus, batch_checksum

__all__ = ["classify", "new_conflict", "put_batch"]

logger = logging.getLogger(__name__)


def check_upload(session: Session, seq: int, upload: Upload) -> None:
    """Refuse a batch outside the session's plan (409) or not matching its SHA-256 (400);
    the first checks of every batch upload, whichever backend stores it."""
    if not 0 <= seq < session.manifest.batch_count:
        raise ApiError(
            409,
            ProblemCode.BATCH_OUT_OF_RANGE,
            f"batch {seq} is outside the plan of {session.manifest.batch_count} batches",
            extra={"batchCount": session.manifest.batch_count},
        )
    actual = batch_checksum(upload.body)
    if actual != upload.checksum:
        raise ApiError(
            400,
            ProblemCode.BAD_CHECKSUM,
            "the body does not match its X-Content-SHA256: it was altered or truncated,"
            " send it again",
            extra={"expected": upload.checksum, "actual": actual},
        )


def put_batch(
    storage: Storage,
    settings: Settings,
    user_id: str,
    session_id: str,
    seq: int,
    upload: Upload,
    *,
    now: int,
) -> BatchReceipt:
    """Store batch ``seq`` of a session and answer its receipt (``replayed`` on a replay).

    >>> from backend_stub.start import start_migration
    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> from sdk.contract import Manifest, StartMigrationRequest, batch_body, canonical_item
    >>> from sdk.contract import dataset_checksum_of
    >>> item = {"collection": "c", "key": "k", "data": {}, "updatedAt": 1, "deleted": False}
    >>> body = batch_body([canonical_item(item)])
    >>> checksum = dataset_checksum_of([item])
    >>> manifest = Manifest(item_count=1, collections={"c": 1}, batch_size=1, batch_count=1,
    ...                     dataset_checksum=checksum)
    >>> storage, settings = SQLiteStorage.in_memory(), Settings()
    >>> sid = start_migration(storage, settings, "alice", StartMigrationRequest(
    ...     migration_id="mig-example-1", device_id="d1", data_version=1, manifest=manifest),
    ...     now=0).session_id
    >>> upload = Upload(body=body, checksum=batch_checksum(body))
    >>> put_batch(storage, settings, "alice", sid, 0, upload, now=1).new_count
    1
    >>> put_batch(storage, settings, "alice", sid, 0, upload, now=2).replayed
    True
    >>> storage.close()
    """
    session = load_session(storage, user_id, session_id)
    check_upload(session, seq, upload)
    rows = parse_batch(upload.body, max_items=settings.limits.max_batch_items)

    def attempt() -> BatchReceipt:
        # Reads, checks and writes in one transaction: on SQLite the write lock is taken
        # first, so batches arriving together wait their turn instead of losing the
        # optimistic-locking race and classifying again (the race still guards backends
        # and processes that do not share a lock).
        with storage.atomic():
            return store()

    def store() -> BatchReceipt:
        current = load_session(storage, user_id, session_id)
        stored = storage.get_batch(current.id, seq)
        if stored is not None:
            if stored.checksum == upload.checksum:
                return stored.receipt(replayed=True)
            raise ApiError(
                409,
                ProblemCode.BATCH_MISMATCH,
                f"batch {seq} was already received with different content; a batch's"
                " content must not change within a migration",
                extra={"storedChecksum": stored.checksum},
            )
        ensure_open(current, now)
        if current.staged_count + len(rows) > current.manifest.item_count:
            raise ApiError(
                409,
                ProblemCode.INVALID_STATE,
                f"this batch would take the session past the manifest's"
                f" {current.manifest.item_count} items",
            )
        collections, names, _, _ = rows.fields()
        keys = list(zip(collections, names, strict=True))
        staged, conflicts = classify(current.id, seq, rows, storage.cloud_items(user_id, keys))
        new, unchanged, conflicted = (
            (len(staged), 0, 0)
            if isinstance(staged, NewItems)
            else _outcome_counts([s.outcome for s in staged])
        )
        batch = Batch(current.id, seq, upload.checksum, len(rows), new, unchanged, conflicted, now)
        received = current.received_count + 1
        _, unresolved = storage.conflict_counts(current.id)
        unresolved += conflicted
        if received < current.manifest.batch_count:
            status = SessionStatus.UPLOADING
        elif unresolved:
            status = SessionStatus.AWAITING_RESOLUTION
        else:
            status = SessionStatus.READY
        announce = bool(conflicts) and not current.conflicts_announced
        with storage.atomic():
            try:
                storage.insert_batch(batch, staged)
            except DuplicateItem:
                raise _duplicate(storage, current.id, keys) from None
            if conflicts:
                storage.save_conflicts(conflicts)
            if announce:
                storage.record_event(
                    Event.new(
                        EventType.DATA_CONFLICT_DETECTED,
                        user_id=user_id,
                        session_id=current.id,
                        detail={"seq": seq, "conflictCount": conflicted},
                        now=now,
                    )
                )
            storage.update_session(
                touch(
                    current,
                    settings,
                    now,
                    status=status,
                    received_count=received,
                    staged_count=current.staged_count + len(rows),
                    conflicts_announced=current.conflicts_announced or announce,
                )
            )
        logger.info(
            "session %s: batch %d stored (%d items: %d new, %d unchanged, %d conflicts)",
            current.id,
            seq,
            len(rows),
            new,
            unchanged,
            conflicted,
        )
        return batch.receipt()

    return retrying(attempt)


def classify(
    session_id: str, seq: int, rows: Sequence[EncodedItem], cloud: dict[Key, CloudItem]
) -> tuple[Sequence[StagedItem], list[Conflict]]:
    """Compare uploaded items with the cloud's: ``new``, ``unchanged`` or ``conflict``.

    Items are compared by canonical digest, so a tombstone against a live item, or the
    same data with another ``updatedAt``, is a conflict.

    >>> from backend_stub.items import parse_batch
    >>> rows = parse_batch(b'{"items":[{"collection":"c","key":"k","data":{},'
    ...                    b'"updatedAt":1,"deleted":false}]}', max_items=1)
    >>> staged, conflicts = classify("s", 0, rows, {})
    >>> staged[0].outcome, conflicts
    ('new', [])
    """
    if rows and not cloud:  # most of a first migration: every item is new
        parsed = ParsedBatch.of(rows)  # columns in, columns out: no tuple per item
        collections, keys, stamps, deletes = parsed.fields()
        return NewItems(seq, collections, keys, parsed.datas, stamps, deletes, parsed.digests), []
    staged: list[StagedItem] = []
    conflicts: list[Conflict] = []
    for item, data, digest in rows:
        key = (item["collection"], item["key"])
        current = cloud.get(key)
        if current is None:
            outcome, version = "new", None
        elif current.digest() == digest:
            outcome, version = "unchanged", current.version
        else:
            outcome, version = "conflict", current.version
            conflicts.append(new_conflict(session_id, item, current))
        staged.append(
            StagedItem(
                key[0],
                key[1],
                seq,
                data,
                item["updatedAt"],
                item["deleted"],
                digest,
                outcome,
                version,
            )
        )
    return staged, conflicts


def new_conflict(
    session_id: str, item: Item, current: CloudItem, *, conflict_id: str | None = None
) -> Conflict:
    """A conflict between an uploaded wire item and the cloud's current version.

    >>> cloud = CloudItem("c", "k", '{"v":1}', 5, False, 3, "phone")
    >>> c = new_conflict("s", {"collection": "c", "key": "k", "data": {"v": 2},
    ...                        "updatedAt": 6, "deleted": False}, cloud)
    >>> c.local.data, c.server.data, c.server.version
    ({'v': 2}, {'v': 1}, 3)
    """
    return Conflict(
        id=conflict_id or str(uuid.uuid4()),
        session_id=session_id,
        collection=current.collection,
        key=current.key,
        local=ItemVersion(data=item["data"], updated_at=item["updatedAt"], deleted=item["deleted"]),
        server=current.as_version(),
    )


def _duplicate(storage: Storage, session_id: str, keys: list[Key]) -> ApiError:
    # Asked after insert_batch refused the batch (its savepoint rolled back), so only
    # keys staged by other batches are named.
    taken = storage.staged_keys(session_id, keys) or keys[:1]
    collection, key = taken[0]
    return ApiError(
        409,
        ProblemCode.DUPLICATE_ITEM,
        f"{len(taken)} item(s) of this batch, first {collection}/{key}, were already"
        " uploaded in another batch: every item belongs to exactly one batch",
        extra={"duplicates": [list(k) for k in taken[:20]]},
    )


def _outcome_counts(outcomes: Sequence[str]) -> tuple[int, int, int]:
    return outcomes.count("new"), outcomes.count("unchanged"), outcomes.count("conflict")
