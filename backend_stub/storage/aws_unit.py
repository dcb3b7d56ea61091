"""The unit of work of the ``aws`` backend: ``Storage.atomic()`` on DynamoDB.

DynamoDB has no multi-request transaction, and one ``TransactWriteItems`` holds at most 100
items (4 MB). A migration writes thousands. So a unit splits its writes in two kinds:

* **Small writes** (the session with its optimistic-lock version and counters, the batch
  ledger, outbox events, the user's profile, a resolution, a reclassified item) are
  buffered and applied at the end of the block in one transaction: all or nothing, and the
  session's ``version`` condition makes a concurrent writer lose (``VersionConflict``).
* **Bulk writes** (a batch's staged items and conflicts, a commit's cloud items) are written
  *aside* at once, where no reader looks until the transaction *flips a marker*: staged rows
  carry the batch attempt that wrote them and count only once the ledger records that
  attempt as processed; cloud writes go under the unit's transaction id and count only
  once the user's profile points at it (see :mod:`backend_stub.storage.aws`).

A unit with more than 100 small writes (a large resolution request, say) is applied in
chunks, each one transaction that also advances the session's version by one: another
writer can never interleave (its version check fails), counters stay exact per chunk, and
an interrupted unit leaves a prefix that the client's retry completes (every such write is
idempotent)::

    >>> ops = [Op({"ConditionCheck": {}}, ("p", str(i))) for i in range(250)]
    >>> [len(chunk) for chunk in chunked(ops, 99)]
    [99, 99, 52]
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from backend_stub.events import Event
from backend_stub.storage.aws_rows import Row, get_s, key
from backend_stub.storage.records import StorageError, SyncHead, VersionConflict

__all__ = [
    "Claim",
    "Op",
    "SessionWrite",
    "Unit",
    "check_op",
    "chunked",
    "expression_names",
    "put_op",
    "update_op",
]

#: Items in one ``TransactWriteItems``.
MAX_TRANSACTION_ITEMS = 100
#: Bytes in one ``TransactWriteItems`` (the service allows 4 MB; keep a margin).
MAX_TRANSACTION_BYTES = 3_500_000

_NAME = re.compile(r"#(\w+)")


def expression_names(*expressions: str | None) -> dict[str, str]:
    """``ExpressionAttributeNames`` for every ``#name`` in the expressions.

    Every attribute is named through a placeholder, so no name ever collides with
    DynamoDB's reserved words (``status``, ``key``, ``data``, ``ttl``...).

    >>> expression_names("SET #status = :s", "#version = :v")
    {'#status': 'status', '#version': 'version'}
    """
    names: dict[str, str] = {}
    for expression in expressions:
        for name in _NAME.findall(expression or ""):
            names[f"#{name}"] = name
    return names


@dataclasses.dataclass
class Op:
    """One buffered write: a ``TransactItems`` entry and what its failed condition means.

    ``counted`` is the ``(user, session)`` whose conflict counters change by ``delta``
    (total, unresolved) when this write lands; ``last`` ops go in the final chunk of a
    large unit (the ones that must land with the session's final state).

    >>> Op({"Delete": {}}, ("pk", "sk")).failure.__name__
    'VersionConflict'
    """

    item: dict[str, Any]
    target: tuple[str, str]
    failure: type[StorageError] = VersionConflict
    counted: tuple[str, str] | None = None
    delta: tuple[int, int] = (0, 0)
    last: bool = False
    size: int = 512


@dataclasses.dataclass
class SessionWrite:
    """A buffered ``update_session``: the attributes to set, and the version it expects.

    ``bumps`` is how many ``update_session`` calls of the unit it stands for (each moves
    the version by one).

    >>> SessionWrite("u", "s", expected=3, attrs={}, completing=False).bumps
    1
    """

    user_id: str
    session_id: str
    expected: int
    attrs: Row
    completing: bool
    bumps: int = 1


@dataclasses.dataclass
class Claim:
    """The batch a unit processes: its staged rows carry ``attempt``, its conflicts
    ``round`` (see :mod:`backend_stub.storage.aws_ledger`).

    >>> Claim("s", 0, "a1", "r1").round
    'r1'
    """

    session_id: str
    seq: int
    attempt: str
    round: str


class Unit:
    """What one ``atomic()`` block has buffered and set aside so far.

    >>> unit = Unit()
    >>> unit.add(Op({"Delete": {}}, ("pk", "sk")))
    >>> mark = unit.mark()
    >>> unit.add(Op({"Delete": {}}, ("pk", "sk2")))
    >>> unit.restore(mark)
    >>> list(unit.ops)
    [('pk', 'sk')]
    """

    def __init__(self) -> None:
        self.tx = uuid.uuid4().hex
        self.ops: dict[tuple[str, str], Op] = {}
        self.sessions: dict[str, SessionWrite] = {}
        #: Counter changes of eagerly written rows, per (user, session).
        self.deltas: dict[tuple[str, str], tuple[int, int]] = {}
        #: Sessions whose staged data is purged once the unit lands: session -> user.
        self.purges: dict[str, str] = {}
        #: Events recorded, with the key of their outbox row (published after the commit).
        self.events: list[tuple[Event, tuple[str, str]]] = []
        #: Users whose cloud items were set aside under ``tx``, with how many rows.
        self.cloud: dict[str, int] = {}
        #: The commit generation of each user's items when the unit first read them.
        self.generations: dict[str, int] = {}
        #: Set-aside rows as (user, item key), to undo them when a nested block fails.
        self.aside: list[tuple[str, str]] = []
        #: The same, as a set: which items this unit wrote already.
        self.aside_keys: set[tuple[str, str]] = set()
        #: Each writing user's sync head: (seq it had when read, head after this unit).
        self.sync: dict[str, tuple[int, SyncHead]] = {}
        self.claim: Claim | None = None

    def add(self, op: Op) -> None:
        """Buffer ``op``; a later write of the same item replaces the earlier one."""
        self.ops.pop(op.target, None)
        self.ops[op.target] = op

    def add_delta(self, counted: tuple[str, str], total: int, unresolved: int) -> None:
        """Count an eager write's change of a session's conflict counters."""
        old = self.deltas.get(counted, (0, 0))
        self.deltas[counted] = (old[0] + total, old[1] + unresolved)

    def delta_of(self, session_id: str) -> tuple[int, int]:
        """The net change of a session's counters buffered so far."""
        total = unresolved = 0
        for op in self.ops.values():
            if op.counted is not None and op.counted[1] == session_id:
                total += op.delta[0]
                unresolved += op.delta[1]
        for (_, sid), (t, u) in self.deltas.items():
            if sid == session_id:
                total += t
                unresolved += u
        return total, unresolved

    def mark(self) -> tuple[Any, ...]:
        """A savepoint (nested ``atomic()``)."""
        return (
            dict(self.ops),
            dict(self.sessions),
            dict(self.deltas),
            dict(self.purges),
            list(self.events),
            dict(self.cloud),
            len(self.aside),
            self.claim,
            dict(self.generations),
            dict(self.sync),
        )

    def restore(self, mark: tuple[Any, ...]) -> None:
        """Forget what was buffered since ``mark`` (set-aside rows: see ``aside``)."""
        (
            self.ops,
            self.sessions,
            self.deltas,
            self.purges,
            self.events,
            self.cloud,
            size,
            self.claim,
            self.generations,
            self.sync,
        ) = mark
        if size < len(self.aside):
            del self.aside[size:]
            self.aside_keys = set(self.aside)


def chunked(ops: Sequence[Op], limit: int) -> Iterator[list[Op]]:
    """``ops`` in runs of at most ``limit`` items and :data:`MAX_TRANSACTION_BYTES`.

    >>> big = [Op({}, ("p", str(i)), size=2_000_000) for i in range(3)]
    >>> [len(chunk) for chunk in chunked(big, 100)]
    [1, 1, 1]
    """
    chunk: list[Op] = []
    size = 0
    for op in ops:
        if chunk and (len(chunk) >= limit or size + op.size > MAX_TRANSACTION_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(op)
        size += op.size
    if chunk:
        yield chunk


def put_op(
    row: Row,
    condition: str | None = None,
    values: Row | None = None,
    *,
    failure: type[StorageError] = VersionConflict,
) -> Op:
    """A put of ``row``, if ``condition`` holds.

    >>> put_op({"pk": {"S": "p"}, "sk": {"S": "s"}}, "attribute_not_exists(#pk)").target
    ('p', 's')
    """
    body: dict[str, Any] = {"Item": row}
    if condition:
        body["ConditionExpression"] = condition
        body["ExpressionAttributeNames"] = expression_names(condition)
    if values:
        body["ExpressionAttributeValues"] = values
    return Op({"Put": body}, (get_s(row, "pk"), get_s(row, "sk")), failure=failure)


def update_op(
    pk: str,
    sk: str,
    expression: str,
    condition: str | None = None,
    values: Row | None = None,
) -> Op:
    """An update of one item, if ``condition`` holds.

    >>> update_op("p", "s", "SET #n = :n", None, {":n": {"N": "1"}}).item["Update"]["Key"]
    {'pk': {'S': 'p'}, 'sk': {'S': 's'}}
    """
    body: dict[str, Any] = {
        "Key": key(pk, sk),
        "UpdateExpression": expression,
        "ExpressionAttributeNames": expression_names(expression, condition),
    }
    if condition:
        body["ConditionExpression"] = condition
    if values:
        body["ExpressionAttributeValues"] = values
    return Op({"Update": body}, (pk, sk))


def check_op(pk: str, sk: str, condition: str, values: Row) -> Op:
    """A condition on an item that the transaction does not write (a fence).

    >>> check_op("p", "s", "#a = :a", {":a": {"S": "x"}}).item["ConditionCheck"]["Key"]
    {'pk': {'S': 'p'}, 'sk': {'S': 's'}}
    """
    return Op(
        {
            "ConditionCheck": {
                "Key": key(pk, sk),
                "ConditionExpression": condition,
                "ExpressionAttributeNames": expression_names(condition),
                "ExpressionAttributeValues": values,
            }
        },
        (pk, sk),
    )
