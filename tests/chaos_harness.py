"""The chaos harness: a world to migrate, servers to fault, and the invariants every fault
test checks afterwards.

A :class:`World` is one user's device store (learning data, a tombstone) plus cloud data
another device left: items that conflict, items already identical, items only the cloud
has, and a bystander user whose cloud data nobody may touch. After the faults stop and
the migration finishes, :func:`check_world` compares what the device and the server hold
with what they held before and fills a :class:`Report`:

- no loss: the cloud holds every local item (resolved conflicts: the winning version);
- no duplicates: one completed session, one ``MigrationCompleted`` on each side;
- checksums match: the result's, the server's recomputed one and the device's own;
- the store is untouched except for resolved conflicts (and marked migrated);
- progress never goes backwards; no session is left open ("stuck");
- no cross-user access: the bystander's cloud data is byte for byte the same;
- no leaked snapshot/temp files, SDK threads or file handles.

The server is inspected through its SQLite file (on the aws backend, through its storage:
``tests/aws_servers.py``), read-only, so the same checks serve an
in-process app and a server process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from sdk_fixtures import learning_items

from backend_stub import Settings, issue_token
from backend_stub.items import seed_cloud_items
from backend_stub.storage.sqlite import DATABASE_NAME, SQLiteStorage
from sdk import LocalState, LocalStore, MigrationCompleted, Progress, detect_local
from sdk._migration.journal import Journal, journal_path_for
from sdk.contract import Item, dataset_checksum_of

Key = tuple[str, str]

FINAL = ("completed", "failed", "cancelled", "expired")
#: Files a store's folder may hold after a migration, besides the store itself.
STORE_SIDECARS = ("-wal", "-shm", ".migration-journal", ".migration-lock")


# ------------------------------------------------------------------------------ report


@dataclasses.dataclass
class Report:
    """What one run of a scenario broke; all zeros and no violations means it held."""

    scenario: str
    seed: int
    runs: int = 1
    faults: int = 0  # faults that struck (kills, injected answers, dropped connections)
    items_lost: int = 0
    duplicates: int = 0
    stuck_sessions: int = 0
    server_5xx: int = 0
    leaks: int = 0
    violations: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def violate(self, what: str, counter: str | None = None, n: int = 1) -> None:
        if counter is not None:
            setattr(self, counter, getattr(self, counter) + n)
        self.violations.append(what)

    def __str__(self) -> str:
        problems = "; ".join(self.violations) or "ok"
        return f"{self.scenario} (seed {self.seed}): {problems}"


# ------------------------------------------------------------------------------ world


@dataclasses.dataclass
class World:
    """One user's device and cloud, before the migration."""

    root: Path
    user: str
    bystander: str
    store: Path
    cache: Path
    local: dict[Key, Item]
    cloud: dict[Key, Item]
    bystander_cloud: dict[Key, Item]

    @property
    def conflict_keys(self) -> set[Key]:
        return {k for k, item in self.cloud.items() if k in self.local and item != self.local[k]}


def key_of(item: Item) -> Key:
    return (item["collection"], item["key"])


def make_world(root: Path, user: str, *, items: int = 120, conflicts: int = 5) -> World:
    """A store of ``items`` learning items (+2), and the user's and a bystander's cloud."""
    root.mkdir(parents=True, exist_ok=True)
    local_items = learning_items(items)
    store = root / "device" / "store.sqlite3"
    with LocalStore(store) as s:
        s.put_many(local_items)
        local = {key_of(i): i for i in s.iter_items()}
    ordered = sorted(local)
    cloud: dict[Key, Item] = {}
    for key in ordered[:conflicts]:  # another device changed these
        cloud[key] = dict(local[key], data={"other": True}, updatedAt=5)  # type: ignore[assignment]
    for key in ordered[conflicts : conflicts + 3]:  # already identical in the cloud
        cloud[key] = local[key]
    for n in range(3):  # only the cloud has these
        item = Item(
            collection="flashcards",
            key=f"cloud-only-{n}",
            data={"n": n},
            updatedAt=9,
            deleted=False,
        )
        cloud[key_of(item)] = item
    bystander_cloud = {key_of(i): i for i in learning_items(4)}
    return World(
        root=root,
        user=user,
        bystander=f"{user}-bystander",
        store=store,
        cache=root / "cache",
        local=local,
        cloud=cloud,
        bystander_cloud=bystander_cloud,
    )


def seed_world(world: World, data_dir: Path) -> None:
    """Write the world's cloud data into a server's database (the server may be running)."""
    storage = SQLiteStorage.open(data_dir)
    try:
        seed_cloud_items(storage, world.user, world.cloud.values(), device_id="tablet")
        seed_cloud_items(storage, world.bystander, world.bystander_cloud.values(), device_id="pc")
    finally:
        storage.close()


