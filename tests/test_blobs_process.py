"""Attachments on a real server process: killed between chunks, at each step of
``complete``, and with a 64 MiB blob whose upload and download keep the server's memory
far below the blob's size.

The server is ``python -m backend_stub`` on a loopback port (``test_server_process.serving``);
``MIGRATION_FAILPOINTS`` makes it SIGKILL itself at a named step (:mod:`backend_stub.failpoints`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from aws_fixtures import AwsBackend
from blob_fixtures import BlobCalls, Content
from test_server_process import SECRET, serving

from backend_stub import issue_token
from sdk.contract import Limits

CHUNK = 64 * 1024
LIMITS = Limits(blob_chunk_bytes=CHUNK).model_dump_json(by_alias=True)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MIGRATION_"):
            monkeypatch.delenv(name)


@contextmanager
def blob_server(tmp_path: Path, **settings: str) -> Iterator[tuple[BlobCalls, object]]:
    """A server on ``tmp_path/data`` and the blob calls of alice against it."""
    env = {"MIGRATION_LIMITS": LIMITS, **settings}
    with serving(tmp_path / "data", tmp_path / "log", **env) as (process, base):
        headers = {"Authorization": f"Bearer {issue_token('alice', SECRET)}"}
        with httpx.Client(base_url=base, timeout=60) as client:
            yield BlobCalls(client, headers, "alice"), process


def killed(process: object) -> int:
    code: int = process.wait(timeout=30)  # type: ignore[attr-defined]
    return code


def leftovers(tmp_path: Path) -> list[str]:
    """Temporary files under the blob folder (a crash may leave some; none may stay)."""
    return [p.name for p in (tmp_path / "data" / "blobs").rglob(".*.tmp")]


def test_a_server_killed_between_chunks_keeps_the_chunks_it_acknowledged(
    tmp_path: Path,
) -> None:
    content = Content(5 * CHUNK + 17, CHUNK, seed=1)
    with blob_server(tmp_path) as (blobs, process):
        blobs.send(content, [0, 3, 1])
        process.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
        assert killed(process) == -signal.SIGKILL

    with blob_server(tmp_path) as (blobs, _):
        resumed = blobs.state(content.sha256)
        blobs.send(content, [i for i in range(content.count) if i not in resumed["receivedChunks"]])
        completed = blobs.complete(content.sha256, content.size)
        downloaded = blobs.streamed_sha256(content.sha256)

    assert resumed["receivedChunks"] == [0, 1, 3]
    assert resumed["size"] == content.size
    assert completed.json()["held"] is True
    assert downloaded == (content.sha256, content.size)
    assert leftovers(tmp_path) == []


def test_a_server_killed_after_storing_a_chunk_but_before_answering_has_it(
    tmp_path: Path,
) -> None:
    content = Content(3 * CHUNK, CHUNK, seed=2)
    with blob_server(tmp_path, MIGRATION_FAILPOINTS="blob.chunk.stored=kill@2") as (
        blobs,
        process,
    ):
        blobs.send(content, [0])
        with pytest.raises(httpx.TransportError):
            blobs.put_chunk(content.sha256, 1, content.piece(1), content.size)
        assert killed(process) == -signal.SIGKILL

    with blob_server(tmp_path) as (blobs, _):
        resumed = blobs.state(content.sha256)["receivedChunks"]
        blobs.send(content, [2])
        completed = blobs.complete(content.sha256, content.size)
        downloaded = blobs.get(content.sha256).content

    assert resumed == [0, 1]
    assert completed.json()["held"] is True
    assert downloaded == content.whole()


@pytest.mark.parametrize(
    "step",
    [
        pytest.param("blob.complete.assembled", id="assembled-not-in-place"),
        pytest.param("blob.complete.placed", id="in-place-not-recorded"),
    ],
)
def test_a_server_killed_inside_complete_completes_on_the_next_try(
    tmp_path: Path, step: str
) -> None:
    content = Content(4 * CHUNK + 3, CHUNK, seed=3)
    with blob_server(tmp_path, MIGRATION_FAILPOINTS=f"{step}=kill") as (blobs, process):
        blobs.send(content)
        with pytest.raises(httpx.TransportError):
            blobs.complete(content.sha256, content.size)
        assert killed(process) == -signal.SIGKILL

    with blob_server(tmp_path) as (blobs, _):
        after_crash = blobs.state(content.sha256)
        refused_read = blobs.get(content.sha256).status_code
        completed = blobs.complete(content.sha256, content.size)
        downloaded = blobs.get(content.sha256).content
        again = blobs.complete(content.sha256, content.size)

    assert after_crash["held"] is False
    assert after_crash["receivedChunks"] == list(range(content.count))
    assert refused_read == 404
    assert completed.json() == again.json()
    assert completed.json()["held"] is True
    assert downloaded == content.whole()
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "data" / "blobs" / "uploads").exists() or not any(
        (tmp_path / "data" / "blobs" / "uploads").rglob("*/*/*")
    )


@pytest.fixture
def aws_env(aws_backend: AwsBackend, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The ``MIGRATION_*`` variables of a server process on this test's moto resources."""
    import moto.s3.models

    # moto runs in this process: its smallest multipart part, lowered for small chunks.
    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1)
    aws = aws_backend.settings
    names = ("endpoint_url", "table", "bucket", "queue", "dead_letter_queue", "event_bus")
    env = {f"MIGRATION_AWS_{name.upper()}": str(getattr(aws, name)) for name in names}
    return {"MIGRATION_BACKEND": "aws", **env}


