"""Sync after the migration: push a device's changes, pull the user's changes, prove state.

Every write to a user's cloud items gets a place in the user's one total order, its
``seq`` (the writes of one request share one). A push says, per change, which seq the
device's version was based on; the cloud applies it when its own item has not moved
past that base, answers ``unchanged`` when it holds equal data already (equal data is
never a conflict), and ``conflict`` otherwise, with its own version for the device's
policy. A push is applied once: a replay of the same ``pushId`` with the same changes
answers the stored response, a replay with other changes is refused (409).

A pull walks the user's items in (seq, collection, key) order after an opaque cursor;
an item written again moves to a later seq, so a device that follows the cursor never
misses a change (it may see an item twice, and keeps the later). The checksum that ends
every exchange is the running multiset sum that the backend keeps with every write::

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> from backend_stub.settings import Settings
    >>> storage = SQLiteStorage.in_memory()
    >>> change = PushChange(collection="c", key="k", data={"v": 1}, updated_at=5,
    ...                     deleted=False, base_seq=None)
    >>> answer = push_changes(storage, Settings(), "alice",
    ...     PushRequest(push_id="push-0001", device_id="d1", changes=[change]), now=9)
    >>> answer.results[0].outcome, answer.seq, answer.item_count
    ('applied', 1, 1)
    >>> page = json.loads(pull_body(storage, Settings(), "alice", since=None, until=None,
    ...                             limit=None))
    >>> page["changes"][0]["data"], page["cursor"], page["checksum"] == answer.checksum
    ({'v': 1}, '1', True)
    >>> storage.close()
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from json.encoder import encode_basestring as _quote

from backend_stub.problems import ApiError
from backend_stub.service import retrying
from backend_stub.settings import Settings
from backend_stub.storage import CloudItem, PushRecord, Storage, SyncedItem
from sdk.contract import (
    ItemVersion,
    ProblemCode,
    PushChange,
    PushRequest,
    PushResponse,
    PushResult,
    SyncStateResponse,
    canonical_json,
    multiset_hex,
)

__all__ = ["decode_cursor", "encode_cursor", "pull_body", "push_changes", "sync_state"]

logger = logging.getLogger(__name__)

#: Items per pull page when the device does not say.
DEFAULT_PAGE = 1000


def push_changes(
    storage: Storage, settings: Settings, user_id: str, request: PushRequest, *, now: int
) -> PushResponse:
    """``POST /sync/push``: apply what can be applied, report the rest; all in one
    transaction, once per ``pushId``.

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> push = PushRequest(push_id="push-0002", device_id="d1", changes=[PushChange(
    ...     collection="c", key="k", data={}, updated_at=1, deleted=False, base_seq=None)])
    >>> first = push_changes(storage, Settings(), "alice", push, now=1)
    >>> again = push_changes(storage, Settings(), "alice", push, now=2)
    >>> again.replayed, again.seq == first.seq
    (True, True)
    >>> storage.close()
    """
    limit = settings.limits.max_batch_items
    if len(request.changes) > limit:
        raise ApiError(
            413,
            ProblemCode.PAYLOAD_TOO_LARGE,
            f"a push holds at most {limit} changes (limits.maxBatchItems), this one"
            f" {len(request.changes)}: split it",
        )
    keys = [(c.collection, c.key) for c in request.changes]
    if len(set(keys)) != len(keys):
        raise ApiError(
            422,
            ProblemCode.VALIDATION_FAILED,
            "a push names an item twice: send each item once, with its latest version",
        )
    digest = hashlib.sha256(
        canonical_json([request.device_id, [c.wire() for c in request.changes]]).encode()
    ).hexdigest()

    def attempt() -> PushResponse:
        with storage.atomic():
            stored = storage.get_push(user_id, request.push_id)
            if stored is not None:
                if stored.request_digest != digest:
                    raise ApiError(
                        409,
                        ProblemCode.PUSH_MISMATCH,
                        f"push {request.push_id} was applied with other changes: a push id"
                        " names one set of changes; send new changes under a new push id",
                    )
                answer = PushResponse.model_validate_json(stored.response)
                return answer.model_copy(update={"replayed": True})
            answer = _apply(storage, user_id, request, now)
            storage.save_push(
                user_id,
                request.push_id,
                PushRecord(digest, answer.model_dump_json(by_alias=True)),
                now,
            )
        return answer

    answer = retrying(attempt)
    logger.info(
        "push %s of %s: %d change(s), head at seq %d",
        request.push_id,
        user_id,
        len(request.changes),
        answer.seq,
    )
    return answer


def _apply(storage: Storage, user_id: str, request: PushRequest, now: int) -> PushResponse:
    current = storage.synced_items(user_id, [(c.collection, c.key) for c in request.changes])
    writes: list[CloudItem] = []
    results: list[PushResult | None] = []
    for change in request.changes:
        text = canonical_json(change.data)
        there = current.get((change.collection, change.key))
        if there is not None and _equal(there.item, text, change.deleted):
            results.append(_result(change, "unchanged", there))
        elif there is None or (change.base_seq is not None and there.seq <= change.base_seq):
            version = 1 if there is None else there.item.version + 1
            writes.append(
                CloudItem(
                    change.collection,
                    change.key,
                    text,
                    change.updated_at,
                    change.deleted,
                    version,
                    request.device_id,
                )
            )
            results.append(None)  # applied: its seq is known once written
        else:
            results.append(_result(change, "conflict", there))
    seq = storage.put_cloud_items(user_id, writes, now) if writes else 0
    head = storage.sync_head(user_id)
    return PushResponse(
        results=[
            r
            if r is not None
            else PushResult(collection=c.collection, key=c.key, outcome="applied", seq=seq)
            for c, r in zip(request.changes, results, strict=True)
        ],
        seq=head.seq,
        checksum=multiset_hex(head.checksum),
        item_count=head.item_count,
    )


def _equal(item: CloudItem, data_text: str, deleted: bool) -> bool:
    return item.deleted == deleted and (deleted or item.data == data_text)


def _result(change: PushChange, outcome: str, there: SyncedItem) -> PushResult:
    server: ItemVersion = there.item.as_version()
    return PushResult(
        collection=change.collection,
        key=change.key,
        outcome=outcome,  # type: ignore[arg-type]
        seq=there.seq,
        server=server,
    )


def pull_body(
    storage: Storage,
    settings: Settings,
    user_id: str,
    *,
    since: str | None,
    until: int | None,
    limit: int | None,
    device_id: str | None = None,
) -> bytes:
    """``GET /sync/changes``: one page as the JSON body of a :class:`PullResponse`.

    Items whose current version ``device_id`` wrote are left out: that device holds them
    already (it learnt their seq from its push's answer). Built around each item's stored
    canonical data, without parsing it: a bootstrap of a large dataset is mostly this loop.

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> page = json.loads(pull_body(storage, Settings(), "bob", since="0", until=None, limit=5))
    >>> page["changes"], page["cursor"], page["hasMore"], page["itemCount"]
    ([], '0', False, 0)
    >>> storage.close()
    """
    size = min(limit or DEFAULT_PAGE, settings.limits.max_batch_items)
    after = decode_cursor(since)
    page = retrying(
        lambda: storage.pull_page(
            user_id, after=after, until=until, limit=size + 1, skip_device=device_id
        )
    )
    items = page.items[:size]
    has_more = len(page.items) > size
    if has_more:
        last = items[-1]
        cursor = encode_cursor(last.seq, last.item.collection, last.item.key)
    else:
        # Everything up to the head (or the asked bound) was read, in one snapshot.
        end = page.head.seq if until is None else min(until, page.head.seq)
        cursor = str(max(end, after[0] if after else 0))
    parts = [
        '{{"collection":{},"data":{},"deleted":{},"key":{},"seq":{:d},"updatedAt":{:d}}}'.format(
            _quote(s.item.collection),
            s.item.data,
            "true" if s.item.deleted else "false",
            _quote(s.item.key),
            s.seq,
            s.item.updated_at,
        )
        for s in items
    ]
    head = page.head
    return (
        ('{{"changes":[{}],"cursor":{},"hasMore":{},"seq":{:d},"checksum":"{}","itemCount":{:d}}}')
        .format(
            ",".join(parts),
            _quote(cursor),
            "true" if has_more else "false",
            head.seq,
            multiset_hex(head.checksum),
            head.item_count,
        )
        .encode("utf-8")
    )


def sync_state(
    storage: Storage,
    user_id: str,
    *,
    full: bool,
    since: str | None = None,
    device_id: str | None = None,
) -> SyncStateResponse:
    """``GET /sync/state``: the head; with ``full``, the checksum recomputed from every
    item's content (O(items): for audits and ``verify --full``); with ``since``, how many
    items a pull from that cursor would bring (to ``device_id``).

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> sync_state(storage, "alice", full=True, since="0").changes_since
    0
    >>> storage.close()
    """
    head = storage.sync_head(user_id)
    changed = None
    if since is not None:
        position = decode_cursor(since)
        changed = retrying(
            lambda: storage.count_changes(user_id, after=position, skip_device=device_id)
        )
    checksum, count = (
        retrying(lambda: storage.full_checksum(user_id))
        if full
        else (head.checksum, head.item_count)
    )
    return SyncStateResponse(
        seq=head.seq,
        checksum=multiset_hex(checksum),
        item_count=count,
        full=full,
        changes_since=changed,
    )


def encode_cursor(seq: int, collection: str, key: str) -> str:
    """A cursor inside a seq: ``SEQ.`` then the last (collection, key) in base64url.

    >>> decode_cursor(encode_cursor(3, "c", "k"))
    (3, 'c', 'k')
    """
    tail = base64.urlsafe_b64encode(canonical_json([collection, key]).encode()).decode()
    return f"{seq}.{tail.rstrip('=')}"


def decode_cursor(cursor: str | None) -> tuple[int, str, str] | None:
    """The position a cursor names; a bare seq means "after all of that seq".

    >>> decode_cursor("12"), decode_cursor(None)
    ((12, '', ''), None)
    >>> decode_cursor("x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: the cursor 'x' is not one this server gave: ...
    """
    if cursor is None or cursor == "":
        return None
    head, _, tail = cursor.partition(".")
    try:
        if not head.isdigit() or len(head) > 19:
            raise ValueError(head)
        seq = int(head)
        if not tail:
            return seq, "", ""
        padded = tail + "=" * (-len(tail) % 4)
        collection, key = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(collection, str) or not isinstance(key, str) or not collection:
            raise ValueError(tail)
        return seq, collection, key
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        shown = cursor if len(cursor) <= 40 else cursor[:37] + "..."
        raise ApiError(
            400,
            ProblemCode.INVALID_REQUEST,
            f"the cursor {shown!r} is not one this server gave: pull from the start"
            " (no since) or from a cursor of an earlier answer",
        ) from None
