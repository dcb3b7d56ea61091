"""How long ``take_snapshot`` takes, against the bare copy and read it cannot do without.

The baseline, measured in the same run on the same store: SQLite's backup API into a new
file, then one ``SELECT collection, key, data, updated_at, deleted ... ORDER BY
collection, key`` over the copy, every row fetched (what any snapshot of the store must at
least do). The SDK's figure is ``take_snapshot`` (copy, quick_check, validation,
checksums, batch plan), checking every item; then ``take_snapshot(trust_digests=True)``,
the migration's, which takes the digests the store vouches for as they are (the batches'
rebuild checks those items). A last figure times rebuilding every batch from the snapshot
(``iter_batches``: what the upload does per batch, before sending it), against the same
baseline. Median of ``--repeat`` turns, baseline and SDK alternating.

``--tree`` runs the SDK of another checkout (e.g. ``/work/main``) on a store filled by
that checkout, so two versions are compared in turns on one machine::

    .venv/bin/python bench/snapshot.py [--items 1000000] [--repeat 3] [--tree PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The server's default limit; within it, the SDK's default batch (items and byte budget),
# as a migration plans it.
MAX_BATCH_BYTES = 8 << 20


def baseline(store: Path, work: Path) -> float:
    """Backup into a new file, then one ordered read of every row of the copy."""
    copy = work / "baseline.sqlite3"
    started = time.perf_counter()
    dst = sqlite3.connect(str(copy), isolation_level=None)
    src = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)
    src.backup(dst)
    src.close()
    cursor = dst.execute(
        "SELECT collection, key, data, updated_at, deleted FROM items ORDER BY collection, key"
    )
    while cursor.fetchmany(1000):
        pass
    dst.close()
    took = time.perf_counter() - started
    copy.unlink()
    return took


def sdk_turn(store: Path, work: Path, turn: int, *, trust: bool) -> tuple[float, float, str]:
    """``take_snapshot``'s seconds (checking every item, or with ``trust`` taking the
    digests the store vouches for as the migration does), the seconds to rebuild every
    batch, and the dataset checksum (the same in every turn, or something is wrong)."""
    from sdk import MigrationOptions
    from sdk._store.snapshot import take_snapshot

    defaults = MigrationOptions()
    options = {"trust_digests": True} if trust else {}
    started = time.perf_counter()
    snapshot = take_snapshot(
        store,
        work,
        batch_size=defaults.batch_size,
        max_batch_bytes=MAX_BATCH_BYTES,
        batch_bytes=defaults.batch_bytes,
        name=f"snap{turn}{'t' if trust else ''}",
        **options,
    )
    took = time.perf_counter() - started
    started = time.perf_counter()
    for _batch in snapshot.iter_batches():
        pass
    prepared = time.perf_counter() - started
    checksum = snapshot.dataset_checksum
    snapshot.delete()
    return took, prepared, checksum


def child(items: int, repeat: int, work: Path) -> None:
    """Runs with the measured checkout's ``sdk`` importable; prints one JSON line."""
    sys.path.insert(0, os.getcwd())  # the measured checkout (its sdk and bench.common)
    from bench.common import fill_store

    store = fill_store(work / "store.sqlite3", items)
    import inspect

    from sdk._store.snapshot import take_snapshot

    # A checkout from before the migration trusted the store's digests has one figure.
    trusting = "trust_digests" in inspect.signature(take_snapshot).parameters
    figures: dict[str, list[float]] = {"baseline": [], "snapshot": [], "prepare": []}
    if trusting:
        figures["trusting"] = []
    checksums: set[str] = set()
    for turn in range(repeat):
        figures["baseline"].append(baseline(store, work))
        took, prepared, checksum = sdk_turn(store, work, turn, trust=False)
        figures["snapshot"].append(took)
        figures["prepare"].append(prepared)
        checksums.add(checksum)
        if trusting:
            took, _, checksum = sdk_turn(store, work, turn, trust=True)
            figures["trusting"].append(took)
            checksums.add(checksum)
    print(json.dumps({**figures, "checksums": sorted(checksums)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout whose sdk is measured")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.items, args.repeat, args.child)
        return
    tree = args.tree.resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-snapshot-"))
    try:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--items",
                str(args.items),
                "--repeat",
                str(args.repeat),
                "--child",
                str(work),
            ],
            cwd=tree,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = json.loads(done.stdout.splitlines()[-1])
    base = statistics.median(figures["baseline"])
    snap = statistics.median(figures["snapshot"])
    prep = statistics.median(figures["prepare"])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"snapshot of {args.items:,} items, sdk from {tree}, median of {args.repeat}")
    print(f"  baseline (backup + ordered SELECT): {base:7.3f} s")
    print(f"  take_snapshot:                      {snap:7.3f} s   {snap / base:5.2f} x baseline")
    if "trusting" in figures:
        trust = statistics.median(figures["trusting"])
        print(
            f"  take_snapshot(trust_digests=True):  {trust:7.3f} s   {trust / base:5.2f} x baseline"
            "   (the migration's)"
        )
    print(f"  rebuild every batch (iter_batches): {prep:7.3f} s   {prep / base:5.2f} x baseline")
    names = [k for k in ("baseline", "snapshot", "trusting", "prepare") if k in figures]
    turns = {k: [round(x, 3) for x in figures[k]] for k in names}
    print(f"  every turn (s): {turns}")
    print(f"  dataset checksum {', '.join(figures['checksums'])}; load average {load}")


if __name__ == "__main__":
    main()
