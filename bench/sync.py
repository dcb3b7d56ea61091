"""`make bench`: the sync's costs, against baselines measured in the same run.

1. **An incremental sync costs O(changes).** A store of each size is migrated, then the
   app changes 100 items and syncs; the client's CPU time and wall time of that sync
   (median of ``--repeat`` rounds) at the largest size over the smallest is the ratio
   (target <= 1.5), and the HTTP round trips it took are counted (target <= 3).
2. **A bootstrap pull is as fast as the upload.** A new device downloads the largest
   store's dataset; its items/s over the migration's upload phase, measured on the same
   data in the same run (target >= 0.8).
3. **Both against the honest floor** (``bench/throughput.py``'s: the stored rows framed
   as they are, hashed, POSTed to a bare orjson server that inserts each batch in one
   transaction), on the same stores: the bootstrap's items/s over the floor's moving the
   largest store (in batches of ``BATCH`` items, as the migration's), and the incremental
   sync's wall time over the floor's moving ``--changes`` rows (one batch).

The migration, the bootstrap and the floor moving the largest store each run in a fresh
process of their own, as in ``bench/throughput.py``: this one has the server's code
imported, a larger heap for the garbage collector to walk. The incremental syncs and
the floor's 100 rows run here, side by side.

Every run uses fresh stores and a fresh backend_stub on loopback::

    .venv/bin/python bench/sync.py [--sizes 10000 1000000] [--changes 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TOKEN_ENV, backend_stub, fill_store, honest_floor, run_client, token

#: Items per upload batch: a pull page's size (``sdk._sync.run.PULL_PAGE``), so that the
#: bootstrap and the upload it is compared with move the same items per request; the
#: honest floor moving the largest store batches alike.
BATCH = 5000


def migrate(url: str, user: str, store: Path, cache: Path) -> dict[str, float]:
    """Migrate ``store``; returns the upload phase's items/s (what the bootstrap is
    compared with) and the whole migration's."""
    from sdk import MigrationClient, MigrationOptions, Progress

    marks: dict[str, float] = {}

    def progress(p: Progress) -> None:
        marks.setdefault(p.phase.value, time.perf_counter())

    bearer = os.environ[TOKEN_ENV]  # the app holds its token before it migrates
    started = time.perf_counter()
    with MigrationClient(
        server=url,
        user_id=user,
        token=bearer,
        store_path=store,
        options=MigrationOptions(batch_size=BATCH, cache_dir=cache),
        on_progress=progress,
    ) as client:
        result = client.migrate()
    ended = time.perf_counter()
    assert result.verified, result
    upload = marks.get("resolving", marks.get("completing", ended)) - marks["uploading"]
    return {
        "items": result.item_count,
        "upload_rate": result.item_count / upload,
        "migration_rate": result.item_count / (ended - started),
    }


def incremental(url: str, user: str, store: Path, changes: int, round_: int) -> dict[str, float]:
    """The app changes ``changes`` items, then one sync: its CPU, wall time, round trips."""
    from sdk import LocalStore, MigrationClient

    with LocalStore(store) as app:
        app.put_many(
            {
                "collection": "lesson_progress",
                "key": f"item-{i * 2:08d}",
                "data": {"score": round_, "edited": True},
            }
            for i in range(changes)
        )
    with MigrationClient(server=url, user_id=user, token=token(user), store_path=store) as client:
        cpu, wall = time.process_time(), time.perf_counter()
        result = client.sync()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert result.verified and result.pushed == changes, result
    return {"cpu": cpu, "wall": wall, "round_trips": result.round_trips}


def bootstrap(url: str, user: str, store: Path) -> dict[str, float]:
    from sdk import MigrationClient

    with MigrationClient(
        server=url, user_id=user, token=os.environ[TOKEN_ENV], store_path=store
    ) as client:
        started = time.perf_counter()
        result = client.sync()
        seconds = time.perf_counter() - started
    assert result.verified, result
    return {"items": result.pulled, "rate": result.pulled / seconds, "seconds": seconds}


