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
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import backend_stub, fill_store, rss_kb, token

TARGET_MB = 50.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    from sdk import MigrationClient, MigrationOptions

    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    store_path = work / "device" / "store.sqlite3"
    try:
        fill_store(store_path, args.items)
        with backend_stub(work / "server") as (url, _proc):
            client = MigrationClient(
                server=url,
                user_id="bench-user",
                token=token("bench-user"),
                store_path=store_path,
                options=MigrationOptions(batch_size=args.batch_size, cache_dir=work / "cache"),
            )
            rss_before = rss_kb(field="VmRSS")
            hwm_before = rss_kb()
            started = time.perf_counter()
            result = client.migrate()
            seconds = time.perf_counter() - started
            hwm_after = rss_kb()
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
