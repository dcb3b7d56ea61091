"""`make demo`: a real end-to-end migration against the embedded reference server.

It starts `python -m backend_stub` on a free loopback port, fills a device's local store
with a learning app's history (lesson progress, flash-card reviews, preferences), seeds
the cloud with overlapping items "from another device", migrates with a progress bar and
prints the summary. Everything lives in a temporary folder that is removed at the end.

    python examples/demo.py [--items 30000] [--keep]

With the default 30,000 lessons the device holds 40,002 items: the lessons, a flash card
for every third lesson (one of them deleted) and two preferences (:func:`items_for`).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sdk import LocalStore, MigrationClient, MigrationOptions, Progress

USER = "demo-learner"
#: Lesson-progress items by default; see :func:`items_for` for the whole store.
DEFAULT_LESSONS = 30_000


def items_for(lessons: int) -> int:
    """How many items :func:`fill_store` writes for ``lessons`` lessons (the README's figure).

    >>> items_for(DEFAULT_LESSONS)
    40002
    """
    return lessons + lessons // 3 + 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--items",
        type=int,
        default=DEFAULT_LESSONS,
        help="lesson-progress items (default: %(default)s, so 40,002 items in all)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="migration-demo-"))
    server_dir, store_path = work / "server", work / "device" / "store.sqlite3"
    try:
        print(f"1. filling the device's local store ({store_path})")
        local_items = fill_store(store_path, args.items)
        print(f"   {local_items:,} items in 3 collections")

        print("2. seeding the cloud with what another device already uploaded")
        seeded = seed_cloud(server_dir, store_path, work / "cloud.jsonl")
        print(f"   {seeded:,} cloud items, some equal to the device's, some different")

        print("3. starting the reference server on a free loopback port")
        with run_server(server_dir) as url:
            token = cli("token", USER).strip()
            print(f"   {url}")
            print("4. migrating")
            started = time.monotonic()
            with MigrationClient(
                server=url,
                user_id=USER,
                token=token,
                store_path=store_path,
                options=MigrationOptions(cache_dir=work / "cache"),
                on_progress=ProgressBar(),
            ) as client:
                result = client.migrate()
                summary = client.summary()
            print()
            print_summary(result, summary, time.monotonic() - started)
        return 0 if result.verified else 1
    finally:
        if args.keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def fill_store(path: Path, lessons: int) -> int:
    rng = random.Random(7)
    now = int(time.time() * 1000)
    with LocalStore(path) as store:
        store.put_many(
            {
                "collection": "lesson_progress",
                "key": f"lesson-{i:06d}",
                "data": {
                    "score": rng.randint(0, 100),
                    "attempts": rng.randint(1, 9),
                    "completed": rng.random() < 0.7,
                    "streak": rng.randint(0, 30),
                    "tags": sorted(rng.sample(["verbs", "nouns", "grammar", "audio"], 2)),
                },
                "updatedAt": now - rng.randint(0, 90 * 86_400_000),
                "deleted": False,
            }
            for i in range(lessons)
        )
        store.put_many(
            {
                "collection": "flashcards",
                "key": f"card-{i:05d}",
                "data": {"front": f"word {i}", "back": f"Wort {i}", "box": rng.randint(1, 5)},
                "updatedAt": now - rng.randint(0, 30 * 86_400_000),
                "deleted": False,
            }
            for i in range(lessons // 3)
        )
        store.put("preferences", "theme", {"value": "dark"})
        store.put("preferences", "daily_goal", {"minutes": 15})
        store.delete("flashcards", "card-00000")  # a tombstone migrates too
        return store.count(include_deleted=True)


def seed_cloud(server_dir: Path, store_path: Path, jsonl: Path) -> int:
    """The other device uploaded some of the same lessons (most equal, some played
    differently) and a few the device never saw."""
    now = int(time.time() * 1000)
    lines = []
    with LocalStore(store_path) as store:
        for n, item in enumerate(store.iter_items("lesson_progress")):
            if n == 2_000:
                break
            if n % 10 == 0:  # every tenth lesson was played differently over there
                item["data"] = dict(item["data"], score=100, attempts=item["data"]["attempts"] + 1)
                item["updatedAt"] = now
            lines.append(json.dumps(item))
    for i in range(300):
        lines.append(
            json.dumps(
                {
                    "collection": "lesson_progress",
                    "key": f"lesson-x{i:05d}",
                    "data": {"score": 50, "attempts": 1, "completed": True, "streak": 0},
                    "updatedAt": now,
                    "deleted": False,
                }
            )
        )
    jsonl.write_text("\n".join(lines) + "\n")
    cli("seed", USER, str(jsonl), "--device-id", "tablet", "--data-dir", str(server_dir))
    return len(lines)


class run_server:
    """`python -m backend_stub` on port 0; yields its URL; stops it on exit."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def __enter__(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = (self.data_dir / "server.log").open("w")  # keeps the terminal for the bar
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend_stub", "--port", "0", "--data-dir", str(self.data_dir)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise SystemExit(f"the server did not start: {line!r}")
        return line.split("listening on ", 1)[1].strip()

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


def cli(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "backend_stub", *args], check=True, capture_output=True, text=True
    ).stdout


class ProgressBar:
    """A one-line terminal progress bar fed by the SDK's progress callback."""

    def __init__(self) -> None:
        self.phase = ""

    def __call__(self, progress: Progress) -> None:
        if progress.phase.value != self.phase and self.phase:
            sys.stdout.write("\n")
        self.phase = progress.phase.value
        width = 40
        filled = int(width * progress.fraction)
        line = f"\r   {self.phase:<12} [{'#' * filled}{'.' * (width - filled)}] "
        line += f"{progress.items_done:>9,}/{progress.items_total:,} items"
        if progress.bytes_total:
            line += f"  {progress.bytes_done / 1e6:6.1f}/{progress.bytes_total / 1e6:.1f} MB"
        line += f"  ({progress.overall:.0%} of all)"
        sys.stdout.write(line)
        sys.stdout.flush()


def print_summary(result: object, summary: Any, seconds: float) -> None:
    from sdk import MigrationResult

    assert isinstance(result, MigrationResult)
    s = summary.summary  # the client's GetMigrationSummaryResponse
    print("5. summary")
    print(f"   outcome         {result.outcome.value} (session {result.session_id})")
    print(
        f"   items           {s.total_items:,} migrated: {s.new_items:,} new, "
        f"{s.unchanged_items:,} already in the cloud, {s.conflicts:,} in conflict"
    )
    for kind, count in sorted(s.resolutions_by_kind.items()):
        print(f"   resolved        {count:,} by {kind}")
    for name, count in sorted(s.collections.items()):
        print(f"   collection      {name}: {count:,}")
    print(f"   duration        {seconds:.1f} s ({s.total_items / max(seconds, 1e-9):,.0f} items/s)")
    print(f"   checksum        {result.cloud_checksum}")
    if result.sync is not None:
        print(
            f"   synced          {result.sync.pushed:,} written meanwhile sent,"
            f" {result.sync.pulled:,} of the other device's received"
        )
    print(
        f"   verified        {'yes' if result.verified else 'NO'} "
        "(the device now holds exactly what the cloud holds)"
    )
    for line in summary.recommendations:
        print(f"   note            {line}")


if __name__ == "__main__":
    sys.exit(main())