def child(kind: str, user: str, *args: str) -> dict[str, float]:
    """Run ``migrate``, ``bootstrap`` or ``floor`` in a fresh process, handed a token for
    ``user`` (none for the floor: ``""``); its figures."""
    # The floor batches as the migration does (common.BATCH is read from the environment).
    return run_client(
        [sys.executable, __file__, "--child", kind, *args], user, BENCH_BATCH=str(BATCH)
    )


def run_child(kind: str, args: list[str]) -> dict[str, float]:
    if kind == "migrate":
        return migrate(args[0], args[1], Path(args[2]), Path(args[3]))
    if kind == "bootstrap":
        return bootstrap(args[0], args[1], Path(args[2]))
    return honest_floor(Path(args[0]), Path(args[1]))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(run_child(sys.argv[2], sys.argv[3:])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        root = Path(tmp)
        with backend_stub(root / "server") as (url, _server):
            for size in sizes:
                user = f"sync-{size}"
                store = fill_store(root / f"{size}" / "store.sqlite3", size)
                floors = [
                    honest_floor(store, root / f"{size}" / f"floor-{i}", args.changes)
                    for i in range(args.repeat)
                ]
                if size == sizes[-1]:
                    os.sync()  # the fill's writes on disk before the floor, not during it
                    whole = child("floor", "", str(store), str(root / f"{size}" / "floor-all"))
                    # The floor's files go: their writeback would land in the migration.
                    shutil.rmtree(root / f"{size}" / "floor-all")
                migrated = child(
                    "migrate", user, url, user, str(store), str(root / f"{size}" / "cache")
                )
                runs = [incremental(url, user, store, args.changes, i) for i in range(args.repeat)]
                rows.append(
                    {
                        "size": size,
                        "cpu": statistics.median(r["cpu"] for r in runs),
                        "wall": statistics.median(r["wall"] for r in runs),
                        "round_trips": max(r["round_trips"] for r in runs),
                        "migrated": migrated,
                        "floor_wall": statistics.median(f["seconds"] for f in floors),
                    }
                )
            largest = rows[-1]
            user = f"sync-{largest['size']}"
            os.sync()  # the migrations' writes on disk before the bootstrap reads them
            pulled = child("bootstrap", user, url, user, str(root / "new-device.sqlite3"))
    print(f"incremental sync of {args.changes} changed items (median of {args.repeat}):")
    print(
        f"| store items | client CPU ms | wall ms | round trips | honest floor, {args.changes}"
        " rows, ms | floor / sync |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['size']:,} | {row['cpu'] * 1000:.1f} | {row['wall'] * 1000:.1f} |"
            f" {row['round_trips']:.0f} | {row['floor_wall'] * 1000:.1f} |"
            f" {row['floor_wall'] / row['wall']:.2f} |"
        )
    small, large = rows[0], rows[-1]
    print(
        f"ratio {large['size']:,} / {small['size']:,}: CPU {large['cpu'] / small['cpu']:.2f},"
        f" wall {large['wall'] / small['wall']:.2f} (target <= 1.5);"
        f" round trips at most {max(r['round_trips'] for r in rows):.0f} (target <= 3)"
    )
    upload = largest["migrated"]["upload_rate"]
    print(
        f"bootstrap of {pulled['items']:,} items: {pulled['rate']:,.0f} items/s in"
        f" {pulled['seconds']:.1f} s; the migration's upload of the same data:"
        f" {upload:,.0f} items/s; ratio {pulled['rate'] / upload:.2f} (target >= 0.8)"
    )
    floor_rate = whole["items"] / whole["seconds"]
    print(
        f"honest floor moving the {whole['items']:,} items: {floor_rate:,.0f} items/s;"
        f" bootstrap / honest floor {pulled['rate'] / floor_rate:.2f}; the migration's"
        f" upload phase / honest floor {upload / floor_rate:.2f}; the whole migration /"
        f" honest floor {largest['migrated']['migration_rate'] / floor_rate:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
