"""The command line, against the reference server on a loopback port."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sdk_fixtures import learning_items, make_store

from sdk import LocalState, LocalStore, detect_local
from sdk.cli import EXIT_DONE, EXIT_FAILED, EXIT_NO_STORE, EXIT_PENDING, EXIT_USAGE, main
from sdk.contract import dataset_checksum_of

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(live_server, monkeypatch, request):
    """The server, user and token in the environment, as a support script would set them."""
    user = "cli-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    monkeypatch.setenv("MIGRATION_SERVER", live_server.url)
    monkeypatch.setenv("MIGRATION_USER", user)
    monkeypatch.setenv("MIGRATION_TOKEN", live_server.token(user))
    return user


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def run_json(capsys, *argv: str) -> dict:
    code, out, _ = run(capsys, *argv, "--json")
    (line,) = out.splitlines()  # exactly one object, on one line
    answer = json.loads(line)
    assert answer["exitCode"] == code
    assert_camel_case(answer)
    return answer


#: Fields whose keys are data (collection names, an item's own fields, strategy names).
DATA_KEYED = {"collections", "data", "resolutionsByKind", "resolutions", "choices"}


def assert_camel_case(value, where: str = "") -> None:
    """Every key the CLI names is in the wire's style: camelCase, like `itemCount`."""
    if isinstance(value, dict):
        for key, inner in value.items():
            assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", key), f"{where}.{key} is not camelCase"
            if key not in DATA_KEYED:
                assert_camel_case(inner, f"{where}.{key}")
    elif isinstance(value, list):
        for inner in value:
            assert_camel_case(inner, where)


def assert_no_python_api(text: str) -> None:
    """A shell user cannot call `status()` or `pending_conflicts()`."""
    assert not re.search(r"\w\(\)", text), text


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_migrate_shows_progress_and_a_readable_summary_and_exits_0_once_verified(
    env, tmp_path, capsys
):
    items = learning_items(500)
    store = make_store(tmp_path / "store.sqlite3", items)

    code, out, err = run(capsys, "migrate", "--store", str(store), "--batch-bytes", "8192")

    assert code == EXIT_DONE
    assert "migrated 502 items, verified: yes" in out
    assert "9 batches sent" in out  # about 60 items of 135 bytes each: the budget holds
    assert "collections: flashcards 168, lesson_progress 333, preferences 1" in out
    # Batches run in parallel, so which counts appear depends on which finishes first;
    # what must hold is a bar that starts at 0, never goes back, and ends full.
    done = [int(n) for n in re.findall(r"^uploading: (\d+)/502 items \(\d+%\)$", err, re.M)]
    assert done[0] == 0 and done[-1] == 502 and done == sorted(done)
    assert len(set(done)) >= 4  # it moved in steps, not only 0 and 100%
    assert err.splitlines()[-1] == "done: 502/502 items (100%)"
    assert detect_local(store).state is LocalState.MIGRATED


def test_every_phase_the_cli_prints_ends_at_its_total(env, tmp_path, capsys):
    store = make_store(tmp_path / "store.sqlite3", learning_items(300))

    code, _, err = run(capsys, "migrate", "--store", str(store), "--progress", "lines")

    assert code == EXIT_DONE
    last: dict[str, tuple[int, int]] = {}
    for phase, done, total in re.findall(r"^(\w+): ([\d,]+)/([\d,]+) items", err, re.M):
        last[phase] = (int(done.replace(",", "")), int(total.replace(",", "")))
    # No step is left on screen at 0/N, which reads as a stalled phase.
    for phase in ("snapshotting", "starting", "uploading", "completing", "verifying", "done"):
        assert last[phase] == (302, 302), (phase, err)
    assert all(done == total for done, total in last.values()), err