# ------------------------------------------------------------------------------ server view


@dataclasses.dataclass(frozen=True)
class SessionRow:
    id: str
    status: str
    expires_at: int
    batch_count: int
    item_count: int
    cloud_checksum: str | None


class ServerView:
    """Read-only queries on a server's SQLite database."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / DATABASE_NAME

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            yield conn
        finally:
            conn.close()

    def sessions(self, user: str) -> list[SessionRow]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, status, expires_at, manifest, result FROM sessions WHERE user_id = ?"
                " ORDER BY created_at",
                (user,),
            ).fetchall()
        found = []
        for sid, status, expires, manifest, result in rows:
            m = json.loads(manifest)
            r = json.loads(result) if result else {}
            found.append(
                SessionRow(
                    sid, status, expires, m["batchCount"], m["itemCount"], r.get("cloudChecksum")
                )
            )
        return found

    def received(self, session_id: str) -> list[int]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT seq FROM batches WHERE session_id = ? ORDER BY seq", (session_id,)
            ).fetchall()
        return [seq for (seq,) in rows]

    def staged_keys(self, session_id: str) -> list[Key]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT s.collection, s.key FROM staged_items s JOIN session_numbers n"
                " ON n.number = s.session_no WHERE n.session_id = ?"
                " ORDER BY collection, key",
                (session_id,),
            ).fetchall()
        return [(c, k) for c, k in rows]

    def cloud(self, user: str) -> dict[Key, Item]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT collection, key, data, updated_at, deleted FROM cloud_items"
                " WHERE user_id = ?",
                (user,),
            ).fetchall()
        return {
            (c, k): Item(collection=c, key=k, data=json.loads(d), updatedAt=u, deleted=bool(x))
            for c, k, d, u, x in rows
        }

    def events(self, user: str, type: str) -> int:
        with self._conn() as conn:
            (n,) = conn.execute(
                "SELECT count(*) FROM events WHERE user_id = ? AND type = ?", (user, type)
            ).fetchone()
        return int(n)


# ------------------------------------------------------------------------------ observations


@dataclasses.dataclass
class Observations:
    """What the SDK told the app over every run of one migration."""

    progress: list[list[tuple[str, int, int]]] = dataclasses.field(default_factory=list)
    events: list[str] = dataclasses.field(default_factory=list)
    results: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    def new_run(self) -> None:
        self.progress.append([])

    def on_progress(self, p: Progress) -> None:
        if not self.progress:
            self.new_run()
        self.progress[-1].append((p.phase.value, p.items_done, p.items_total))

    def on_event(self, event: object) -> None:
        self.events.append(type(event).__name__)

    def read_child_lines(self, lines: Iterable[str]) -> None:
        """Fold in what ``tests/migrate_child.py`` printed (one run)."""
        self.new_run()
        for line in lines:
            kind, _, rest = line.partition(" ")
            fields = rest.split()
            if kind == "progress" and len(fields) == 3 and fields[2].isdigit():
                # (A killed child's last line may be cut short: it is skipped.)
                phase, done, total = fields
                self.progress[-1].append((phase, int(done), int(total)))
            elif kind == "event":
                self.events.append(rest.split()[0])
            elif kind == "result":
                self.results.append(json.loads(rest))
            elif kind == "error":
                self.errors.append(rest)


def result_dict(result: Any) -> dict[str, Any]:
    return {
        "outcome": result.outcome.value,
        "session_id": result.session_id,
        "verified": result.verified,
        "cloud_checksum": result.cloud_checksum,
        "item_count": result.item_count,
    }


# ------------------------------------------------------------------------------ invariants


def check_world(
    world: World,
    view: ServerView,
    obs: Observations,
    report: Report,
    *,
    single_session: bool = True,
    local_extras: Iterable[Key] = (),
    now: int | None = None,
) -> None:
    """Every invariant of the issue, after the faults stopped and the migration ended.
    ``now`` is the server's clock (ms), when it is not the wall clock."""
    _check_outcome(world, view, obs, report, single_session=single_session, now=now)
    _check_data(world, view, report, set(local_extras))
    _check_progress(obs, report, single_session=single_session)
    _check_files(world, report)


