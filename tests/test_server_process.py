"""The command line and the server as a real process: serve, token, seed, register, kill -9."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import jwt
import pytest
from server_fixtures import items_of, make_plan

from backend_stub import DEV_JWT_SECRET, SQLiteStorage, issue_token, verify_token
from backend_stub.__main__ import main
from sdk.contract import CHECKSUM_HEADER, batch_checksum

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MIGRATION_"):
            monkeypatch.delenv(name)


@contextmanager
def serving(
    data_dir: Path, log: Path, **settings: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``python -m backend_stub --port 0`` as a child process, and its base URL;
    ``settings`` are more ``MIGRATION_*`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATION_")}
    env["MIGRATION_JWT_SECRET"] = SECRET
    env.update(settings)
    with log.open("a") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "backend_stub", "--port", "0", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
            # Ctrl-C's default meaning, even when this run's SIGINT is ignored (a
            # background job): an ignored SIGINT is inherited by the child.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=30), f"no listening line; stderr: {log.read_text()}"
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), (line, log.read_text())
        yield process, line.removeprefix("listening on ").strip()
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def _auth(user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(user, SECRET)}"}


def test_serve_prints_one_listening_line_and_answers_requests(tmp_path: Path) -> None:
    with serving(tmp_path / "data", tmp_path / "log") as (process, base):
        response = httpx.get(f"{base}/api/migration/alice/detect", headers=_auth())
        refused = httpx.get(f"{base}/api/migration/alice/detect")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        assert process.stdout is not None
        rest = process.stdout.read()

    assert response.status_code == 200
    assert response.json()["canMigrate"] is True
    assert refused.status_code == 401
    assert rest == ""  # stdout carries the listening line and nothing else
    assert (tmp_path / "data").is_dir()


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(signal.SIGINT, id="ctrl-c"),  # what Ctrl-C in the terminal sends
        pytest.param(signal.SIGTERM, id="sigterm"),  # what kill, systemd or docker send
    ],
)
def test_ctrl_c_or_sigterm_stops_the_server_cleanly_without_a_traceback(
    tmp_path: Path, stop: signal.Signals
) -> None:
    with serving(tmp_path / "data", tmp_path / "log") as (process, base):
        assert httpx.get(f"{base}/api/migration/alice/detect", headers=_auth()).is_success
        process.send_signal(stop)
        code = process.wait(timeout=30)

    errors = (tmp_path / "log").read_text()
    assert code == 0, errors
    assert "Traceback" not in errors and "KeyboardInterrupt" not in errors
    assert errors.rstrip().endswith("stopped")


#: Short bounds, each different, so a test sees which one closed the connection.
TIMEOUTS = {
    "MIGRATION_IDLE_TIMEOUT": "1",
    "MIGRATION_HEADER_TIMEOUT": "2",
    "MIGRATION_BODY_TIMEOUT": "3",
}
#: Scheduling slack on a busy machine: the bound is a deadline, the close comes after it.
SLACK = 5.0


def seconds_until_the_server_closes(sock: socket.socket, opening: bytes, trickle: bytes) -> float:
    """Sends ``opening``, then a byte of ``trickle`` (repeated) whenever the server has
    been silent for 0.1 s, and returns the seconds until the server closes the
    connection: its EOF (or a reset), not a timer of ours, ends the wait."""
    started = time.monotonic()
    sock.sendall(opening)
    sock.settimeout(0.1)
    while time.monotonic() - started < 30:
        try:
            if trickle:
                sock.sendall(trickle[:1])
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue  # the server is still listening: trickle the next byte
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
    raise AssertionError("the server kept the connection open for 30 s")


@pytest.mark.parametrize(
    ("opening", "trickle", "bound"),
    [
        pytest.param(b"", b"", "MIGRATION_IDLE_TIMEOUT", id="a silent client"),
        pytest.param(
            b"GET /api/migration/alice/detect HTTP/1.1\r\nHost: x\r\nX-Slow: ",
            b"a",
            "MIGRATION_HEADER_TIMEOUT",
            id="a request head trickled a byte at a time",
        ),
        pytest.param(
            b"POST /api/migration/alice/start HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + issue_token("alice", SECRET).encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
            b" ",
            "MIGRATION_BODY_TIMEOUT",
            id="a request body trickled a byte at a time",
        ),
        pytest.param(
            b"GET /api/migration/alice/detect HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + issue_token("alice", SECRET).encode() + b"\r\n\r\n",
            b"",
            "MIGRATION_IDLE_TIMEOUT",
            id="a keep-alive connection idle after its answer",
        ),
    ],
)
def test_a_slow_or_silent_client_is_disconnected_within_the_configured_bound(
    tmp_path: Path, opening: bytes, trickle: bytes, bound: str
) -> None:
    with (
        serving(tmp_path / "data", tmp_path / "log", **TIMEOUTS) as (_, base),
        socket.create_connection((httpx.URL(base).host, httpx.URL(base).port or 80)) as sock,
    ):
        seconds = seconds_until_the_server_closes(sock, opening, trickle)

    limit = float(TIMEOUTS[bound])
    assert limit * 0.9 <= seconds < limit + SLACK, (seconds, bound)
    assert "Traceback" not in (tmp_path / "log").read_text()


def test_a_killed_server_restarted_on_the_same_data_dir_keeps_its_sessions(
    tmp_path: Path,
) -> None:
    plan = make_plan(items_of(4), batch_size=2)
    data_dir = tmp_path / "data"
    with serving(data_dir, tmp_path / "log") as (process, base):
        started = httpx.post(
            f"{base}/api/migration/alice/start",
            json={
                "migrationId": "mig-survivor",
                "deviceId": "d1",
                "dataVersion": 1,
                "manifest": plan.manifest,
            },
            headers=_auth(),
        )
        session_id = started.json()["sessionId"]
        stored = httpx.put(
            f"{base}/api/migration/alice/sessions/{session_id}/batches/0",
            content=plan.bodies[0],
            headers={
                **_auth(),
                "Content-Type": "application/json",
                CHECKSUM_HEADER: batch_checksum(plan.bodies[0]),
            },
        )
        assert stored.status_code == 200
        process.kill()  # SIGKILL: no shutdown, no flush
        process.wait(timeout=30)

    with serving(data_dir, tmp_path / "log") as (_, base):
        status = httpx.get(
            f"{base}/api/migration/alice/status", params={"sessionId": session_id}, headers=_auth()
        )
        again = httpx.post(
            f"{base}/api/migration/alice/start",
            json={
                "migrationId": "mig-survivor",
                "deviceId": "d1",
                "dataVersion": 1,
                "manifest": plan.manifest,
            },
            headers=_auth(),
        )

    assert status.json()["receivedBatches"] == [0]
    assert status.json()["status"] == "uploading"
    assert again.json()["sessionId"] == session_id


def test_the_token_command_prints_a_development_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "alice", "--ttl", "60"]) == 0

    token = capsys.readouterr().out.strip()
    assert verify_token(token, DEV_JWT_SECRET) == "alice"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 60


def test_the_token_command_signs_with_the_configured_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIGRATION_JWT_SECRET", SECRET)

    main(["token", "bob"])

    assert verify_token(capsys.readouterr().out.strip(), SECRET) == "bob"


def test_a_too_short_secret_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIGRATION_JWT_SECRET", "short")

    assert main(["token", "bob"]) == 1
    assert "32 bytes" in capsys.readouterr().err


def test_the_seed_command_writes_the_users_cloud_items(tmp_path: Path) -> None:
    items = items_of(3)
    source = tmp_path / "items.jsonl"
    source.write_text("\n".join(json.dumps(i) for i in items) + "\n\n")

    code = main(
        ["seed", "alice", str(source), "--device-id", "tablet", "--data-dir", str(tmp_path)]
    )

    assert code == 0
    storage = SQLiteStorage.open(tmp_path)
    try:
        held = storage.cloud_items("alice", [("lessons", i["key"]) for i in items])
    finally:
        storage.close()
    assert [item.wire() for item in held.values()] == items
    assert {(item.version, item.device_id) for item in held.values()} == {(1, "tablet")}


def test_the_seed_command_refuses_an_invalid_file_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "items.jsonl"
    source.write_text(json.dumps(items_of(1)[0]) + "\n" + '{"collection": "x"}\n')

    assert main(["seed", "alice", str(source), "--data-dir", str(tmp_path)]) == 1

    assert "item 2" in capsys.readouterr().err
    storage = SQLiteStorage.open(tmp_path)
    try:
        assert storage.cloud_items("alice", [("lessons", "k0000")]) == {}
    finally:
        storage.close()


def test_the_register_command_marks_the_user_as_a_candidate(tmp_path: Path) -> None:
    assert main(["register", "carol", "--data-dir", str(tmp_path)]) == 0

    storage = SQLiteStorage.open(tmp_path)
    try:
        assert storage.is_candidate("carol")
        assert not storage.is_candidate("dave")
    finally:
        storage.close()