def test_every_command_walks_a_migration_with_conflicts_to_the_end(
    env, live_server, tmp_path, capsys
):
    items = learning_items(60)
    store = make_store(tmp_path / "store.sqlite3", items)
    live_server.seed(env, [dict(i, data={"other": True}) for i in items[:3]])
    where = ("--store", str(store))

    detected = run_json(capsys, "detect", *where)
    assert detected["status"] == "done" and detected["local"]["itemCount"] == 62
    assert detected["server"]["canMigrate"] is True

    plan = run_json(capsys, "plan", *where, "--strategy", "manual")
    assert (plan["newItems"], plan["unchangedItems"], plan["conflicts"]) == (59, 0, 3)
    assert plan["pendingConflicts"] == 3

    assert run_json(capsys, "status", *where)["exitCode"] == EXIT_PENDING  # not migrated yet

    waiting = run_json(capsys, "migrate", *where, "--strategy", "manual")
    assert waiting["exitCode"] == EXIT_PENDING and waiting["outcome"] == "awaiting_resolution"

    code, out, _ = run(capsys, "conflicts", *where)
    assert code == EXIT_DONE and "3 conflict(s) wait for a decision" in out
    assert '"other": true' in out  # the cloud's side is shown

    listed = run_json(capsys, "conflicts", *where)["conflicts"]
    first = listed[0]["conflictId"]
    merged = json.dumps({"score": 1000})
    assert run(capsys, "resolve", *where, first, "merged", "--data", merged)[0] == EXIT_DONE
    resolved = run_json(capsys, "resolve", *where, "--all", "local")
    assert resolved["remaining"] == 0 and len(resolved["decided"]) == 2

    done = run_json(capsys, "migrate", *where, "--strategy", "manual")
    assert done["exitCode"] == EXIT_DONE and done["verified"] is True
    assert done["result"]["resolutionsByKind"] == {"manual": 3}
    with LocalStore(store, create=False) as s:
        kept = s.get(listed[0]["collection"], listed[0]["key"])
        local = list(s.iter_items())
    assert kept is not None and kept["data"] == {"score": 1000}
    assert done["result"]["cloudChecksum"] == dataset_checksum_of(local)

    verified = run_json(capsys, "verify", *where)
    assert verified["exitCode"] == EXIT_DONE and verified["verified"] is True
    status = run_json(capsys, "status", *where)
    assert status["exitCode"] == EXIT_DONE and status["server"]["status"] == "completed"
    assert run_json(capsys, "cancel", *where)["cancelled"] is False


def test_cancel_drops_the_migration_in_progress_and_leaves_the_store(
    env, live_server, tmp_path, capsys
):
    items = learning_items(30)
    store = make_store(tmp_path / "store.sqlite3", items)
    live_server.seed(env, [dict(items[0], data={"other": True})])
    where = ("--store", str(store))
    assert run(capsys, "migrate", *where, "--strategy", "manual")[0] == EXIT_PENDING

    code, out, _ = run(capsys, "cancel", *where)

    assert code == EXIT_DONE and "cancelled; the store is untouched" in out
    assert run_json(capsys, "status", *where)["server"]["status"] == "cancelled"
    assert run(capsys, "conflicts", *where)[1].startswith("0 conflict(s)")
    assert detect_local(store).item_count == 32


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["migrate"], "say which store: --store PATH", id="no store"),
        pytest.param(
            ["migrate", "--store", "s.db", "--app", "A"], "not allowed with", id="two stores"
        ),
        pytest.param(
            ["migrate", "--store", "s.db", "--strategy", "coin_toss"],
            "the strategy must be one of",
            id="unknown strategy",
        ),
        pytest.param(["resolve", "--store", "s.db"], "give CONFLICT_ID", id="resolve nothing"),
        pytest.param(["resolve", "--store", "s.db", "c1"], "say which version", id="no choice"),
        pytest.param(["teleport"], "invalid choice: 'teleport'", id="unknown command"),
        pytest.param([], "name a command", id="no command"),
        pytest.param(
            ["migrate", "--store", "s.db", "--batch-size", "0"],
            "batch_size must be at least 1",
            id="bad batch size",
        ),
        pytest.param(
            ["migrate", "--store", "s.db", "--batch-bytes", "100"],
            "batch_bytes must be an integer >= 4096",
            id="bad batch bytes",
        ),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(
    env, tmp_path, capsys, monkeypatch, argv, message
):
    monkeypatch.chdir(tmp_path)
    code, _out, err = run(capsys, *argv)
    assert code == EXIT_USAGE
    assert message in err


