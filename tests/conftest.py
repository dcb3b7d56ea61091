"""Shared fixtures: the real server app in-process, and on a real loopback socket."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from server_fixtures import TestClient

from backend_stub import Settings, create_app, issue_token
from backend_stub.storage import Storage

# moto in server mode, per-test AWS resources, and the sqlite/aws ``backend`` parameter.
pytest_plugins = ["aws_fixtures", "aws_servers"]


@pytest.fixture(autouse=True)
def _private_user_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test writes into the real user's data or cache folders."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))


@dataclasses.dataclass
class InProcessServer:
    """The real app, served in-process through ``TestClient`` (an ``httpx.Client``)."""

    settings: Settings
    client: TestClient

    @property
    def storage(self) -> Storage:
        storage: Storage = self.client.app.state.storage  # type: ignore[attr-defined]
        return storage

    def token(self, user_id: str) -> str:
        return issue_token(user_id, self.settings.jwt_secret)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    settings = Settings(data_dir=tmp_path / "server")
    with TestClient(create_app(settings), base_url="http://testserver") as client:
        yield InProcessServer(settings, client)


@dataclasses.dataclass
class LiveServer:
    """``python -m backend_stub`` in its own process on a loopback port."""

    url: str
    data_dir: Path
    process: subprocess.Popen[str]

    def token(self, user_id: str) -> str:
        return issue_token(user_id, Settings().jwt_secret)

    def seed(self, user_id: str, items: Iterable[Mapping[str, Any]]) -> None:
        """Cloud items for ``user_id``, as if another device had uploaded them, written
        by the server's own ``seed`` command while the server runs."""
        path = self.data_dir / f"seed-{uuid.uuid4().hex}.jsonl"
        path.write_text("".join(json.dumps(i) + "\n" for i in items))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "backend_stub",
                "seed",
                user_id,
                str(path),
                "--device-id",
                "tablet",
                "--data-dir",
                str(self.data_dir),
            ],
            check=True,
            capture_output=True,
        )


def start_live_server(data_dir: Path) -> LiveServer:
    process = subprocess.Popen(
        [sys.executable, "-m", "backend_stub", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        process.kill()
        process.wait()
        raise RuntimeError(f"server did not start: {line!r}")
    return LiveServer(line.split("listening on ", 1)[1].strip(), data_dir, process)


def stop_live_server(server: LiveServer) -> None:
    server.process.terminate()
    server.process.wait(timeout=10)
    if server.process.stdout is not None:
        server.process.stdout.close()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server process for the session; tests keep apart by using their own user ids."""
    server = start_live_server(tmp_path_factory.mktemp("live-server"))
    yield server
    stop_live_server(server)
