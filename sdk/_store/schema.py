"""The store's file format: what makes a SQLite file one of our stores (its application
id, format name and schema steps), the migration it records, and how sqlite3's errors
read as ours. Detection (:mod:`sdk._store.detect`) judges a file by these without
opening it as a store; :class:`~sdk._store.local.LocalStore` creates and checks them.

    >>> SCHEMA_STEPS[-1], STORE_APPLICATION_ID == 0x4F4D5331
    ('0005_unchecked_rows', True)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database, Migrations

from sdk._errors import CorruptStoreError, StoreBusyError, StoreError
from sdk._store import attachments as _attachments
from sdk._store import changes as _changes
from sdk._store import rowcheck as _rowcheck

__all__ = [
    "CURRENT_DATA_VERSION",
    "MIGRATIONS",
    "MIGRATION_SET",
    "SCHEMA_STEPS",
    "STORE_APPLICATION_ID",
    "STORE_FORMAT",
    "SUPPORTED_DATA_VERSIONS",
    "MigrationState",
    "connect_read_only",
    "migration_state_from",
    "store_error",
]

#: Version of the items' data layout that this SDK writes.
CURRENT_DATA_VERSION = 1
#: Data versions this SDK can read and migrate.
SUPPORTED_DATA_VERSIONS = frozenset({1})
#: ``PRAGMA application_id`` of our stores ("OMS1"), so the file says whose it is.
STORE_APPLICATION_ID = 0x4F4D5331
#: ``store_meta.format`` of our stores.
STORE_FORMAT = "offline-migrate-store"
#: Name of our set in sqlite-utils' ``_sqlite_migrations`` table.
MIGRATION_SET = "offline_migrate_store"

# ----------------------------------------------------------------------------- schema

MIGRATIONS = Migrations(MIGRATION_SET)


@MIGRATIONS(name="0001_store_meta")
def _create_store_meta(db: Database) -> None:
    db.execute("CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


@MIGRATIONS(name="0002_items")
def _create_items(db: Database) -> None:
    db.execute(
        """CREATE TABLE items (
            collection TEXT NOT NULL,
            key TEXT NOT NULL,
            data TEXT NOT NULL,
            updated_at INTEGER NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
            PRIMARY KEY (collection, key)
        ) WITHOUT ROWID"""
    )


@MIGRATIONS(name="0003_sync")
def _add_sync(db: Database) -> None:
    _changes.create_tables(db.conn)


@MIGRATIONS(name="0004_attachments")
def _add_attachments(db: Database) -> None:
    _attachments.create_tables(db.conn)


@MIGRATIONS(name="0005_unchecked_rows")
def _list_unchecked_rows(db: Database) -> None:
    _rowcheck.start_vouching(db.conn)


#: Every schema step this SDK knows, oldest first. A store that recorded a step not in
#: this list was written by a newer SDK.
SCHEMA_STEPS = (
    "0001_store_meta",
    "0002_items",
    "0003_sync",
    "0004_attachments",
    "0005_unchecked_rows",
)


@dataclass(frozen=True)
class MigrationState:
    """What the store remembers of the migration that moved it to the cloud.

    >>> MigrationState(migrated_at=1, migration_id="m", session_id="s",
    ...                cloud_checksum="0" * 64).migration_id
    'm'
    """

    migrated_at: int
    migration_id: str
    session_id: str
    cloud_checksum: str


def connect_read_only(path: Path, *, timeout: float = 5.0) -> sqlite3.Connection:
    """Open ``path`` read-only. Not ``immutable=1``: that would skip the WAL's content."""
    uri = path.resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)


def store_error(exc: sqlite3.Error, path: Path | str, action: str) -> StoreError:
    """Translate a sqlite3 error met while doing ``action`` into our error tree."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11 only
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    where = str(path)
    if primary in (5, 6) or "locked" in text:
        return StoreBusyError(
            f"could not {action}: {where} stayed locked by another connection longer than "
            "the busy timeout; try again once the other writer is done",
            path=where,
        )
    # "Could not decode to UTF-8": sqlite3 met text bytes that damage made invalid.
    if primary in (11, 26) or any(
        sign in text for sign in ("malformed", "not a database", "Could not decode")
    ):
        return CorruptStoreError(
            f"could not {action}: {where} is damaged ({text}); restore it from a backup "
            "or move it away",
            path=where,
        )
    if primary == 13 or "disk is full" in text:
        return StoreError(
            f"could not {action}: the disk holding {where} is full; free some space and retry",
            path=where,
        )
    return StoreError(f"could not {action} {where}: {text}", path=where)


def migration_state_from(meta: Mapping[str, str]) -> MigrationState | None:
    """The migration recorded in a ``store_meta`` mapping, if any."""
    if "migrated_at" not in meta:
        return None
    return MigrationState(
        migrated_at=int(meta["migrated_at"]),
        migration_id=meta.get("migration_id", ""),
        session_id=meta.get("session_id", ""),
        cloud_checksum=meta.get("cloud_checksum", ""),
    )
