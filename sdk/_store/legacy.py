"""Bring an app's own SQLite schema into the SDK's store: each legacy table becomes a
collection, each row an item.

An app that kept its data in tables of its own before it adopted the SDK describes each
table with a :class:`LegacyTable` and calls :func:`import_legacy`; the rows land in the
SDK's store (one transaction), which then migrates like any other. The legacy file is
only read, never changed, and calling the import again writes nothing unless the legacy
rows changed. Afterwards the import compares what it read with what the store holds::

    >>> import sqlite3, tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> with sqlite3.connect(tmp / "old.db") as db:
    ...     _ = db.execute("CREATE TABLE lessons (id INTEGER PRIMARY KEY, score INT, seen TEXT)")
    ...     _ = db.execute("INSERT INTO lessons VALUES (7, 90, '2024-05-01T10:00:00+00:00')")
    >>> tables = [LegacyTable(table="lessons", updated_at="seen", time_unit="iso")]
    >>> first = import_legacy(tmp / "old.db", tmp / "store.sqlite3", tables)
    >>> first.written, first.verified
    (1, True)
    >>> import_legacy(tmp / "old.db", tmp / "store.sqlite3", tables).unchanged
    1
    >>> from sdk import LocalStore
    >>> with LocalStore(tmp / "store.sqlite3") as store:
    ...     store.get("lessons", "7")["data"], store.get("lessons", "7")["updatedAt"]
    ({'id': 7, 'score': 90, 'seen': '2024-05-01T10:00:00+00:00'}, 1714557600000)
"""

from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from .._errors import ConfigurationError
from .._wire.canonical import NAME_PATTERN, Item, dataset_checksum, item_digest
from .legacy_rows import LegacyTable, Plan, plan_table, read_items
from .legacy_source import Source, open_source, source_error
from .legacy_values import TIME_UNITS
from .local import LocalStore, now_ms

__all__ = ["LegacyCheck", "LegacyImport", "import_legacy"]


@dataclasses.dataclass(frozen=True)
class LegacyCheck:
    """One table's rows against what the store holds after the import: how many items
    the rows make (rows read less rows ``transform`` left out) and how many of them the
    store holds, and a checksum of each side (the dataset checksum of those items).

    >>> LegacyCheck(read=2, skipped=1, items=1, held=1, source_checksum="a",
    ...             store_checksum="a").verified
    True
    """

    read: int
    skipped: int
    items: int
    held: int
    source_checksum: str
    store_checksum: str

    @property
    def verified(self) -> bool:
        """Whether the store holds every item the rows make, exactly as they make it."""
        return self.items == self.held and self.source_checksum == self.store_checksum


@dataclasses.dataclass(frozen=True)
class LegacyImport:
    """What an import did: rows read per collection, items written (new or changed),
    items the store already held as they are, rows ``transform`` left out, and per
    collection the check of the store against the source.

    >>> LegacyImport(collections={"lessons": 3}, written=1, unchanged=2, skipped=0).total
    3
    """

    collections: dict[str, int]
    written: int
    unchanged: int
    skipped: int
    checks: dict[str, LegacyCheck] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> int:
        """Rows read, over all tables."""
        return sum(self.collections.values())

    @property
    def verified(self) -> bool:
        """Whether the store holds every imported item as the source rows make it (an
        app writing to the store meanwhile can make this False)."""
        return all(check.verified for check in self.checks.values())