@pytest.mark.parametrize(
    "failpoint",
    [
        # The third chunk is a part in S3, its answer never sent.
        pytest.param("blob.chunk.stored=kill@3", id="chunk-stored-not-answered"),
        # The multipart upload is complete in S3; the content not verified, not held.
        pytest.param("blob.complete.placed=kill", id="completed-in-s3-not-verified"),
    ],
)
def test_an_aws_server_killed_mid_upload_or_mid_complete_resumes_from_s3(
    tmp_path: Path, aws_env: dict[str, str], failpoint: str
) -> None:
    content = Content(3 * CHUNK + 9, CHUNK, seed=6)
    with blob_server(tmp_path, **aws_env, MIGRATION_FAILPOINTS=failpoint) as (blobs, process):
        with pytest.raises(httpx.TransportError):
            blobs.send(content)
            blobs.complete(content.sha256, content.size)
        assert killed(process) == -signal.SIGKILL

    with blob_server(tmp_path, **aws_env) as (blobs, _):
        after_crash = blobs.state(content.sha256)
        missing = [i for i in range(content.count) if i not in after_crash["receivedChunks"]]
        blobs.send(content, missing)
        completed = blobs.complete(content.sha256, content.size)
        downloaded = blobs.streamed_sha256(content.sha256)

    assert after_crash["held"] is False
    expected = [0, 1, 2] if "chunk" in failpoint else list(range(content.count))
    assert after_crash["receivedChunks"] == expected
    assert completed.json()["held"] is True
    assert downloaded == (content.sha256, content.size)


def _peak_rss_kib(pid: int) -> int:
    # VmHWM: the most resident memory the process ever had (Linux).
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("backend", ["sqlite", "aws"])
def test_a_64_mib_blob_goes_up_and_down_with_the_servers_memory_bounded(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    chunk = 5 * 1024 * 1024  # the default blobChunkBytes
    content = Content(64 * 1024 * 1024 + 123, chunk, seed=4)
    small = Content(2 * chunk, chunk, seed=5)
    env = {"MIGRATION_LIMITS": Limits().model_dump_json(by_alias=True)}
    if backend == "aws":
        # moto keeps the parts in this process, not in the server's.
        env.update(request.getfixturevalue("aws_env"))
    with blob_server(tmp_path, **env) as (blobs, process):
        pid: int = process.pid  # type: ignore[attr-defined]
        # A small blob first, so that the baseline includes everything a request loads.
        blobs.send(small)
        assert blobs.complete(small.sha256, small.size).status_code == 200
        assert blobs.streamed_sha256(small.sha256)[1] == small.size
        baseline = _peak_rss_kib(pid)

        blobs.send(content)
        completed = blobs.complete(content.sha256, content.size)
        downloaded = blobs.streamed_sha256(content.sha256)
        growth_mib = (_peak_rss_kib(pid) - baseline) / 1024

    assert completed.json()["held"] is True
    assert downloaded == (content.sha256, content.size)
    # The blob is 64 MiB; the server holds at most a chunk or two of it at a time.
    assert growth_mib < 24, f"the server's peak RSS grew by {growth_mib:.1f} MiB"
