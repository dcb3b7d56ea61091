"""Helpers for the SDK tests: realistic local data and stores."""

from __future__ import annotations

from pathlib import Path

from sdk import LocalStore
from sdk.contract import Item


def learning_items(count: int, *, updated_at: int = 1_700_000_000_000) -> list[Item]:
    """A learning app's data: lesson progress, flash cards, preferences and a tombstone."""
    items: list[Item] = []
    for i in range(count):
        collection = ("lesson_progress", "flashcards", "lesson_progress")[i % 3]
        items.append(
            Item(
                collection=collection,
                key=f"item-{i:06d}",
                data={"score": i % 101, "streak": i % 7, "tags": ["verbs", "audio"][: i % 3]},
                updatedAt=updated_at + i,
                deleted=False,
            )
        )
    items.append(
        Item(
            collection="preferences",
            key="theme",
            data={"v": "dark"},
            updatedAt=updated_at,
            deleted=False,
        )
    )
    items.append(
        Item(collection="flashcards", key="gone", data={}, updatedAt=updated_at, deleted=True)
    )
    return items


def make_store(path: Path, items: list[Item]) -> Path:
    with LocalStore(path) as store:
        store.put_many(items)
    return path