def import_legacy(
    source: str | os.PathLike[str] | sqlite3.Connection,
    store: str | os.PathLike[str] | LocalStore,
    tables: Sequence[LegacyTable],
    *,
    now: int | None = None,
) -> LegacyImport:
    """Copy the rows of ``tables`` of the SQLite database ``source`` (a path, or an open
    ``sqlite3.Connection``, e.g. one with the collations or ``text_factory`` the app's
    schema needs) into the SDK's ``store`` (a path, created if missing, or an open
    :class:`~sdk.LocalStore`).

    All tables are read in one read transaction (a consistent view even while the old
    code still writes) and written in one transaction, through the store's ``put_many``:
    all rows, or none when one is invalid. Rows the store already holds as they are
    are not rewritten, so calling it at every start until the legacy file is retired
    is safe. ``now`` (ms) stamps rows without a time. Failures reading the legacy file
    raise :class:`~sdk.LegacyDatabaseError`, naming it; the store is then unchanged.

    >>> import_legacy("/nonexistent/old.db", "/tmp/s.sqlite3", [LegacyTable(table="t")])
    Traceback (most recent call last):
    ...
    sdk._errors.LegacyDatabaseError: no legacy database at /nonexistent/old.db; check the path
    """
    _check_tables(tables)
    stamp = now_ms() if now is None else now
    opened = open_source(source)
    try:
        began = not opened.conn.in_transaction
        if began:
            _execute(opened, "BEGIN")  # one read transaction: every table at one moment
        try:
            plans = [plan_table(opened, table) for table in tables]
            if isinstance(store, LocalStore):
                return _copy(opened, plans, store, stamp)
            if opened.path is not None and Path(store).resolve() == opened.path.resolve():
                raise ConfigurationError(
                    "the SDK's store must be a new file, not the legacy database itself"
                )
            with LocalStore(store) as target:
                return _copy(opened, plans, target, stamp)
        finally:
            if began and opened.conn.in_transaction:
                _execute(opened, "ROLLBACK")  # it only read
    finally:
        if opened.owned:
            opened.conn.close()


def _check_tables(tables: Sequence[LegacyTable]) -> None:
    if not tables:
        raise ConfigurationError("give at least one LegacyTable to import")
    targets = [t.target for t in tables]
    if len(set(targets)) != len(targets):
        raise ConfigurationError(f"two tables map onto the same collection: {targets}")
    for table in tables:
        if not re.fullmatch(NAME_PATTERN, table.target):
            raise ConfigurationError(
                f"table {table.table!r}: {table.target!r} cannot name a collection (1 to 64 "
                "letters, digits, '_', '.' or '-'); give LegacyTable(collection=...)"
            )
        if table.time_unit is not None and table.time_unit not in TIME_UNITS:
            raise ConfigurationError(
                f"table {table.table!r}: time_unit must be one of {sorted(TIME_UNITS)}, "
                f"got {table.time_unit!r}"
            )
        if table.time_unit is not None and table.updated_at is None:
            raise ConfigurationError(
                f"table {table.table!r}: time_unit says how updated_at is written; give "
                "the updated_at column too"
            )


def _execute(source: Source, sql: str) -> None:
    try:
        source.conn.execute(sql)
    except sqlite3.Error as exc:
        raise source_error(exc, source, table=None) from exc


def _copy(source: Source, plans: list[Plan], store: LocalStore, stamp: int) -> LegacyImport:
    counts = {"written": 0, "unchanged": 0}

    def changed_items() -> Iterator[Item]:
        for plan in plans:
            for item, unchanged in read_items(source, plan, store, stamp):
                if unchanged:
                    counts["unchanged"] += 1
                else:
                    counts["written"] += 1
                    yield item

    store.put_many(changed_items())
    return LegacyImport(
        collections={p.table.target: p.rows for p in plans},
        written=counts["written"],
        unchanged=counts["unchanged"],
        skipped=sum(p.skipped for p in plans),
        checks={p.table.target: _check(p, store) for p in plans},
    )


def _check(plan: Plan, store: LocalStore) -> LegacyCheck:
    held = []
    for item in store.iter_items(plan.table.target, wire=True):
        if item["key"] in plan.expected:
            held.append(item_digest(item))
    expected = plan.expected
    return LegacyCheck(
        read=plan.rows,
        skipped=plan.skipped,
        items=len(expected),
        held=len(held),
        source_checksum=dataset_checksum(expected[key] for key in sorted(expected)),
        store_checksum=dataset_checksum(held),
    )
