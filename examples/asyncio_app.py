"""An asyncio app (the shape of a Toga, Flet or Textual app) that migrates its offline data
with ``sdk.AsyncMigrationClient``, while its event loop keeps ticking.

It writes ``--items`` items into a store in ``--folder``, then migrates them. Progress
arrives on the loop's thread, as a GUI needs it. With ``--suspend-at N`` the app is
"suspended" once N items are uploaded: the migration task is cancelled (it stops at a
safe point), then "resumed": the next ``migrate()`` continues where it stopped. A ticker
task measures how late the loop ever woke it, which is how long the SDK blocked the loop.

    MIGRATION_SERVER=http://127.0.0.1:8000 MIGRATION_USER=alice \
    MIGRATION_TOKEN=$(python -m backend_stub token alice) \
    python examples/asyncio_app.py --folder /tmp/app [--items 5000] [--suspend-at 1000]

It has no window: every line a screen would show is printed (the suite runs it so).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from sdk import AsyncMigrationClient, LocalStore, MigrationOptions, Progress, ProgressPhase

TICK = 0.005  # seconds between the ticker's wake-ups


class Screen:
    """What the app shows: one line per progress phase and every 10 % of the upload."""

    def __init__(self) -> None:
        self.phase: ProgressPhase | None = None
        self.shown_tenth = -1
        self.uploaded = 0
        self.uploaded_changed = asyncio.Event()

    def on_progress(self, progress: Progress) -> None:  # runs on the loop's thread
        if progress.phase is not self.phase:
            self.phase = progress.phase
            print(f"phase: {progress.phase.value}")
        if progress.phase is ProgressPhase.UPLOADING:
            self.uploaded = progress.items_done
            self.uploaded_changed.set()
            tenth = int(progress.fraction * 10)
            if tenth > self.shown_tenth:
                self.shown_tenth = tenth
                print(f"uploading {progress.items_done}/{progress.items_total}")


async def ticker(stop: asyncio.Event, lags: list[float]) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(TICK)
        now = time.perf_counter()
        lags.append(now - last - TICK)
        last = now


async def suspend_when(screen: Screen, items: int, task: asyncio.Task[object]) -> None:
    while screen.uploaded < items and not task.done():
        screen.uploaded_changed.clear()
        await screen.uploaded_changed.wait()
    task.cancel()  # what the app does when the OS suspends it


def environment_or_exit() -> None:
    """A one-line explanation instead of a KeyError when the server is not configured."""
    needed = ("MIGRATION_SERVER", "MIGRATION_USER", "MIGRATION_TOKEN")
    if missing := [name for name in needed if not os.environ.get(name)]:
        sys.exit(
            f"{Path(__file__).name} needs {', '.join(needed)} (missing: {', '.join(missing)}); "
            'see the README\'s "Try it in one terminal"'
        )


async def main(folder: Path, items: int, suspend_at: int | None) -> None:
    with LocalStore(folder / "store.sqlite3") as store:
        store.put_many(
            {"collection": "lesson_progress", "key": f"lesson-{i:05d}", "data": {"score": i % 101}}
            for i in range(items)
        )
    stop_ticking, lags = asyncio.Event(), []
    ticking = asyncio.create_task(ticker(stop_ticking, lags))
    screen = Screen()
    async with AsyncMigrationClient(
        server=os.environ["MIGRATION_SERVER"],
        user_id=os.environ["MIGRATION_USER"],
        token=os.environ["MIGRATION_TOKEN"],
        store_path=folder / "store.sqlite3",
        options=MigrationOptions(batch_size=100, cache_dir=folder / "cache"),
        on_progress=screen.on_progress,
    ) as client:
        if suspend_at is not None:
            task = asyncio.create_task(client.migrate())
            watcher = asyncio.create_task(suspend_when(screen, suspend_at, task))
            try:
                await task
            except asyncio.CancelledError:
                print(f"suspended with {screen.uploaded}/{items} uploaded; resuming")
            await watcher
        result = await client.migrate()
    stop_ticking.set()
    await ticking
    print(f"{result.outcome.value}: {result.item_count} items, verified: {result.verified}")
    print(f"loop lag: max {max(lags) * 1000:.0f} ms over {len(lags)} ticks")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="where the store is made")
    parser.add_argument("--items", type=int, default=5000, help="items to write and migrate")
    parser.add_argument("--suspend-at", type=int, help="cancel once this many are uploaded")
    args = parser.parse_args()
    environment_or_exit()
    args.folder.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(args.folder, args.items, args.suspend_at))
