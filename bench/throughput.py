"""`make bench`: items per second of the SDK against a bare pipeline, in one run.

For each size it measures, on this machine and in this run:

1. the floor: read the store's rows with sqlite3, encode JSON batches, hash each body,
   POST it over loopback to a bare ASGI server that inserts each batch in one
   transaction (bench/floor_server.py): no SDK logic at all;
2. the SDK's full migration (detect, snapshot, checksums, journal, start, upload,
   conflict detection, complete, verification) against backend_stub on loopback;
3. what an integrator would hand-write instead: one POST per item (on a subset).

and prints items/s, the ratio SDK / floor, the ratio SDK / per-item, and the client's
and the server's peak RSS. Targets (issue 7): SDK >= 0.8 x floor at 1,000,000 items,
>= 50 x one-POST-per-item, client peak RSS growing <= 20 MB from 100k to 1M items.

    .venv/bin/python bench/throughput.py [--sizes 100000 1000000] [--per-item 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, backend_stub, fill_store, rss_kb, serve, token

BATCH = 1000


def floor_client(url: str, store: str, limit: int | None, per_item: bool) -> dict[str, float]:
    """The bare pipeline's client (runs in its own process)."""
    import httpx

    conn = sqlite3.connect(store)
    sql = "SELECT collection, key, data, updated_at, deleted FROM items ORDER BY collection, key"
    if limit:
        sql += f" LIMIT {int(limit)}"
    count = 0
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=60) as http:
        batch: list[bytes] = []

        def send(path: str, body: bytes) -> None:
            digest = hashlib.sha256(body).hexdigest()
            http.post(
                path,
                content=body,
                headers={"x-content-sha256": digest, "content-type": "application/json"},
            )

        for c, k, d, u, x in conn.execute(sql):
            row = json.dumps(
                {
                    "collection": c,
                    "key": k,
                    "data": json.loads(d),
                    "updatedAt": u,
                    "deleted": bool(x),
                },
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=False,
            ).encode()
            count += 1
            if per_item:
                send("/item", row)
                continue
            batch.append(row)
            if len(batch) == BATCH:
                send("/batch", b'{"items":[' + b",".join(batch) + b"]}")
                batch = []
        if batch:
            send("/batch", b'{"items":[' + b",".join(batch) + b"]}")
    seconds = time.perf_counter() - started
    conn.close()
    return {"items": count, "seconds": seconds, "peak_rss_kb": rss_kb()}


def sdk_client(url: str, store: str, cache: str, in_flight: int) -> dict[str, float]:
    """The SDK's full migration (runs in its own process)."""
    from sdk import MigrationClient, MigrationOptions

    before = rss_kb(field="VmRSS")
    started = time.perf_counter()
    with MigrationClient(
        server=url,
        user_id="bench",
        token=token("bench"),
        store_path=Path(store),
        options=MigrationOptions(batch_size=BATCH, max_in_flight=in_flight, cache_dir=Path(cache)),
    ) as client:
        result = client.migrate()
    seconds = time.perf_counter() - started
    assert result.verified, result
    return {
        "items": result.item_count,
        "seconds": seconds,
        "rss_before_kb": before,
        "peak_rss_kb": rss_kb(),
    }


def child(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def measure(size: int, per_item: int, in_flight: int, work: Path) -> dict[str, object]:
    store = fill_store(work / f"store-{size}.sqlite3", size)
    row: dict[str, object] = {"size": size}
    with serve(
        [sys.executable, str(ROOT / "bench" / "floor_server.py"), str(work / f"floor-{size}")],
        work / f"floor-{size}.log",
    ) as (url, proc):
        row["floor"] = child("floor", url, str(store), "0")
        row["per_item"] = child("per-item", url, str(store), str(per_item))
        row["floor_server_rss_kb"] = rss_kb(proc.pid)
    with backend_stub(work / f"server-{size}") as (url, proc):
        row["sdk"] = child("sdk", url, str(store), str(work / f"cache-{size}"), str(in_flight))
        row["server_rss_kb"] = rss_kb(proc.pid)
    return row


def report(rows: list[dict[str, object]]) -> None:
    def rate(m: object) -> float:
        assert isinstance(m, dict)
        return float(m["items"]) / float(m["seconds"])

    print(
        f"{'items':>10} {'floor/s':>10} {'sdk/s':>10} {'sdk/floor':>9} {'per-item/s':>10} "
        f"{'sdk/per-item':>12} {'client MB':>9} {'server MB':>9} {'floor srv MB':>12}"
    )
    for r in rows:
        sdk, floor, one = r["sdk"], r["floor"], r["per_item"]
        assert isinstance(sdk, dict)
        print(
            f"{r['size']:>10,} {rate(floor):>10,.0f} {rate(sdk):>10,.0f} "
            f"{rate(sdk) / rate(floor):>9.2f} {rate(one):>10,.0f} {rate(sdk) / rate(one):>12.1f} "
            f"{sdk['peak_rss_kb'] / 1024:>9.1f} {float(r['server_rss_kb']) / 1024:>9.1f} "  # type: ignore[arg-type]
            f"{float(r['floor_server_rss_kb']) / 1024:>12.1f}"
        )  # type: ignore[arg-type]
    if len(rows) >= 2:
        first, last = rows[0]["sdk"], rows[-1]["sdk"]
        assert isinstance(first, dict) and isinstance(last, dict)
        growth = (last["peak_rss_kb"] - first["peak_rss_kb"]) / 1024
        print(
            f"client peak RSS growth {rows[0]['size']:,} -> {rows[-1]['size']:,} items: "
            f"{growth:.1f} MB (target <= 20 MB)"
        )
    last_row = rows[-1]
    ratio = rate(last_row["sdk"]) / rate(last_row["floor"])
    print(f"SDK / floor at {last_row['size']:,} items: {ratio:.2f} (target >= 0.80)")
    print(
        f"SDK / one POST per item: {rate(last_row['sdk']) / rate(last_row['per_item']):.1f} "
        "(target >= 50)"
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *args = sys.argv[2:]
        if kind == "floor":
            out = floor_client(args[0], args[1], None, per_item=False)
        elif kind == "per-item":
            out = floor_client(args[0], args[1], int(args[2]), per_item=True)
        else:
            out = sdk_client(args[0], args[1], args[2], int(args[3]))
        print(json.dumps(out))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--per-item", type=int, default=2_000)
    parser.add_argument("--in-flight", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        rows = [measure(size, args.per_item, args.in_flight, work) for size in args.sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
