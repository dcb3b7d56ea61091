"""Every example runs, as a user would run it, against the server on a loopback port.

The desktop app (``examples/startup_hook.py``) runs in its documented headless mode: the
same app code and event loop, with a text screen printing what the window would show.
When a display is available (``DISPLAY``, or Xvfb installed) it also runs in a real Tk
window, with the same checks.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from signal import SIGCONT

import httpx
import pytest
from sdk_fixtures import learning_items, make_store

from sdk import LocalState, LocalStore, ProgressPhase, detect_local
from sdk._auto import journal_progress
from sdk._failpoints import ENV_VAR

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SMALL = ("--batch-size", "20")  # batches small enough for a bar that visibly moves


@pytest.fixture
def user(live_server, request) -> str:
    return "ex-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]


@pytest.fixture
def env(live_server, user) -> dict[str, str]:
    return os.environ | {
        "MIGRATION_SERVER": live_server.url,
        "MIGRATION_USER": user,
        "MIGRATION_TOKEN": live_server.token(user),
    }


def run_example(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def summary_of(live_server, user: str) -> dict:
    with httpx.Client(
        base_url=f"{live_server.url}/api/migration/{user}",
        headers={"Authorization": f"Bearer {live_server.token(user)}"},
    ) as http:
        return http.get("/summary").json()


def test_the_quickstart_is_the_readmes_example_and_migrates(env):
    source = (EXAMPLES / "quickstart.py").read_text()
    docstring_end = ast.parse(source).body[0].end_lineno
    code = "\n".join(source.splitlines()[docstring_end:]).strip() + "\n"
    assert f"```python\n{code}```" in (ROOT / "README.md").read_text()

    done = run_example("quickstart.py", env)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "completed 3 items, verified: True"


def test_the_legacy_example_maps_its_old_tables_and_migrates_them(env, live_server, user, tmp_path):
    done = run_example("migrate_legacy_db.py", env, "--folder", str(tmp_path))

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:4] == [
        "imported 26 rows from flashcards_v1.db: 26 written, 0 unchanged",
        "  flashcards: 3",
        "  lesson_progress: 20",
        "  preferences: 3",
    ]
    assert lines[-1] == "completed: 26 items in 3 collections, verified: True"
    with LocalStore(tmp_path / "store.sqlite3") as store:
        assert store.get("preferences", "voices")["data"] == {"value": ["es-MX", "es-ES"]}
        assert store.get("flashcards", "adiós")["deleted"] is True
    assert summary_of(live_server, user)["summary"]["totalItems"] == 26

    again = run_example("migrate_legacy_db.py", env, "--folder", str(tmp_path))
    assert "26 unchanged" in again.stdout and "already_migrated" in again.stdout


def test_the_custom_conflicts_example_decides_each_collection_by_its_policy(env):
    done = run_example("custom_conflicts.py", env)

    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "plan for the phone: 7 items, 1 new, 0 unchanged, 6 in conflict" in out
    assert "  flashcards: {'local': 1, 'pending': 1}" in out
    assert "asked the learner about flashcards/gato" in out
    assert "phone migrated: 7 items, verified: True" in out
    # One preference holds the same value on both devices: equal data is no conflict.
    assert (
        "resolutions: {'callback': 1, 'field_merge': 1, 'identical': 1, 'local_wins': 1, "
        "'manual': 1, 'newest_wins': 1}"
    ) in out
    assert "preferences/theme: {'value': 'dark'}" in out  # local_wins
    assert (
        "lesson_progress/lesson-1: {'attempts': 7, 'completed': ['intro', 'verbs', 'nouns']" in out
    )
    assert "flashcards/hola: {'back': 'hello', 'box': 2, 'note': ''}" in out  # the callback
    assert "'note': \"as in Italian / sounds like 'got'\"" in out  # the learner's merge
    assert "notes/week-1: {'text': 'written on the phone, later'}" in out  # newest_wins


def app(env: dict[str, str], store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_example("startup_hook.py", env, "--store", str(store), *args)


def shown(done: subprocess.CompletedProcess[str], prefix: str) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith(prefix)]


def check_conflicts_asked_and_migration_finished(done, live_server, user, store, theirs):
    assert done.returncode == 0, done.stderr
    asked = shown(done, "ask: ")
    assert len(asked) == 2 and all('the cloud {"other": true}' in a for a in asked)
    assert shown(done, "answer: ") == ["answer: local", "answer: local"]
    bar = [int(line.split()[1].rstrip("%")) for line in shown(done, "progress: ")]
    assert bar == sorted(bar) and bar[-1] == 100 and len(bar) > 5  # a bar that moves
    statuses = shown(done, "status: ")
    assert statuses[:2] == [
        "status: Checking the data on this device",
        "status: Moving your data to the cloud",
    ]  # the user's sentences (AutoStatus.message), never the technical detail
    assert "status: Some items changed both here and in the cloud: choose which to keep" in statuses
    assert "status: Your 302 items are safe in the cloud" in statuses
    assert detect_local(store).state is LocalState.MIGRATED
    with LocalStore(store, create=False) as s:  # "keep this device's": the local data won
        assert all(s.get(i["collection"], i["key"])["data"] != {"other": True} for i in theirs)
    assert summary_of(live_server, user)["summary"]["resolutionsByKind"] == {"manual": 2}


def test_the_desktop_app_shows_progress_asks_about_conflicts_and_finishes(
    env, live_server, user, tmp_path
):
    items = learning_items(300)
    store = make_store(tmp_path / "store.sqlite3", items)
    theirs = [dict(i, data={"other": True}) for i in items[:2]]
    live_server.seed(user, theirs)

    done = app(env, store, "--headless", "--answer", "local", "--quit-when-settled", *SMALL)

    check_conflicts_asked_and_migration_finished(done, live_server, user, store, theirs)
    assert done.stdout.splitlines()[-1] == "closed"


def test_closing_the_desktop_app_mid_upload_stops_it_and_the_next_start_resumes(
    env, live_server, user, tmp_path
):
    store = make_store(tmp_path / "store.sqlite3", learning_items(1000))
    flags = ("--headless", "--quit-when-settled", "--batch-size", "10")

    first = app(env, store, *flags, "--close-at", "0.05")

    assert first.returncode == 3, first.stderr
    assert "status: Paused; it continues the next time the app starts" in first.stdout
    assert shown(first, "status: closed")[-1] == "status: closed (stopped, stopped: True)"
    assert detect_local(store).state is LocalState.READY

    second = app(env, store, *flags)

    assert second.returncode == 0, second.stderr
    uploads = [line for line in shown(second, "progress: ") if "uploading" in line]
    assert not uploads[0].startswith("progress: 0%")  # the bar starts where it stopped
    assert "status: Your 1002 items are safe in the cloud" in second.stdout
    summary = summary_of(live_server, user)
    assert summary["summary"]["totalItems"] == 1002 and summary["summary"]["verified"]


def test_an_anonymous_user_who_registers_gets_their_data_migrated_at_once(
    env, live_server, user, tmp_path
):
    store = make_store(tmp_path / "store.sqlite3", learning_items(30))
    env = env | {"MIGRATION_USER": ""}

    done = app(env, store, "--headless", "--quit-when-settled", "--register-as", user)

    assert done.returncode == 0, done.stderr
    assert shown(done, "status: ")[:3] == [
        "status: Checking the data on this device",
        "status: Your data is kept on this device; it moves to the cloud once you sign up",
        f"status: registered as {user}",
    ]
    assert "status: Your 32 items are safe in the cloud" in done.stdout
    assert summary_of(live_server, user)["summary"]["totalItems"] == 32


@pytest.fixture
def display() -> Iterator[str]:
    """An X display for the real Tk window: the one we run under, or a private Xvfb."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    if shutil.which("Xvfb") is None:
        pytest.skip("no X display and Xvfb is not installed; the headless run covers the app")
    read, write = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as numbers:
        number = numbers.readline().strip()
    try:
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_desktop_app_in_a_real_tk_window_shows_the_same(
    env, live_server, user, tmp_path, display
):
    items = learning_items(300)
    store = make_store(tmp_path / "store.sqlite3", items)
    theirs = [dict(i, data={"other": True}) for i in items[:2]]
    live_server.seed(user, theirs)

    done = app(
        env | {"DISPLAY": display},
        store,
        "--echo",
        "--answer",
        "local",
        "--quit-when-settled",
        *SMALL,
    )

    check_conflicts_asked_and_migration_finished(done, live_server, user, store, theirs)


