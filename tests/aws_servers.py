"""The reference server as processes on the aws backend: the API and a worker, on AWS
resources of their own in the session's moto server, for the tests that kill clients
and servers on both backends (``tests/test_crash.py``, ``tests/test_chaos.py``).

:func:`spawn_aws_server` gives a :class:`~chaos_harness.ServerProcess` like
:func:`~chaos_harness.spawn_server`'s, plus its worker process; :class:`AwsServerView`
answers the harness's read-only questions from the AWS resources instead of a SQLite
file, so every invariant of :func:`~chaos_harness.check_world` is checked the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aws_fixtures import CREDENTIALS, AwsBackend, fresh_aws_backend
from chaos_harness import Key, ServerProcess, SessionRow, spawn_server

from backend_stub import localaws
from backend_stub.items import seed_cloud_items
from backend_stub.settings import AwsSettings
from backend_stub.storage import iter_staged
from backend_stub.storage.aws import AwsStorage
from sdk.contract import Item


@pytest.fixture(scope="session")
def aws_live_server(
    tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str, boto_session: Any
) -> Iterator[ServerProcess]:
    """The API and a worker, in processes of their own, on AWS resources of their own
    (the ``live_server`` of the aws backend; tests keep apart by their user ids)."""
    backend = fresh_aws_backend(moto_endpoint, boto_session)
    server = spawn_aws_server(tmp_path_factory.mktemp("aws-live-server"), backend)
    yield server
    server.stop()


@contextlib.contextmanager
def local_aws_backend() -> Iterator[AwsBackend]:
    """Outside pytest (``bench/chaos.py``): the README's local AWS in this process, and
    fresh resources on it; dummy credentials in the environment while it runs."""
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    for target, name, value in localaws.patches():
        setattr(target, name, value)
    server = localaws.local_aws()
    server.start()
    try:
        host, port = server.get_host_and_port()
        session = boto3.session.Session(region_name="us-east-1")
        yield fresh_aws_backend(f"http://{host}:{port}", session)
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def aws_env(settings: AwsSettings) -> dict[str, str]:
    """The ``MIGRATION_*`` variables that make a server process use these resources."""
    env = {"MIGRATION_BACKEND": "aws"}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if value is not None:
            env[f"MIGRATION_AWS_{field.name.upper()}"] = str(value)
    return env


def spawn_aws_server(data_dir: Path, backend: AwsBackend) -> ServerProcess:
    """``python -m backend_stub`` and ``python -m backend_stub worker`` on ``backend``'s
    resources; logs in ``data_dir`` (``server.log``, ``worker.log``)."""
    server = spawn_server(data_dir, env=aws_env(backend.settings))
    server.worker = spawn_aws_worker(data_dir, backend)
    server.aws = backend
    return server


def spawn_aws_worker(data_dir: Path, backend: AwsBackend, **env: str) -> subprocess.Popen[bytes]:
    """``python -m backend_stub worker`` on ``backend``'s resources, with ``env`` added
    (``MIGRATION_FAILPOINTS=...``); its log appended to ``data_dir/worker.log``."""
    with (data_dir / "worker.log").open("a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "backend_stub", "worker", "--poll-wait", "1"],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, **aws_env(backend.settings), **env},
        )


def seed_aws(
    backend: AwsBackend, user: str, items: Iterable[Mapping[str, Any]], device_id: str
) -> None:
    """Cloud items for ``user``, as if another device had uploaded them."""
    storage = backend.open()
    try:
        seed_cloud_items(storage, user, items, device_id=device_id)
    finally:
        storage.close()


class AwsServerView:
    """:class:`~chaos_harness.ServerView`'s questions, answered from the AWS resources
    through the backend's own storage (read-only; a fresh storage per question, as
    another process would read)."""

    def __init__(self, backend: AwsBackend) -> None:
        self.backend = backend

    def _read(self) -> AwsStorage:
        return self.backend.open()

    def sessions(self, user: str) -> list[SessionRow]:
        storage = self._read()
        try:
            found = [storage.get_session(s.id) for s in _all_sessions(storage, user)]
        finally:
            storage.close()
        rows = []
        for session in found:
            assert session is not None
            rows.append(
                SessionRow(
                    session.id,
                    session.status.value,
                    session.expires_at,
                    session.manifest.batch_count,
                    session.manifest.item_count,
                    session.result.cloud_checksum if session.result else None,
                )
            )
        return rows

    def received(self, session_id: str) -> list[int]:
        storage = self._read()
        try:
            return sorted(storage.received_batches(session_id))
        finally:
            storage.close()

    def staged_keys(self, session_id: str) -> list[Key]:
        storage = self._read()
        try:
            pages = iter_staged(storage, session_id)
            return sorted((s.collection, s.key) for page in pages for s in page)
        finally:
            storage.close()

    def cloud(self, user: str) -> dict[Key, Item]:
        storage = self._read()
        found: dict[Key, Item] = {}
        after = None
        try:
            while True:
                page = storage.pull_page(user, after=after, until=None, limit=500)
                for synced in page.items:
                    found[(synced.item.collection, synced.item.key)] = synced.item.wire()
                if len(page.items) < 500:
                    return found
                last = page.items[-1]
                after = (last.seq, last.item.collection, last.item.key)
        finally:
            storage.close()

    def events(self, user: str, type: str) -> int:
        storage = self._read()
        try:
            return len(storage.events(user_id=user, type=type))
        finally:
            storage.close()


def _all_sessions(storage: AwsStorage, user: str) -> list[Any]:
    from backend_stub.storage.aws_rows import session_of

    return [session_of(row) for row in storage._session_rows(user)]
