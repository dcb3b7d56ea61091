"""Attachments sent by several requests at once, on both backends: two devices uploading
the same content side by side, completes racing each other, and an upload started over
by a chunk that announces another size. Whatever the interleaving, the blob ends held
once, with exact content. Last, the settings an aws server refuses because S3 would.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_fixtures import Backend
from blob_fixtures import BlobCalls, Content
from server_fixtures import Server, running_server

from backend_stub.storage.aws import AwsStorage
from backend_stub.storage.aws_blobs import S3Blobs
from backend_stub.storage.blobs import ChunksMissing
from sdk.contract import BlobState, Limits

CHUNK = 1024


@pytest.fixture
def server(tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    if backend.name == "aws":
        import moto.s3.models

        monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1)
    with running_server(tmp_path, backend=backend, limits=Limits(blob_chunk_bytes=CHUNK)) as s:
        yield s


def test_two_devices_uploading_the_same_content_at_once_end_with_one_held_blob(
    server: Server,
) -> None:
    content = Content(6 * CHUNK + 1, CHUNK, seed=11)
    blobs = BlobCalls(server.client, server.auth(), "alice")

    def device(order: list[int]) -> list[int]:
        statuses = []
        for index in order:
            answer = blobs.put_chunk(content.sha256, index, content.piece(index), content.size)
            statuses.append(answer.status_code)
        completed = blobs.complete(content.sha256, content.size)
        statuses.append(completed.status_code)
        return statuses

    forward = list(range(content.count))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(device, [forward, forward[::-1]]))

    # Each device sent every chunk before completing, so both completes find them all.
    assert results == [[200] * (content.count + 1)] * 2
    assert blobs.state(content.sha256) == {
        "sha256": content.sha256,
        "held": True,
        "size": content.size,
        "receivedChunks": [],
        "chunkUrls": [],
    }
    assert blobs.get(content.sha256).content == content.whole()


def test_completes_racing_each_other_all_answer_held(server: Server) -> None:
    content = Content(4 * CHUNK, CHUNK, seed=12)
    blobs = BlobCalls(server.client, server.auth(), "alice")
    blobs.send(content)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: blobs.complete(content.sha256, content.size), range(4)))

    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert all(a.json()["held"] for a in answers)
    assert blobs.get(content.sha256).content == content.whole()


def test_a_chunk_announcing_another_size_starts_the_upload_over(server: Server) -> None:
    content = Content(3 * CHUNK, CHUNK, seed=13)
    blobs = BlobCalls(server.client, server.auth(), "alice")
    # A confused client announced one byte less, with its own last chunk.
    wrong_size = content.size - 1
    wrong_last = content.piece(2)[:-1]
    assert blobs.put_chunk(content.sha256, 2, wrong_last, wrong_size).status_code == 200
    assert blobs.state(content.sha256)["size"] == wrong_size

    blobs.send(content, [0])
    restarted = blobs.state(content.sha256)
    blobs.send(content, [1, 2])
    completed = blobs.complete(content.sha256, content.size)
    stale = blobs.complete(content.sha256, wrong_size)

    assert restarted == {
        "sha256": content.sha256,
        "held": False,
        "size": content.size,
        "receivedChunks": [0],
        "chunkUrls": [],
    }
    assert completed.json()["held"] is True
    assert stale.json()["size"] == content.size  # held: the stored size, whatever was asked
    assert blobs.get(content.sha256).content == content.whole()
    assert hashlib.sha256(blobs.get(content.sha256).content).hexdigest() == content.sha256


def test_an_aws_server_refuses_chunks_smaller_than_s3s_smallest_part() -> None:
    from backend_stub.settings import S3_MIN_PART_BYTES, AwsSettings, Settings

    small = Limits(blob_chunk_bytes=S3_MIN_PART_BYTES - 1)

    with pytest.raises(ValueError, match="blobChunkBytes must be at least 5242880"):
        Settings(backend="aws", limits=small)
    # The SQLite backend, and an emulator told to accept small parts, take any size.
    assert Settings(limits=small).limits == small
    moto = AwsSettings(endpoint_url="http://127.0.0.1:1")
    assert Settings(backend="aws", aws=moto, limits=small).limits == small


def test_a_complete_whose_chunks_went_to_a_new_upload_verifies_the_object_another_placed(
    aws_storage: AwsStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Device A sends every chunk and completes; device B, sending the same chunks in
    reverse, is half way. A's complete places the object, and before it has verified it
    and recorded it held, B's next chunk finds the upload gone and starts a new one, B
    sends the rest there and completes. B sent every chunk, so B's complete must answer
    held, not "chunks missing": the object in place is the content, and verifying it is
    B's job as much as A's. The interleaving is forced by running B inside A's step
    between placing and verifying."""
    import moto.s3.models

    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1)
    blobs = aws_storage.blobs
    assert isinstance(blobs, S3Blobs)
    content = Content(6 * CHUNK + 1, CHUNK, seed=14)
    sha, size, count = content.sha256, content.size, content.count

    def put(index: int) -> list[int]:
        return blobs.put_chunk("alice", sha, size, index, content.piece(index))

    for index in range(count):  # A: every chunk
        put(index)
    reverse = list(range(count))[::-1]
    for index in reverse[:3]:  # B: half way
        put(index)

    verify = S3Blobs._object_sha256
    b_answer: list[object] = []

    def between_placed_and_verified(self: S3Blobs, user: str, sha256: str, n: int) -> str:
        if not b_answer:
            b_answer.append(None)
            for index in reverse[3:]:  # B: the rest, into a new upload
                put(index)
            try:
                b_answer[0] = blobs.complete("alice", sha, size, count)
            except ChunksMissing as exc:
                b_answer[0] = exc
        return verify(self, user, sha256, n)

    monkeypatch.setattr(S3Blobs, "_object_sha256", between_placed_and_verified)
    a_answer = blobs.complete("alice", sha, size, count)

    assert a_answer == BlobState(sha256=sha, held=True, size=size)
    assert b_answer == [BlobState(sha256=sha, held=True, size=size)]
    assert blobs.state("alice", sha) == BlobState(sha256=sha, held=True, size=size)
    # B's new upload does not linger, in the table or in S3.
    assert aws_storage.table.get("USER#alice#BLOBS", f"UPLOAD#{sha}") is None
    uploads = blobs.s3.list_multipart_uploads(Bucket=blobs.bucket).get("Uploads", [])
    assert uploads == []


