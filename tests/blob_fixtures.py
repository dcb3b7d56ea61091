"""Helpers for the attachment (blob) tests: chunking, and the wire calls over any
``httpx.Client`` (the in-process app's ``TestClient`` or a client of a server process).

Large contents are described by a :class:`Content` (a seed and a size) and generated chunk
by chunk, so no test ever holds a whole large blob either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

from sdk.contract import BLOB_SIZE_HEADER, CHECKSUM_HEADER, blob_chunk_count

BASE = "/api/migration"


@dataclasses.dataclass(frozen=True)
class Content:
    """``size`` pseudo-random bytes from ``seed``, produced ``chunk`` bytes at a time."""

    size: int
    chunk: int
    seed: int = 0

    @property
    def count(self) -> int:
        return blob_chunk_count(self.size, self.chunk)

    def piece(self, index: int) -> bytes:
        start = index * self.chunk
        length = min(self.chunk, self.size - start)
        return random.Random(f"{self.seed}:{index}").randbytes(length)

    def pieces(self) -> Iterator[bytes]:
        return (self.piece(i) for i in range(self.count))

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for piece in self.pieces():
            digest.update(piece)
        return digest.hexdigest()

    def whole(self) -> bytes:
        """All of it: only for small contents."""
        return b"".join(self.pieces())


class BlobCalls:
    """The four blob calls of ``user`` over ``client``, with ``headers`` (its auth)."""

    def __init__(self, client: httpx.Client, headers: dict[str, str], user: str) -> None:
        self.client = client
        self.headers = headers
        self.user = user

    def url(self, path: str) -> str:
        return f"{BASE}/{self.user}/blobs{path}"

    def query(self, *shas: str) -> httpx.Response:
        return self.client.post(
            self.url("/query"), json={"blobs": list(shas)}, headers=self.headers
        )

    def state(self, sha: str) -> dict[str, Any]:
        answer = self.query(sha)
        assert answer.status_code == 200, answer.text
        state: dict[str, Any] = answer.json()["blobs"][0]
        return state

    def put_chunk(
        self,
        sha: str,
        index: int | str,
        data: bytes,
        size: int,
        *,
        checksum: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = {
            **self.headers,
            "Content-Type": "application/octet-stream",
            CHECKSUM_HEADER: checksum or hashlib.sha256(data).hexdigest(),
            BLOB_SIZE_HEADER: str(size),
            **(headers or {}),
        }
        return self.client.put(self.url(f"/{sha}/chunks/{index}"), content=data, headers=sent)

    def send(
        self, content: Content, indexes: Iterable[int] | None = None, *, sha: str = ""
    ) -> None:
        for index in range(content.count) if indexes is None else indexes:
            answer = self.put_chunk(
                sha or content.sha256, index, content.piece(index), content.size
            )
            assert answer.status_code == 200, answer.text

    def complete(self, sha: str, size: int) -> httpx.Response:
        return self.client.post(
            self.url(f"/{sha}/complete"), json={"size": size}, headers=self.headers
        )

    def get(self, sha: str, **headers: str) -> httpx.Response:
        return self.client.get(self.url(f"/{sha}"), headers={**self.headers, **headers})

    def streamed_sha256(self, sha: str) -> tuple[str, int]:
        """The SHA-256 and length of the downloaded blob, read as a stream."""
        digest = hashlib.sha256()
        length = 0
        with self.client.stream("GET", self.url(f"/{sha}"), headers=self.headers) as answer:
            assert answer.status_code == 200, answer.read()
            for piece in answer.iter_bytes():
                digest.update(piece)
                length += len(piece)
        return digest.hexdigest(), length
