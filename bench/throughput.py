"""`make bench`: items per second of the SDK against bare pipelines, in one run.

For each size it measures, on this machine and in this run:

1. the honest floor (every ratio is quoted against it): the store's rows read with
   sqlite3, each stored data text framed into the batch as it is (no parse, no
   re-encode), each body hashed with SHA-256 and POSTed over loopback to a bare ASGI
   server that parses it with orjson and inserts each batch in one transaction into a
   table keyed like ``cloud_items`` (``common.honest_client``, ``POST /honest``);
2. the first floor, beside it: the same, but every row parsed and re-encoded with the
   stdlib's json on both sides (``POST /batch``);
3. the SDK's full migration (detect, snapshot, checksums, journal, start, upload,
   conflict detection, complete, verification) against backend_stub on loopback, and
   its upload phase alone;
4. what an integrator would hand-write instead, one request per item (on a subset):
   POSTs to the bare server (HTTP and one insert per item, nothing else), and PUTs
   through backend_stub's migration API, each item its own batch (the same server and
   guarantees as the SDK's run, without the batching);

and prints items/s, the ratios, and the client's and the servers' peak RSS. Targets
(issue 16): the SDK >= 0.6 x the honest floor at 1,000,000 items and its upload phase
>= 0.8 x; >= 50 x one request per item; client peak RSS growing <= 20 MB from 100k to
1M items.

    .venv/bin/python bench/throughput.py [--sizes 100000 1000000] [--per-item 2000]
                                         [--repeat 3] [--in-flight 2] [--batch 5000]
                                         [--without-orjson]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BATCH,
    ROOT,
    TOKEN_ENV,
    backend_stub,
    fill_store,
    honest_client,
    python,
    rss_kb,
    run_client,
    serve,
)


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


def api_per_item_client(url: str, store: str, limit: int) -> dict[str, float]:
    """One request per item against backend_stub itself: the migration API driven by hand,
    each item its own batch (runs in its own process). Same server, same guarantees as
    the SDK's run; only the batching differs."""
    import uuid

    import httpx

    from sdk.contract import CHECKSUM_HEADER, batch_body, batch_checksum, canonical_item_parts

    conn = sqlite3.connect(store)
    rows = conn.execute(
        "SELECT collection, key, data, updated_at, deleted FROM items"
        f" ORDER BY collection, key LIMIT {int(limit)}"
    ).fetchall()
    conn.close()
    items = [canonical_item_parts(c, k, d, u, bool(x)) for c, k, d, u, x in rows]
    bodies = [batch_body([item]) for item in items]
    digests = b"".join(hashlib.sha256(item).digest() for item in items)
    collections: dict[str, int] = {}
    for row in rows:
        collections[row[0]] = collections.get(row[0], 0) + 1
    manifest = {
        "itemCount": len(rows),
        "collections": collections,
        "batchSize": 1,
        "batchCount": len(rows),
        "datasetChecksum": hashlib.sha256(digests).hexdigest(),
    }
    user = "per-item"
    bearer = os.environ[TOKEN_ENV]
    started = time.perf_counter()
    with httpx.Client(
        base_url=f"{url}/api/migration/{user}",
        headers={"authorization": f"Bearer {bearer}"},
        timeout=60,
    ) as http:
        session = http.post(
            "/start",
            json={
                "migrationId": "mig-" + uuid.uuid4().hex,
                "deviceId": "bench",
                "dataVersion": 1,
                "manifest": manifest,
            },
        )
        session.raise_for_status()
        session_id = session.json()["sessionId"]
        for seq, body in enumerate(bodies):
            http.put(
                f"/sessions/{session_id}/batches/{seq}",
                content=body,
                headers={CHECKSUM_HEADER: batch_checksum(body), "content-type": "application/json"},
            ).raise_for_status()
        http.post(
            f"/sessions/{session_id}/complete",
            json={"datasetChecksum": manifest["datasetChecksum"]},
        ).raise_for_status()
    seconds = time.perf_counter() - started
    return {"items": len(rows), "seconds": seconds, "peak_rss_kb": rss_kb()}


def sdk_client(url: str, store: str, cache: str, in_flight: int) -> dict[str, float]:
    """The SDK's full migration (runs in its own process)."""
    from sdk import MigrationClient, MigrationOptions, Progress, _fastjson

    bearer = os.environ[TOKEN_ENV]  # the app holds its token before it migrates
    before = rss_kb(field="VmRSS")
    phases: dict[str, float] = {}  # phase -> when its first progress report came

    def progress(p: Progress) -> None:
        phases.setdefault(p.phase.value, time.perf_counter())

    started = time.perf_counter()
    with MigrationClient(
        server=url,
        user_id="bench",
        token=bearer,
        store_path=Path(store),
        options=MigrationOptions(batch_size=BATCH, max_in_flight=in_flight, cache_dir=Path(cache)),
        on_progress=progress,
    ) as client:
        result = client.migrate()
    ended = time.perf_counter()
    assert result.verified, result
    marks = [*sorted(phases.items(), key=lambda kv: kv[1]), ("", ended)]
    return {
        "items": result.item_count,
        "batches": result.batches_uploaded,
        "seconds": ended - started,
        "rss_before_kb": before,
        "orjson": float(_fastjson.orjson_in_use()),
        "peak_rss_kb": rss_kb(),
        **{f"phase:{name}": end - at for (name, at), (_, end) in itertools.pairwise(marks)},
    }


