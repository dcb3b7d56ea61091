"""Memory during a large migration, client and server, from one size to the next.

For each size, a fresh store (filled by a child process) is migrated by a child process
against a fresh backend_stub on loopback, so every figure is one process's own:

- the client's RSS just before ``migrate()`` and its peak RSS (``VmHWM``) after;
- the server's peak RSS over the whole run.

Targets: the client's peak grows less than 50 MB over its RSS before the migration
(issue 2), and both peaks stay flat from the smallest size to the largest (issue 16:
within 20 MB). The 10,000,000-item size is long (a 2 GB store, minutes per step) and
runs only with ``--huge``::

    .venv/bin/python bench/memory.py [--sizes 100000 1000000] [--huge]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import backend_stub, fill_store, rss_kb
from throughput import child

GROWTH_MB = 50.0  # the client's peak over its RSS before the migration
FLAT_MB = 20.0  # a peak's growth from the smallest size to the largest
HUGE = 10_000_000


def measure(size: int, work: Path) -> dict[str, float]:
    store = fill_store(work / f"{size}" / "store.sqlite3", size)
    with backend_stub(work / f"{size}" / "server") as (url, proc):
        run = child("sdk", url, str(store), str(work / f"{size}" / "cache"), "2")
        server = rss_kb(proc.pid)
    shutil.rmtree(work / f"{size}", ignore_errors=True)
    assert run["items"] == size, run
    return {
        "size": size,
        "seconds": run["seconds"],
        "before": run["rss_before_kb"] / 1024,
        "client": run["peak_rss_kb"] / 1024,
        "server": server / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--huge", action="store_true", help=f"add {HUGE:,} items (long)")
    args = parser.parse_args()
    sizes = sorted({*args.sizes, *((HUGE,) if args.huge else ())})
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        rows = [measure(size, work) for size in sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| items | items/s | client RSS before | client peak RSS | growth | server peak RSS |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['size']:,} | {r['size'] / r['seconds']:,.0f} | {r['before']:.1f} MB |"
            f" {r['client']:.1f} MB | {r['client'] - r['before']:.1f} MB | {r['server']:.1f} MB |"
        )
    worst = max(r["client"] - r["before"] for r in rows)
    first, last = rows[0], rows[-1]
    client_flat = last["client"] - first["client"]
    server_flat = last["server"] - first["server"]
    ok = worst < GROWTH_MB and client_flat <= FLAT_MB and server_flat <= FLAT_MB
    print(
        f"client growth over its RSS before: at most {worst:.1f} MB (target < {GROWTH_MB:.0f} MB);"
        f" peak RSS from {first['size']:,} to {last['size']:,} items: client"
        f" {client_flat:+.1f} MB, server {server_flat:+.1f} MB (target <= {FLAT_MB:.0f} MB):"
        f" {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