class Lines:
    """A process's output lines, read by a thread, so a test can wait with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def close(self) -> None:
        """Once the process ended: wait for the reader to reach the end of its output."""
        self._thread.join(timeout=30)

    def until(self, wanted, timeout: float = 60) -> str:  # type: ignore[no-untyped-def]
        while True:
            line = self._queue.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"the app ended before the line expected: {self.seen}")
            self.seen.append(line)
            if wanted(line):
                return line

    def rest(self, timeout: float = 60) -> list[str]:
        with contextlib.suppress(AssertionError):
            self.until(lambda line: False, timeout)
        return self.seen


def test_a_second_instance_of_the_app_follows_the_first_instead_of_migrating(
    env, live_server, user, tmp_path
):
    store = make_store(tmp_path / "store.sqlite3", learning_items(1000))
    flags = ("--store", str(store), "--headless", "--quit-when-settled", "--batch-size", "10")
    command = [sys.executable, str(EXAMPLES / "startup_hook.py"), *flags]
    # Frozen by its own failpoint after each batch from the 3rd on, mid-upload and holding
    # the store's lock: however fast the machine, the first instance cannot finish before
    # the second starts. Another of its threads may be writing the journal at that
    # moment (locked: unreadable), so it goes on to the next batch's freeze until the
    # journal reads.
    frozen_env = env | {ENV_VAR: "batch.answered=stop@3+"}
    first = subprocess.Popen(command, env=frozen_env, stdout=subprocess.PIPE, text=True)
    first_lines = Lines(first)
    second = second_lines = None

    def frozen_again() -> None:
        _, status = os.waitpid(first.pid, os.WUNTRACED)  # returns once it has stopped
        assert os.WIFSTOPPED(status), f"the first instance ended ({status}) unfrozen"

    try:
        frozen_again()
        frozen = journal_progress(store)  # what the second will read
        while frozen is None:
            first.send_signal(SIGCONT)
            frozen_again()
            frozen = journal_progress(store)
        assert frozen.phase is ProgressPhase.UPLOADING
        assert 20 <= frozen.items_done < 1000  # two batches or more, not all of them
        second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        second_lines = Lines(second)
        watched = second_lines.until(lambda line: line.startswith("progress: "))
        while first.poll() is None:  # thaw it at each batch's freeze until it finishes
            first.send_signal(SIGCONT)
            _, status = os.waitpid(first.pid, os.WUNTRACED)
            if not os.WIFSTOPPED(status):
                first.returncode = os.waitstatus_to_exitcode(status)
        second_seen = second_lines.rest()
        assert second.wait(timeout=60) == 0
        first_seen = first_lines.rest()
    finally:
        first.send_signal(SIGCONT)
        first.wait(timeout=60)
        first_lines.close()
        if second is not None and second_lines is not None:
            if second.poll() is None:
                second.kill()
            second.wait()
            second_lines.close()

    following = "status: Another window of this app is moving your data to the cloud"
    assert following in second_seen
    assert watched.endswith(f" {frozen.phase.value} {frozen.items_done}/{frozen.items_total}")
    assert "status: Your 1002 items are safe in the cloud" in second_seen
    assert "status: Your 1002 items are safe in the cloud" in first_seen
    assert first.returncode == 0
    assert summary_of(live_server, user)["summary"]["totalItems"] == 1002


def test_the_asyncio_app_is_suspended_mid_upload_resumes_and_migrates_everything(
    env, live_server, user, tmp_path
):
    done = run_example(
        "asyncio_app.py", env, "--folder", str(tmp_path), "--items", "2000", "--suspend-at", "500"
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    suspended = [line for line in lines if line.startswith("suspended with ")]
    assert len(suspended) == 1 and suspended[0].endswith("/2000 uploaded; resuming")
    assert lines.index(suspended[0]) < lines.index("phase: completing")
    assert lines[-2] == "completed: 2000 items, verified: True"
    assert lines[-1].startswith("loop lag: max ")
    assert summary_of(live_server, user)["summary"]["totalItems"] == 2000


#: Each example that needs the server, with the arguments it requires; demo.py starts its own.
NEEDS_THE_SERVER = {
    "quickstart.py": (),
    "custom_conflicts.py": (),
    "migrate_legacy_db.py": ("--folder", "{tmp}"),
    "startup_hook.py": ("--store", "{tmp}/store.sqlite3", "--headless"),
    "asyncio_app.py": ("--folder", "{tmp}"),
}


def test_every_example_but_the_demo_is_checked_without_its_environment():
    assert {p.name for p in EXAMPLES.glob("*.py")} == {*NEEDS_THE_SERVER, "demo.py"}


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in NEEDS_THE_SERVER])
def test_an_example_without_the_servers_environment_says_what_to_set(name, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATION_")}
    args = [arg.format(tmp=tmp_path) for arg in NEEDS_THE_SERVER[name]]

    done = run_example(name, env, *args)

    assert done.returncode != 0
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()  # one line, no traceback
    for variable in ("MIGRATION_SERVER", "MIGRATION_USER", "MIGRATION_TOKEN"):
        assert variable in line
    assert list(tmp_path.iterdir()) == []  # it stopped before doing anything


def load_demo():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("demo", EXAMPLES / "demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_the_readme_gives_the_number_of_items_the_demo_moves(tmp_path):
    demo = load_demo()
    # items_for() is what the README quotes; fill_store() must agree at any size.
    assert demo.fill_store(tmp_path / "store.sqlite3", 30) == demo.items_for(30)
    readme = (ROOT / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| `examples/demo.py`")]
    assert f"{demo.items_for(demo.DEFAULT_LESSONS):,} items" in row
    assert f"{demo.DEFAULT_LESSONS:,} lessons" in row