def child(*args: str, without: tuple[str, ...] = ()) -> dict[str, float]:
    """Run one of this file's clients in its own process; its figures (the bearer token
    minted here, see ``common.TOKEN_ENV``)."""
    user = {"sdk": "bench", "api-per-item": "per-item"}.get(args[0], "")
    return run_client([*python(without, path=__file__), "--child", *args], user)


def measure(
    size: int, per_item: int, in_flight: int, work: Path, without: tuple[str, ...], repeat: int
) -> dict[str, object]:
    """Floor and SDK runs taken in turns, ``repeat`` times each, every run on a fresh copy
    of the store and a fresh server; the median run of each counts (the per-item
    baselines run once: they are far from the target either way)."""
    store = fill_store(work / f"store-{size}.sqlite3", size)
    os.sync()  # the fill's writes on disk before the first run, not during it
    floors: list[dict[str, float]] = []
    honests: list[dict[str, float]] = []
    sdks: list[dict[str, float]] = []
    row: dict[str, object] = {"size": size, "runs": repeat}
    floor_rss = server_rss = 0
    for turn in range(repeat):
        here = work / f"{size}-{turn}"
        # Each run has a server and files of its own, and its files go once it is done:
        # the kernel would otherwise write them back to disk during the next runs.
        for kind, runs in (("floor", floors), ("honest", honests)):
            floor = [sys.executable, str(ROOT / "bench" / "floor_server.py"), str(here / kind)]
            with serve(floor, here / f"{kind}.log") as (url, proc):
                runs.append(child(kind, url, str(store), *(["0"] if kind == "floor" else [])))
                if turn == 0 and kind == "floor":
                    row["per_item"] = child("per-item", url, str(store), str(per_item))
                floor_rss = max(floor_rss, rss_kb(proc.pid))
            shutil.rmtree(here / kind)
        copy = shutil.copy(store, here / "store.sqlite3")  # the SDK marks its store migrated
        with backend_stub(here / "server", without=without) as (url, proc):
            cache = str(here / "cache")
            sdks.append(child("sdk", url, copy, cache, str(in_flight), without=without))
            server_rss = max(server_rss, rss_kb(proc.pid))
            if turn == 0:
                row["api_per_item"] = child("api-per-item", url, str(store), str(per_item))
        shutil.rmtree(here)
    assert all(r["items"] == size for r in floors + honests + sdks), "a run moved too few"
    row.update(
        floor=_median(floors),
        honest=_median(honests),
        sdk=_median(sdks),
        honest_rates=[r["items"] / r["seconds"] for r in honests],
        upload_rates=[r["items"] / r["phase:uploading"] for r in sdks],
        # every run's items/s, in the order taken: how much this machine varies
        floor_rates=[r["items"] / r["seconds"] for r in floors],
        sdk_rates=[r["items"] / r["seconds"] for r in sdks],
        floor_server_rss_kb=floor_rss,
        server_rss_kb=server_rss,
    )
    return row


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median items/s (its own RSS and other figures with it)."""
    return sorted(runs, key=lambda r: r["items"] / r["seconds"])[len(runs) // 2]


def _rate(m: object) -> float:
    assert isinstance(m, dict)
    return float(m["items"]) / float(m["seconds"])


def _rates(values: object) -> str:
    assert isinstance(values, list)
    return ", ".join(f"{x:,.0f}" for x in values)


def report(rows: list[dict[str, object]]) -> None:
    print(
        f"{'items':>10} {'honest/s':>10} {'floor/s':>10} {'sdk/s':>10} {'sdk/honest':>10} "
        f"{'upload/honest':>13} {'sdk/floor':>9} {'per-item/s':>10} {'sdk/per-item':>12} "
        f"{'api-item/s':>10} {'sdk/api-item':>12} {'client MB':>9} {'server MB':>9} "
        f"{'floor srv MB':>12}"
    )
    for r in rows:
        sdk, honest, floor = r["sdk"], r["honest"], r["floor"]
        one, api = r["per_item"], r["api_per_item"]
        assert isinstance(sdk, dict)
        upload = float(sdk["items"]) / float(sdk["phase:uploading"])
        print(
            f"{r['size']:>10,} {_rate(honest):>10,.0f} {_rate(floor):>10,.0f} "
            f"{_rate(sdk):>10,.0f} {_rate(sdk) / _rate(honest):>10.2f} "
            f"{upload / _rate(honest):>13.2f} {_rate(sdk) / _rate(floor):>9.2f} "
            f"{_rate(one):>10,.0f} {_rate(sdk) / _rate(one):>12.1f} "
            f"{_rate(api):>10,.0f} {_rate(sdk) / _rate(api):>12.1f} "
            f"{sdk['peak_rss_kb'] / 1024:>9.1f} {float(r['server_rss_kb']) / 1024:>9.1f} "  # type: ignore[arg-type]
            f"{float(r['floor_server_rss_kb']) / 1024:>12.1f}"
        )  # type: ignore[arg-type]
    for r in rows:
        sdk = r["sdk"]
        assert isinstance(sdk, dict)
        spent = ", ".join(
            f"{k.removeprefix('phase:')} {v:.1f} s"
            for k, v in sdk.items()
            if k.startswith("phase:")
        )
        print(f"SDK at {r['size']:,} items, time per phase: {spent}")
    if len(rows) >= 2:
        first, last = rows[0]["sdk"], rows[-1]["sdk"]
        assert isinstance(first, dict) and isinstance(last, dict)
        growth = (last["peak_rss_kb"] - first["peak_rss_kb"]) / 1024
        print(
            f"client peak RSS growth {rows[0]['size']:,} -> {rows[-1]['size']:,} items: "
            f"{growth:.1f} MB (target <= 20 MB)"
        )
    last_row = rows[-1]
    sdk = last_row["sdk"]
    assert isinstance(sdk, dict)
    print(
        f"floors and SDK: the median of {last_row['runs']} runs each, taken in turns;"
        f" {int(os.environ.get('BENCH_BATCH', BATCH)):,} items per batch (the SDK's"
        f" {float(sdk['items']) / max(1.0, float(sdk['batches'])):,.0f} on average)"
    )
    for r in rows:
        honest_rates, sdk_rates = r["honest_rates"], r["sdk_rates"]
        assert isinstance(honest_rates, list) and isinstance(sdk_rates, list)
        pairs = zip(honest_rates, sdk_rates, strict=True)
        print(
            f"every run at {r['size']:,} items, items/s: honest floor {_rates(honest_rates)};"
            f" floor {_rates(r['floor_rates'])}; SDK {_rates(sdk_rates)}; SDK upload phase"
            f" {_rates(r['upload_rates'])}; each SDK run / the honest floor run before it:"
            f" {', '.join(f'{sdk / floor:.2f}' for floor, sdk in pairs)}"
        )
    used = "orjson" if sdk["orjson"] else "the stdlib's json"
    print(f"the SDK encoded with {used} (the optional `fast` extra; --without-orjson)")
    honest = _rate(last_row["honest"])
    upload = float(sdk["items"]) / float(sdk["phase:uploading"])
    print(
        f"at {last_row['size']:,} items: SDK / honest floor {_rate(sdk) / honest:.2f}"
        f" (target >= 0.60); upload phase / honest floor {upload / honest:.2f}"
        f" (target >= 0.80); SDK / the first floor {_rate(sdk) / _rate(last_row['floor']):.2f}"
    )
    one = _rate(last_row["per_item"])
    print(f"SDK / one POST per item to the bare server: {_rate(sdk) / one:.1f} (target >= 50)")
    print(
        "SDK / one request per item through the migration API (same server):"
        f" {_rate(sdk) / _rate(last_row['api_per_item']):.1f} (target >= 50)"
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *args = sys.argv[2:]
        if kind == "honest":
            out = honest_client(args[0], args[1])
        elif kind == "floor":
            out = floor_client(args[0], args[1], None, per_item=False)
        elif kind == "per-item":
            out = floor_client(args[0], args[1], int(args[2]), per_item=True)
        elif kind == "api-per-item":
            out = api_per_item_client(args[0], args[1], int(args[2]))
        else:
            out = sdk_client(args[0], args[1], args[2], int(args[3]))
        print(json.dumps(out))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--per-item", type=int, default=2_000)
    parser.add_argument("--in-flight", type=int, default=2)
    parser.add_argument(
        "--batch", type=int, default=BATCH, help="items per batch, floors and SDK alike"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="floor and SDK runs per size (median counts)"
    )
    parser.add_argument(
        "--without-orjson",
        action="store_true",
        help="run the SDK and backend_stub as if the optional orjson were not installed",
    )
    args = parser.parse_args()
    without = ("orjson",) if args.without_orjson else ()
    os.environ["BENCH_BATCH"] = str(args.batch)  # the child processes' batch size
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        rows = [
            measure(size, args.per_item, args.in_flight, work, without, args.repeat)
            for size in args.sizes
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
