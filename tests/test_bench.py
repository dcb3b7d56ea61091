"""The benchmarks run end to end and print their figures, at tiny sizes: this checks that
`make bench` works, not how fast anything is (tests never time things)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench(script: str, *args: str, verdict_exit: bool = False) -> str:
    """The script's output; ``verdict_exit``: its exit code is its timing verdict (1 = a
    target missed), which on a loaded machine says nothing about whether it works."""
    done = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in ((0, 1) if verdict_exit else (0,)), done.stderr
    return done.stdout


def test_the_throughput_bench_runs_every_pipeline_and_prints_each_figure() -> None:
    out = _bench("throughput.py", "--sizes", "200", "400", "--per-item", "10", "--repeat", "1")

    table = [line.split() for line in out.splitlines() if re.match(r"\s+\d[\d,]* ", line)]
    assert [row[0] for row in table] == ["200", "400"]
    # items/s of both floors, the SDK and both per-item baselines
    assert all(float(row[i].replace(",", "")) > 0 for row in table for i in (1, 2, 3, 7, 9))
    for label in (
        "at 400 items: SDK / honest floor",
        "upload phase / honest floor",
        "client peak RSS growth",
        "every run at 400",
    ):
        assert label in out


def test_the_memory_and_startup_benches_run_and_print_their_verdicts() -> None:
    out = _bench("memory.py", "--sizes", "2000", "4000")
    rows = [line for line in out.splitlines() if line.startswith(("| 2,000", "| 4,000"))]
    assert len(rows) == 2  # one line per size
    assert "client growth over its RSS before" in out and "server" in out
    out = _bench("startup.py", "--fresh", "3", "--runs", "3", "--items", "50", verdict_exit=True)
    assert "target: median < 5 ms" in out
    ended = {line[:24].strip(): line.split()[-1] for line in out.splitlines() if "ms  " in line}
    assert ended["already migrated"] == "synced"  # its own user's token: not a refusal
    assert ended["50 items to migrate"] == "done"
    assert "target: import + call and process - bare <= 50 ms" in out


def test_the_sync_bench_runs_both_measures_and_prints_its_ratios() -> None:
    out = _bench("sync.py", "--sizes", "200", "600", "--changes", "20", "--repeat", "2")

    rows = [line for line in out.splitlines() if line.startswith("| 2") or line.startswith("| 6")]
    assert len(rows) == 2  # one line per store size
    assert "(target <= 1.5)" in out and "(target <= 3)" in out
    assert re.search(r"bootstrap of 600 items: [\d,]+ items/s", out)
    assert "(target >= 0.8)" in out
    assert re.search(r"honest floor moving the 600 items: [\d,]+ items/s", out)
    assert "bootstrap / honest floor" in out


def test_the_attachments_bench_uploads_both_ways_and_prints_its_ratio() -> None:
    out = _bench("attachments.py", "--mib", "6", "--repeat", "1")

    rates = re.findall(r"([\d.]+) MiB/s", out)
    assert len(rates) == 2 and all(float(rate) > 0 for rate in rates)
    assert re.search(r"SDK / bare: [\d.]+ x \(target >= 0.8\)", out)


def test_the_snapshot_bench_times_take_snapshot_against_its_baseline() -> None:
    out = _bench("snapshot.py", "--items", "3000", "--repeat", "2")

    figures = re.findall(r"([\d.]+) s +([\d.]+) x baseline", out)
    assert len(figures) == 3 and all(float(s) > 0 and float(x) > 0 for s, x in figures)
    assert re.search(r"take_snapshot\(trust_digests=True\): +[\d.]+ s", out)
    assert re.search(r"baseline \(backup \+ ordered SELECT\): +[\d.]+ s", out)
    # Every turn's snapshot of the one store gave the same dataset checksum.
    assert re.search(r"dataset checksum [0-9a-f]{64};", out)
