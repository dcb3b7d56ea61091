"""Client memory during a large migration: peak RSS against RSS just before it.

Target (issue 2): migrating 200,000 items grows the client's peak RSS by less than 50 MB
over its RSS before the migration. The server runs in its own process on loopback, and
the store is filled by a child process, so the figures are the migrating client's alone.

    .venv/bin/python bench/memory.py [--items 200000] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from demo import cli, run_server

TARGET_MB = 50.0


def proc_status_kb(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, in kB, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


FILL = """
import sys, random
from sdk import LocalStore
rng = random.Random(1)
with LocalStore(sys.argv[1]) as store:
    n = int(sys.argv[2])
    for start in range(0, n, 10_000):
        store.put_many({"collection": "lesson_progress", "key": f"lesson-{i:08d}",
                        "data": {"score": rng.randint(0, 100), "attempts": rng.randint(1, 9),
                                 "completed": True, "notes": "x" * rng.randint(10, 80)},
                        "updatedAt": 1_700_000_000_000 + i, "deleted": False}
                       for i in range(start, min(n, start + 10_000)))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    from sdk import MigrationClient, MigrationOptions

    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    store_path = work / "device" / "store.sqlite3"
    try:
        subprocess.run([sys.executable, "-c", FILL, str(store_path), str(args.items)], check=True)
        with run_server(work / "server") as url:
            token = cli("token", "bench-user").strip()
            client = MigrationClient(
                server=url,
                user_id="bench-user",
                token=token,
                store_path=store_path,
                options=MigrationOptions(batch_size=args.batch_size, cache_dir=work / "cache"),
            )
            rss_before = proc_status_kb("VmRSS")
            hwm_before = proc_status_kb("VmHWM")
            started = time.perf_counter()
            result = client.migrate()
            seconds = time.perf_counter() - started
            hwm_after = proc_status_kb("VmHWM")
            client.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    growth_mb = (hwm_after - rss_before) / 1024
    print(f"items migrated        {result.item_count:,} (verified: {result.verified})")
    print(f"duration              {seconds:.1f} s ({result.item_count / seconds:,.0f} items/s)")
    print(
        f"client RSS before     {rss_before / 1024:.1f} MB (peak so far {hwm_before / 1024:.1f} MB)"
    )
    print(f"client peak RSS       {hwm_after / 1024:.1f} MB")
    print(
        f"growth                {growth_mb:.1f} MB (target < {TARGET_MB:.0f} MB): "
        f"{'PASS' if growth_mb < TARGET_MB else 'FAIL'}"
    )
    return 0 if growth_mb < TARGET_MB and result.verified else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
