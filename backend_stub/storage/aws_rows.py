"""How the ``aws`` backend lays its records out in one DynamoDB table.

Single-table design, string keys ``pk``/``sk``. Item keys inside a partition are
``{collection}#{key}``: ``#`` sorts below every character a collection name may hold, so
DynamoDB's byte order of these strings is the (collection, key) order of the API::

    >>> item_key("lessons", "l1"), split_item_key("lessons#a#b")
    ('lessons#l1', ('lessons', 'a#b'))
    >>> [split_item_key(k) for k in sorted([item_key("a-b", "x"), item_key("a", "z")])]
    [('a', 'z'), ('a-b', 'x')]

===========================  =============================  =====================================
``pk``                       ``sk``                         what
===========================  =============================  =====================================
``USER#{user}``              ``MIGRATION#{session}``        a session (the seed's model), with its
                                                            optimistic-lock ``version`` and counts
``USER#{user}``              ``PROFILE``                    candidate flag, active-session token,
                                                            cloud commit pointer (``rolling``),
                                                            sync head (``syncSeq``, ``syncSum``,
                                                            ``syncCount``)
``USER#{user}``              ``PUSH#{push}``                an applied sync push, for its replays
``USER#{user}``              ``MIGRATIONID#{migration}``    claims a client migration id
``SESSION#{session}``        ``SESSION``                    the session's owner (id lookups)
``SESSION#{session}``        ``BATCH#{seq}``                the batch ledger (state, lease)
``SESSION#{session}#ITEMS``  ``{collection}#{key}``         staged items
``SESSION#{session}#CONFL``  ``{collection}#{key}``         conflicts (one per key)
``ITEM#{user}#{c}#{k}``      ``ITEM``                       the user's cloud items (with their
                                                            sync ``seq`` and ``digest``)
``USER#{user}#SEQ``          ``{seq:020d}#{c}#{k}``         the sync log: where each item sits in
                                                            the user's order
``TX#{tx}#{user}``           ``{collection}#{key}``         cloud writes of a commit, set aside
``USER#{user}#EVENTS``       ``{time}#{ns}#{id}``           published events (the outbox)
===========================  =============================  =====================================

Values are DynamoDB attribute values (``{"S": ...}``); this module converts the records of
:mod:`backend_stub.storage.records` both ways. Values larger than :data:`INLINE_LIMIT`
(an item's data may be megabytes, a DynamoDB item at most 400 KB) live in S3 as
content-addressed blobs, and the row keeps their SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from backend_stub.events import Event, EventType
from backend_stub.storage.records import Batch, CloudItem, Conflict, Session
from sdk.contract import (
    CompleteMigrationResponse,
    ItemVersion,
    Manifest,
    MigrationConfig,
    SessionStatus,
)

__all__ = [
    "INLINE_LIMIT",
    "conflict_id",
    "item_key",
    "key_of_conflict_id",
    "log_sk",
    "split_item_key",
    "split_log_sk",
]

#: Values up to this many UTF-8 bytes are kept in the row; larger ones go to S3.
INLINE_LIMIT = 64 * 1024

AV = dict[str, Any]  # one DynamoDB attribute value
Row = dict[str, AV]  # one DynamoDB item

_CONFLICT_PREFIX = "cf-"


def item_key(collection: str, key: str) -> str:
    """The sort key of an item inside a partition: ``{collection}#{key}``.

    >>> item_key("lessons", "l#1")
    'lessons#l#1'
    """
    return f"{collection}#{key}"


def split_item_key(value: str) -> tuple[str, str]:
    """The ``(collection, key)`` of :func:`item_key` (collection names hold no ``#``).

    >>> split_item_key("lessons#l#1")
    ('lessons', 'l#1')
    """
    collection, _, key = value.partition("#")
    return collection, key


def conflict_id(session_id: str, collection: str, key: str) -> str:
    """The id of a session's conflict on an item, derived from the session and the item.

    A session has at most one conflict per item, and concurrent attempts at processing
    the same batch must name it alike; the id is opaque to clients.

    >>> cid = conflict_id("s1", "lessons", "l1")
    >>> cid, key_of_conflict_id(cid)
    ('cf-czEvbGVzc29ucyNsMQ', ('s1', 'lessons', 'l1'))
    """
    raw = f"{session_id}/{item_key(collection, key)}".encode()
    return _CONFLICT_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def key_of_conflict_id(value: str) -> tuple[str, str, str] | None:
    """The ``(session, collection, key)`` a :func:`conflict_id` names; ``None`` otherwise.

    >>> key_of_conflict_id("c9") is None
    True
    """
    if not value.startswith(_CONFLICT_PREFIX):
        return None
    encoded = value[len(_CONFLICT_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    session_id, _, address = text.partition("/")
    if not session_id or "#" not in address:
        return None
    return (session_id, *split_item_key(address))


# ----------------------------------------------------------------------------- keys


def user_pk(user_id: str) -> str:
    return f"USER#{user_id}"


def session_sk(session_id: str) -> str:
    return f"MIGRATION#{session_id}"


def session_pk(session_id: str) -> str:
    return f"SESSION#{session_id}"


def ledger_sk(seq: int) -> str:
    return f"BATCH#{seq:010d}"


def staged_pk(session_id: str) -> str:
    return f"SESSION#{session_id}#ITEMS"


def conflicts_pk(session_id: str) -> str:
    return f"SESSION#{session_id}#CONFL"


def cloud_pk(user_id: str, collection: str, key: str) -> str:
    return f"ITEM#{user_id}#{item_key(collection, key)}"


def aside_pk(tx: str, user_id: str) -> str:
    return f"TX#{tx}#{user_id}"


def events_pk(user_id: str) -> str:
    return f"USER#{user_id}#EVENTS"


def log_pk(user_id: str) -> str:
    return f"USER#{user_id}#SEQ"


def log_sk(seq: int, collection: str, key: str) -> str:
    """The sort key of an item's place in the sync log: (seq, collection, key) order.

    >>> log_sk(7, "c", "k"), split_log_sk(log_sk(7, "c", "k#1"))
    ('00000000000000000007#c#k', (7, 'c', 'k#1'))
    """
    return f"{seq:020d}#{item_key(collection, key)}"


def split_log_sk(value: str) -> tuple[int, str, str]:
    """The ``(seq, collection, key)`` of :func:`log_sk`.

    >>> split_log_sk("00000000000000000012#notes#a")
    (12, 'notes', 'a')
    """
    seq, _, address = value.partition("#")
    return (int(seq), *split_item_key(address))


def push_sk(push_id: str) -> str:
    return f"PUSH#{push_id}"


def key(pk: str, sk: str) -> Row:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


# ----------------------------------------------------------------------------- values


def s(value: str) -> AV:
    return {"S": value}


def n(value: int | float) -> AV:
    return {"N": str(value)}


def b(value: bytes) -> AV:
    return {"B": value}


def flag(value: bool) -> AV:
    return {"BOOL": value}


def opt_s(row: Row, name: str) -> str | None:
    value = row.get(name)
    return None if value is None else str(value["S"])


def opt_n(row: Row, name: str) -> int | None:
    value = row.get(name)
    return None if value is None else int(value["N"])


def get_s(row: Row, name: str) -> str:
    return str(row[name]["S"])


def get_n(row: Row, name: str) -> int:
    return int(row[name]["N"])


def get_b(row: Row, name: str) -> bytes:
    return bytes(row[name]["B"])


def get_flag(row: Row, name: str) -> bool:
    return bool(row[name]["BOOL"])


# ----------------------------------------------------------------------------- sessions


def session_attrs(session: Session, *, retention_s: int) -> Row:
    """Every attribute of a session row but its key and version.

    ``progress`` and ``currentStep`` are kept for operators reading the table (the API
    recomputes both); ``ttl`` lets DynamoDB delete abandoned sessions: an open one
    ``retention`` after it would expire, a cancelled or failed one ``retention`` after its
    last change, a completed one never (it answers replays and already-migrated checks).
    """
    batch_count = session.manifest.batch_count
    attrs: Row = {
        "sessionId": s(session.id),
        "userId": s(session.user_id),
        "migrationId": s(session.migration_id),
        "deviceId": s(session.device_id),
        "dataVersion": n(session.data_version),
        "manifest": s(session.manifest.model_dump_json(by_alias=True)),
        "status": s(session.status.value),
        "createdAt": n(session.created_at),
        "updatedAt": n(session.updated_at),
        "expiresAt": n(session.expires_at),
        "receivedCount": n(session.received_count),
        "stagedCount": n(session.staged_count),
        "conflictsAnnounced": flag(session.conflicts_announced),
        "progress": n(1.0 if batch_count == 0 else session.received_count / batch_count),
        "currentStep": s(session.status.value),
    }
    if session.config is not None:
        attrs["config"] = s(session.config.model_dump_json(by_alias=True))
    if session.completed_at is not None:
        attrs["completedAt"] = n(session.completed_at)
    if session.result is not None:
        attrs["result"] = s(session.result.model_dump_json(by_alias=True))
    if session.error is not None:
        attrs["error"] = s(session.error)
    if session.status is not SessionStatus.COMPLETED:
        end = session.updated_at if session.status.is_final else session.expires_at
        attrs["ttl"] = n(end // 1000 + retention_s)
    return attrs


#: Session attributes that may be absent; an update removes the ones a session lacks.
OPTIONAL_SESSION_ATTRS = ("config", "completedAt", "result", "error", "ttl")


def session_of(row: Row) -> Session:
    """The :class:`Session` of a session row."""
    return Session(
        id=get_s(row, "sessionId"),
        user_id=get_s(row, "userId"),
        migration_id=get_s(row, "migrationId"),
        device_id=get_s(row, "deviceId"),
        data_version=get_n(row, "dataVersion"),
        manifest=Manifest.model_validate_json(get_s(row, "manifest")),
        config=MigrationConfig.model_validate_json(row["config"]["S"]) if "config" in row else None,
        status=SessionStatus(get_s(row, "status")),
        version=get_n(row, "version"),
        created_at=get_n(row, "createdAt"),
        updated_at=get_n(row, "updatedAt"),
        expires_at=get_n(row, "expiresAt"),
        completed_at=opt_n(row, "completedAt"),
        received_count=get_n(row, "receivedCount"),
        staged_count=get_n(row, "stagedCount"),
        conflicts_announced=get_flag(row, "conflictsAnnounced"),
        result=(
            CompleteMigrationResponse.model_validate_json(row["result"]["S"])
            if "result" in row
            else None
        ),
        error=opt_s(row, "error"),
    )


# ----------------------------------------------------------------------------- batches


def batch_of(session_id: str, row: Row) -> Batch:
    """The processed :class:`Batch` of a ledger row."""
    return Batch(
        session_id=session_id,
        seq=get_n(row, "seq"),
        checksum=get_s(row, "checksum"),
        item_count=get_n(row, "itemCount"),
        new_count=opt_n(row, "newCount") or 0,
        unchanged_count=opt_n(row, "unchangedCount") or 0,
        conflict_count=opt_n(row, "conflictCount") or 0,
        received_at=get_n(row, "receivedAt"),
    )


# ----------------------------------------------------------------------------- conflicts


def conflict_body(conflict: Conflict) -> str:
    """The JSON of a conflict's versions (the part that may be large)."""
    return json.dumps(
        {
            "local": conflict.local.model_dump(mode="json", by_alias=True),
            "server": conflict.server.model_dump(mode="json", by_alias=True),
            "merged": (
                conflict.merged.model_dump(mode="json", by_alias=True) if conflict.merged else None
            ),
        },
        separators=(",", ":"),
    )


def conflict_attrs(conflict: Conflict) -> Row:
    """The small attributes of a conflict row (the body is stored by the caller)."""
    attrs: Row = {"resolved": flag(conflict.resolved)}
    if conflict.choice is not None:
        attrs["choice"] = s(conflict.choice)
    if conflict.strategy is not None:
        attrs["strategy"] = s(conflict.strategy)
    return attrs


def conflict_of(session_id: str, row: Row, body: str) -> Conflict:
    """The :class:`Conflict` of a row and its body."""
    collection, key_ = split_item_key(get_s(row, "sk"))
    versions = json.loads(body)
    return Conflict(
        id=conflict_id(session_id, collection, key_),
        session_id=session_id,
        collection=collection,
        key=key_,
        local=ItemVersion.model_validate(versions["local"]),
        server=ItemVersion.model_validate(versions["server"]),
        resolved=get_flag(row, "resolved"),
        choice=opt_s(row, "choice"),
        strategy=opt_s(row, "strategy"),
        merged=ItemVersion.model_validate(versions["merged"]) if versions["merged"] else None,
    )


# ----------------------------------------------------------------------------- cloud items


def cloud_attrs(item: CloudItem, now: int) -> Row:
    """The attributes of a cloud row but ``data`` (stored by the caller)."""
    return {
        "collection": s(item.collection),
        "key": s(item.key),
        "updatedAt": n(item.updated_at),
        "deleted": flag(item.deleted),
        "version": n(item.version),
        "deviceId": s(item.device_id),
        "writtenAt": n(now),
    }


def cloud_of(row: Row, data: str) -> CloudItem:
    """The :class:`CloudItem` of a cloud (or set-aside) row and its data."""
    return CloudItem(
        get_s(row, "collection"),
        get_s(row, "key"),
        data,
        get_n(row, "updatedAt"),
        get_flag(row, "deleted"),
        get_n(row, "version"),
        get_s(row, "deviceId"),
    )


# ----------------------------------------------------------------------------- events


def event_row(event: Event, ns: int) -> Row:
    """The outbox row of an event; ``obx`` keeps it in the unpublished index."""
    row = key(events_pk(event.user_id), f"{event.time:015d}#{ns:020d}#{event.id}")
    row.update(
        {
            "kind": s("event"),
            "id": s(event.id),
            "type": s(event.type.value),
            "time": n(event.time),
            "userId": s(event.user_id),
            "detail": s(json.dumps(event.detail, separators=(",", ":"))),
            "obx": s("pending"),
        }
    )
    if event.session_id is not None:
        row["sessionId"] = s(event.session_id)
    return row


def event_of(row: Row) -> Event:
    """The :class:`Event` of an outbox row."""
    return Event(
        get_s(row, "id"),
        EventType(get_s(row, "type")),
        get_n(row, "time"),
        get_s(row, "userId"),
        opt_s(row, "sessionId"),
        json.loads(get_s(row, "detail")),
    )
