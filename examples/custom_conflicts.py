"""Custom conflict handling: a policy per collection, and a merge callback.

The learner used the app on a tablet first, and the tablet migrated. Now their phone
migrates its own history of the same lessons, cards and settings: every item the two
devices hold differently is a conflict, decided here collection by collection:

- ``preferences``: ``local_wins``, the settings on the phone in hand win;
- ``lesson_progress``: ``field_merge``, best score (``max``), completed exercises
  (``union``) and, by a merge function of our own, attempts added up;
- ``flashcards``: a callback that keeps the lower Leitner box (review the card sooner)
  and asks the learner (``"defer"``) when the two devices hold different notes;
- anything else: ``newest_wins``; timestamps it cannot trust fall back to the cloud's.

The plan is shown before any data leaves the phone; the deferred cards are then
answered as a UI would (here: both notes kept), and the migration finishes.

    python examples/custom_conflicts.py

Server, user and token come from ``MIGRATION_SERVER``, ``MIGRATION_USER`` and
``MIGRATION_TOKEN``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sdk import (
    Conflict,
    ConflictPolicy,
    LocalStore,
    MigrationClient,
    MigrationError,
    MigrationOptions,
    MigrationOutcome,
)

NOW = int(time.time() * 1000)
HOUR = 3_600_000

TABLET = {
    ("preferences", "theme"): {"value": "light"},
    ("preferences", "daily_goal"): {"minutes": 10},
    ("lesson_progress", "lesson-1"): {"score": 95, "completed": ["intro", "verbs"], "attempts": 3},
    ("flashcards", "hola"): {"back": "hello", "box": 4, "note": ""},
    ("flashcards", "gato"): {"back": "cat", "box": 2, "note": "as in Italian"},
    ("notes", "week-1"): {"text": "written on the tablet"},
}
PHONE = {
    ("preferences", "theme"): {"value": "dark"},
    ("preferences", "daily_goal"): {"minutes": 10},
    ("lesson_progress", "lesson-1"): {"score": 80, "completed": ["intro", "nouns"], "attempts": 4},
    ("lesson_progress", "lesson-2"): {"score": 55, "completed": ["intro"], "attempts": 1},
    ("flashcards", "hola"): {"back": "hello", "box": 2, "note": ""},
    ("flashcards", "gato"): {"back": "cat", "box": 3, "note": "sounds like 'got'"},
    ("notes", "week-1"): {"text": "written on the phone, later"},
}


def review_card(conflict: Conflict) -> Any:
    """The flash-card callback: ``"local"``, ``"server"``, ``"defer"`` or merged data."""
    mine, theirs = conflict.local, conflict.server
    if mine["deleted"] or theirs["deleted"]:
        return "server" if theirs["deleted"] else "local"  # a deletion wins
    if mine["data"]["note"] != theirs["data"]["note"]:
        return "defer"  # only the learner can merge two notes
    return {**theirs["data"], "box": min(mine["data"]["box"], theirs["data"]["box"])}


POLICY = ConflictPolicy(
    default="newest_wins",
    per_collection={
        "preferences": "local_wins",
        "lesson_progress": "field_merge",
        "flashcards": review_card,
    },
    merge_rules={"lesson_progress": {"attempts": lambda mine, theirs: mine + theirs}},
    fallback="server_wins",
)


def fill(path: Path, items: dict[tuple[str, str], dict[str, Any]], stamp: int) -> Path:
    with LocalStore(path) as store:
        for (collection, key), data in items.items():
            store.put(collection, key, data, updated_at=stamp)
    return path


def client_for(store: Path, folder: Path, policy: ConflictPolicy | None = None) -> MigrationClient:
    return MigrationClient(
        server=os.environ["MIGRATION_SERVER"],
        user_id=os.environ["MIGRATION_USER"],
        token=os.environ["MIGRATION_TOKEN"],
        store_path=store,
        options=MigrationOptions(cache_dir=folder / "cache", conflicts=policy or ConflictPolicy()),
    )


def ask_learner(conflict: Conflict) -> dict[str, Any]:
    """Stands in for the app's dialog: keep both notes, and the lower box."""
    mine, theirs = conflict.local["data"], conflict.server["data"]
    return {
        **theirs,
        "box": min(mine["box"], theirs["box"]),
        "note": f"{theirs['note']} / {mine['note']}",
    }


def environment_or_exit() -> None:
    """A one-line explanation instead of a KeyError when the server is not configured."""
    needed = ("MIGRATION_SERVER", "MIGRATION_USER", "MIGRATION_TOKEN")
    if missing := [name for name in needed if not os.environ.get(name)]:
        sys.exit(
            f"{Path(__file__).name} needs {', '.join(needed)} (missing: {', '.join(missing)}); "
            'see the README\'s "Try it in one terminal"'
        )


def main() -> int:
    environment_or_exit()
    folder = Path(tempfile.mkdtemp(prefix="conflicts-example-"))
    tablet = fill(folder / "tablet" / "store.sqlite3", TABLET, NOW - 2 * HOUR)
    phone = fill(folder / "phone" / "store.sqlite3", PHONE, NOW - HOUR)
    try:
        with client_for(tablet, folder) as client:
            first = client.migrate()
        print(f"the tablet migrated first: {first.item_count} items")

        with client_for(phone, folder, POLICY) as client:
            plan = client.plan()
            print(
                f"plan for the phone: {plan.item_count} items, {plan.new_items} new, "
                f"{plan.unchanged_items} unchanged, {plan.conflicts} in conflict"
            )
            for name, part in sorted(plan.collections.items()):
                print(f"  {name}: {dict(sorted(part.choices.items())) or 'no conflict'}")

            result = client.migrate()
            while result.outcome is MigrationOutcome.AWAITING_RESOLUTION:
                for conflict in client.pending_conflicts():
                    merged = ask_learner(conflict)
                    print(f"asked the learner about {conflict.collection}/{conflict.key}")
                    client.resolve_conflict(conflict.conflict_id, "merged", merged)
                result = client.migrate()
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    print(f"phone migrated: {result.item_count} items, verified: {result.verified}")
    print(f"resolutions: {dict(sorted(result.resolutions_by_kind.items()))}")
    with LocalStore(phone) as store:  # the cloud now holds the same, checksum-verified
        for collection, key in sorted(PHONE):
            if TABLET.get((collection, key), PHONE[(collection, key)]) != PHONE[(collection, key)]:
                item = store.get(collection, key)
                assert item is not None
                print(f"  {collection}/{key}: {item['data']}")
    return 0 if result.verified else 1


if __name__ == "__main__":
    sys.exit(main())
