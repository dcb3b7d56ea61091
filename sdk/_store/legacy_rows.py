"""One legacy table: how it maps onto a collection (:class:`LegacyTable`), the query that
reads its rows, and for each row its key, time, tombstone and data, compared with what
the store already holds.

Every refusal names the legacy file, the table, the column and the row, and says what
to do; the store is then left as it was (the import writes in one transaction).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .._errors import ConfigurationError, InvalidItemError
from .._wire.canonical import Item, canonical_item_parts, item_digest
from .legacy_source import (
    Shape,
    Source,
    describe,
    quote,
    source_error,
    undecodable_column,
    undecodable_row,
)
from .legacy_values import TimeError, TimeUnit, column_mixes_types, encode_key, to_ms
from .local import LocalStore
from .values import ReservedValueError, encode_text, large_value

__all__ = ["LegacyTable", "Plan", "plan_table", "read_items"]

_MAX_KEY = 512  # characters, as contract.KEY_PATTERN allows
_ROWID_NAMES = ("rowid", "_rowid_", "oid")


Transform = Callable[[dict[str, Any]], "dict[str, Any] | None"]
Predicate = Callable[[dict[str, Any]], bool]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LegacyTable:
    """How one table of the app's own schema maps onto a collection.

    - ``table``: the table (or view) to read;
    - ``collection``: the collection its rows become (default: the table's name);
    - ``key``: the column, or columns, that identify a row (default: the table's primary
      key, else its rowid; generated columns may serve). Two rows never become one
      item: a key whose values could be mistaken for another's is written in a tagged
      form starting with ``~``, and two rows with the same key values are refused;
    - ``updated_at``: the column holding when the row last changed (default: none, the
      time of the first import that wrote the row);
    - ``time_unit``: how ``updated_at`` is written: ``"s"``, ``"ms"``, ``"us"``,
      ``"ns"`` since the epoch, or ``"iso"`` (ISO 8601 text, UTC unless it says so).
      Without it a number below 10^11 is taken as seconds, above as milliseconds. A
      time before 1970 or after 2199 is refused as a wrong unit. A row whose time is
      NULL gets the import's time when its data is new or changed, and otherwise keeps
      the time the store holds;
    - ``deleted``: a column whose value marks a soft-deleted row, true as SQLite takes
      it (``1`` and ``'1'`` are true; ``0``, ``'0'``, ``'false'`` and NULL are not),
      or a function from the row (a dict) to True or False. A deleted row becomes a
      tombstone that keeps the row's data;
    - ``columns``: the columns that make up the item's data (default: all);
    - ``transform``: a function from the whole row (a dict) to the item's data, or
      ``None`` to leave the row out; it replaces ``columns``.

    Blobs become ``bytes`` (``{"$bytes": ...}`` on the wire), and one larger than the
    store's inline limit is kept apart from its item, as the store keeps any large value.

    >>> LegacyTable(table="tbl_cards", collection="flashcards", key="front").collection
    'flashcards'
    """

    table: str
    collection: str | None = None
    key: str | Sequence[str] | None = None
    updated_at: str | None = None
    time_unit: TimeUnit | None = None
    deleted: str | Predicate | None = None
    columns: Sequence[str] | None = None
    transform: Transform | None = None

    @property
    def target(self) -> str:
        """The collection the rows go to."""
        return self.collection or self.table


@dataclasses.dataclass
class Plan:
    """How to read one table, and what was read from it so far."""

    table: LegacyTable
    shape: Shape
    where: str  # how messages name the table: "old.db, table 'cards'"
    sql: str
    names: list[str]  # the row's columns: the first len(names) values of each row
    key_names: list[str]  # the key columns as messages name them
    key_at: list[int]
    mixed: list[bool]  # per key column: can it hold both 1 and '1'?
    key_sql: str
    time_at: int | None
    deleted_at: int | None  # SQLite's verdict on the deleted column, 1 or 0
    rows: int = 0
    skipped: int = 0
    expected: dict[str, bytes] = dataclasses.field(default_factory=dict)  # key -> digest


def plan_table(source: Source, table: LegacyTable) -> Plan:
    """Check ``table`` against the schema and build the query that reads it."""
    shape = describe(source, table.table)
    where = shape.where(source)
    names = [c.name for c in shape.columns]
    if isinstance(table.key, str):
        keys = [table.key]
    elif table.key is not None:
        keys = list(table.key)
        if not keys:
            raise ConfigurationError(f"{where}: key names no column; give at least one")
    else:
        keys = [c.name for c in sorted(shape.columns, key=lambda c: c.primary_key) if c.primary_key]
    named = [*keys, *(c for c in (table.updated_at, table.deleted) if isinstance(c, str))]
    unknown = sorted(set(named) - set(names)) + [c for c in table.columns or [] if c not in names]
    if unknown:
        raise ConfigurationError(
            f"{where} has no column {', '.join(map(repr, unknown))}; its columns are {names}"
        )
    select = [quote(n) for n in names]
    declared = {c.name: c.declared for c in shape.columns}
    if keys:
        key_at = [names.index(k) for k in keys]
        # A view's values keep no affinity of their own: take them as able to mix types.
        mixed = [
            shape.is_view or column_mixes_types(declared[k], strict=shape.strict) for k in keys
        ]
        key_sql = ", ".join(quote(k) for k in keys)
    else:
        key_sql = _rowid(shape, where, names)
        key_at, mixed, keys = [len(select)], [False], ["rowid"]
        select.append(key_sql)
    deleted_at = None
    if isinstance(table.deleted, str):
        deleted_at = len(select)  # SQLite decides what is true, as in its own WHERE
        select.append(f"CASE WHEN {quote(table.deleted)} THEN 1 ELSE 0 END")
    return Plan(
        table=table,
        shape=shape,
        where=where,
        sql=f"SELECT {', '.join(select)} FROM {quote(table.table)}",
        names=names,
        key_names=keys,
        key_at=key_at,
        mixed=mixed,
        key_sql=key_sql,
        time_at=None if table.updated_at is None else names.index(table.updated_at),
        deleted_at=deleted_at,
    )


def _rowid(shape: Shape, where: str, names: list[str]) -> str:
    if shape.is_view:
        raise ConfigurationError(
            f"{where} is a view, which has neither a primary key nor a rowid; give "
            "LegacyTable(key=...) with the column(s) that identify a row"
        )
    taken = {n.lower() for n in names}
    free = [n for n in _ROWID_NAMES if n not in taken]
    if not free:
        raise ConfigurationError(
            f"{where} has no primary key, and its columns named rowid, _rowid_ and oid hide "
            "the row's own id; give LegacyTable(key=...) with the column(s) that identify a row"
        )
    return free[0]


def read_items(
    source: Source, plan: Plan, store: LocalStore, stamp: int
) -> Iterator[tuple[Item, bool]]:
    """Each row of ``plan`` as an item, and whether the store already holds it so."""
    table = plan.table
    target = table.target
    n = len(plan.names)
    for values in _rows(source, plan):
        plan.rows += 1
        key_values = [values[i] for i in plan.key_at]
        key = _key(plan, key_values)
        label = f"the row with key {_label(key_values)}"
        row = dict(zip(plan.names, values[:n], strict=True))
        updated_at = _time(plan, values, label)
        deleted = _deleted(plan, values, row, label)
        data = _data(plan, row, label)
        if data is None:
            plan.skipped += 1
            continue
        held = store.get(target, key, wire=True)
        time = updated_at if updated_at is not None else held["updatedAt"] if held else stamp
        item: Item = {
            "collection": target,
            "key": key,
            "data": data,
            "updatedAt": time,
            "deleted": deleted,
        }
        text = _encoded(plan, item, label, store.inline_limit)
        digest = _digest(item, text)
        unchanged = held is not None and item_digest(held) == digest
        if not unchanged and updated_at is None and time != stamp:
            item["updatedAt"] = stamp  # changed, without a time of its own: the import's
            digest = _digest(item, text)
        if key in plan.expected:
            raise _duplicate(source, plan, key, key_values)
        plan.expected[key] = digest
        yield item, unchanged


def _rows(source: Source, plan: Plan) -> Iterator[Sequence[Any]]:
    # Errors are translated here, not in the store's put_many that consumes the items:
    # there they would be taken for the store's own (and blame the wrong file).
    table = plan.table.table
    try:
        yield from source.conn.execute(plan.sql)
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        column = undecodable_column(exc)
        row = None
        if column is not None:
            found = undecodable_row(source, table, column, plan.key_sql)
            row = None if found is None else f"the row with key {_label(list(found))}"
        raise source_error(exc, source, table=table, column=column, row=row) from exc


def _key(plan: Plan, values: list[Any]) -> str:
    for name, value in zip(plan.key_names, values, strict=True):
        if value is None:
            raise InvalidItemError(
                f"{plan.where}, column {name!r}: row {plan.rows} has no value in this key "
                "column; fill it in the legacy file, or give LegacyTable(key=...) another key"
            )
    key = encode_key(values, plan.mixed)
    if len(key) > _MAX_KEY:
        raise InvalidItemError(
            f"{plan.where}, column(s) {plan.key_names}: the row with key "
            f"{_label(values)[:60]}... makes a key of {len(key)} characters, more than the "
            f"{_MAX_KEY} an item key may have; give LegacyTable(key=...) a shorter key"
        )
    return key


def _time(plan: Plan, values: Sequence[Any], label: str) -> int | None:
    if plan.time_at is None or values[plan.time_at] is None:
        return None
    value = values[plan.time_at]
    try:
        return to_ms(value, plan.table.time_unit)
    except TimeError as exc:
        raise InvalidItemError(
            f"{plan.where}, column {plan.table.updated_at!r}: {label} holds {value!r}, and "
            f"{exc}; or give another updated_at column, or a transform"
        ) from None


def _deleted(plan: Plan, values: Sequence[Any], row: dict[str, Any], label: str) -> bool:
    if plan.deleted_at is not None:
        return bool(values[plan.deleted_at])
    predicate = plan.table.deleted
    if predicate is None or isinstance(predicate, str):
        return False
    try:
        verdict = predicate(dict(row))
    except Exception as exc:
        raise InvalidItemError(
            f"{plan.where}: the deleted predicate raised {type(exc).__name__} ({exc}) on "
            f"{label}; fix the predicate"
        ) from exc
    if not isinstance(verdict, bool):
        raise InvalidItemError(
            f"{plan.where}: the deleted predicate returned {verdict!r} for {label}; make it "
            "return True or False"
        )
    return verdict


def _data(plan: Plan, row: dict[str, Any], label: str) -> dict[str, Any] | None:
    transform = plan.table.transform
    if transform is None:
        return {c: row[c] for c in plan.table.columns or plan.names}
    try:
        data = transform(dict(row))
    except Exception as exc:
        raise InvalidItemError(
            f"{plan.where}: the transform raised {type(exc).__name__} ({exc}) on {label}; "
            "fix the transform"
        ) from exc
    if data is not None and not isinstance(data, dict):
        raise InvalidItemError(
            f"{plan.where}: the transform returned {type(data).__name__} for {label}; make "
            "it return a dict, or None to leave the row out"
        )
    return data


def _digest(item: Item, text: str) -> bytes:
    """The item's digest as the store will hold it (``text``: its encoded data)."""
    return hashlib.sha256(
        canonical_item_parts(
            item["collection"], item["key"], text, item["updatedAt"], item["deleted"]
        )
    ).digest()


def _encoded(plan: Plan, item: Item, label: str, limit: int) -> str:
    """The item's data as the store will encode it (``limit``: its inline limit), large
    values hashed but not stored yet."""
    try:
        return encode_text(item["data"], spill=large_value, limit=limit)
    except ReservedValueError as exc:
        raise InvalidItemError(f"{plan.where}: {label} {exc}; or give a transform") from exc
    except (TypeError, ValueError, RecursionError) as exc:
        bad = [c for c, v in item["data"].items() if isinstance(v, float) and not math.isfinite(v)]
        column = f", column {bad[0]!r}" if bad and plan.table.transform is None else ""
        raise InvalidItemError(
            f"{plan.where}{column}: {label} cannot become JSON ({exc}); give a transform "
            "that turns it into dicts with text keys, lists, text, finite numbers, "
            "booleans and None"
        ) from exc


def _duplicate(source: Source, plan: Plan, key: str, values: list[Any]) -> InvalidItemError:
    first: list[Any] | None = None
    try:  # only on the way to a refusal: read the table again for the first such row
        for row in source.conn.execute(plan.sql):
            candidate = [row[i] for i in plan.key_at]
            if None not in candidate and encode_key(candidate, plan.mixed) == key:
                first = candidate
                break
    except sqlite3.Error:
        first = None
    columns = ", ".join(map(repr, plan.key_names))
    if first is None or _typed(first) == _typed(values):
        return InvalidItemError(
            f"{plan.where}, column(s) {columns}: two rows hold the key {_label(values)}, and "
            "one would overwrite the other; give LegacyTable(key=...) the column(s) that "
            "tell every row apart"
        )
    return InvalidItemError(
        f"{plan.where}, column(s) {columns}: the rows with keys {_label(first)} and "
        f"{_label(values)} would become one item; give LegacyTable(key=...) other "
        "column(s), and please report this"
    )


def _typed(values: list[Any]) -> list[tuple[str, str]]:
    return [(type(v).__name__, repr(v)) for v in values]


def _label(values: Sequence[Any]) -> str:
    return repr(values[0]) if len(values) == 1 else repr(tuple(values))
