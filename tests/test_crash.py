"""A client killed with SIGKILL at a step of the migration, then started again, finishes
the same migration: same session, nothing lost, nothing duplicated. On both backends:
the aws one is the API and a worker on moto's server (``tests/aws_servers.py``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sdk_fixtures import learning_items, make_store

from sdk import LocalState, LocalStore, detect_local
from sdk.contract import dataset_checksum_of

CHILD = str(Path(__file__).with_name("migrate_child.py"))


def run_child(live_server, user, store, cache, *pause: str, **env: str) -> subprocess.Popen[str]:
    """The child migrating (``MIGRATE_CHILD_SYNC=1`` in ``env``: syncing) ``store``."""
    return subprocess.Popen(
        [
            sys.executable,
            CHILD,
            live_server.url,
            user,
            live_server.token(user),
            str(store),
            str(cache),
            *pause,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def read_until(proc: subprocess.Popen[str], prefix: str) -> list[str]:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith(prefix):
            return lines
    proc.wait()
    raise AssertionError(f"child ended (rc={proc.returncode}) before {prefix!r}: {lines}")


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def api(live_server, user: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{live_server.url}/api/migration/{user}",
        headers={"Authorization": f"Bearer {live_server.token(user)}"},
    )


PAUSES = {
    "mid-upload": ("crash-upload", ("uploading", "6")),
    "before-start": ("crash-start", ("starting",)),
    "while-resolving": ("crash-resolve", ("resolving",)),
    "before-complete": ("crash-complete", ("completing",)),
    "after-complete-before-marking": ("crash-verify", ("verifying",)),
}
#: On the aws backend in ``make test``: killed while ``complete`` is due (the other
#: points run there as ``crash:*`` scenarios, in ``tests/test_chaos.py`` and ``make chaos``).
AWS_PAUSES = ("before-complete",)


@pytest.mark.parametrize(
    ("backend", "user", "pause"),
    [pytest.param("sqlite", user, pause, id=name) for name, (user, pause) in PAUSES.items()]
    + [pytest.param("aws", *PAUSES[name], id=f"aws-{name}") for name in AWS_PAUSES],
)
def test_a_client_killed_mid_migration_finishes_the_same_migration_when_restarted(
    request, tmp_path, backend, user, pause
):
    live_server = request.getfixturevalue(
        "live_server" if backend == "sqlite" else "aws_live_server"
    )
    items = learning_items(240)
    store = make_store(tmp_path / "store.sqlite3", items)
    live_server.seed(user, [dict(i, data={"other": True}) for i in items[:7]])
    cache = tmp_path / "cache"

    first = run_child(live_server, user, store, cache, *pause)
    lines = read_until(first, "paused")
    kill(first)
    started = [line.split()[2] for line in lines if line.startswith("event MigrationStarted")]
    with api(live_server, user) as http:
        status = http.get("/status").json()
    if pause[0] == "uploading":
        # Killed in the middle of the upload: some batches held, not all.
        assert 0 < len(status["receivedBatches"]) < status["batchCount"]
    assert detect_local(store).state is LocalState.READY  # not marked before verification

    second = run_child(live_server, user, store, cache)
    (last,) = read_until(second, "result")[-1:]
    second.wait(timeout=60)
    for stream in (second.stdin, second.stdout):
        assert stream is not None
        stream.close()
    result = json.loads(last.split(" ", 1)[1])

    assert result["verified"] and result["resumed"]
    if started:
        assert result["session_id"] == started[0]  # the same session, not a second one
    if pause[0] == "uploading":
        assert result["batches_uploaded"] == status["batchCount"] - len(status["receivedBatches"])
    with LocalStore(store, create=False) as s:
        local = list(s.iter_items())
    assert len(local) == len(items)
    assert result["cloud_checksum"] == dataset_checksum_of(local)
    with api(live_server, user) as http:
        summary = http.get("/summary").json()
        events = http.get("/status").json()
    assert summary["summary"]["totalItems"] == len(items)  # nothing lost, none twice
    assert summary["summary"]["verified"] is True
    assert summary["sessionId"] == result["session_id"]
    assert events["status"] == "completed"
    assert detect_local(store).state is LocalState.MIGRATED
    assert list(cache.glob("*.sqlite3*")) == []
