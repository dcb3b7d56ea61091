"""Every fault scenario, as a function of a seed: CI runs each with a seed or two
(``tests/test_chaos.py``), ``bench/chaos.py`` with many, and both read the same
:class:`~chaos_harness.Report`.

A scenario builds a :class:`~chaos_harness.World`, migrates it while one kind of fault
strikes at a seeded moment, stops the fault, lets the migration finish, and checks every
invariant with :func:`~chaos_harness.check_world`. The families:

- ``crash:*``: a client process SIGKILLed at each named failpoint of the SDK, at a random
  boundary, at a random time, and a second time while it recovers;
- ``net:*``: a fault proxy between the SDK and a server process (latency, resets,
  truncated bodies, black hole, refused, flapping);
- ``server:*``: 500s, 503/429 with every kind of ``Retry-After``, the server process
  killed and restarted, the session expiring mid-upload;
- ``disk:*``: disk full under the snapshot and the journal, failing fsync, the store
  locked by the app or written to while it is snapshotted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
from chaos_harness import (
    Observations,
    ProcessResources,
    Report,
    ServerProcess,
    ServerView,
    World,
    check_no_leaks,
    check_world,
    make_world,
    result_dict,
    seed_world,
    spawn_server,
)
from fault_proxy import Fault, FaultProxy
from server_fixtures import TestClient

from backend_stub import Settings, create_app, issue_token
from backend_stub.storage.sqlite import SQLiteStorage
from sdk import (
    JournalError,
    LocalStore,
    MigrationClient,
    MigrationError,
    MigrationOptions,
    MigrationOutcome,
    OfflineError,
    Progress,
    ProgressPhase,
    RetryPolicy,
    ServerError,
    SnapshotError,
    StoreBusyError,
)
from sdk._failpoints import ENV_VAR, MIGRATION_NAMES
from sdk._transport.http import Transport
from sdk.contract import Limits

__all__ = [
    "AWS_CI_SCENARIOS",
    "SCENARIOS",
    "Entry",
    "Env",
    "InProcess",
    "in_process",
    "page_quota",
    "run",
]

CHILD = str(Path(__file__).with_name("migrate_child.py"))

#: Short budgets so a fault costs seconds, not minutes, and nothing can hang a test.
FAST_RETRY = RetryPolicy(
    attempts=4, timeout=4.0, initial=0.05, max_delay=0.2, jitter=0.05, max_retry_after=0.5
)
READ_TIMEOUT = 1.0
#: A whole scenario, every attempt included, ends well within this.
SCENARIO_DEADLINE = 90.0


@dataclasses.dataclass
class Env:
    """Where a scenario runs: a fresh folder, and the shared server process if any."""

    root: Path
    server: ServerProcess | None = None

    def user(self, scenario: str, seed: int) -> str:
        tag = "".join(ch if ch.isalnum() else "-" for ch in scenario)
        return f"{tag}-{seed}-{uuid.uuid4().hex[:6]}"


Scenario = Callable[[Env, int], Report]


@dataclasses.dataclass(frozen=True)
class Entry:
    fn: Scenario
    live_server: bool  # needs Env.server
    ci_seeds: tuple[int, ...] = (1,)


SCENARIOS: dict[str, Entry] = {}


def scenario(
    name: str, *, live_server: bool = False, ci_seeds: tuple[int, ...] = (1,)
) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = Entry(fn, live_server, ci_seeds)
        return fn

    return register


def run(name: str, env: Env, seed: int) -> Report:
    started = time.monotonic()
    report = SCENARIOS[name].fn(env, seed)
    report.seconds = time.monotonic() - started
    if report.seconds > SCENARIO_DEADLINE:
        report.violate(f"took {report.seconds:.0f} s: something hung")
    return report


# ------------------------------------------------------------------------------ crash matrix

#: Failpoints reached more than once per migration: the kill lands at a seeded hit.
_REPEATED = {"batch.sent": 12, "batch.answered": 12, "journal.write": 20}


def _child(
    env: Env,
    world: World,
    *,
    failpoints: str | None = None,
    in_flight: int = 1,
    kill_after: float | None = None,
) -> tuple[int, list[str]]:
    assert env.server is not None
    child_env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if failpoints:
        child_env[ENV_VAR] = failpoints
    child_env["MIGRATE_CHILD_IN_FLIGHT"] = str(in_flight)
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            [
                sys.executable,
                CHILD,
                env.server.url,
                world.user,
                env.server.token(world.user),
                str(world.store),
                str(world.cache),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=child_env,
        )
        assert proc.stdout is not None
        # A timed kill counts from the migration's first progress report, not from the
        # interpreter's start, so it lands inside the migration.
        first = proc.stdout.readline() if kill_after is not None else ""
        try:
            out, _ = proc.communicate(timeout=kill_after if kill_after is not None else 60)
        except subprocess.TimeoutExpired:
            proc.kill()  # the random-time kill (or a hung child: reported as such below)
            out, _ = proc.communicate()
            if kill_after is None:
                return -999, [*out.splitlines(), "error Hang the child ran 60 s"]
        errors.seek(0)
        err = errors.read()
    lines = (first + out).splitlines()
    if proc.returncode not in (0, -9):
        lines.append(f"error Crash rc={proc.returncode} {err.strip()[-500:]}")
    return proc.returncode, lines


def _crash_world(
    env: Env, name: str, seed: int, *, items: int = 120
) -> tuple[World, ServerView, Observations]:
    assert env.server is not None
    world = make_world(env.root / "world", env.user(name, seed), items=items)
    env.server.seed_world(world)
    return world, env.server.view(), Observations()


def _recover(
    env: Env, world: World, obs: Observations, report: Report, *, failpoints: str | None = None
) -> int:
    rc, lines = _child(env, world, failpoints=failpoints)
    obs.read_child_lines(lines)
    report.runs += 1
    for line in lines:
        if line.startswith("error"):
            report.violate(f"the recovery run failed: {line}")
    return rc


def _crash_at(failpoint: str) -> Scenario:
    def crash(env: Env, seed: int) -> Report:
        name = f"crash:{failpoint}"
        report = Report(name, seed, runs=0)
        world, view, obs = _crash_world(env, name, seed)
        at = random.Random(seed).randint(1, _REPEATED[failpoint]) if failpoint in _REPEATED else 1
        errors_before = env.server.server_errors() if env.server else 0
        rc, lines = _child(env, world, failpoints=f"{failpoint}=kill@{at}")
        obs.read_child_lines(lines)
        report.runs += 1
        report.faults += rc == -9
        if rc != -9:
            report.violate(f"failpoint {failpoint}@{at} was never reached (rc={rc}): {lines[-1:]}")
        elif failpoint != "cleanup.before" and any(
            line.startswith("event MigrationCompleted") for line in lines
        ):
            report.violate("the killed run announced completion")
        _recover(env, world, obs, report)
        check_world(world, view, obs, report)
        if env.server:
            report.server_5xx = env.server.server_errors() - errors_before
        return report

    return crash


for _name in MIGRATION_NAMES:  # the sync's are crashed in tests/test_sync_crash.py
    scenario(f"crash:{_name}", live_server=True)(_crash_at(_name))


@scenario("crash:random-boundary", live_server=True, ci_seeds=(3,))
def crash_random_boundary(env: Env, seed: int) -> Report:
    """SIGKILL at the n-th step boundary, whatever its name."""
    report = Report("crash:random-boundary", seed, runs=0)
    world, view, obs = _crash_world(env, report.scenario, seed)
    rng = random.Random(seed)
    rc, lines = _child(
        env, world, failpoints=f"*=kill@{rng.randint(1, 40)}", in_flight=rng.choice((1, 2))
    )
    obs.read_child_lines(lines)
    report.runs += 1
    report.faults += rc == -9
    _recover(env, world, obs, report)
    check_world(world, view, obs, report)
    return report


@scenario("crash:random-time", live_server=True, ci_seeds=(5,))
def crash_random_time(env: Env, seed: int) -> Report:
    """SIGKILL at a random instant (anywhere, even inside SQLite or a send)."""
    report = Report("crash:random-time", seed, runs=0)
    # Big enough that the child is still busy when the kill comes (a second or so).
    world, view, obs = _crash_world(env, report.scenario, seed, items=600)
    rng = random.Random(seed)
    rc, lines = _child(env, world, kill_after=rng.uniform(0.0, 0.6), in_flight=rng.choice((1, 2)))
    obs.read_child_lines(lines)
    report.runs += 1
    report.faults += rc == -9
    if rc not in (0, -9):
        report.violate(f"the first run ended with {rc}: {lines[-1:]}")
    _recover(env, world, obs, report)
    check_world(world, view, obs, report)
    return report


@scenario("crash:twice", live_server=True, ci_seeds=(7,))
def crash_twice(env: Env, seed: int) -> Report:
    """Killed at a failpoint, then killed again while recovering, then left to finish."""
    report = Report("crash:twice", seed, runs=0)
    world, view, obs = _crash_world(env, report.scenario, seed)
    rng = random.Random(seed)
    first = rng.choice([n for n in MIGRATION_NAMES if n != "cleanup.before"])
    at = rng.randint(1, _REPEATED.get(first, 1))
    rc, lines = _child(env, world, failpoints=f"{first}=kill@{at}")
    obs.read_child_lines(lines)
    report.runs += 1
    report.faults += rc == -9
    if rc != -9:
        report.violate(f"the first kill ({first}@{at}) never happened")
    rc = _recover(env, world, obs, report, failpoints=f"*=kill@{rng.randint(1, 8)}")
    report.faults += rc == -9
    _recover(env, world, obs, report)
    check_world(world, view, obs, report)
    return report


#: The scenarios ``make test`` also runs on the aws backend (every ``live_server`` one
#: can, and ``bench/chaos.py`` does): a kill mid-upload, one after ``complete`` answered,
#: and a connection reset after requests reached the server.
AWS_CI_SCENARIOS = ("crash:batch.answered", "crash:complete.after", "net:reset-after")


# ------------------------------------------------------------------------------ in-process runs


def _client(
    world: World,
    http: httpx.Client,
    obs: Observations,
    token: str,
    *,
    retry: RetryPolicy = FAST_RETRY,
    in_flight: int = 2,
    on_progress: Callable[[Progress], None] | None = None,
) -> MigrationClient:
    def progress(p: Progress) -> None:
        obs.on_progress(p)
        if on_progress is not None:
            on_progress(p)

    return MigrationClient(
        http_client=http,
        user_id=world.user,
        token=token,
        store_path=world.store,
        options=MigrationOptions(batch_size=10, max_in_flight=in_flight, cache_dir=world.cache),
        retry=retry,
        on_progress=progress,
        on_event=obs.on_event,
    )


def migrate_until_done(
    make: Callable[[], MigrationClient],
    obs: Observations,
    report: Report,
    *,
    heal: Callable[[], None],
    heal_after: int,
    expected: tuple[type[MigrationError], ...] = (OfflineError, ServerError),
    attempts: int = 8,
) -> None:
    """Call migrate() as an app would after each failure; the fault stops after
    ``heal_after`` failed calls. Errors other than ``expected`` are violations."""
    deadline = time.monotonic() + SCENARIO_DEADLINE
    failures = 0
    for _ in range(attempts):
        if failures == heal_after:
            heal()
        obs.new_run()
        report.runs += 1
        try:
            with make() as client:
                result = client.migrate()
        except MigrationError as exc:
            failures += 1
            obs.errors.append(f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, expected):
                report.violate(f"unexpected {type(exc).__name__} during the fault: {exc}")
            if not str(exc).strip():
                report.violate(f"{type(exc).__name__} without a message")
        else:
            obs.results.append(result_dict(result))
            if result.outcome is MigrationOutcome.COMPLETED:
                return
        if time.monotonic() > deadline:
            report.violate("the migration did not finish before the deadline")
            return
        if failures > heal_after:
            heal()
    report.violate(f"not completed after {attempts} calls: {obs.errors[-2:]}")


# ------------------------------------------------------------------------------ network faults


_ACK_POINTS = ("start", "upload", "resolve", "complete")


def _selector(where: str) -> Callable[[str, str], bool]:
    return {
        "start": lambda m, p: p.endswith(("/start", "/detect")),
        "upload": lambda m, p: m == "PUT",
        "resolve": lambda m, p: "/conflicts" in p or "resolve-conflicts" in p,
        "complete": lambda m, p: "/complete" in p or "/summary" in p,
        "any": lambda m, p: True,
    }[where]


def _network(fault: Fault) -> Scenario:
    def net(env: Env, seed: int) -> Report:
        assert env.server is not None
        name = f"net:{fault.value}"
        report = Report(name, seed, runs=0)
        rng = random.Random(seed)
        world = make_world(env.root / "world", env.user(name, seed))
        env.server.seed_world(world)
        view = env.server.view()
        obs = Observations()
        where = rng.choice((*_ACK_POINTS, "any"))
        sometimes = where in ("upload", "any") and fault not in (Fault.BLACK_HOLE, Fault.REFUSED)
        rate = rng.choice((0.3, 0.6, 1.0)) if sometimes else 1.0
        after_batches = rng.randint(0, 6)
        errors_before = env.server.server_errors()
        before = ProcessResources.now()
        with FaultProxy(env.server.address, seed=seed, latency=READ_TIMEOUT * 1.5) as proxy:
            # At start (or at the few resolve/complete calls) every call is hit; mid-upload a
            # seeded share of the batches.
            armed = {"done": where == "start"}
            if where == "start":
                proxy.inject(fault, rate=rate, only=_selector(where))

            def arm(p: Progress) -> None:
                # The fault strikes mid-migration: after a seeded number of batches.
                if not armed["done"] and (
                    (p.phase is ProgressPhase.UPLOADING and p.items_done >= after_batches * 10)
                    or p.phase in (ProgressPhase.RESOLVING, ProgressPhase.COMPLETING)
                ):
                    armed["done"] = True
                    proxy.inject(fault, rate=rate, only=_selector(where))

            http = httpx.Client(base_url=proxy.url, timeout=READ_TIMEOUT)
            token = env.server.token(world.user)
            with http:
                migrate_until_done(
                    lambda: _client(world, http, obs, token, on_progress=arm),
                    obs,
                    report,
                    heal=proxy.heal,
                    heal_after=rng.randint(1, 2),
                )
            report.server_5xx = proxy.stats.upstream_5xx
            report.faults = sum(proxy.stats.faults.values())
        if not report.faults:
            report.violate(f"no {fault.value} fault struck (at {where}, rate {rate})")
        check_no_leaks(before, report)
        check_world(world, view, obs, report)
        logged = env.server.server_errors() - errors_before
        if logged:
            report.violate(f"the server logged {logged} unexpected error(s)", "server_5xx", logged)
        return report

    return net


for _fault in Fault:
    scenario(f"net:{_fault.value}", live_server=True, ci_seeds=(11,))(_network(_fault))


# ------------------------------------------------------------------------------ server faults


ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Any]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


class ServerFaults:
    """ASGI middleware: seeded fault answers, either instead of the app (the request never
    reached it) or after it (it committed, the answer is lost), and a count of the real
    app's own 5xx answers (which must stay zero)."""

    def __init__(self, app: ASGIApp, *, seed: int) -> None:
        self.app = app
        self.rng = random.Random(seed)
        self.status: int | None = None
        self.rate = 0.0
        self.headers: Callable[[], list[tuple[bytes, bytes]]] = list
        self.injected = 0
        self.real_5xx = 0

    def inject(
        self, status: int, *, rate: float, headers: Callable[[], list[tuple[bytes, bytes]]] = list
    ) -> None:
        self.status, self.rate, self.headers = status, rate, headers

    def heal(self) -> None:
        self.status = None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.status is None or self.rng.random() >= self.rate:
            await self.app(scope, receive, self._counting(send))
            return
        status = self.status
        if self.rng.random() < 0.5:  # after: the request took effect; the answer is lost

            async def swallow(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start" and message["status"] >= 500:
                    self.real_5xx += 1

            await self.app(scope, receive, swallow)
        self.injected += 1
        body = b'{"title":"injected","status":%d}' % status
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"date", formatdate(usegmt=True).encode()),
                    *self.headers(),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _counting(self, send: Any) -> Any:
        async def counting(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 500:
                self.real_5xx += 1
            await send(message)

        return counting


@dataclasses.dataclass
class InProcess:
    """The real app on a SQLite folder, wrapped in :class:`ServerFaults`, served in-process."""

    data_dir: Path
    settings: Settings
    faults: ServerFaults
    client: TestClient
    clock: Callable[[], int]

    def token(self, user: str) -> str:
        return issue_token(user, self.settings.jwt_secret)


@contextlib.contextmanager
def in_process(
    root: Path, seed: int, *, clock: Callable[[], int] | None = None, limits: Limits | None = None
) -> Iterator[InProcess]:
    data_dir = root / "server"
    settings = Settings(data_dir=data_dir, limits=limits or Limits())
    storage = SQLiteStorage.open(data_dir)
    now = clock or (lambda: int(time.time() * 1000))
    faults = ServerFaults(create_app(settings, storage=storage, clock=now), seed=seed)
    try:
        with TestClient(faults, base_url="http://testserver") as client:  # type: ignore[arg-type]
            yield InProcess(data_dir, settings, faults, client, now)
    finally:
        storage.close()


def _retry_after(kind: str, rng: random.Random) -> Callable[[], list[tuple[bytes, bytes]]]:
    def header() -> list[tuple[bytes, bytes]]:
        value = {
            "seconds": str(rng.choice((0, 1))),
            "date": formatdate(time.time() + rng.choice((0, 1)), usegmt=True),
            "garbage": rng.choice(("soon", "-5", "NaN", "1e9", "Thu, 99 Foo 1900", "")),
            "huge": rng.choice(("999999999", "9" * 400, formatdate(4e9, usegmt=True))),
        }[kind]
        return [(b"retry-after", value.encode())]

    return header


def _server_fault(status: int, kind: str | None) -> Scenario:
    def server_fault(env: Env, seed: int) -> Report:
        name = f"server:{status}" + (f"-retry-after-{kind}" if kind else "")
        report = Report(name, seed, runs=0)
        rng = random.Random(seed)
        world = make_world(env.root / "world", env.user(name, seed))
        obs = Observations()
        slept: list[float] = []
        before = ProcessResources.now()
        with in_process(env.root, seed) as server:
            seed_world(world, server.data_dir)
            server.faults.inject(
                status,
                rate=rng.choice((0.2, 0.4)),
                headers=_retry_after(kind, rng) if kind else list,
            )

            def make() -> MigrationClient:
                client = _client(world, server.client, obs, server.token(world.user))
                # The same transport, but its waits recorded (and kept short).
                client.transport = Transport(
                    server.client,
                    user_id=world.user,
                    token=server.token(world.user),
                    retry=dataclasses.replace(FAST_RETRY, attempts=6, timeout=30.0),
                    sleep=lambda s: (slept.append(s), time.sleep(min(s, 0.01))),
                )
                return client

            migrate_until_done(
                make, obs, report, heal=server.faults.heal, heal_after=rng.randint(1, 2)
            )
            report.server_5xx = server.faults.real_5xx
            report.faults = server.faults.injected
            if server.faults.injected == 0:
                report.violate("no fault was injected")
            view = ServerView(server.data_dir)
            check_world(world, view, obs, report)
        too_long = [s for s in slept if s > FAST_RETRY.max_retry_after]
        if too_long:
            report.violate(f"waited {max(too_long)} s, past max_retry_after")
        check_no_leaks(before, report)
        return report

    return server_fault


scenario("server:500")(_server_fault(500, None))
scenario("server:503-retry-after-seconds")(_server_fault(503, "seconds"))
scenario("server:429-retry-after-date")(_server_fault(429, "date"))
scenario("server:503-retry-after-garbage")(_server_fault(503, "garbage"))
scenario("server:429-retry-after-huge")(_server_fault(429, "huge"))


@scenario("server:killed", ci_seeds=(13,))
def server_killed(env: Env, seed: int) -> Report:
    """The server process SIGKILLed mid-migration and started again on its data folder."""
    report = Report("server:killed", seed, runs=0)
    rng = random.Random(seed)
    data_dir = env.root / "server"
    server = spawn_server(data_dir)
    world = make_world(env.root / "world", env.user(report.scenario, seed), items=300)
    seed_world(world, data_dir)
    obs = Observations()
    kill_at = rng.randint(1, 25) * 10
    restarts: list[ServerProcess] = [server]
    try:
        with FaultProxy(server.address, seed=seed) as proxy:

            def kill(p: Progress) -> None:
                if (
                    p.phase is ProgressPhase.UPLOADING
                    and p.items_done >= kill_at
                    and len(restarts) == 1
                ):
                    restarts[-1].kill()
                    restarts.append(spawn_server(data_dir))
                    proxy.set_upstream(restarts[-1].address)

            with httpx.Client(base_url=proxy.url, timeout=READ_TIMEOUT) as http:
                migrate_until_done(
                    lambda: _client(world, http, obs, server.token(world.user), on_progress=kill),
                    obs,
                    report,
                    heal=lambda: None,
                    heal_after=99,
                )
            report.server_5xx = proxy.stats.upstream_5xx + sum(
                s.server_errors() for s in restarts[-1:]
            )
        report.faults = len(restarts) - 1
        if len(restarts) != 2:
            report.violate("the server was never killed")
        check_world(world, ServerView(data_dir), obs, report)
    finally:
        for s in restarts:
            s.stop()
    return report


@scenario("server:session-expired", ci_seeds=(17,))
def session_expired(env: Env, seed: int) -> Report:
    """The session expires mid-upload: the SDK starts over with a fresh snapshot."""
    report = Report("server:session-expired", seed, runs=0)
    rng = random.Random(seed)
    world = make_world(env.root / "world", env.user(report.scenario, seed))
    obs = Observations()
    now = [int(time.time() * 1000)]
    expire_at = rng.randint(1, 10) * 10
    expired = {"done": False}
    with in_process(env.root, seed, clock=lambda: now[0]) as server:
        seed_world(world, server.data_dir)
        ttl_ms = server.settings.session_ttl_ms

        def expire(p: Progress) -> None:
            if (
                p.phase is ProgressPhase.UPLOADING
                and p.items_done >= expire_at
                and not expired["done"]
            ):
                expired["done"] = True
                report.faults += 1
                now[0] += ttl_ms + 1000

        migrate_until_done(
            lambda: _client(
                world, server.client, obs, server.token(world.user), on_progress=expire
            ),
            obs,
            report,
            heal=lambda: None,
            heal_after=99,
        )
        view = ServerView(server.data_dir)
        sessions = view.sessions(world.user)
        if len(sessions) != 2 or sessions[0].status != "cancelled":
            report.violate(
                f"expected the expired session cancelled and a second one, got "
                f"{[s.status for s in sessions]}"
            )
        if view.staged_keys(sessions[0].id):
            report.violate("the expired session's staged items were not purged")
        report.server_5xx = server.faults.real_5xx
        check_world(world, view, obs, report, single_session=False, now=now[0])
    return report


# ------------------------------------------------------------------------------ disk faults


@contextlib.contextmanager
def page_quota(suffix: str, pages: int) -> Iterator[None]:
    """SQLite files whose name ends with ``suffix`` cannot grow past ``pages`` pages: the
    disk is full for them (SQLITE_FULL, as from a full file system)."""
    real = sqlite3.connect

    def connect(target: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(target, *args, **kwargs)
        if str(target).endswith(suffix):
            conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]
    try:
        yield
    finally:
        sqlite3.connect = real  # type: ignore[assignment]


def _disk_scenario(
    name: str,
    fault: Callable[[World, random.Random], contextlib.AbstractContextManager[None]],
    expected: tuple[type[MigrationError], ...],
    *,
    nothing_uploaded: bool,
) -> Scenario:
    def disk(env: Env, seed: int) -> Report:
        report = Report(name, seed, runs=0)
        rng = random.Random(seed)
        world = make_world(env.root / "world", env.user(name, seed))
        obs = Observations()
        before = ProcessResources.now()
        with in_process(env.root, seed) as server:
            seed_world(world, server.data_dir)
            view = ServerView(server.data_dir)
            token = server.token(world.user)
            with fault(world, rng):
                obs.new_run()
                report.runs += 1
                try:
                    with _client(world, server.client, obs, token) as client:
                        client.migrate()
                    report.violate("the migration succeeded despite the fault")
                except expected as exc:
                    report.faults += 1
                    obs.errors.append(f"{type(exc).__name__}: {exc}")
                except MigrationError as exc:
                    report.violate(f"the fault surfaced as {type(exc).__name__}: {exc}")
            if nothing_uploaded and view.sessions(world.user):
                report.violate("something was uploaded although the device failed first")
            migrate_until_done(
                lambda: _client(world, server.client, obs, token),
                obs,
                report,
                heal=lambda: None,
                heal_after=99,
            )
            report.server_5xx = server.faults.real_5xx
            check_world(world, view, obs, report)
        check_no_leaks(before, report)
        return report

    return disk


@contextlib.contextmanager
def _snapshot_disk_full(world: World, rng: random.Random) -> Iterator[None]:
    with page_quota(".partial", rng.randint(1, 4)):
        yield


@contextlib.contextmanager
def _journal_disk_full(world: World, rng: random.Random) -> Iterator[None]:
    # The empty journal takes 5 pages; it then grows with every acknowledged batch.
    with page_quota(".migration-journal", rng.randint(1, 7)):
        yield


@contextlib.contextmanager
def _fsync_fails(world: World, rng: random.Random) -> Iterator[None]:
    real = os.fsync

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    os.fsync = fsync
    try:
        yield
    finally:
        os.fsync = real


@contextlib.contextmanager
def _store_locked(world: World, rng: random.Random) -> Iterator[None]:
    # The app holds the store in exclusive locking mode: nobody else can even read it.
    conn = sqlite3.connect(world.store, isolation_level=None)
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("UPDATE store_meta SET value = value WHERE key = 'format'")
    conn.execute("COMMIT")
    try:
        yield
    finally:
        conn.close()


scenario("disk:full-under-snapshot")(
    _disk_scenario(
        "disk:full-under-snapshot", _snapshot_disk_full, (SnapshotError,), nothing_uploaded=True
    )
)
scenario("disk:full-under-journal")(
    _disk_scenario(
        "disk:full-under-journal", _journal_disk_full, (JournalError,), nothing_uploaded=False
    )
)
scenario("disk:fsync-fails")(
    _disk_scenario("disk:fsync-fails", _fsync_fails, (SnapshotError,), nothing_uploaded=True)
)
scenario("disk:store-locked")(
    _disk_scenario("disk:store-locked", _store_locked, (StoreBusyError,), nothing_uploaded=True)
)


@scenario("disk:written-during-snapshot", ci_seeds=(19,))
def written_during_snapshot(env: Env, seed: int) -> Report:
    """The app commits pairs of items while the SDK snapshots: the snapshot (the items the
    migration staged) holds whole pairs, a prefix of them, one point in time; the pairs
    written after it reach the cloud through the sync that ends the migration."""
    report = Report("disk:written-during-snapshot", seed, runs=0)
    world = make_world(env.root / "world", env.user(report.scenario, seed), items=2000)
    obs = Observations()
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        with LocalStore(world.store) as store:
            n = 0
            while not stop.is_set():
                store.put_many(
                    [
                        {"collection": "pairs", "key": f"a-{n:05d}", "data": {"n": n}},
                        {"collection": "pairs", "key": f"b-{n:05d}", "data": {"n": n}},
                    ]
                )
                written.append(n)
                n += 1

    def stop_writing(p: Progress) -> None:
        if p.phase is ProgressPhase.STARTING:
            stop.set()

    with in_process(env.root, seed) as server:
        seed_world(world, server.data_dir)
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            # The first pair lands before the snapshot; the writer keeps going through it.
            deadline = time.monotonic() + 10
            while not written and time.monotonic() < deadline:
                time.sleep(0.001)
            migrate_until_done(
                lambda: _client(
                    world, server.client, obs, server.token(world.user), on_progress=stop_writing
                ),
                obs,
                report,
                heal=lambda: None,
                heal_after=99,
            )
        finally:
            stop.set()
            thread.join()
        view = ServerView(server.data_dir)
        done = [s for s in view.sessions(world.user) if s.status == "completed"]
        staged = view.staged_keys(done[-1].id) if done else []
        snapped = sorted(k for (c, k) in staged if c == "pairs")
        got = sorted({int(k[2:]) for k in snapped})
        whole = all(f"a-{n:05d}" in snapped and f"b-{n:05d}" in snapped for n in got)
        if not whole or got != list(range(len(got))):
            report.violate(f"the snapshot is not one point in time: pairs {got[:5]}...")
        if not got or len(got) >= len(written):
            report.violate(
                f"the writes did not straddle the snapshot ({len(got)} of {len(written)} pairs)"
            )
        cloud_pairs = {k for (c, k) in view.cloud(world.user) if c == "pairs"}
        late = [n for n in written if f"a-{n:05d}" not in cloud_pairs]
        if late:
            report.violate(
                f"{len(late)} pair(s) written during the migration never reached the cloud",
                "items_lost",
            )
        report.faults = len(written)
        pair_keys = {("pairs", f"{x}-{n:05d}") for n in written for x in "ab"}
        check_world(world, view, obs, report, local_extras=pair_keys)
        report.server_5xx = server.faults.real_5xx
    return report