def _check_outcome(
    world: World,
    view: ServerView,
    obs: Observations,
    report: Report,
    *,
    single_session: bool,
    now: int | None,
) -> None:
    completed_results = [r for r in obs.results if r.get("outcome", "completed") == "completed"]
    if not completed_results:
        report.violate(f"the migration never completed once the faults stopped: {obs.errors[-3:]}")
    elif not all(r["verified"] for r in completed_results):
        report.violate("a completed migration was not verified")
    sdk_completed = obs.events.count(MigrationCompleted.__name__)
    if sdk_completed != 1:
        report.violate(
            f"the SDK announced MigrationCompleted {sdk_completed} times",
            "duplicates" if sdk_completed > 1 else None,
            max(0, sdk_completed - 1),
        )
    sessions = view.sessions(world.user)
    done = [s for s in sessions if s.status == "completed"]
    if len(done) != 1:
        report.violate(f"{len(done)} completed sessions", "duplicates", max(0, len(done) - 1))
    if single_session and len(sessions) != 1:
        report.violate(f"{len(sessions)} sessions for one migration")
    now = int(time.time() * 1000) if now is None else now
    stuck = [s for s in sessions if s.status not in FINAL and s.expires_at > now]
    if stuck:
        report.violate(
            f"sessions left open: {[s.status for s in stuck]}", "stuck_sessions", len(stuck)
        )
    server_completed = view.events(world.user, "MigrationCompleted")
    if server_completed != 1:
        report.violate(
            f"the server published MigrationCompleted {server_completed} times",
            "duplicates" if server_completed > 1 else None,
            max(0, server_completed - 1),
        )
    for session in done:
        received = view.received(session.id)
        if received != list(range(session.batch_count)):
            report.violate(f"the completed session holds batches {received}")
        if len(view.staged_keys(session.id)) != session.item_count:
            report.violate("the completed session's staged items differ from its manifest")
    if done and completed_results:
        result = completed_results[-1]
        if result["session_id"] != done[0].id:
            report.violate("the SDK's result names another session than the completed one")
        if result["cloud_checksum"] != done[0].cloud_checksum:
            report.violate("the SDK's cloud checksum is not the server's")


def _check_data(world: World, view: ServerView, report: Report, local_extras: set[Key]) -> None:
    with LocalStore(world.store, create=False) as store:
        now_local = {key_of(i): i for i in store.iter_items()}
    cloud = view.cloud(world.user)
    conflicts = world.conflict_keys
    for key, item in world.local.items():
        in_cloud = cloud.get(key)
        if key in conflicts:
            if in_cloud not in (item, world.cloud[key]):
                report.violate(f"conflict {key} holds neither version in the cloud", "items_lost")
            elif now_local.get(key) != in_cloud:
                report.violate(f"resolved conflict {key}: the device and the cloud differ")
        elif in_cloud != item:
            report.violate(
                f"item {key} is {'missing' if in_cloud is None else 'wrong'} in the cloud",
                "items_lost",
            )
        elif now_local.get(key) != item:
            report.violate(f"the store's item {key} changed though it was not in conflict")
    for key in set(now_local) - set(world.local) - local_extras:
        # After the migration the sync brings the cloud's other items down: any other
        # item is one nobody wrote.
        if now_local[key] != cloud.get(key):
            report.violate(f"the store gained an item {key} nobody wrote")
    for key in local_extras & set(cloud):
        if cloud[key] != now_local.get(key):
            report.violate(f"the app's late item {key} differs in the cloud", "items_lost")
    for key in set(world.local) - set(now_local):
        report.violate(f"the store lost item {key}", "items_lost")
    for key, item in world.cloud.items():
        if key not in world.local and cloud.get(key) != item:
            report.violate(f"the cloud-only item {key} changed")
    foreign = set(cloud) - set(world.local) - set(world.cloud) - local_extras
    if foreign:
        report.violate(f"the cloud holds {len(foreign)} items the device never had")
    if view.cloud(world.bystander) != world.bystander_cloud:
        report.violate("the bystander's cloud data changed (cross-user write)")
    if view.sessions(world.bystander):
        report.violate("a session appeared for the bystander (cross-user access)")
    detection = detect_local(world.store)
    if detection.state is not LocalState.MIGRATED:
        report.violate(f"the store is {detection.state.value}, not marked migrated")
    for session in (s for s in view.sessions(world.user) if s.status == "completed"):
        migrated = [now_local[k] for k in view.staged_keys(session.id) if k in now_local]
        if session.cloud_checksum != dataset_checksum_of(migrated):
            report.violate("the cloud checksum is not the checksum of what the device holds")


