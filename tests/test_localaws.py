"""The README's local AWS path (``sh localaws``) runs as written, from the repository's
root: moto's server through ``python -m backend_stub.localaws``, the API and a worker on
the aws backend, a sample store migrated and verified, everything stopped."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from test_readme_path import ROOT, answers, free_port

ITEMS = 400  # the README's 20,000, fewer (bench/localaws.py measures the full size)


def localaws_block() -> str:
    (block,) = re.findall(r"```sh localaws\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return str(block)


def script(items: int) -> tuple[str, int, int]:
    """The README's block on free ports, migrating ``items`` items; (script, aws, api)."""
    aws, api = free_port(), free_port()
    block = localaws_block()
    for documented, port in (("5000", aws), ("8000", api)):
        assert f"127.0.0.1:{documented}" in block and f"--port {documented}" in block
        block = block.replace(f"127.0.0.1:{documented}", f"127.0.0.1:{port}")
        block = block.replace(f"--port {documented}", f"--port {port}")
    assert "--items 20000" in block
    return block.replace("--items 20000", f"--items {items}"), aws, api


def run_block(
    text: str, folder: Path, *, timeout: float, started: Callable[[int], None] = lambda _: None
) -> tuple[int | None, str]:
    """Run ``text`` with ``bash -e`` as a newcomer would (``$TRY`` under ``folder``); its
    exit status (``None``: it ran out of time) and output. Whatever it started is killed
    when it ends, however it ends; ``started`` gets the shell's pid."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIGRATION_", "AWS_"))}
    env["TMPDIR"] = str(folder)
    # Output to a file, not a pipe: servers left behind by a failure would hold a pipe
    # open. Its own process group, so that nothing is left behind.
    with tempfile.TemporaryFile("w+") as out:
        bash = subprocess.Popen(
            ["bash", "-e", "-c", text],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started(bash.pid)
        try:
            code: int | None = bash.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(bash.pid, signal.SIGKILL)
            bash.wait()
        out.seek(0)
        return code, out.read()


def test_the_readme_runs_a_migration_on_a_local_aws_and_stops_it(tmp_path):
    text, aws, api = script(ITEMS)

    code, out = run_block(text, tmp_path, timeout=180)

    assert code == 0, out
    assert "Traceback" not in out
    assert f"migrated {ITEMS + 1} items, verified: yes" in out  # sample adds a preference
    assert not answers(aws) and not answers(api)  # the path stopped its servers
    (folder,) = tmp_path.iterdir()  # $TRY: the logs of each process are there
    assert "Traceback" not in (folder / "worker.log").read_text()
