"""An app that kept its own SQLite schema before it adopted the SDK: map its tables onto
collections, import them into the SDK's store, and migrate that to the cloud.

The old schema (version 1 of a flash-card app) has three tables worth keeping:

- ``lessons(id, title, score, completed_at)``: ISO 8601 times; becomes ``lesson_progress``;
- ``cards(front, back, box, last_review, is_deleted)``: Unix seconds and soft deletes;
  becomes ``flashcards``, keyed by the card's front;
- ``settings(name, value)``: JSON text values; becomes ``preferences``.

``app_meta`` is the old app's own bookkeeping and stays behind. The legacy file is only
read; the import can run at every start until the old file is retired, since rows that
did not change are not written again.

    python examples/migrate_legacy_db.py [--legacy PATH] [--folder DIR]

Server, user and token come from ``MIGRATION_SERVER``, ``MIGRATION_USER`` and
``MIGRATION_TOKEN``. Without ``--legacy`` it first writes a small legacy database.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

from sdk import (
    LegacyTable,
    LocalStore,
    MigrationClient,
    MigrationError,
    MigrationOptions,
    import_legacy,
)

TABLES = [
    LegacyTable(
        table="lessons",
        collection="lesson_progress",
        updated_at="completed_at",
        time_unit="iso",
    ),
    LegacyTable(
        table="cards",
        collection="flashcards",
        key="front",
        updated_at="last_review",
        time_unit="s",
        deleted="is_deleted",  # true as SQLite takes it; the tombstone keeps the card
        columns=["front", "back", "box"],
    ),
    LegacyTable(
        table="settings",
        collection="preferences",
        key="name",
        transform=lambda row: {"value": json.loads(row["value"])},
    ),
]


def write_legacy_database(path: Path) -> None:
    """What version 1 of the app left on the device."""
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE lessons (id INTEGER PRIMARY KEY, title TEXT, score INTEGER,
                                  completed_at TEXT);
            CREATE TABLE cards (front TEXT PRIMARY KEY, back TEXT, box INTEGER,
                                last_review INTEGER, is_deleted INTEGER DEFAULT 0);
            CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE app_meta (k TEXT, v TEXT);
            INSERT INTO app_meta VALUES ('schema', '1');
            """
        )
        db.executemany(
            "INSERT INTO lessons VALUES (?, ?, ?, ?)",
            [(n, f"Lesson {n}", 60 + n, f"2024-03-{n:02d}T18:30:00+00:00") for n in range(1, 21)],
        )
        db.executemany(
            "INSERT INTO cards VALUES (?, ?, ?, ?, ?)",
            [
                ("hola", "hello", 3, 1_710_000_000, 0),
                ("gracias", "thank you", 5, 1_710_086_400, 0),
                ("adiós", "goodbye", 1, 1_710_172_800, 1),  # deleted in the old app
            ],
        )
        db.executemany(
            "INSERT INTO settings VALUES (?, ?)",
            [("theme", '"dark"'), ("daily_goal", "15"), ("voices", '["es-MX", "es-ES"]')],
        )
    db.close()


def environment_or_exit() -> None:
    """A one-line explanation instead of a KeyError when the server is not configured."""
    needed = ("MIGRATION_SERVER", "MIGRATION_USER", "MIGRATION_TOKEN")
    if missing := [name for name in needed if not os.environ.get(name)]:
        sys.exit(
            f"{Path(__file__).name} needs {', '.join(needed)} (missing: {', '.join(missing)}); "
            'see the README\'s "Try it in one terminal"'
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legacy", type=Path, help="the old app's database (default: a sample)")
    parser.add_argument("--folder", type=Path, help="where the SDK's store goes (default: temp)")
    args = parser.parse_args()
    environment_or_exit()

    folder = args.folder or Path(tempfile.mkdtemp(prefix="legacy-example-"))
    folder.mkdir(parents=True, exist_ok=True)
    legacy = args.legacy or folder / "flashcards_v1.db"
    if args.legacy is None and not legacy.exists():
        write_legacy_database(legacy)
    store_path = folder / "store.sqlite3"

    try:
        imported = import_legacy(legacy, store_path, TABLES)
        print(
            f"imported {imported.total} rows from {legacy.name}: "
            f"{imported.written} written, {imported.unchanged} unchanged"
        )
        for collection, rows in sorted(imported.collections.items()):
            print(f"  {collection}: {rows}")
        if not imported.verified:  # the app wrote to the store meanwhile: import again
            print(f"  the store differs from {legacy.name}: {imported.checks}")
        with LocalStore(store_path) as store:
            print("  sample:", json.dumps(store.get("flashcards", "hola"), sort_keys=True))

        with MigrationClient(
            server=os.environ["MIGRATION_SERVER"],
            user_id=os.environ["MIGRATION_USER"],
            token=os.environ["MIGRATION_TOKEN"],
            store_path=store_path,
            options=MigrationOptions(cache_dir=folder / "cache"),
        ) as client:
            result = client.migrate()
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{result.outcome.value}: {result.item_count} items in "
        f"{len(result.collections)} collections, verified: {result.verified}"
    )
    return 0 if result.verified else 1


if __name__ == "__main__":
    sys.exit(main())