def _check_progress(obs: Observations, report: Report, *, single_session: bool) -> None:
    last = -1
    for run in obs.progress:
        uploading = [done for phase, done, _total in run if phase == "uploading"]
        # A run that starts over with a new session (it detects again) starts from zero.
        segments: list[list[int]] = [[]]
        for phase, done, _total in run:
            if phase == "detecting":
                segments.append([])
            elif phase == "uploading":
                segments[-1].append(done)
        for segment in segments:
            if segment != sorted(segment):
                report.violate(f"upload progress went backwards within a run: {segment}")
        if single_session and uploading:
            if uploading[0] < last:
                report.violate(
                    f"upload progress went backwards across a restart: {last} -> {uploading[0]}"
                )
            last = uploading[-1]
    if not any(run and run[-1][0] == "done" for run in obs.progress):
        report.violate("no run ended its progress with done")


def _check_files(world: World, report: Report) -> None:
    if world.cache.exists():
        left = sorted(p.name for p in world.cache.iterdir())
        if left:
            report.violate(f"files left in the snapshot folder: {left}", "leaks", len(left))
    name = world.store.name
    allowed = {name, *(name + suffix for suffix in STORE_SIDECARS)}
    extra = sorted(p.name for p in world.store.parent.iterdir() if p.name not in allowed)
    if extra:
        report.violate(f"files left beside the store: {extra}", "leaks", len(extra))
    with Journal(journal_path_for(world.store)) as journal:
        if journal.load() is not None:
            report.violate("the journal still holds a migration", "leaks")


# ------------------------------------------------------------------------------ leaks


@dataclasses.dataclass
class ProcessResources:
    threads: int
    fds: int

    @classmethod
    def now(cls) -> ProcessResources:
        return cls(threading.active_count(), len(os.listdir("/proc/self/fd")))


def check_no_leaks(before: ProcessResources, report: Report, *, deadline: float = 5.0) -> None:
    """Threads and file handles back where they were (polled: closing takes a moment)."""
    end = time.monotonic() + deadline
    while True:
        after = ProcessResources.now()
        if after.threads <= before.threads and after.fds <= before.fds:
            return
        if time.monotonic() > end:
            break
        time.sleep(0.02)
    names = sorted(t.name for t in threading.enumerate())
    report.violate(
        f"leaked {after.threads - before.threads} thread(s) and {after.fds - before.fds} file"
        f" handle(s); threads now: {names}",
        "leaks",
        max(0, after.threads - before.threads) + max(0, after.fds - before.fds),
    )


def poll(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.01)


# ------------------------------------------------------------------------------ server process


@dataclasses.dataclass
class ServerProcess:
    """``python -m backend_stub`` in its own process, on a loopback port."""

    data_dir: Path
    process: subprocess.Popen[str]
    port: int
    #: On the aws backend (``tests/aws_servers.py``): its resources and its worker.
    aws: Any = None
    worker: subprocess.Popen[bytes] | None = None

    def view(self) -> Any:
        """A :class:`ServerView` of this server's data (or its aws equivalent)."""
        if self.aws is None:
            return ServerView(self.data_dir)
        from aws_servers import AwsServerView

        return AwsServerView(self.aws)

    def seed_world(self, world: World) -> None:
        """:func:`seed_world`, on whichever backend this server runs."""
        self.seed(world.user, world.cloud.values())
        self.seed(world.bystander, world.bystander_cloud.values(), device_id="pc")

    def seed(self, user: str, items: Iterable[Item], *, device_id: str = "tablet") -> None:
        """Cloud items for ``user``, as if another device had uploaded them."""
        if self.aws is not None:
            from aws_servers import seed_aws

            seed_aws(self.aws, user, items, device_id)
            return
        storage = SQLiteStorage.open(self.data_dir)
        try:
            seed_cloud_items(storage, user, items, device_id=device_id)
        finally:
            storage.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def token(self, user: str) -> str:
        return issue_token(user, Settings().jwt_secret)

    def server_errors(self) -> int:
        """The 5xx answers the server logged so far (each logs "unexpected error")."""
        log = self.data_dir / "server.log"
        return log.read_text(errors="replace").count("unexpected error") if log.exists() else 0

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; what survives is what SQLite made durable."""
        for process in (self.process, self.worker):
            if process is not None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def stop(self) -> None:
        for process in (self.process, self.worker):
            if process is not None:
                process.terminate()
        try:
            for process in (self.process, self.worker):
                if process is not None:
                    process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()


def spawn_server(
    data_dir: Path, *, port: int = 0, env: dict[str, str] | None = None
) -> ServerProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "server.log").open("a") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "backend_stub",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, **(env or {})},
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        process.kill()
        process.wait()
        raise RuntimeError(f"the server did not start: {line!r}")
    return ServerProcess(data_dir, process, int(line.rsplit(":", 1)[1]))
