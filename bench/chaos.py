"""The chaos matrix: every fault scenario of ``tests/chaos_scenarios.py`` with many seeds,
plus byte-flipped stores and schemathesis at scale, summed up in one table.

CI runs each scenario with one or two seeds (``tests/test_chaos.py`` and friends); this
runs the same code with more, and exits 1 if any invariant broke anywhere::

    .venv/bin/python bench/chaos.py                      # 5 seeds per scenario
    .venv/bin/python bench/chaos.py --seeds 20 --only net:
    .venv/bin/python bench/chaos.py --seeds 2 --mutants 300 --examples 50   # quicker
    .venv/bin/python bench/chaos.py --backend aws --only crash: --only net:  # moto only

The scenarios against a server process run on both backends (``--backend``): on aws,
the API and a worker on moto's server (``python -m backend_stub.localaws``'s, in this
process), rows prefixed ``aws``.

Columns: runs (seeds) and calls (migrate() calls, or requests) per scenario; faults that
struck; items lost; duplicates (extra completions, sessions, announcements); stuck
sessions (left open); 5xx answers the real server gave; leaks (files, threads, handles);
failed runs. Every run prints its seed, so one can be replayed alone.
"""

from __future__ import annotations

import argparse
import collections
import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from aws_servers import local_aws_backend, spawn_aws_server  # noqa: E402
from chaos_fuzz import mutate, run_schemathesis  # noqa: E402
from chaos_harness import Report, ServerProcess, ServerView, key_of, spawn_server  # noqa: E402
from chaos_scenarios import SCENARIOS, Env, in_process, run  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from sdk_fixtures import learning_items  # noqa: E402

from sdk import (  # noqa: E402
    LocalStore,
    MigrationClient,
    MigrationOptions,
    RetryPolicy,
    SnapshotError,
    StoreError,
)

COLUMNS = ("runs", "calls", "faults", "lost", "dups", "stuck", "5xx", "leaks", "failed")


class Row:
    def __init__(self, name: str) -> None:
        self.name = name
        self.figures = dict.fromkeys(COLUMNS, 0)
        self.seconds = 0.0
        self.failures: list[str] = []

    def add(self, report: Report) -> None:
        f = self.figures
        f["runs"] += 1
        f["calls"] += report.runs
        f["faults"] += report.faults
        f["lost"] += report.items_lost
        f["dups"] += report.duplicates
        f["stuck"] += report.stuck_sessions
        f["5xx"] += report.server_5xx
        f["leaks"] += report.leaks
        f["failed"] += not report.ok
        self.seconds += report.seconds
        if not report.ok:
            self.failures.append(str(report))


def scenarios(args: argparse.Namespace, work: Path, rows: list[Row]) -> None:
    names = [n for n in SCENARIOS if any(n.startswith(p) for p in args.only)]
    if args.backend in ("sqlite", "both"):
        needs_server = any(SCENARIOS[n].live_server for n in names)
        server = spawn_server(work / "shared-server") if needs_server else None
        run_scenarios(args, work, rows, names, server)
    live = [n for n in names if SCENARIOS[n].live_server]
    if args.backend in ("aws", "both") and live:
        # Every scenario against a server process, on the API and a worker on moto.
        with local_aws_backend() as backend:
            server = spawn_aws_server(work / "aws-server", backend)
            run_scenarios(args, work, rows, live, server, prefix="aws ")


def run_scenarios(
    args: argparse.Namespace,
    work: Path,
    rows: list[Row],
    names: list[str],
    server: ServerProcess | None,
    *,
    prefix: str = "",
) -> None:
    try:
        for name in names:
            row = Row(prefix + name)
            rows.append(row)
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                root = work / "runs" / f"{prefix.strip()}{name.replace(':', '-')}-{seed}"
                live = server if SCENARIOS[name].live_server else None
                try:
                    report = run(name, Env(root, live), seed)
                except Exception as exc:  # a harness failure is a failed run, not the end
                    report = Report(name, seed)
                    report.violate(f"the scenario raised {type(exc).__name__}: {exc}")
                row.add(report)
                print(f"  {report}  [{report.seconds:.1f} s]", file=sys.stderr, flush=True)
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if server is not None:
            server.stop()


