"""What the benchmarks share: a filled store, servers in their own processes, RSS figures.

Every benchmark measures its baseline in the same run, on the same machine, and
prints ratios against it; nothing here asserts a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from sdk import MigrationOptions

ROOT = Path(__file__).resolve().parent.parent
# Items per batch, for the floors and the SDK alike: the SDK's default (throughput.py's
# --batch sets it for its child processes too). The SDK's byte budget per batch (1 MiB by
# default) does not bind on these items of about 200 bytes: its batches hold as many.
BATCH = int(os.environ.get("BENCH_BATCH", MigrationOptions().batch_size))

_FILL = """
import sys, random
from sdk import LocalStore
rng = random.Random(1)
with LocalStore(sys.argv[1]) as store:
    n = int(sys.argv[2])
    for start in range(0, n, 20_000):
        store.put_many({"collection": ("lesson_progress", "flashcards")[i % 2],
                        "key": f"item-{i:08d}",
                        "data": {"score": rng.randint(0, 100), "attempts": rng.randint(1, 9),
                                 "completed": True, "notes": "x" * rng.randint(10, 80)},
                        "updatedAt": 1_700_000_000_000 + i, "deleted": False}
                       for i in range(start, min(n, start + 20_000)))
"""


def fill_store(path: Path, items: int) -> Path:
    """A learning-app store with ``items`` items, filled by a child process (so the
    measuring process's memory figures stay its own)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", _FILL, str(path), str(items)], check=True)
    return path


def rss_kb(pid: int | str = "self", field: str = "VmHWM") -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a process, in kB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status (Linux only)")


@contextlib.contextmanager
def serve(argv: list[str], log: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run a server process that prints ``listening on URL`` first; yield (url, process)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("listening on "):
                raise RuntimeError(f"server did not start: {line!r}; see {log}")
            yield line.split("listening on ", 1)[1].strip(), proc
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()


def backend_stub(
    data_dir: Path, *, without: tuple[str, ...] = ()
) -> contextlib.AbstractContextManager[tuple[str, subprocess.Popen[str]]]:
    """The reference server on a free loopback port, quiet (logs to a file); ``without``
    names modules it must run without, as if they were not installed."""
    argv = [*python(without, module="backend_stub"), "--port", "0", "--data-dir", str(data_dir)]
    return serve(argv, data_dir / "server.log")


def python(without: tuple[str, ...], *, module: str = "", path: str = "") -> list[str]:
    """The command that runs ``module`` (``-m``) or the script at ``path`` with this
    interpreter, as if the modules named by ``without`` were not installed."""
    if not without:
        return [sys.executable, "-m", module] if module else [sys.executable, path]
    run = (
        f"runpy.run_module({module!r}, run_name='__main__')"
        if module
        else f"runpy.run_path({path!r}, run_name='__main__')"
    )
    block = f"sys.modules.update(dict.fromkeys({list(without)!r}))"  # import then fails
    return [sys.executable, "-c", f"import runpy, sys; {block}; {run}"]


def honest_client(url: str, store: str, limit: int | None = None) -> dict[str, float]:
    """The honest floor's client (the first ``limit`` rows, or all): each stored row's data text
    framed into the batch as it is (no parse, no re-encode), the SHA-256 of each body,
    one POST per batch over loopback; its server parses with orjson and inserts each
    batch in one transaction (``POST /honest``)."""
    import httpx
    import orjson

    conn = sqlite3.connect(store)
    conn.text_factory = bytes
    sql = "SELECT collection, key, data, updated_at, deleted FROM items ORDER BY collection, key"
    if limit:
        sql += f" LIMIT {int(limit)}"
    count = 0
    heads: dict[bytes, bytes] = {}  # b'{"collection":"c","key":' per collection
    dumps, sha256 = orjson.dumps, hashlib.sha256
    # Timed from the client's creation on (its TLS setup alone takes tens of ms), as the
    # SDK's runs are timed from a client made beforehand.
    with httpx.Client(base_url=url, timeout=60) as http:
        started = time.perf_counter()

        def send(parts: list[bytes]) -> None:
            body = b'{"items":[' + b",".join(parts) + b"]}"
            http.post(
                "/honest",
                content=body,
                headers={
                    "x-content-sha256": sha256(body).hexdigest(),
                    "content-type": "application/json",
                },
            ).raise_for_status()

        cursor = conn.execute(sql)
        while rows := cursor.fetchmany(BATCH):
            parts = []
            for c, k, d, u, x in rows:
                head = heads.get(c)
                if head is None:
                    head = heads[c] = b'{"collection":' + dumps(c.decode()) + b',"key":'
                parts.append(
                    b"".join(
                        (
                            head,
                            dumps(k.decode()),
                            b',"data":',
                            d,
                            b',"updatedAt":',
                            b"%d" % u,
                            b',"deleted":true}' if x else b',"deleted":false}',
                        )
                    )
                )
            count += len(parts)
            send(parts)
    seconds = time.perf_counter() - started
    conn.close()
    return {"items": count, "seconds": seconds, "peak_rss_kb": rss_kb()}


def honest_floor(store: Path, work: Path, limit: int | None = None) -> dict[str, float]:
    """The honest floor over ``store`` (its first ``limit`` rows), against a fresh floor
    server in ``work``: items, seconds and the client's peak RSS."""
    argv = [sys.executable, str(ROOT / "bench" / "floor_server.py"), str(work)]
    with serve(argv, work / "floor.log") as (url, _proc):
        return honest_client(url, str(store), limit)


#: How a child process running a client is handed its bearer token (minted by the parent:
#: minting imports the server's code, which is neither the client's time nor its memory).
TOKEN_ENV = "BENCH_BEARER_TOKEN"


def run_client(argv: list[str], user: str = "", **env: str) -> dict[str, float]:
    """Run a client process (``argv``) that prints its figures as JSON on its last line,
    handed a token for ``user`` (when one is named) and ``env``; its figures."""
    out = subprocess.run(
        argv,
        env={**os.environ, TOKEN_ENV: token(user) if user else "", **env},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def token(user: str) -> str:
    from backend_stub import Settings, issue_token

    return issue_token(user, Settings().jwt_secret, ttl=24 * 3600)
