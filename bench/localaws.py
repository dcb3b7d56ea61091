"""The README's local AWS path at full size: its time, and moto's memory.

Runs the README's ``sh localaws`` block as written (on free ports, with ``--items``),
samples the moto server's RSS every half second, and migrates the same sample store to
the SQLite backend as the baseline. Time is the ``migrate`` command's own figure (its
``N batches sent, X s`` line) in both runs::

    .venv/bin/python bench/localaws.py                   # 20,000 items, as the README
    .venv/bin/python bench/localaws.py --items 3000 --plain-moto --limit 600

``--plain-moto`` runs moto's own ``moto_server`` in place of ``backend_stub.localaws``
(the README's former recipe), and gives up after ``--limit`` seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import ROOT, backend_stub, token
from test_localaws import run_block, script  # the README's block, on free ports

CLI = str(ROOT / ".venv" / "bin" / "offline-migrate")
SECONDS = re.compile(r"batches sent, ([\d.]+) s")


class MotoMemory(threading.Thread):
    """Peak RSS (kB) of the moto server that ``parent`` started, sampled until stopped."""

    def __init__(self, parent: int) -> None:
        super().__init__(daemon=True)
        self.parent = parent
        self.peak_kb = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for pid in self._moto_pids():
                self.peak_kb = max(self.peak_kb, _status_kb(pid, "VmHWM"))

    def _moto_pids(self) -> list[str]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
                cmdline = (proc / "cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            if ppid == str(self.parent) and (b"localaws" in cmdline or b"moto_server" in cmdline):
                found.append(proc.name)
        return found


def _status_kb(pid: str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_readme(items: int, work: Path, *, plain_moto: bool, limit: float) -> tuple[str, int, float]:
    """(output, moto's peak RSS in kB, wall seconds) of the README's block."""
    text, aws, _api = script(items)
    if plain_moto:
        text = re.sub(
            r"\.venv/bin/python -m backend_stub\.localaws --port (\d+)",
            r".venv/bin/moto_server -H 127.0.0.1 -p \1",
            text,
        )
        ready = f"curl -s -o /dev/null http://127.0.0.1:{aws}/"
        text = text.replace('grep -q listening "$TRY/localaws.out"', ready)
    memories: list[MotoMemory] = []

    def watch(pid: int) -> None:
        memories.append(MotoMemory(pid))
        memories[0].start()

    started = time.monotonic()
    try:
        code, out = run_block(text, work, timeout=limit, started=watch)
    finally:
        for memory in memories:
            memory.stop.set()
            memory.join()
    if code is None:
        out += f"\ngave up after {limit:.0f} s"
    return out, memories[0].peak_kb, time.monotonic() - started


def run_sqlite(items: int, work: Path) -> str:
    """The same sample store migrated to the SQLite backend: the ``migrate`` output."""
    store = work / "store.sqlite3"
    subprocess.run([CLI, "sample", "--store", str(store), "--items", str(items)], check=True)
    with backend_stub(work / "server") as (url, _proc):
        env = {**os.environ, "MIGRATION_SERVER": url, "MIGRATION_USER": "alice"}
        env["MIGRATION_TOKEN"] = token("alice")
        done = subprocess.run(
            [CLI, "migrate", "--store", str(store)], env=env, capture_output=True, text=True
        )
    return done.stdout + done.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--plain-moto", action="store_true", help="moto_server, unpatched")
    parser.add_argument("--limit", type=float, default=1800.0, help="seconds (default 1800)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-localaws-"))
    try:
        (work / "aws").mkdir()
        (work / "sqlite").mkdir()
        out, peak_kb, wall = run_readme(
            args.items, work / "aws", plain_moto=args.plain_moto, limit=args.limit
        )
        aws = SECONDS.search(out)
        baseline = SECONDS.search(run_sqlite(args.items, work / "sqlite"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    server = "moto_server (plain)" if args.plain_moto else "backend_stub.localaws"
    print(f"README local AWS path, {args.items:,} items, {server}:")
    print(f"  whole path: {wall:.0f} s wall; moto's peak RSS: {peak_kb / 1024:.0f} MB")
    if aws is None:
        print(f"  the migration did not finish: {out.strip().splitlines()[-5:]}")
        return 1
    if baseline is None:
        print("  the SQLite baseline did not finish")
        return 1
    seconds, base = float(aws[1]), float(baseline[1])
    ratio = seconds / base
    print(f"  migrate: {seconds:.1f} s on AWS (moto), {base:.1f} s on SQLite: x{ratio:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