def mutants(args: argparse.Namespace, work: Path, rows: list[Row]) -> None:
    """Byte-flipped stores: refused with a store or snapshot error and nothing uploaded,
    or (damage SQLite cannot see) migrated and verified. Nothing else, and no hang."""
    import random

    row = Row("store:byte-flipped")
    rows.append(row)
    pristine_path = work / "pristine.sqlite3"
    with LocalStore(pristine_path) as store:
        store.put_many(learning_items(90))
    pristine = pristine_path.read_bytes()
    started = time.monotonic()
    kinds: collections.Counter[str] = collections.Counter()
    with in_process(work / "mutants", seed=0) as app:
        view = ServerView(app.data_dir)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            rng = random.Random(seed)
            for n in range(args.mutants):
                report = Report(row.name, seed, faults=1)
                folder = work / "mutants" / f"{seed}-{n}"
                folder.mkdir(parents=True)
                store_path = folder / "store.sqlite3"
                content = mutate(pristine, rng)
                store_path.write_bytes(content)
                user = f"mutant-{seed}-{n}"
                kind = _migrate_mutant(app, store_path, user, report)
                kinds[kind] += 1
                if kind == "refused":
                    if view.sessions(user):
                        report.violate("a refused store reached the server", "items_lost")
                    if store_path.read_bytes() != content:
                        report.violate("the SDK wrote to a store it refused")
                elif kind == "completed":
                    with LocalStore(store_path, create=False) as s:
                        local = {key_of(i): i for i in s.iter_items()}
                    if view.cloud(user) != local:
                        report.violate("a migrated mutant's cloud differs from it", "items_lost")
                row.add(report)
                shutil.rmtree(folder, ignore_errors=True)
        row.figures["5xx"] += app.faults.real_5xx
    row.seconds = time.monotonic() - started
    print(f"  mutants: {dict(kinds)}", file=sys.stderr)


def _migrate_mutant(app: object, store: Path, user: str, report: Report) -> str:
    outcome: list[str] = []

    def attempt() -> None:
        try:
            with MigrationClient(
                http_client=app.client,  # type: ignore[attr-defined]
                user_id=user,
                token=app.token(user),  # type: ignore[attr-defined]
                store_path=store,
                retry=RetryPolicy.none(),
                options=MigrationOptions(batch_size=50, cache_dir=store.parent / "cache"),
            ) as client:
                result = client.migrate()
            outcome.append("completed" if result.verified else "unverified")
        except (StoreError, SnapshotError):
            outcome.append("refused")
        except BaseException as exc:
            outcome.append("crashed")
            report.violate(f"{store.name}: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        report.violate(f"{store}: hung")
        return "hung"
    if outcome[0] == "unverified":
        report.violate(f"{store}: completed without verification")
    return outcome[0]


def fuzz(args: argparse.Namespace, rows: list[Row]) -> None:
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        row = Row(f"input:schemathesis-{mode.value}")
        rows.append(row)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            started = time.monotonic()
            result = run_schemathesis(mode, args.examples, seed=seed)
            report = Report(row.name, seed, runs=result.requests)
            for error in result.server_errors:
                report.violate(error, "server_5xx")
            for error in result.not_problems:
                report.violate(f"not problem+json: {error}")
            report.seconds = time.monotonic() - started
            row.add(report)
            print(f"  {report}  [{result.requests} requests]", file=sys.stderr, flush=True)


def print_table(rows: list[Row]) -> None:
    width = max(len(r.name) for r in rows)
    header = f"{'scenario':<{width}}  " + "  ".join(f"{c:>6}" for c in COLUMNS) + "    time"
    print(header)
    print("-" * len(header))
    totals = dict.fromkeys(COLUMNS, 0)
    for row in rows:
        cells = "  ".join(f"{row.figures[c]:>6}" for c in COLUMNS)
        print(f"{row.name:<{width}}  {cells}  {row.seconds:>5.0f}s")
        for c in COLUMNS:
            totals[c] += row.figures[c]
    print("-" * len(header))
    cells = "  ".join(f"{totals[c]:>6}" for c in COLUMNS)
    print(f"{'total':<{width}}  {cells}  {sum(r.seconds for r in rows):>5.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per scenario (default 5)")
    parser.add_argument("--first-seed", type=int, default=100, help="first seed (default 100)")
    parser.add_argument(
        "--only", action="append", default=[], help="scenario name prefix (repeatable)"
    )
    parser.add_argument("--mutants", type=int, default=200, help="byte-flipped stores per seed")
    parser.add_argument("--examples", type=int, default=100, help="schemathesis cases per op")
    parser.add_argument(
        "--backend",
        choices=("sqlite", "aws", "both"),
        default="both",
        help="the server's backend for the scenarios against a server process; aws: the"
        " API and a worker on moto's server (default: both)",
    )
    args = parser.parse_args()
    # The SDK logs every retry as a warning: thousands here, by design. Errors still show.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")
    only = args.only or [""]
    args.only = only
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    rows: list[Row] = []
    try:
        scenarios(args, work, rows)
        if any("store:".startswith(p) or p.startswith("store:") for p in only):
            mutants(args, work, rows)
        if any("input:".startswith(p) or p.startswith("input:") for p in only):
            fuzz(args, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(rows)
    failures = [f for row in rows for f in row.failures]
    if failures:
        print(f"\n{len(failures)} failed run(s):")
        for failure in failures:
            print(f"  {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
