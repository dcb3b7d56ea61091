"""The README's "Try it in one terminal" path runs as written, from the repository's root."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORT = "8765"  # the README's; the test runs the path on a free port instead


def newcomer_block() -> str:
    (block,) = re.findall(r"```sh newcomer\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return str(block)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_each_documented_exit_code_is_checked_where_it_is_shown():
    for line in newcomer_block().splitlines():
        documented = re.search(r"# exit (\d+)", line)
        checked = re.search(r"\|\| test \$\? -eq (\d+)", line)
        assert (documented and documented[1]) == (checked and checked[1]), line


def test_the_path_covers_every_command_and_every_example_that_needs_the_server():
    block = newcomer_block()
    for command in ("sample", "detect", "plan", "migrate", "status", "conflicts", "resolve"):
        assert f".venv/bin/offline-migrate {command} " in block
    for command in ("cancel", "verify", "sync"):
        assert f".venv/bin/offline-migrate {command} " in block
    for example in (ROOT / "examples").glob("*.py"):
        assert (f"examples/{example.name}" in block) == (example.name != "demo.py")
    assert {int(code) for code in re.findall(r"# exit (\d+)", block)} >= {1, 2, 3, 4}


def test_a_newcomer_runs_the_readme_path_top_to_bottom_and_the_server_stops(tmp_path):
    port = free_port()
    script = newcomer_block().replace(PORT, str(port))
    assert str(port) in script
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATION_")}
    env["TMPDIR"] = str(tmp_path)  # mktemp -d: $TRY under the test's own folder

    # Its own process group, so a failure half-way leaves no server behind either.
    bash = subprocess.Popen(
        ["bash", "-e", "-c", script],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = bash.communicate(timeout=120)
    finally:
        if bash.poll() is None or answers(port):
            os.killpg(bash.pid, signal.SIGKILL)
            bash.wait()

    assert bash.returncode == 0, out
    assert "Traceback" not in out
    assert "2 conflict(s) wait for a decision" in out
    assert "completed 3 items, verified: True" in out  # quickstart.py
    assert "completed: 1000 items, verified: True" in out  # asyncio_app.py
    assert not answers(port)  # the path stopped its server
    assert [d.name for d in tmp_path.glob("*/server-data")]  # $TRY was the temporary folder
