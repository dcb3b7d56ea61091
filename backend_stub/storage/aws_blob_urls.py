"""Attachments straight between client and S3: presigned URLs (``MIGRATION_AWS_BLOB_DIRECT``).

Behind API Gateway + Lambda a request and an answer carry at most 6 MB (binary bodies
base64-encoded), and S3 wants parts of 5 MiB at least: a chunk cannot travel through the
API. So the API hands out signed URLs instead and never sees a chunk's bytes:

- an upload URL per missing chunk: S3 ``UploadPart`` of the blob's multipart upload
  (:class:`~backend_stub.storage.aws_blobs.S3Blobs` keeps it as for chunks sent through
  the API), with the chunk's ``x-amz-checksum-sha256`` and ``Content-Length`` among the
  signed headers, so S3 takes only those bytes under that URL. ``complete`` is unchanged:
  S3's part list says what arrived, and the whole content is hashed before it is held;
- a download URL (``GetObject``, ``Range`` allowed) that ``GET /blobs/{sha256}`` redirects to.

URLs expire after ``MIGRATION_AWS_BLOB_URL_SECONDS``; a client asks again for fresh ones
(and for more: an answer signs at most :data:`URLS_PER_ANSWER`). Signing is local, but
needs credentials, so the examples are in tests/test_blobs_direct.py::

    >>> CHECKSUM_AMZ_HEADER, URLS_PER_ANSWER
    ('x-amz-checksum-sha256', 100)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backend_stub.storage.aws_blobs import S3Blobs
from backend_stub.storage.aws_table import sha256_b64
from sdk.contract import BlobChunkUrl, BlobState, blob_chunk_count, blob_chunk_size

__all__ = ["CHECKSUM_AMZ_HEADER", "URLS_PER_ANSWER", "S3BlobUrls"]

#: The header S3 checks a part against (base64 of its SHA-256).
CHECKSUM_AMZ_HEADER = "x-amz-checksum-sha256"
#: Upload URLs one answer carries at most (about 1 KiB each); a client asks for more.
URLS_PER_ANSWER = 100


class S3BlobUrls:
    """The :class:`~backend_stub.storage.blobs.BlobUrls` of the ``aws`` backend.

    >>> from backend_stub.settings import AwsSettings
    >>> from backend_stub.storage.aws_resources import AwsResources
    >>> from backend_stub.storage.aws_table import Table
    >>> table = Table(AwsResources(AwsSettings(endpoint_url="http://127.0.0.1:1")))
    >>> S3BlobUrls(S3Blobs(table), seconds=900).seconds
    900
    """

    def __init__(self, blobs: S3Blobs, *, seconds: int) -> None:
        self.blobs = blobs
        self.seconds = seconds
        self._signer: Any = blobs.table.resources.s3_signer

    def upload_urls(
        self, user_id: str, sha256: str, size: int, chunks: Sequence[str], chunk_bytes: int
    ) -> BlobState:
        state = self.blobs.state(user_id, sha256)
        if state.held:
            return state
        parts: list[int] | None = None
        for _attempt in range(3):
            upload = self.blobs._upload(user_id, sha256, size)
            parts = self.blobs._parts(user_id, sha256, upload)
            if parts is not None:
                break
            # Aborted under us (the bucket's rule for stale uploads): start a new one.
            self.blobs._forget(user_id, sha256, upload)
        if parts is None:
            return BlobState(sha256=sha256, held=False, size=size)
        held = set(parts)
        missing = [i for i in range(blob_chunk_count(size, chunk_bytes)) if i not in held]
        urls = [
            self._part_url(user_id, sha256, upload["uploadId"]["S"], index, chunks[index], length)
            for index in missing[:URLS_PER_ANSWER]
            for length in (blob_chunk_size(size, chunk_bytes, index),)
        ]
        return BlobState(
            sha256=sha256, held=False, size=size, received_chunks=parts, chunk_urls=urls
        )

    def _part_url(
        self, user_id: str, sha256: str, upload_id: str, index: int, chunk: str, length: int
    ) -> BlobChunkUrl:
        checksum = sha256_b64(chunk)
        url: str = self._signer.generate_presigned_url(
            "upload_part",
            Params={
                "Bucket": self.blobs.bucket,
                "Key": self.blobs.object_name(user_id, sha256),
                "UploadId": upload_id,
                "PartNumber": index + 1,
                "ChecksumSHA256": checksum,
                "ContentLength": length,
            },
            ExpiresIn=self.seconds,
        )
        headers = {CHECKSUM_AMZ_HEADER: checksum, "content-length": str(length)}
        return BlobChunkUrl(index=index, url=url, headers=headers)

    def download_url(self, user_id: str, sha256: str) -> str:
        url: str = self._signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.blobs.bucket, "Key": self.blobs.object_name(user_id, sha256)},
            ExpiresIn=self.seconds,
        )
        return url
