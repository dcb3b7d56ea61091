"""Attachments against a real server process: a client killed with half a chunk on the
wire resumes sending only the chunks the server lacks, and a 200 MiB attachment migrates
with the client's memory bounded."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from conftest import start_live_server, stop_live_server
from test_crash import kill, read_until
from test_crash import run_child as child

from sdk import LocalStore, MigrationClient, MigrationOptions, RetryPolicy
from sdk._store.attachments import CHUNK_BYTES

CHILD = str(Path(__file__).with_name("attachment_child.py"))


def content(size: int) -> bytes:
    return (hashlib.sha256(b"film").digest() * (size // 32 + 1))[:size]


def api(live_server, user: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{live_server.url}/api/migration/{user}",
        headers={"Authorization": f"Bearer {live_server.token(user)}"},
    )


def test_a_client_killed_mid_chunk_resumes_with_only_the_chunks_the_server_lacks(
    live_server, tmp_path
):
    user = "attach-kill"
    film = content(3 * CHUNK_BYTES + 5)
    sha = hashlib.sha256(film).hexdigest()
    store = tmp_path / "store.sqlite3"
    with LocalStore(store) as s:
        s.put("films", "f1", {"film": s.put_attachment(film, media_type="video/mp4")})

    # A chunk goes in 1 MiB slices, 4 boundaries each: the 6th is inside chunk 1.
    proc = child(
        live_server,
        user,
        store,
        tmp_path / "cache",
        OFFLINE_MIGRATE_FAILPOINTS="blob.chunk.sending=kill@6",
    )
    proc.wait(timeout=120)
    kill(proc)
    assert proc.returncode == -9
    with api(live_server, user) as cloud:
        (state,) = cloud.post("/blobs/query", json={"blobs": [sha]}).json()["blobs"]
    assert state["held"] is False and state["receivedChunks"] == [0]  # half of 1 dropped

    sent: Counter[str] = Counter()

    def count(request: httpx.Request) -> None:
        if "/chunks/" in request.url.path:
            sent[request.url.path.rsplit("/", 1)[1]] += 1

    http = httpx.Client(base_url=live_server.url, event_hooks={"request": [count]})
    with MigrationClient(
        http_client=http,
        user_id=user,
        token=live_server.token(user),
        store_path=store,
        options=MigrationOptions(cache_dir=tmp_path / "cache"),
        retry=RetryPolicy.none(),
    ) as client:
        assert client.migrate().verified
    http.close()

    assert sent == {"1": 1, "2": 1, "3": 1}
    with api(live_server, user) as cloud:
        assert cloud.get(f"/blobs/{sha}").content == film


def _peak_rss_kib(pid: int) -> int:
    # VmHWM: the most resident memory the process ever had (Linux).
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.fixture
def own_server(tmp_path):  # type: ignore[no-untyped-def]
    """A server process of this test's own, so its peak memory is this test's."""
    server = start_live_server(tmp_path / "server")
    yield server
    stop_live_server(server)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_a_200_mib_attachment_migrates_with_client_and_server_memory_bounded(own_server, tmp_path):
    live_server = own_server
    user = "attach-200mib"
    with api(live_server, user) as cloud:  # the server's routes loaded, as in any app's life
        assert cloud.post("/blobs/query", json={"blobs": ["0" * 64]}).status_code == 200
    server_before = _peak_rss_kib(live_server.process.pid)
    proc = subprocess.Popen(
        [
            sys.executable,
            CHILD,
            live_server.url,
            user,
            live_server.token(user),
            str(tmp_path),
            "200",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = read_until(proc, "result")
        proc.wait(timeout=60)
    finally:
        kill(proc)
    figures = dict(line.split(" ", 1) for line in lines)
    result = json.loads(figures["result"])
    growth_mib = (int(figures["peak"]) - int(figures["baseline"])) / 1024

    assert result["verified"] and result["sha256"] == result["expected"]
    assert result["size"] == 200 * 1024 * 1024
    # A piece (1 MiB) or two in memory at a time, never a chunk (5 MiB) nor the file:
    # measured 0-4 MiB of growth.
    print(f"200 MiB attachment: the client's peak memory grew by {growth_mib:.1f} MiB")
    assert growth_mib < 24, f"the client grew by {growth_mib:.0f} MiB"
    with api(live_server, user) as cloud:
        (state,) = cloud.post("/blobs/query", json={"blobs": [result["sha256"]]}).json()["blobs"]
    assert state["held"] and state["size"] == 200 * 1024 * 1024
    # The server streams each chunk to its file and the whole through SHA-256: measured
    # 12-16 MiB of growth (a 5 MiB chunk or two in flight, with their copies); the file,
    # or a good part of it, held in memory anywhere would show far above the bound.
    server_growth_mib = (_peak_rss_kib(live_server.process.pid) - server_before) / 1024
    print(f"200 MiB attachment: the server's peak memory grew by {server_growth_mib:.1f} MiB")
    assert server_growth_mib < 48, f"the server grew by {server_growth_mib:.0f} MiB"
