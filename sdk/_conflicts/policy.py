"""Conflict policies: how the device decides between its version of an item and the cloud's.

The server finds conflicts (an uploaded item whose cloud version differs); the device
decides each one with the integrator's :class:`ConflictPolicy`, before anything is
confirmed. Built-in strategies, chosen per collection:

``server_wins`` (the default)
    keep the cloud's version; the device's store takes it too.
``local_wins``
    the device's version goes to the cloud, tombstones included.
``newest_wins``
    the later ``updatedAt`` wins, after correcting the device's timestamps by the
    measured clock offset between device and server. Items stamped in the future beyond
    ``future_tolerance_ms``, or whose difference is within the offset's uncertainty plus
    ``skew_tolerance_ms``, are *flagged* and decided by ``fallback`` (never a coin toss).
``field_merge``
    merge the two data objects field by field (see :data:`DEFAULT_FIELD_RULES`);
    a tombstone on either side is decided as ``newest_wins``.
``manual``
    persist the conflict in the journal and wait for the app's UI
    (:meth:`sdk.MigrationClient.resolve_conflict`).
a callable
    ``callback(conflict)`` returns ``"local"``, ``"server"``, ``"defer"`` (wait for the
    app, as ``manual``) or a ``dict``: the merged data.

A decision is a pure function of the conflict, the policy and the clock estimate, so
deciding again gives the same answer::

    >>> conflict = Conflict(conflict_id="c1", collection="progress", key="lesson-1",
    ...     local={"collection": "progress", "key": "lesson-1", "updatedAt": 2_000_000,
    ...            "deleted": False, "data": {"score": 7, "done": ["a"]}},
    ...     server={"collection": "progress", "key": "lesson-1", "updatedAt": 1_000_000,
    ...             "deleted": False, "data": {"score": 9, "done": ["b"]}})
    >>> policy = ConflictPolicy(per_collection={"progress": "field_merge"})
    >>> decision = decide(conflict, policy, ClockEstimate(), now_ms=3_000_000)
    >>> decision.choice, decision.item["data"]
    ('merged', {'done': ['b', 'a'], 'score': 9})
    >>> decide(conflict, policy, ClockEstimate(), now_ms=3_000_000) == decision
    True
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from .._errors import ConfigurationError, MigrationError
from .._store.local import check_item, item_label
from .._store.values import wire_text
from .._wire.canonical import Item, canonical_json
from .._wire.models import DataConflict

if TYPE_CHECKING:
    from .._transport.http import Exchange

__all__ = [
    "DEFAULT_FIELD_RULES",
    "ClockEstimate",
    "Conflict",
    "ConflictPolicy",
    "Decision",
    "FlaggedItem",
    "decide",
    "resolved_item",
    "strategy_name",
]

logger = logging.getLogger(__name__)

StrategyName: TypeAlias = Literal[
    "server_wins", "local_wins", "newest_wins", "field_merge", "manual"
]
#: What a callback returns: a side, ``"defer"`` (wait for the app), or merged data.
CallbackResult: TypeAlias = "Literal['local', 'server', 'defer'] | Mapping[str, Any]"
ConflictCallback: TypeAlias = "Callable[[Conflict], CallbackResult]"
Strategy: TypeAlias = "StrategyName | ConflictCallback"
FieldRuleName: TypeAlias = Literal["max", "min", "union", "newest", "local", "server"]
#: A field rule: a name, or ``merge(local_value, server_value) -> value``.
FieldRule: TypeAlias = "FieldRuleName | Callable[[Any, Any], Any]"
Choice: TypeAlias = Literal["local", "server", "merged"]
FlagReason: TypeAlias = Literal["local_in_future", "server_in_future", "too_close"]

_STRATEGIES = frozenset({"server_wins", "local_wins", "newest_wins", "field_merge", "manual"})
_FALLBACKS = frozenset({"server_wins", "local_wins", "manual"})
_FIELD_RULES = frozenset({"max", "min", "union", "newest", "local", "server"})

#: Field rules of ``field_merge`` for common learning data, used for any collection whose
#: ``merge_rules`` do not name the field: best scores and streaks only grow, completed
#: lessons only accumulate. Fields not listed here merge as ``union`` when both values
#: are lists, else ``newest``.
DEFAULT_FIELD_RULES: Mapping[str, FieldRule] = MappingProxyType(
    {
        **dict.fromkeys(
            (
                "score",
                "best_score",
                "bestScore",
                "high_score",
                "highScore",
                "max_score",
                "maxScore",
                "streak",
                "best_streak",
                "bestStreak",
                "longest_streak",
                "longestStreak",
                "xp",
            ),
            "max",
        ),
        **dict.fromkeys(
            (
                "completed",
                "completed_lessons",
                "completedLessons",
                "lessons_completed",
                "lessonsCompleted",
            ),
            "union",
        ),
    }
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Conflict:
    """One item whose cloud version differs from the device's, as the app's UI sees it.

    ``local`` and ``server`` are wire items; ``server_version`` and ``server_device_id``
    say which cloud version it is and which device wrote it. ``reason`` says why a
    pending conflict waits for the app (``None`` elsewhere).

    >>> c = Conflict(conflict_id="c1", collection="prefs", key="theme",
    ...     local={"collection": "prefs", "key": "theme", "data": {"v": "dark"},
    ...            "updatedAt": 2, "deleted": False},
    ...     server={"collection": "prefs", "key": "theme", "data": {"v": "light"},
    ...             "updatedAt": 1, "deleted": False}, server_version=3)
    >>> c.local["data"], c.server["data"], c.server_version
    ({'v': 'dark'}, {'v': 'light'}, 3)
    """

    conflict_id: str
    collection: str
    key: str
    local: Item
    server: Item
    server_version: int | None = None
    server_device_id: str | None = None
    reason: str | None = None

    @classmethod
    def from_wire(cls, conflict: DataConflict) -> Conflict:
        """The conflict as the server lists it.

        >>> from sdk._wire.models import DataConflict, ItemVersion
        >>> v = ItemVersion(data={}, updated_at=1, deleted=False, version=2, device_id="d")
        >>> Conflict.from_wire(DataConflict(conflict_id="c", collection="a", key="k",
        ...                                 local=v, server=v)).server_device_id
        'd'
        """
        return cls(
            conflict_id=conflict.conflict_id,
            collection=conflict.collection,
            key=conflict.key,
            local=_item(conflict.collection, conflict.key, conflict.local),
            server=_item(conflict.collection, conflict.key, conflict.server),
            server_version=conflict.server.version,
            server_device_id=conflict.server.device_id,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what the journal keeps).

        >>> sorted(Conflict(conflict_id="c", collection="a", key="k", local={},
        ...                 server={}).to_json())[:3]  # doctest: +NORMALIZE_WHITESPACE
        ['collection', 'conflict_id', 'key']
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Conflict:
        """The inverse of :meth:`to_json`.

        >>> c = Conflict(conflict_id="c", collection="a", key="k", local={}, server={})
        >>> Conflict.from_json(c.to_json()) == c
        True
        """
        return cls(**value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlaggedItem:
    """An item ``newest_wins`` could not order with confidence, and who decided it instead.

    ``reason`` is ``local_in_future`` or ``server_in_future`` (a timestamp more than
    ``future_tolerance_ms`` ahead of the server's clock), or ``too_close`` (the corrected
    difference is within the clock offset's uncertainty plus ``skew_tolerance_ms``).
    ``resolved_by`` names the policy's ``fallback``.

    >>> FlaggedItem(conflict_id="c1", collection="a", key="k", reason="too_close",
    ...     local_updated_at=5, server_updated_at=5, clock_offset_ms=0,
    ...     resolved_by="server_wins").reason
    'too_close'
    """

    conflict_id: str
    collection: str
    key: str
    reason: FlagReason
    local_updated_at: int
    server_updated_at: int
    clock_offset_ms: int
    resolved_by: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConflictPolicy:
    """How conflicts are decided: a strategy per collection, ``default`` for the rest.

    Strategies are ``"server_wins"``, ``"local_wins"``, ``"newest_wins"``,
    ``"field_merge"``, ``"manual"`` or a callable (see the module's documentation).
    ``merge_rules`` gives ``field_merge`` rules per collection, field by field: ``"max"``,
    ``"min"``, ``"union"`` (lists), ``"newest"``, ``"local"``, ``"server"`` or a function
    ``merge(local_value, server_value)``; unnamed fields follow
    :data:`DEFAULT_FIELD_RULES`. ``fallback`` decides what ``newest_wins`` flags:
    ``"server_wins"``, ``"local_wins"``, ``"manual"`` or a callable.

    >>> policy = ConflictPolicy(
    ...     per_collection={"preferences": "local_wins", "progress": "field_merge"},
    ...     merge_rules={"progress": {"notes": "newest"}}, fallback="manual")
    >>> policy.strategy_for("preferences"), policy.strategy_for("cards")
    ('local_wins', 'server_wins')
    >>> ConflictPolicy(fallback="newest_wins")
    Traceback (most recent call last):
    ...
    sdk._errors.ConfigurationError: fallback must be one of ... or a callable, got 'newest_wins'
    """

    default: Strategy = "server_wins"
    per_collection: Mapping[str, Strategy] = dataclasses.field(default_factory=dict)
    merge_rules: Mapping[str, Mapping[str, FieldRule]] = dataclasses.field(default_factory=dict)
    fallback: Strategy = "server_wins"
    #: Added to the offset's own uncertainty (half the round trip): clocks drift
    #: between the time an item was written and the time the offset is measured.
    skew_tolerance_ms: int = 2_000
    #: How far ahead of the server's clock a timestamp may be before it is distrusted.
    future_tolerance_ms: int = 60_000

    def __post_init__(self) -> None:
        _check_strategy("default", self.default, _STRATEGIES)
        if not isinstance(self.per_collection, Mapping):
            raise ConfigurationError("per_collection must map collection names to strategies")
        for name, strategy in self.per_collection.items():
            _check_strategy(f"per_collection[{name!r}]", strategy, _STRATEGIES)
        _check_strategy("fallback", self.fallback, _FALLBACKS)
        if not isinstance(self.merge_rules, Mapping):
            raise ConfigurationError("merge_rules must map collection names to field rules")
        for collection, rules in self.merge_rules.items():
            if not isinstance(rules, Mapping):
                raise ConfigurationError(
                    f"merge_rules[{collection!r}] must map field names to rules"
                )
            for field, rule in rules.items():
                if not callable(rule) and rule not in _FIELD_RULES:
                    raise ConfigurationError(
                        f"merge_rules[{collection!r}][{field!r}] must be one of "
                        f"{_names(_FIELD_RULES)} or a function, got {rule!r}"
                    )
        for name in ("skew_tolerance_ms", "future_tolerance_ms"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ConfigurationError(f"{name} must be an integer >= 0, got {value!r}")
        # Frozen in depth: a policy shared between threads cannot change under them.
        object.__setattr__(self, "per_collection", MappingProxyType(dict(self.per_collection)))
        object.__setattr__(
            self,
            "merge_rules",
            MappingProxyType({c: MappingProxyType(dict(r)) for c, r in self.merge_rules.items()}),
        )

    def strategy_for(self, collection: str) -> Strategy:
        """The strategy deciding conflicts of ``collection``."""
        return self.per_collection.get(collection, self.default)

    def rule_for(self, collection: str, field: str, local: Any, server: Any) -> FieldRule:
        """The ``field_merge`` rule for one field of ``collection``.

        >>> ConflictPolicy().rule_for("progress", "streak", 1, 2)
        'max'
        >>> ConflictPolicy().rule_for("progress", "tags", ["a"], ["b"])
        'union'
        """
        rules = self.merge_rules.get(collection, {})
        if field in rules:
            return rules[field]
        if field in DEFAULT_FIELD_RULES:
            return DEFAULT_FIELD_RULES[field]
        return "union" if isinstance(local, list) and isinstance(server, list) else "newest"


@dataclasses.dataclass(frozen=True)
class ClockEstimate:
    """The device clock minus the server's, and how far off that estimate may be.

    Measured from an answer carrying ``serverTime``: the server read its clock somewhere
    between sending and receiving, so the midpoint is the best guess and half the round
    trip the uncertainty.

    >>> from sdk._transport.http import Exchange
    >>> clock = ClockEstimate.measure(Exchange(sent_at_ms=10_000, received_at_ms=10_040),
    ...                               server_time=7_000)
    >>> clock, clock.to_server(10_020)
    (ClockEstimate(offset_ms=3020, uncertainty_ms=20), 7000)
    """

    offset_ms: int = 0
    uncertainty_ms: int = 0

    @classmethod
    def measure(cls, exchange: Exchange | None, server_time: int | None) -> ClockEstimate | None:
        """From a round trip and the ``serverTime`` of its answer; ``None`` without them."""
        if exchange is None or server_time is None:
            return None
        trip = max(0, exchange.round_trip_ms)
        return cls(exchange.midpoint_ms - server_time, (trip + 1) // 2)

    @classmethod
    def from_date(cls, exchange: Exchange | None) -> ClockEstimate | None:
        """From an answer's ``Date`` header: whole seconds, so 500 ms less certain.

        >>> from sdk._transport.http import Exchange
        >>> ClockEstimate.from_date(Exchange(sent_at_ms=1_000, received_at_ms=1_000,
        ...     date="Thu, 01 Jan 1970 00:00:01 GMT"))
        ClockEstimate(offset_ms=-500, uncertainty_ms=500)
        """
        date = None if exchange is None else exchange.date_ms
        if exchange is None or date is None:
            return None
        trip = max(0, exchange.round_trip_ms)
        return cls(exchange.midpoint_ms - (date + 500), (trip + 1) // 2 + 500)

    def better(self, other: ClockEstimate | None) -> ClockEstimate:
        """The more certain of the two.

        >>> ClockEstimate(5, 100).better(ClockEstimate(7, 3))
        ClockEstimate(offset_ms=7, uncertainty_ms=3)
        """
        if other is None or self.uncertainty_ms <= other.uncertainty_ms:
            return self
        return other

    def to_server(self, device_ms: int) -> int:
        """A device timestamp on the server's clock."""
        return device_ms - self.offset_ms


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the policy made of one conflict. ``choice`` is ``"pending"`` when the app must
    decide (``item`` is then ``None``); ``kind`` is what the summary counts.

    >>> Decision("server", "server_wins", {}).flag is None
    True
    """

    choice: Literal["local", "server", "merged", "pending"]
    kind: str
    item: Item | None
    flag: FlaggedItem | None = None
    reason: str | None = None


def decide(
    conflict: Conflict, policy: ConflictPolicy, clock: ClockEstimate, *, now_ms: int
) -> Decision:
    """Decide one conflict. ``clock`` corrects device timestamps; ``now_ms`` is the
    device's wall clock (for the "in the future" check).

    >>> side = {"collection": "a", "key": "k", "deleted": False}
    >>> conflict = Conflict(conflict_id="c", collection="a", key="k",
    ...     local={**side, "data": {"v": 1}, "updatedAt": 1_000},
    ...     server={**side, "data": {"v": 2}, "updatedAt": 1_500})
    >>> decide(conflict, ConflictPolicy(default="newest_wins"), ClockEstimate(),
    ...        now_ms=10_000).flag.reason
    'too_close'

    Equal data is never a conflict, whatever the timestamps: the cloud's copy stands.

    >>> same = Conflict(conflict_id="c", collection="a", key="k",
    ...     local={**side, "data": {}, "updatedAt": 1}, server={**side, "data": {}, "updatedAt": 9})
    >>> decide(same, ConflictPolicy(default="manual"), ClockEstimate(), now_ms=10).kind
    'identical'
    """
    if _same_content(conflict.local, conflict.server):
        # Equal data is never a conflict: both sides hold the same thing, whatever the
        # timestamps say; the device takes the cloud's version, so both match exactly.
        return _pick("server", conflict, "identical")
    return _apply(policy.strategy_for(conflict.collection), conflict, policy, clock, now_ms)


def _same_content(local: Mapping[str, Any], server: Mapping[str, Any]) -> bool:
    if bool(local.get("deleted")) != bool(server.get("deleted")):
        return False
    return bool(local.get("deleted")) or canonical_json(local.get("data")) == canonical_json(
        server.get("data")
    )


def resolved_item(conflict: Conflict, choice: str, data: Mapping[str, Any] | None) -> Decision:
    """The app's decision on a pending conflict, as the item both sides will hold.

    A merged item is live, with the later of the two ``updatedAt``; a merge equal to one
    side is recorded as that side.

    >>> side = {"collection": "a", "key": "k", "deleted": False, "updatedAt": 1}
    >>> c = Conflict(conflict_id="c", collection="a", key="k",
    ...              local={**side, "data": {"v": 1}}, server={**side, "data": {"v": 2}})
    >>> resolved_item(c, "merged", {"v": 3}).item["data"], resolved_item(c, "local", None).choice
    ({'v': 3}, 'local')
    """
    if choice in ("local", "server"):
        if data is not None:
            raise ConfigurationError(
                f"data is only for choice='merged'; choice={choice!r} takes the "
                f"{choice} version as it is"
            )
        return _pick(choice, conflict, "manual")  # type: ignore[arg-type]
    if choice == "merged":
        if not isinstance(data, Mapping):
            raise ConfigurationError(
                "choice='merged' needs data: the merged JSON object, e.g. "
                "data={**conflict.server['data'], 'score': 10}"
            )
        return _merged(conflict, data, "manual")
    raise ConfigurationError(f"choice must be 'local', 'server' or 'merged', got {choice!r}")


# --------------------------------------------------------------------------- strategies


def _apply(
    strategy: Strategy, conflict: Conflict, policy: ConflictPolicy, clock: ClockEstimate, now: int
) -> Decision:
    if strategy == "server_wins":
        return _pick("server", conflict, "server_wins")
    if strategy == "local_wins":
        return _pick("local", conflict, "local_wins")
    if strategy == "manual":
        return Decision("pending", "manual", None, reason="the policy is manual")
    if strategy == "newest_wins":
        return _newest(conflict, policy, clock, now, "newest_wins")
    if strategy == "field_merge":
        if conflict.local["deleted"] or conflict.server["deleted"]:
            # A tombstone has no fields to merge: the later of the two stands.
            return _newest(conflict, policy, clock, now, "field_merge")
        return _field_merge(conflict, policy, clock, now)
    assert callable(strategy)
    return _callback(strategy, conflict)


def _newest(
    conflict: Conflict, policy: ConflictPolicy, clock: ClockEstimate, now: int, kind: str
) -> Decision:
    order = _order(conflict, policy, clock, now)
    if order == "local" or order == "server":
        return _pick(order, conflict, kind)
    fallback = policy.fallback
    decision = _apply(fallback, conflict, policy, clock, now)
    flag = FlaggedItem(
        conflict_id=conflict.conflict_id,
        collection=conflict.collection,
        key=conflict.key,
        reason=order,
        local_updated_at=conflict.local["updatedAt"],
        server_updated_at=conflict.server["updatedAt"],
        clock_offset_ms=clock.offset_ms,
        resolved_by=fallback if isinstance(fallback, str) else "callback",
    )
    reason = f"flagged by {kind} ({order.replace('_', ' ')}), and the fallback waits for the app"
    return dataclasses.replace(
        decision,
        kind=f"{kind}_fallback" if decision.choice != "pending" else "manual",
        flag=flag,
        reason=reason if decision.choice == "pending" else None,
    )


def _order(
    conflict: Conflict, policy: ConflictPolicy, clock: ClockEstimate, now: int
) -> Literal["local", "server"] | FlagReason:
    """Which side is newer on the server's clock, or why that cannot be told."""
    server_now = clock.to_server(now)
    local_at = clock.to_server(conflict.local["updatedAt"])
    server_at = conflict.server["updatedAt"]
    if local_at > server_now + policy.future_tolerance_ms:
        return "local_in_future"
    if server_at > server_now + policy.future_tolerance_ms:
        return "server_in_future"
    if abs(local_at - server_at) <= clock.uncertainty_ms + policy.skew_tolerance_ms:
        return "too_close"
    return "local" if local_at > server_at else "server"


def _field_merge(
    conflict: Conflict, policy: ConflictPolicy, clock: ClockEstimate, now: int
) -> Decision:
    order = _order(conflict, policy, clock, now)
    # An uncertain order keeps the cloud's value of a scalar: deterministic, and it is
    # what another device already sees.
    newer = "local" if order == "local" else "server"
    local, server = conflict.local["data"], conflict.server["data"]
    merged: dict[str, Any] = {}
    for field in sorted(local.keys() | server.keys()):
        if field not in server:
            merged[field] = copy.deepcopy(local[field])
        elif field not in local or canonical_json(local[field]) == canonical_json(server[field]):
            merged[field] = copy.deepcopy(server[field])
        else:
            rule = policy.rule_for(conflict.collection, field, local[field], server[field])
            merged[field] = _merge_field(conflict, field, rule, newer)
    return _merged(conflict, merged, "field_merge")


def _merge_field(conflict: Conflict, field: str, rule: FieldRule, newer: str) -> Any:
    a, b = conflict.local["data"][field], conflict.server["data"][field]
    if callable(rule):
        try:
            return rule(copy.deepcopy(a), copy.deepcopy(b))
        except Exception as exc:
            raise MigrationError(
                f"the merge function for field {field!r} of item "
                f"{item_label(conflict.collection, conflict.key)} raised {exc!r}; fix it and "
                "run the migration again (it resumes)"
            ) from exc
    if rule in ("max", "min") and _number(a) and _number(b):
        # The cloud's value first: equal numbers keep it.
        return max(b, a) if rule == "max" else min(b, a)
    if rule == "union" and isinstance(a, list) and isinstance(b, list):
        seen = {canonical_json(x) for x in b}
        extra = []
        for x in a:
            text = canonical_json(x)
            if text not in seen:
                seen.add(text)
                extra.append(x)
        return copy.deepcopy(b + extra)
    side = rule if rule in ("local", "server") else newer
    return copy.deepcopy(a if side == "local" else b)


def _callback(callback: ConflictCallback, conflict: Conflict) -> Decision:
    try:
        # A copy: the callback cannot change what later decisions see.
        answer = callback(copy.deepcopy(conflict))
    except Exception as exc:
        raise MigrationError(
            f"the conflict callback raised {exc!r} for item "
            f"{item_label(conflict.collection, conflict.key)}; fix it and run the migration "
            "again (it resumes)"
        ) from exc
    if answer == "local" or answer == "server":
        return _pick(answer, conflict, "callback")
    if answer == "defer":
        return Decision("pending", "manual", None, reason="deferred by the callback")
    if isinstance(answer, Mapping):
        return _merged(conflict, answer, "callback")
    raise ConfigurationError(
        f"the conflict callback returned {answer!r} for item "
        f"{item_label(conflict.collection, conflict.key)}; return 'local', 'server', "
        "'defer' or a dict of merged data"
    )


def _pick(side: Choice, conflict: Conflict, kind: str) -> Decision:
    chosen = conflict.local if side == "local" else conflict.server
    return Decision(side, kind, _item(conflict.collection, conflict.key, chosen))


def _merged(conflict: Conflict, data: Mapping[str, Any], kind: str) -> Decision:
    item = Item(
        collection=conflict.collection,
        key=conflict.key,
        data=dict(data),
        updatedAt=max(conflict.local["updatedAt"], conflict.server["updatedAt"]),
        deleted=False,
    )
    try:
        text = check_item(
            item["collection"],
            item["key"],
            item["data"],
            item["updatedAt"],
            False,
            encode=wire_text,  # a merge may hold bytes, or a side's data in wire form
        )
    except MigrationError as exc:
        raise ConfigurationError(f"the merged value is not a valid item: {exc}") from exc
    item["data"] = json.loads(text)  # canonical, and a copy of what the caller passed
    # A merge holding one side's data is that side, as it is (equal data is never a
    # conflict, so the cloud's copy wins a tie): deciding it again changes nothing.
    server = _item(conflict.collection, conflict.key, conflict.server)
    if _same_content(item, server):
        return Decision("server", kind, server)
    local = _item(conflict.collection, conflict.key, conflict.local)
    if _same_content(item, local):
        return Decision("local", kind, local)
    return Decision("merged", kind, item)


# --------------------------------------------------------------------------- helpers


def _item(collection: str, key: str, side: Any) -> Item:
    """A wire item from an :class:`ItemVersion` or a wire item (a fresh copy)."""
    if isinstance(side, Mapping):
        data, updated_at, deleted = side["data"], side["updatedAt"], side["deleted"]
    else:
        data, updated_at, deleted = side.data, side.updated_at, side.deleted
    return Item(
        collection=collection,
        key=key,
        data=copy.deepcopy(dict(data)),
        updatedAt=updated_at,
        deleted=deleted,
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _names(names: frozenset[str]) -> str:
    return ", ".join(repr(n) for n in sorted(names))


def _check_strategy(name: str, strategy: object, allowed: frozenset[str]) -> None:
    if callable(strategy) or (isinstance(strategy, str) and strategy in allowed):
        return
    raise ConfigurationError(
        f"{name} must be one of {_names(allowed)} or a callable, got {strategy!r}"
    )


def strategy_name(strategy: Strategy) -> str:
    """How a strategy is named in plans and logs: its name, or ``"callback"``.

    >>> strategy_name("newest_wins"), strategy_name(lambda conflict: "local")
    ('newest_wins', 'callback')
    """
    return strategy if isinstance(strategy, str) else "callback"