def test_a_chunk_written_while_a_complete_removes_the_upload_answers_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite backend: device B writes a chunk while device A's complete, which has every
    chunk, places the blob and removes the upload's folder under B's file. B's chunk must
    be answered (the blob is held: every chunk is there), not fail on a folder that is
    gone (a 500 before). Forced by running A's complete while B's chunk is written."""
    import backend_stub.storage.sqlite_blobs as sqlite_blobs

    with running_server(tmp_path, limits=Limits(blob_chunk_bytes=CHUNK)) as server:
        content = Content(4 * CHUNK + 1, CHUNK, seed=15)
        blobs = BlobCalls(server.client, server.auth(), "alice")
        blobs.send(content)  # A: every chunk
        write = sqlite_blobs.copy_hashing
        a_answer: list[BlobState] = []

        def while_b_writes(pieces: Any, sink: Any, digest: Any) -> Any:
            if not a_answer:
                a_answer.append(BlobState(sha256=content.sha256, held=False))  # running
                a_answer[0] = server.storage.blobs.complete(
                    "alice", content.sha256, content.size, content.count
                )
            return write(pieces, sink, digest)

        monkeypatch.setattr(sqlite_blobs, "copy_hashing", while_b_writes)
        b_chunk = blobs.put_chunk(content.sha256, 0, content.piece(0), content.size)
        monkeypatch.setattr(sqlite_blobs, "copy_hashing", write)

        assert a_answer == [BlobState(sha256=content.sha256, held=True, size=content.size)]
        assert b_chunk.status_code == 200, b_chunk.text
        assert b_chunk.json()["receivedChunks"] == list(range(content.count))
        assert blobs.complete(content.sha256, content.size).json()["held"] is True
        assert blobs.get(content.sha256).content == content.whole()
        leftovers = [p for p in (tmp_path / "blobs" / "uploads").rglob("*") if p.is_file()]
        assert leftovers == []  # neither B's chunk nor its temporary file is left behind


def test_a_chunk_whose_upload_keeps_vanishing_is_a_409_to_send_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite backend: the upload's folder removed under the chunk on every try (as by
    chunks announcing another size, again and again): after three tries the chunk is a
    409 problem to send again, not a 500, and nothing is left half-written."""
    import backend_stub.storage.sqlite_blobs as sqlite_blobs

    with running_server(tmp_path, limits=Limits(blob_chunk_bytes=CHUNK)) as server:
        content = Content(2 * CHUNK, CHUNK, seed=16)
        blobs = BlobCalls(server.client, server.auth(), "alice")
        uploads = tmp_path / "blobs" / "uploads"
        write = sqlite_blobs.copy_hashing
        tries: list[int] = []

        def upload_removed_meanwhile(pieces: Any, sink: Any, digest: Any) -> Any:
            tries.append(1)
            shutil.rmtree(uploads)
            return write(pieces, sink, digest)

        monkeypatch.setattr(sqlite_blobs, "copy_hashing", upload_removed_meanwhile)
        answer = blobs.put_chunk(content.sha256, 0, content.piece(0), content.size)
        monkeypatch.setattr(sqlite_blobs, "copy_hashing", write)

        assert len(tries) == 3
        assert answer.status_code == 409
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "version-conflict"
        assert "send it again" in answer.json()["detail"]
        # Sent again, it is taken.
        assert blobs.put_chunk(content.sha256, 0, content.piece(0), content.size).json()[
            "receivedChunks"
        ] == [0]