def test_a_missing_token_is_a_usage_error_naming_the_environment_variable(
    env, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("MIGRATION_TOKEN")
    code, _, err = run(capsys, "migrate", "--store", str(tmp_path / "s.db"))
    assert code == EXIT_USAGE
    assert "missing --token (or MIGRATION_TOKEN)" in err


def test_offline_is_pending_not_a_failure(env, tmp_path, capsys, monkeypatch):
    store = make_store(tmp_path / "store.sqlite3", learning_items(10))
    monkeypatch.setenv("MIGRATION_SERVER", f"http://127.0.0.1:{closed_port()}")

    answer = run_json(capsys, "detect", "--store", str(store), "--retry-for", "0")

    assert answer["exitCode"] == EXIT_PENDING and answer["status"] == "pending"
    assert answer["error"]["type"] == "OfflineError"
    assert "cannot reach" in answer["error"]["message"]
    assert answer["local"]["state"] == "ready"  # what the device knows is still reported


@pytest.mark.parametrize("command", ["detect", "migrate", "status", "plan"])
def test_a_server_url_with_a_path_is_told_apart_from_a_lost_session(
    env, live_server, tmp_path, capsys, monkeypatch, command
):
    store = make_store(tmp_path / "store.sqlite3", learning_items(10))
    monkeypatch.setenv("MIGRATION_SERVER", live_server.url + "/api")

    answer = run_json(capsys, command, "--store", str(store))

    assert answer["exitCode"] == EXIT_USAGE
    message = answer["error"]["message"]
    assert f"{live_server.url}/api does not serve the migration API" in message
    assert "the server's root URL, such as http://127.0.0.1:8000" in message
    assert "session" not in message
    assert_no_python_api(message)


def test_another_users_credentials_can_neither_verify_nor_sync_a_users_store(
    env, live_server, tmp_path, capsys, monkeypatch
):
    store = make_store(tmp_path / "store.sqlite3", learning_items(10))
    assert run(capsys, "migrate", "--store", str(store))[0] == EXIT_DONE
    # Another user asks about this store's session: to them it does not exist.
    monkeypatch.setenv("MIGRATION_USER", "someone-else")
    monkeypatch.setenv("MIGRATION_TOKEN", live_server.token("someone-else"))

    code, _, err = run(capsys, "cancel", "--store", str(store))
    assert code == EXIT_DONE  # nothing of someone-else's to cancel
    # The store keeps its own user's data: another user is told so, never synced into it.
    code, _, err = run(capsys, "verify", "--store", str(store))
    assert code == EXIT_FAILED
    assert "keeps the data of user" in err and "'someone-else'" in err
    code, _, err = run(capsys, "sync", "--store", str(store))
    assert code == EXIT_FAILED and "nothing was sent" in err
    assert "does not serve the migration API" not in err
    assert_no_python_api(err)


def test_an_unknown_conflict_points_to_the_conflicts_command(env, tmp_path, capsys):
    store = make_store(tmp_path / "store.sqlite3", learning_items(10))

    code, _, err = run(capsys, "resolve", "--store", str(store), "nosuchid", "local")

    assert code == EXIT_USAGE
    assert "no conflict 'nosuchid' waits for a decision" in err
    assert "list the waiting ones with `conflicts`" in err
    assert_no_python_api(err)


def test_the_sdks_advice_reaches_the_command_line_without_python_calls():
    from sdk._transport.http import _ADVICE_BY_CODE, _ADVICE_BY_STATUS
    from sdk.cli import _for_the_command_line

    advice = [*_ADVICE_BY_CODE.values(), *_ADVICE_BY_STATUS.values()]
    assert any("()" in text for text in advice)  # the SDK speaks to Python callers
    for text in advice:
        assert_no_python_api(_for_the_command_line(text))


def test_while_the_server_is_down_each_wait_is_a_line_saying_what_it_waits_for(
    env, tmp_path, capsys, monkeypatch
):
    store = make_store(tmp_path / "store.sqlite3", learning_items(10))
    server = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MIGRATION_SERVER", server)

    code, _out, err = run(capsys, "migrate", "--store", str(store), "--retry-for", "2")

    assert code == EXIT_PENDING
    waits = [line for line in err.splitlines() if line.startswith(f"waiting for {server}: ")]
    assert waits, err
    assert all("Connection refused; retrying in" in line for line in waits)
    assert "cannot reach" in err.splitlines()[-1]  # then the verdict, once


def test_every_positional_argument_has_help():
    from sdk.cli import _parser

    parser = _parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    positionals = [
        (name, action.dest)
        for name, sub in commands.choices.items()
        for action in sub._actions
        if not action.option_strings
    ]
    assert ("resolve", "choice") in positionals
    assert [p for p in positionals if not _help_of(commands.choices[p[0]], p[1])] == []


def _help_of(parser, dest: str) -> str | None:
    return next(a.help for a in parser._actions if a.dest == dest)


def test_a_store_the_sdk_cannot_use_fails_with_exit_1_and_says_why(env, tmp_path, capsys):
    store = tmp_path / "notes.db"
    store.write_bytes(b"SQLite format 3\x00" + bytes(200))

    code, _, err = run(capsys, "migrate", "--store", str(store))

    assert code == EXIT_FAILED
    assert "is not this app's store" in err
    assert run(capsys, "detect", "--store", str(store))[0] == EXIT_FAILED


def test_status_without_a_server_reads_the_device_alone(tmp_path, capsys, monkeypatch):
    for name in ("MIGRATION_SERVER", "MIGRATION_USER", "MIGRATION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    store = make_store(tmp_path / "store.sqlite3", learning_items(4))

    code, out, _ = run(capsys, "status", "--store", str(store))

    assert code == EXIT_PENDING
    assert "ready" in out and "not migrated yet" in out


CLI_ARGS = ("--batch-size", "20", "--parallel", "1", "--progress", "lines")


def cli_process(store: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sdk", "migrate", "--store", str(store), *CLI_ARGS, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


#: The CLI, with the migration held at a failpoint until the CLI asks it to stop (which
#: Ctrl-C does) or a signal ends the process: whatever the machine's speed, the signal
#: lands at that very step, never after the migration finished.
PAUSED_CLI = """
import sys, threading
from sdk import _failpoints, cli
from sdk._client import MigrationClient

name, at, *argv = sys.argv[1:]
stops = []
migrate = MigrationClient.migrate

def remember_stop(self, *args, stop=None, **kwargs):
    stops.append(stop)
    return migrate(self, *args, stop=stop, **kwargs)

def pause():
    print(f"paused at {name}", file=sys.stderr, flush=True)
    if not stops[-1].wait(120):
        raise SystemExit("nobody interrupted the paused migration")

MigrationClient.migrate = remember_stop
_failpoints.enable(name, pause, at=int(at))
sys.exit(cli.main(argv))
"""


def as_in_a_terminal() -> None:
    """Ctrl-C's default meaning in the child, even when this run's own SIGINT is ignored
    (a background job, nohup): an ignored SIGINT is inherited, and Python then installs
    no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def paused_cli_process(store: Path, failpoint: str, at: int) -> subprocess.Popen[str]:
    argv = ["migrate", "--store", str(store), *CLI_ARGS]
    return subprocess.Popen(
        [sys.executable, "-c", PAUSED_CLI, failpoint, str(at), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_in_a_terminal,
    )


def wait_for_line(proc: subprocess.Popen[str], wanted) -> str:  # type: ignore[no-untyped-def]
    assert proc.stderr is not None
    for line in proc.stderr:
        if wanted(line):
            return line
    proc.wait()
    raise AssertionError(f"the CLI ended (rc={proc.returncode}) before the expected line")


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.mark.parametrize(
    ("failpoint", "at", "sig"),
    [
        pytest.param("start.before", 1, signal.SIGKILL, id="killed before start"),
        pytest.param("batch.answered", 3, signal.SIGKILL, id="killed mid-upload"),
        pytest.param("complete.after", 1, signal.SIGKILL, id="killed around completion"),
        pytest.param("batch.answered", 3, signal.SIGINT, id="Ctrl-C mid-upload"),
    ],
)
def test_a_migration_killed_at_any_moment_continues_when_the_same_command_runs_again(
    env, live_server, tmp_path, failpoint, at, sig
):
    items = learning_items(900)
    store = make_store(tmp_path / "store.sqlite3", items)
    live_server.seed(env, [dict(i, data={"other": True}) for i in items[:5]])

    first = paused_cli_process(store, failpoint, at)
    wait_for_line(first, lambda line: line == f"paused at {failpoint}\n")
    first.send_signal(sig)
    code, out, err = finish(first)
    if sig == signal.SIGINT:
        assert code == EXIT_PENDING, err
        assert "stopped at a safe point; run the same command to continue" in out
    else:
        assert code == -sig
    assert "Traceback" not in out + err
    assert detect_local(store).state is LocalState.READY  # not marked migrated yet

    code, out, err = finish(cli_process(store))

    assert code == EXIT_DONE, err
    assert "verified: yes" in out or "already migrated" in out
    if failpoint == "batch.answered":
        assert "(resumed)" in out
    with httpx.Client(
        base_url=f"{live_server.url}/api/migration/{env}",
        headers={"Authorization": f"Bearer {live_server.token(env)}"},
    ) as http:
        summary = http.get("/summary").json()["summary"]
    assert summary["totalItems"] == len(items) == detect_local(store).item_count
    assert summary["verified"] is True


def test_the_cli_works_without_rich_falling_back_to_plain_lines(env, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(40))
    without_rich = (
        "import sys; sys.modules['rich'] = None\n"
        "import threading, sdk, sdk.cli\n"
        "assert 'tkinter' not in sys.modules and threading.active_count() == 1\n"
        "sys.exit(sdk.cli.main(sys.argv[1:]))\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", without_rich, "migrate", "--store", str(store), "--progress", "bar"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == EXIT_DONE, done.stderr
    assert "rich is not installed" in done.stderr
    assert "uploading: 42/42 items (100%)" in done.stderr
    assert "migrated 42 items, verified: yes" in done.stdout


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-m", "sdk"], id="python -m sdk"),
        pytest.param([str(Path(sys.executable).with_name("offline-migrate"))], id="console script"),
    ],
)
def test_the_command_line_is_reachable_as_a_module_and_as_a_console_script(command):
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_DONE
    for name in ("detect", "plan", "migrate", "status", "conflicts", "resolve", "cancel", "verify"):
        assert name in done.stdout
    assert "exit codes: 0 done" in done.stdout


def readme_cli_lines() -> list[tuple[list[str], int]]:
    """The README's `offline-migrate ...` lines, with the exit code each one documents."""
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            if line.startswith("offline-migrate "):
                command, _, comment = line.partition("#")
                expected = re.match(r"\s*exit (\d)", comment)
                lines.append((shlex.split(command), int(expected[1]) if expected else 0))
    return lines


def test_the_readmes_command_line_samples_run_with_the_exit_codes_it_documents(
    env, live_server, tmp_path, monkeypatch
):
    samples = readme_cli_lines()
    assert len(samples) >= 8
    shown = {argv[1] for argv, _ in samples}
    assert shown >= {"detect", "plan", "migrate", "status", "conflicts", "resolve", "verify"}
    items = learning_items(50)
    make_store(tmp_path / "store.sqlite3", items)
    live_server.seed(env, [dict(i, data={"other": True}) for i in items[:2]])
    monkeypatch.chdir(tmp_path)
    script = Path(sys.executable).with_name("offline-migrate")

    for argv, expected in samples:
        done = subprocess.run([str(script), *argv[1:]], capture_output=True, text=True, timeout=60)
        assert done.returncode == expected, (argv, done.stdout, done.stderr)
        assert "Traceback" not in done.stdout + done.stderr
    assert detect_local(tmp_path / "store.sqlite3").state is LocalState.MIGRATED


@pytest.fixture
def offline_env(monkeypatch):
    """Credentials for a server that is never reached: the refusals come first."""
    monkeypatch.setenv("MIGRATION_SERVER", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("MIGRATION_USER", "nobody")
    monkeypatch.setenv("MIGRATION_TOKEN", "not-a-token")


def not_a_store(kind: str, tmp_path: Path) -> Path:
    if kind == "foreign":
        path = tmp_path / "notes.db"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.commit()
        conn.close()
        return path
    if kind == "folder":
        (tmp_path / "folder").mkdir()
        return tmp_path / "folder"
    return tmp_path / "typo" / "stroe.sqlite3"


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        pytest.param("foreign", EXIT_FAILED, id="another app's database"),
        pytest.param("folder", EXIT_FAILED, id="a folder"),
        pytest.param("missing", EXIT_NO_STORE, id="a mistyped path"),
    ],
)
@pytest.mark.parametrize("command", ["migrate", "plan", "conflicts", "cancel", "verify", "status"])
def test_a_path_that_is_no_store_is_refused_and_nothing_is_left_beside_it(
    offline_env, tmp_path, capsys, kind, code, command
):
    path = not_a_store(kind, tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    answer = run_json(capsys, command, "--store", str(path))

    assert answer["exitCode"] == code
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    if kind == "missing":
        assert answer["status"] == "no_store"
        message = answer.get("error", {}).get("message") or ""
        assert command == "status" or message.startswith(f"no store at {path}, so nothing was")


def test_a_mistyped_store_path_is_not_migrated_and_verified(offline_env, tmp_path, capsys):
    code, out, err = run(capsys, "migrate", "--store", str(tmp_path / "stroe.sqlite3"))

    assert code == EXIT_NO_STORE != EXIT_DONE
    assert "verified" not in out
    assert "no store at" in err and "check --store" in err
    assert run(capsys, "detect", "--store", str(tmp_path / "stroe.sqlite3"))[0] == EXIT_NO_STORE


def test_sync_sends_what_the_app_wrote_after_the_migration_and_verify_proves_it(
    env, tmp_path, capsys
):
    store = make_store(tmp_path / "store.sqlite3", learning_items(60))
    assert run(capsys, "migrate", "--store", str(store))[0] == EXIT_DONE
    with LocalStore(store) as app:
        app.put("lesson_progress", "later", {"score": 3})

    code, out, _ = run(capsys, "verify", "--store", str(store))
    assert code == EXIT_PENDING and "1 local change(s) not sent yet: run `sync`" in out
    code, out, _ = run(capsys, "status", "--store", str(store))
    assert "sync     1 local change(s) to send" in out
    assert "cloud    0 change(s) to receive; in step now: no" in out

    code, out, _ = run(capsys, "sync", "--store", str(store))
    assert code == EXIT_DONE
    assert "synced: 1 change(s) sent, 0 received; in step with the cloud: yes" in out

    answer = run_json(capsys, "verify", "--store", str(store), "--full")
    assert answer["exitCode"] == EXIT_DONE and answer["verified"] is True
    code, out, _ = run(capsys, "status", "--store", str(store))
    assert "sync     0 local change(s) to send, 0 conflict(s) waiting" in out
    assert "in step now: yes" in out


def test_sync_on_a_new_device_downloads_the_users_data(env, tmp_path, capsys):
    phone = make_store(tmp_path / "phone.sqlite3", learning_items(30))
    assert run(capsys, "migrate", "--store", str(phone))[0] == EXIT_DONE
    tablet = tmp_path / "tablet.sqlite3"
    assert run(capsys, "sync", "--store", str(tmp_path / "no" / "such" / "dir.sqlite3"))[0] == (
        EXIT_NO_STORE  # a mistyped folder is not a new device
    )

    code, out, _ = run(capsys, "sync", "--store", str(tablet))

    assert code == EXIT_DONE and "32 received" in out
    with LocalStore(tablet) as mine, LocalStore(phone) as theirs:
        assert list(mine.iter_items()) == list(theirs.iter_items())


def test_sample_makes_a_store_ready_to_migrate(capsys, tmp_path):
    store = tmp_path / "store.sqlite3"

    code, out, _ = run(capsys, "sample", "--store", str(store), "--items", "30")

    assert code == EXIT_DONE
    assert f"wrote a sample store: {store} (30 items and 1 deletion)" in out
    local = detect_local(store)
    assert local.state is LocalState.READY
    assert local.item_count == 31 and local.tombstones == 1
    assert set(local.counts) == {"lesson_progress", "flashcards", "preferences"}
    assert not (tmp_path / "cloud-items.jsonl").exists()  # no conflicts asked for


def test_sample_never_overwrites_a_store_or_a_seed_file(capsys, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(3))
    before = store.read_bytes()

    code, out, err = run(capsys, "sample", "--store", str(store))

    assert code == EXIT_FAILED and out == ""
    assert (
        err
        == f"error: {store} already exists; sample never overwrites: remove it or pick another\n"
    )
    assert store.read_bytes() == before
    seed = tmp_path / "mine.jsonl"
    seed.write_text("keep me\n")
    fresh = tmp_path / "fresh.sqlite3"
    code, _, err = run(
        capsys, "sample", "--store", str(fresh), "--conflicts", "--seed-file", str(seed)
    )
    assert code == EXIT_FAILED and "mine.jsonl already exists" in err
    assert seed.read_text() == "keep me\n" and not fresh.exists()  # nothing half made


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(("--items", "0"), id="no items"),
        pytest.param(("--seed-file", "x.jsonl"), id="seed file without conflicts"),
    ],
)
def test_sample_refuses_options_that_make_no_sense(capsys, tmp_path, argv):
    code, _, err = run(capsys, "sample", "--store", str(tmp_path / "s.sqlite3"), *argv)

    assert code == EXIT_USAGE and "see `sample --help`" in err
    assert list(tmp_path.iterdir()) == []


def test_a_sample_with_conflicts_meets_them_once_its_seed_file_is_in_the_cloud(
    env, live_server, capsys, tmp_path
):
    store = tmp_path / "store.sqlite3"
    code, out, _ = run(capsys, "sample", "--store", str(store), "--items", "20", "--conflicts")
    assert code == EXIT_DONE
    seed = tmp_path / "cloud-items.jsonl"
    assert f"`python -m backend_stub seed USER {seed}`" in out
    theirs = [json.loads(line) for line in seed.read_text().splitlines()]
    assert len(theirs) == 2
    with LocalStore(store, create=False) as local:
        for item in theirs:
            assert local.get(item["collection"], item["key"])["data"] != item["data"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "backend_stub",
            "seed",
            env,
            str(seed),
            "--data-dir",
            str(live_server.data_dir),
        ],
        check=True,
        capture_output=True,
    )

    code, out, _ = run(capsys, "migrate", "--store", str(store), "--strategy", "manual")

    assert code == EXIT_PENDING and "2 conflict(s) wait for a decision" in out


def test_verify_names_attachments_the_cloud_lacks_until_a_sync_sends_them(env, tmp_path, capsys):
    store = make_store(tmp_path / "store.sqlite3", learning_items(10))
    assert run(capsys, "migrate", "--store", str(store))[0] == EXIT_DONE
    with LocalStore(store) as app:
        app.put("lesson_progress", "with-audio", {"audio": app.put_attachment(b"ogg" * 100)})

    code, out, _ = run(capsys, "verify", "--store", str(store))
    assert code == EXIT_PENDING
    assert "1 local change(s) not sent yet; 1 attachment(s) not in the cloud yet" in out

    assert run(capsys, "sync", "--store", str(store))[0] == EXIT_DONE
    answer = run_json(capsys, "verify", "--store", str(store))
    assert answer["verified"] is True and answer["status"]["attachmentsMissing"] == 0
