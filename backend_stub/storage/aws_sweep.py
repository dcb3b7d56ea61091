"""What the sweep does: set-aside rows nothing else will delete, stranded events.

Set-aside rows carry no TTL (once a commit flipped, the committed state depends on them
until its roll-forward copied them). A unit of work that dies before its flip leaves
them behind, and so may one that dies after its flip (its pointer names them; readers
see through it, the next writer finishes it). So before a unit sets its first row aside
for a user it registers the commit: a row ``USER#{user}`` / ``ASIDE#{ms}#{tx}`` in the
sparse ``outbox`` index under ``obx = "aside"``. The roll-forward deletes it with the
rows; a failed unit deletes both. :func:`sweep_aside` (the scheduled publisher, the
worker's periodic sweep) takes registrations older than a grace period, by then no
longer in flight: a commit the user's pointer still names is finished, any other one
was never flipped (or was cleared already), and its rows are deleted. Registrations
sort by age::

    >>> registration_sk("tx1", 1_700_000_000_000) < registration_sk("tx0", 1_800_000_000_000)
    True
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from backend_stub.events import Event, EventType
from backend_stub.storage.aws_commit import publish
from backend_stub.storage.aws_resources import OUTBOX_INDEX
from backend_stub.storage.aws_rows import Row, aside_pk, event_of, get_s, key, s, user_pk
from backend_stub.storage.aws_slices import nudge

if TYPE_CHECKING:
    from backend_stub.storage.aws import AwsStorage

__all__ = ["register", "registration_sk", "sweep_aside", "sweep_outbox"]

logger = logging.getLogger(__name__)

#: ``obx`` of a registration (pending events have ``pending``).
ASIDE = "aside"
#: Registrations younger than this may belong to a unit still running (a request).
GRACE_S = 3600


def registration_sk(tx: str, created_ms: int) -> str:
    """The sort key of a registration: by age in the index, then by commit.

    >>> registration_sk("tx2", 5)
    'ASIDE#0000000000005#tx2'
    """
    return f"ASIDE#{created_ms:013d}#{tx}"


def register(storage: AwsStorage, tx: str, user_id: str) -> Row:
    """Register commit ``tx`` of ``user_id`` before its first row is set aside; returns
    the registration's key (for :func:`forget`).

    >>> register(storage, "tx1", "alice")["sk"]  # doctest: +SKIP
    {'S': 'ASIDE#1700000000000#tx1'}
    """
    row = key(user_pk(user_id), registration_sk(tx, int(time.time() * 1000)))
    row["obx"] = s(ASIDE)
    storage.table.put(row)
    return key(get_s(row, "pk"), get_s(row, "sk"))


def forget(storage: AwsStorage, tx: str, user_id: str) -> None:
    """Delete commit ``tx``'s set-aside rows of ``user_id``, then its registration."""
    pk = aside_pk(tx, user_id)
    rows = list(storage.table.query(pk, projection="#pk, #sk"))
    storage.table.batch_write(deletes=[key(pk, get_s(r, "sk")) for r in rows])
    storage.table.batch_write(deletes=storage.cloud.registrations(user_id, tx))


def sweep_aside(storage: AwsStorage, *, grace_s: int = GRACE_S, limit: int = 100) -> int:
    """Settle or delete the commits registered more than ``grace_s`` ago; returns how
    many registrations were handled.

    >>> sweep_aside(storage, grace_s=0)  # doctest: +SKIP
    1
    """
    cutoff = registration_sk("", int((time.time() - grace_s) * 1000))
    answer = storage.resources.dynamodb.query(
        TableName=storage.table.name,
        IndexName=OUTBOX_INDEX,
        KeyConditionExpression="#obx = :aside AND #sk < :cutoff",
        ExpressionAttributeNames={"#obx": "obx", "#sk": "sk"},
        ExpressionAttributeValues={":aside": s(ASIDE), ":cutoff": s(cutoff)},
        Limit=limit,
    )
    handled = 0
    for found in answer.get("Items", []):
        user_id = get_s(found, "pk").removeprefix("USER#")
        tx = get_s(found, "sk").rsplit("#", 1)[1]
        if storage.cloud.rolling(user_id) == tx:
            logger.info("user %s: the sweep finishes commit %s", user_id, tx)
            storage.settle(user_id)
        else:
            logger.info("user %s: the sweep deletes the rows of unflipped commit %s", user_id, tx)
        forget(storage, tx, user_id)
        handled += 1
    return handled


def sweep_outbox(storage: AwsStorage, *, limit: int = 100) -> int:
    """Publish up to ``limit`` events whose publication failed after their commit;
    returns how many went out. A user whose commit still rolls forward is left alone
    (its job publishes when done: a sweep now would publish the row twice), and a
    stalled commit of theirs is queued again.

    >>> sweep_outbox(storage)  # doctest: +SKIP
    3
    """
    answer = storage.resources.dynamodb.query(
        TableName=storage.table.name,
        IndexName=OUTBOX_INDEX,
        KeyConditionExpression="#obx = :pending",
        ExpressionAttributeNames={"#obx": "obx"},
        ExpressionAttributeValues={":pending": s("pending")},
        Limit=limit,
    )
    pending: list[tuple[Event, tuple[str, str]]] = []
    rolling: dict[str, bool] = {}
    for found in answer.get("Items", []):
        row = storage.table.get(get_s(found, "pk"), get_s(found, "sk"))
        if row is None or "obx" not in row:
            continue
        event = event_of(row)
        if event.user_id not in rolling:
            rolling[event.user_id] = storage.cloud.rolling(event.user_id) is not None
        if rolling[event.user_id]:
            if event.type is EventType.MIGRATION_COMPLETED and event.session_id:
                nudge(storage, event.user_id, event.session_id)
            continue
        pending.append((event, (get_s(row, "pk"), get_s(row, "sk"))))
    return publish(storage, pending)
