"""The attachment (blob) endpoints against the real app, on both storage backends:
contents of every awkward size come back exact, chunks are checked on arrival and the
whole on ``complete``, uploads resume, and nobody sees another user's blobs.

The aws runs use moto's S3, whose smallest multipart part is lowered for them (real S3
wants 5 MiB, the default ``blobChunkBytes``), so the chunks can stay small.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from aws_fixtures import Backend
from blob_fixtures import BlobCalls, Content
from server_fixtures import Server, running_server

from sdk.contract import EMPTY_SHA256, PROBLEM_CONTENT_TYPE, Limits

CHUNK = 1024
LIMITS = Limits(blob_chunk_bytes=CHUNK, max_blob_bytes=64 * CHUNK)


@pytest.fixture
def server(tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    if backend.name == "aws":
        import moto.s3.models

        monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1)
    with running_server(tmp_path, backend=backend, limits=LIMITS) as running:
        yield running


def calls(server: Server, user: str = "alice") -> BlobCalls:
    return BlobCalls(server.client, server.auth(user), user)


def problem(answer: object, status: int, code: str | None = None) -> dict[str, object]:
    assert getattr(answer, "status_code", None) == status, getattr(answer, "text", answer)
    assert answer.headers["content-type"] == PROBLEM_CONTENT_TYPE  # type: ignore[attr-defined]
    body: dict[str, object] = answer.json()  # type: ignore[attr-defined]
    if code is not None:
        assert body["code"] == code, body
    return body


@pytest.mark.parametrize(
    ("size", "order"),
    [
        pytest.param(0, [], id="0B"),
        pytest.param(1, [0], id="1B"),
        pytest.param(CHUNK, [0], id="one-chunk"),
        pytest.param(CHUNK + 1, [1, 0], id="chunk+1"),
        pytest.param(4 * CHUNK + 7, [3, 0, 4, 2, 1], id="several-out-of-order"),
    ],
)
def test_a_blob_of_any_size_comes_back_exact(server: Server, size: int, order: list[int]) -> None:
    content = Content(size, CHUNK, seed=size)
    blobs = calls(server)
    receipts = []
    for index in order:
        answer = blobs.put_chunk(content.sha256, index, content.piece(index), size)
        assert answer.status_code == 200, answer.text
        receipts.append(answer.json()["receivedChunks"])

    completed = blobs.complete(content.sha256, size)
    downloaded = blobs.get(content.sha256)

    assert receipts == [sorted(order[: i + 1]) for i in range(len(order))]
    assert completed.status_code == 200, completed.text
    assert completed.json() == {
        "sha256": content.sha256,
        "held": True,
        "size": size,
        "receivedChunks": [],
        "chunkUrls": [],
    }
    assert downloaded.status_code == 200
    assert downloaded.content == content.whole()
    assert downloaded.headers["x-content-sha256"] == content.sha256
    assert downloaded.headers["content-length"] == str(size)
    assert blobs.state(content.sha256) == completed.json()


def test_a_replayed_chunk_answers_the_same_receipt_and_a_held_blob_takes_nothing_twice(
    server: Server,
) -> None:
    content = Content(2 * CHUNK + 3, CHUNK)
    blobs = calls(server)
    first = blobs.put_chunk(content.sha256, 1, content.piece(1), content.size)
    replay = blobs.put_chunk(content.sha256, 1, content.piece(1), content.size)
    blobs.send(content, [0, 2])
    assert blobs.complete(content.sha256, content.size).status_code == 200
    again = blobs.put_chunk(content.sha256, 1, content.piece(1), content.size)
    completed_again = blobs.complete(content.sha256, content.size)

    assert first.status_code == replay.status_code == 200
    assert (
        replay.json()
        == first.json()
        == {
            "sha256": content.sha256,
            "index": 1,
            "receivedChunks": [1],
        }
    )
    assert again.json()["receivedChunks"] == [0, 1, 2]
    assert completed_again.json()["held"] is True
    assert blobs.get(content.sha256).content == content.whole()


def test_a_gzip_encoded_chunk_is_checked_and_kept_inflated(server: Server) -> None:
    data = b"a" * CHUNK + b"b" * 10  # compressible, as gzip is meant for
    sha = hashlib.sha256(data).hexdigest()
    blobs = calls(server)

    answer = blobs.put_chunk(
        sha,
        0,
        gzip.compress(data[:CHUNK]),
        len(data),
        checksum=hashlib.sha256(data[:CHUNK]).hexdigest(),
        headers={"Content-Encoding": "gzip"},
    )
    blobs.put_chunk(sha, 1, data[CHUNK:], len(data))

    assert answer.status_code == 200, answer.text
    assert blobs.complete(sha, len(data)).json()["held"] is True
    assert blobs.get(sha).content == data


def test_a_chunk_that_does_not_match_its_checksum_is_refused_and_not_kept(
    server: Server,
) -> None:
    content = Content(2 * CHUNK, CHUNK)
    blobs = calls(server)
    blobs.send(content, [0])
    damaged = bytearray(content.piece(1))
    damaged[10] ^= 1

    refused = blobs.put_chunk(
        content.sha256,
        1,
        bytes(damaged),
        content.size,
        checksum=hashlib.sha256(content.piece(1)).hexdigest(),
    )

    problem(refused, 400, "checksum-mismatch")
    assert blobs.state(content.sha256)["receivedChunks"] == [0]


def test_content_that_does_not_hash_to_its_name_is_discarded_on_complete(
    server: Server,
) -> None:
    content = Content(3 * CHUNK, CHUNK)
    named = hashlib.sha256(b"something else").hexdigest()
    blobs = calls(server)
    blobs.send(content, sha=named)  # every chunk matches its own checksum

    refused = blobs.complete(named, content.size)

    problem(refused, 400, "checksum-mismatch")
    assert blobs.state(named) == {
        "sha256": named,
        "held": False,
        "size": None,
        "receivedChunks": [],
        "chunkUrls": [],
    }
    problem(blobs.get(named), 404, "not-found")


def test_the_empty_blob_is_completed_directly_and_only_under_its_own_name(server: Server) -> None:
    blobs = calls(server)
    wrong = hashlib.sha256(b"x").hexdigest()

    refused = blobs.complete(wrong, 0)
    held = blobs.complete(EMPTY_SHA256, 0)

    problem(refused, 400, "checksum-mismatch")
    assert held.json()["held"] is True
    assert blobs.get(EMPTY_SHA256).content == b""
    assert blobs.state(wrong)["held"] is False


def test_complete_with_missing_chunks_is_refused_and_the_upload_resumes(server: Server) -> None:
    content = Content(5 * CHUNK, CHUNK)
    blobs = calls(server)
    blobs.send(content, [4, 1])

    early = blobs.complete(content.sha256, content.size)
    resumed_from = blobs.state(content.sha256)
    blobs.send(
        content, [i for i in range(content.count) if i not in resumed_from["receivedChunks"]]
    )
    completed = blobs.complete(content.sha256, content.size)

    body = problem(early, 409, "invalid-state")
    assert body["missingChunks"] == 3 and body["chunkCount"] == 5
    assert resumed_from == {
        "sha256": content.sha256,
        "held": False,
        "size": content.size,
        "receivedChunks": [1, 4],
        "chunkUrls": [],
    }
    assert completed.json()["held"] is True
    assert blobs.get(content.sha256).content == content.whole()


def test_another_user_can_neither_see_nor_read_nor_complete_your_blob(server: Server) -> None:
    content = Content(CHUNK + 5, CHUNK)
    alice = calls(server, "alice")
    bob = calls(server, "bob")
    alice.send(content)
    partial = Content(2 * CHUNK, CHUNK, seed=9)
    alice.send(partial, [0])
    assert alice.complete(content.sha256, content.size).status_code == 200

    seen = bob.query(content.sha256, partial.sha256).json()["blobs"]
    read = bob.get(content.sha256)
    completed = bob.complete(content.sha256, content.size)
    alice_token_on_bobs_path = BlobCalls(server.client, server.auth("alice"), "bob").query(
        content.sha256
    )

    assert seen == [
        {
            "sha256": content.sha256,
            "held": False,
            "size": None,
            "receivedChunks": [],
            "chunkUrls": [],
        },
        {
            "sha256": partial.sha256,
            "held": False,
            "size": None,
            "receivedChunks": [],
            "chunkUrls": [],
        },
    ]
    problem(read, 404, "not-found")
    problem(completed, 409, "invalid-state")
    problem(alice_token_on_bobs_path, 403)
    assert bob.state(content.sha256)["held"] is False
    assert alice.state(content.sha256)["held"] is True


def test_a_range_reads_part_of_a_blob(server: Server) -> None:
    content = Content(3 * CHUNK + 10, CHUNK)
    whole = content.whole()
    blobs = calls(server)
    blobs.send(content)
    blobs.complete(content.sha256, content.size)

    middle = blobs.get(content.sha256, Range="bytes=1000-2100")
    tail = blobs.get(content.sha256, Range="bytes=3000-")
    suffix = blobs.get(content.sha256, Range="bytes=-5")
    past = blobs.get(content.sha256, Range=f"bytes={content.size}-")
    several = blobs.get(content.sha256, Range="bytes=0-1,5-6")

    assert middle.status_code == 206
    assert middle.content == whole[1000:2101]
    assert middle.headers["content-range"] == f"bytes 1000-2100/{content.size}"
    assert tail.status_code == 206 and tail.content == whole[3000:]
    assert suffix.status_code == 206 and suffix.content == whole[-5:]
    problem(past, 416)
    assert past.headers["content-range"] == f"bytes */{content.size}"
    assert several.status_code == 200 and several.content == whole


def test_oversize_blobs_and_chunks_are_refused_with_413(server: Server) -> None:
    blobs = calls(server)
    too_big = LIMITS.max_blob_bytes + 1
    sha = hashlib.sha256(b"big").hexdigest()
    content = Content(2 * CHUNK, CHUNK)

    blob_over_limit = blobs.put_chunk(sha, 0, b"x" * CHUNK, too_big)
    complete_over_limit = blobs.complete(sha, too_big)
    chunk_too_long = blobs.put_chunk(content.sha256, 0, content.piece(0) + b"x", content.size)

    assert problem(blob_over_limit, 413, "payload-too-large")["limit"] == LIMITS.max_blob_bytes
    problem(complete_over_limit, 413, "payload-too-large")
    problem(chunk_too_long, 413, "payload-too-large")
    assert blobs.state(content.sha256)["receivedChunks"] == []


def test_a_chunk_of_the_wrong_length_or_index_is_refused(server: Server) -> None:
    blobs = calls(server)
    content = Content(2 * CHUNK + 1, CHUNK)

    short = blobs.put_chunk(content.sha256, 0, content.piece(0)[:-1], content.size)
    last_too_long = blobs.put_chunk(content.sha256, 2, b"ab", content.size)
    past_the_end = blobs.put_chunk(content.sha256, 3, b"a", content.size)
    empty_blob_chunk = blobs.put_chunk(EMPTY_SHA256, 0, b"", 0)
    not_binary = blobs.put_chunk(
        content.sha256, 0, content.piece(0), content.size, headers={"Content-Type": "text/plain"}
    )

    problem(short, 400, "invalid-request")
    problem(last_too_long, 413)
    problem(past_the_end, 422, "validation-failed")
    problem(empty_blob_chunk, 422, "validation-failed")
    problem(not_binary, 415)
    assert blobs.state(content.sha256)["receivedChunks"] == []


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/" + "A" * 64, 422, id="upper-case"),
        pytest.param("/" + "a" * 63, 422, id="short"),
        pytest.param("/%2E%2E", 422, id="dot-dot"),
        # The decoded slashes make another path, which no route has.
        pytest.param("/..%2F..%2Fmigration-server.sqlite", 404, id="encoded-traversal"),
        pytest.param("/" + "a" * 64 + "%00", 422, id="nul"),
        pytest.param("/" + "a" * 64 + "/chunks/01", 422, id="index-leading-zero"),
        pytest.param("/" + "a" * 64 + "/chunks/-1", 422, id="index-negative"),
        pytest.param("/" + "a" * 64 + "/chunks/%2E%2E", 422, id="index-dot-dot"),
    ],
)
def test_a_malformed_name_or_index_is_refused_before_any_storage(
    server: Server, path: str, status: int
) -> None:
    blobs = calls(server)
    method = "PUT" if "/chunks/" in path else "GET"

    answer = server.client.request(
        method,
        blobs.url(path),
        content=b"x",
        headers={
            **blobs.headers,
            "Content-Type": "application/octet-stream",
            "X-Content-SHA256": hashlib.sha256(b"x").hexdigest(),
            "X-Blob-Size": "1",
        },
    )

    problem(answer, status, "validation-failed" if status == 422 else "not-found")
    assert not list((server.settings.data_dir or Path("/nonexistent")).glob("blobs/*"))


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-Content-SHA256": "nothex"}, id="bad-checksum-header"),
        pytest.param({"X-Blob-Size": "-1"}, id="negative-size"),
        pytest.param({"X-Blob-Size": "+5"}, id="signed-size"),
        pytest.param({"X-Blob-Size": "9" * 40}, id="huge-size"),
    ],
)
def test_malformed_chunk_headers_are_refused(server: Server, headers: dict[str, str]) -> None:
    blobs = calls(server)
    content = Content(5, CHUNK)

    answer = blobs.put_chunk(content.sha256, 0, content.piece(0), 5, headers=headers)

    problem(answer, 422, "validation-failed")
    assert blobs.state(content.sha256)["receivedChunks"] == []


def test_a_query_answers_in_request_order_and_is_bounded(server: Server) -> None:
    blobs = calls(server)
    assert blobs.complete(EMPTY_SHA256, 0).status_code == 200
    other = "ab" * 32
    partial = Content(3 * CHUNK, CHUNK)
    blobs.send(partial, [2])

    answer = blobs.query(other, EMPTY_SHA256, partial.sha256, other)
    too_many = blobs.query(*["cd" * 32] * 1001)
    none = blobs.query()
    malformed = blobs.query("../etc/passwd")

    assert answer.json()["blobs"] == [
        {"sha256": other, "held": False, "size": None, "receivedChunks": [], "chunkUrls": []},
        {"sha256": EMPTY_SHA256, "held": True, "size": 0, "receivedChunks": [], "chunkUrls": []},
        {
            "sha256": partial.sha256,
            "held": False,
            "size": 3 * CHUNK,
            "receivedChunks": [2],
            "chunkUrls": [],
        },
        {"sha256": other, "held": False, "size": None, "receivedChunks": [], "chunkUrls": []},
    ]
    problem(too_many, 422)
    problem(none, 422)
    problem(malformed, 422)


def test_detect_advertises_the_blob_limits_and_capability(server: Server) -> None:
    detect = server.client.get(server.url("/detect"), headers=server.auth()).json()

    assert detect["limits"]["blobChunkBytes"] == CHUNK
    assert detect["limits"]["maxBlobBytes"] == LIMITS.max_blob_bytes
    assert "blobs" in detect["capabilities"]


@pytest.mark.parametrize("backend", ["aws"], indirect=True)  # the S3 layout
def test_on_aws_a_blob_is_one_encrypted_object_and_nothing_is_left_behind(
    server: Server, backend: Backend
) -> None:
    from backend_stub.storage.aws import AwsStorage

    assert isinstance(server.storage, AwsStorage)
    s3, bucket = server.storage.resources.s3, server.storage.resources.bucket
    content = Content(3 * CHUNK + 1, CHUNK, seed=21)
    damaged = hashlib.sha256(b"not this").hexdigest()
    blobs = calls(server)
    blobs.send(content)
    blobs.send(content, sha=damaged)
    blobs.complete(content.sha256, content.size)
    blobs.complete(damaged, content.size)

    objects = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    (name,) = [key for key in objects if key.startswith("attachments/")]
    head = s3.head_object(Bucket=bucket, Key=name)
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])

    assert name.endswith("/" + content.sha256) and "alice" not in name
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ContentLength"] == content.size
    assert uploads == []  # completed, or discarded with the damaged content
