"""Quickstart: write some offline data, then migrate it to the cloud once (the README's
first example, word for word after this docstring).

    MIGRATION_SERVER=http://127.0.0.1:8000 MIGRATION_USER=alice \
    MIGRATION_TOKEN=$(python -m backend_stub token alice) python examples/quickstart.py
"""

import os
import sys
import tempfile
from pathlib import Path

from sdk import LocalStore, MigrationClient, MigrationOptions

NEEDED = ("MIGRATION_SERVER", "MIGRATION_USER", "MIGRATION_TOKEN")
if missing := [name for name in NEEDED if not os.environ.get(name)]:
    sys.exit(f"set {', '.join(missing)} first: the server, the user and their token")

folder = Path(tempfile.mkdtemp())
with LocalStore(folder / "store.sqlite3") as store:
    store.put("lesson_progress", "lesson-1", {"score": 80, "completed": True})
    store.put("preferences", "theme", {"value": "dark"})
    store.delete("lesson_progress", "lesson-0")  # a tombstone, migrated too

with MigrationClient(
    server=os.environ["MIGRATION_SERVER"],  # e.g. http://127.0.0.1:8000
    user_id=os.environ["MIGRATION_USER"],
    token=os.environ["MIGRATION_TOKEN"],  # or a callable returning a fresh token
    store_path=folder / "store.sqlite3",
    options=MigrationOptions(cache_dir=folder / "cache"),
    on_progress=lambda p: print(p.phase.value, p.items_done, "/", p.items_total),
) as client:
    if client.detect().should_migrate:
        result = client.migrate()
        print(result.outcome.value, result.item_count, "items, verified:", result.verified)
