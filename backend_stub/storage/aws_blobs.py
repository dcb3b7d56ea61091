"""Blobs of the ``aws`` backend: one S3 multipart upload per blob, DynamoDB records.

Each chunk is one part (``PartNumber`` = index + 1) sent with its ``ChecksumSHA256``, so
S3 checks it on arrival; the parts S3 holds (``list_parts``) are the chunks received, so
an upload resumes from S3's own account after any crash. ``complete`` completes the
multipart upload, streams the object back through SHA-256 in fixed-size reads, and only
a match writes the ``HELD#`` record (a mismatch deletes the object). Objects live under
``attachments/<owner>/<sha256>`` (``owner`` a hash of the user id), server-side
encrypted like every object of the backend. Rows, in the user's own partition
``USER#<id>#BLOBS``: ``UPLOAD#<sha>`` (upload id, size; the chunk count once ``complete``
began) and ``HELD#<sha>`` (size).

Everything here talks to S3 and DynamoDB (or moto), so the examples are in the tests;
offline::

    >>> from backend_stub.settings import AwsSettings
    >>> from backend_stub.storage.aws_resources import AwsResources
    >>> S3Blobs(Table(AwsResources(AwsSettings(endpoint_url="http://127.0.0.1:1")))
    ...         ).object_name("alice", "ab" * 32)[:45]
    'attachments/2bd806c97f0e00af1a1fc3328fa763a9/'
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

from backend_stub.failpoints import failpoint
from backend_stub.storage.aws_resources import TTL_ATTRIBUTE
from backend_stub.storage.aws_rows import Row, get_n, get_s, key, n, opt_n, s
from backend_stub.storage.aws_table import Table, error_code, sha256_b64
from backend_stub.storage.blobs import (
    EMPTY_SHA256,
    READ_BYTES,
    BlobMismatch,
    ChunksMissing,
    owner_folder,
)
from backend_stub.storage.records import VersionConflict
from sdk.contract import BlobState

__all__ = ["S3Blobs"]

_GONE = ("NoSuchUpload", "NoSuchKey", "404")
_UPLOAD_ROW_SECONDS = 7 * 24 * 3600


def _pk(user_id: str) -> str:
    return f"USER#{user_id}#BLOBS"


class S3Blobs:
    """The :class:`~backend_stub.storage.blobs.BlobStore` on the backend's bucket and table.

    >>> from backend_stub.settings import AwsSettings
    >>> from backend_stub.storage.aws_resources import AwsResources
    >>> S3Blobs(Table(AwsResources(AwsSettings(endpoint_url="http://127.0.0.1:1")))).bucket
    'offline-migrate-data'
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self.s3 = table.s3
        self.bucket = table.resources.bucket

    def close(self) -> None:
        """Nothing of its own: the storage closes the clients."""

    def object_name(self, user_id: str, sha256: str) -> str:
        """The S3 key of a user's blob."""
        return f"attachments/{owner_folder(user_id)}/{sha256}"

    # ------------------------------------------------------------------ reads

    def states(self, user_id: str, shas: Sequence[str]) -> list[BlobState]:
        # The records of all of them in a few batch reads; S3 is asked only about the
        # uploads in progress.
        wanted = {(_pk(user_id), f"{kind}#{sha}") for sha in shas for kind in ("HELD", "UPLOAD")}
        rows = {
            get_s(row, "sk"): row
            for row in self.table.batch_get([key(pk, sk) for pk, sk in sorted(wanted)])
        }
        return [
            self._state(user_id, sha, rows.get(f"HELD#{sha}"), rows.get(f"UPLOAD#{sha}"))
            for sha in shas
        ]

    def state(self, user_id: str, sha256: str) -> BlobState:
        held = self.table.get(_pk(user_id), f"HELD#{sha256}")
        upload = None if held else self.table.get(_pk(user_id), f"UPLOAD#{sha256}")
        return self._state(user_id, sha256, held, upload)

    def _state(self, user_id: str, sha256: str, held: Row | None, upload: Row | None) -> BlobState:
        if held is not None:
            return BlobState(sha256=sha256, held=True, size=get_n(held, "size"))
        if upload is None:
            return BlobState(sha256=sha256, held=False)
        parts = self._parts(user_id, sha256, upload)
        if parts is None:
            count = opt_n(upload, "count")
            if count is None or not self._exists(user_id, sha256):
                return BlobState(sha256=sha256, held=False)
            # Completed in S3, not verified yet (a crash inside complete): all chunks are
            # there; complete again to verify.
            parts = list(range(count))
        return BlobState(
            sha256=sha256, held=False, size=get_n(upload, "size"), received_chunks=parts
        )

    def read(self, user_id: str, sha256: str, start: int, stop: int) -> Iterator[bytes]:
        if start >= stop:
            return iter(())
        answer = self.s3.get_object(
            Bucket=self.bucket,
            Key=self.object_name(user_id, sha256),
            Range=f"bytes={start}-{stop - 1}",
        )
        body: Any = answer["Body"]
        return _pieces(body)

    def _parts(self, user_id: str, sha256: str, upload: Row) -> list[int] | None:
        """The chunk indexes S3 holds for the upload; ``None`` if it is gone."""
        found: list[int] = []
        marker = 0
        while True:
            try:
                page = self.s3.list_parts(
                    Bucket=self.bucket,
                    Key=self.object_name(user_id, sha256),
                    UploadId=get_s(upload, "uploadId"),
                    PartNumberMarker=marker,
                )
            except Exception as exc:
                if error_code(exc) in _GONE:
                    return None
                raise
            found += [part["PartNumber"] - 1 for part in page.get("Parts", [])]
            if not page.get("IsTruncated"):
                return sorted(found)
            marker = int(page["NextPartNumberMarker"])

    def _exists(self, user_id: str, sha256: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self.object_name(user_id, sha256))
        except Exception as exc:
            if error_code(exc) in _GONE:
                return False
            raise
        return True

    # ------------------------------------------------------------------ writes

    def put_chunk(self, user_id: str, sha256: str, size: int, index: int, data: bytes) -> list[int]:
        checksum = sha256_b64(hashlib.sha256(data).hexdigest())
        for _attempt in range(3):
            upload = self._upload(user_id, sha256, size)
            try:
                self.s3.upload_part(
                    Bucket=self.bucket,
                    Key=self.object_name(user_id, sha256),
                    UploadId=get_s(upload, "uploadId"),
                    PartNumber=index + 1,
                    Body=data,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=checksum,
                )
            except Exception as exc:
                if error_code(exc) not in _GONE:
                    raise
                # The upload was aborted or completed meanwhile: start a new one.
                self._forget(user_id, sha256, upload)
                continue
            failpoint("blob.chunk.stored")
            # None: a complete racing this chunk finished the upload just now.
            return self._parts(user_id, sha256, upload) or []
        raise VersionConflict(f"the upload of blob {sha256[:8]}... kept changing: retry")

    def _upload(self, user_id: str, sha256: str, size: int) -> Row:
        """The upload in progress for ``size`` bytes, started if there is none."""
        row = self.table.get(_pk(user_id), f"UPLOAD#{sha256}")
        if row is not None and get_n(row, "size") == size:
            return row
        if row is not None:
            # Another size for the same content: only one can be right, and this client
            # says it is this one. The other upload could never complete.
            self._forget(user_id, sha256, row, abort=True)
        started = self.s3.create_multipart_upload(
            Bucket=self.bucket,
            Key=self.object_name(user_id, sha256),
            ChecksumAlgorithm="SHA256",
            **self.table.resources.sse_args(),
        )
        row = {
            **key(_pk(user_id), f"UPLOAD#{sha256}"),
            "uploadId": s(started["UploadId"]),
            "size": n(size),
            # The bucket aborts uploads left for a day; their rows go some days later.
            TTL_ATTRIBUTE: n(int(time.time()) + _UPLOAD_ROW_SECONDS),
        }
        try:
            self.table.put(row, condition="attribute_not_exists(#pk)")
        except VersionConflict:
            # Another request started one first: use it, drop ours.
            self._abort(user_id, sha256, started["UploadId"])
            theirs = self.table.get(_pk(user_id), f"UPLOAD#{sha256}")
            if theirs is None:
                raise
            return theirs
        return row

    def complete(self, user_id: str, sha256: str, size: int, count: int) -> BlobState:
        if self.table.get(_pk(user_id), f"HELD#{sha256}") is not None:
            return self.state(user_id, sha256)
        if count == 0:
            if sha256 != EMPTY_SHA256:
                raise BlobMismatch(sha256, EMPTY_SHA256)
            self.s3.put_object(
                Bucket=self.bucket,
                Key=self.object_name(user_id, sha256),
                Body=b"",
                **self.table.resources.sse_args(),
            )
        else:
            try:
                self._finish_upload(user_id, sha256, size, count)
                found = self._object_sha256(user_id, sha256, count)
            except ChunksMissing as missing:
                # Another complete of the same blob may have just finished (and removed
                # the upload): then it is held, and that is the answer.
                if self.table.get(_pk(user_id), f"HELD#{sha256}") is not None:
                    return self.state(user_id, sha256)
                if not self._placed_by_another(user_id, sha256, count):
                    raise missing
                found = sha256
            if found != sha256:
                self.s3.delete_object(Bucket=self.bucket, Key=self.object_name(user_id, sha256))
                self._delete_row(user_id, f"UPLOAD#{sha256}")
                raise BlobMismatch(sha256, found)
        self.table.put({**key(_pk(user_id), f"HELD#{sha256}"), "size": n(size)})
        self._delete_row(user_id, f"UPLOAD#{sha256}")
        return BlobState(sha256=sha256, held=True, size=size)

    def _placed_by_another(self, user_id: str, sha256: str, count: int) -> bool:
        """Whether another complete put the content in place and has not recorded it
        held yet, while this call's chunks went to an upload started meanwhile (a chunk
        that found the first upload completed starts a new one). Verifying the object is
        then this call's job as much as the other's; the new upload is dropped."""
        try:
            if self._object_sha256(user_id, sha256, count) != sha256:
                return False  # damaged: the call that placed it deletes it
        except ChunksMissing:
            return False  # nothing in place
        upload = self.table.get(_pk(user_id), f"UPLOAD#{sha256}")
        if upload is not None:
            self._forget(user_id, sha256, upload, abort=True)
        return True

    def _finish_upload(self, user_id: str, sha256: str, size: int, count: int) -> None:
        """Complete the multipart upload (all ``count`` parts present), or find it
        completed already by an earlier attempt; :class:`ChunksMissing` otherwise."""
        upload = self.table.get(_pk(user_id), f"UPLOAD#{sha256}")
        if upload is None or get_n(upload, "size") != size:
            raise ChunksMissing(count, count)
        parts = self._parts(user_id, sha256, upload)
        if parts is None:
            if opt_n(upload, "count") == count and self._exists(user_id, sha256):
                return  # completed by an attempt that died before verifying
            self._delete_row(user_id, f"UPLOAD#{sha256}")
            raise ChunksMissing(count, count)
        missing = count - len(set(parts) & set(range(count)))
        if missing:
            raise ChunksMissing(missing, count)
        try:
            listed = self._listed_parts(user_id, sha256, upload)
            self.table.update(
                _pk(user_id), f"UPLOAD#{sha256}", "SET #count = :count", values={":count": n(count)}
            )
            self.s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.object_name(user_id, sha256),
                UploadId=get_s(upload, "uploadId"),
                MultipartUpload={"Parts": listed[:count]},
            )
        except Exception as exc:
            # A complete racing this one finished the upload between our reads: the object
            # is in place, and verifying it is this call's job as much as the other's.
            if error_code(exc) in _GONE and self._exists(user_id, sha256):
                return
            if error_code(exc) in _GONE:
                raise ChunksMissing(count, count) from exc
            raise
        failpoint("blob.complete.placed")

    def _listed_parts(self, user_id: str, sha256: str, upload: Row) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        marker = 0
        while True:
            page = self.s3.list_parts(
                Bucket=self.bucket,
                Key=self.object_name(user_id, sha256),
                UploadId=get_s(upload, "uploadId"),
                PartNumberMarker=marker,
            )
            for part in page.get("Parts", []):
                entry = {"PartNumber": part["PartNumber"], "ETag": part["ETag"]}
                if "ChecksumSHA256" in part:
                    entry["ChecksumSHA256"] = part["ChecksumSHA256"]
                parts.append(entry)
            if not page.get("IsTruncated"):
                return sorted(parts, key=lambda p: int(p["PartNumber"]))
            marker = int(page["NextPartNumberMarker"])

    def _object_sha256(self, user_id: str, sha256: str, count: int) -> str:
        """The SHA-256 of the stored object, streamed in reads of :data:`READ_BYTES`."""
        try:
            answer = self.s3.get_object(Bucket=self.bucket, Key=self.object_name(user_id, sha256))
        except Exception as exc:
            if error_code(exc) in _GONE:  # a racing complete found it damaged, deleted it
                raise ChunksMissing(count, count) from exc
            raise
        digest = hashlib.sha256()
        for piece in _pieces(answer["Body"]):
            digest.update(piece)
        return digest.hexdigest()

    def _forget(self, user_id: str, sha256: str, upload: Row, *, abort: bool = False) -> None:
        if abort:
            self._abort(user_id, sha256, get_s(upload, "uploadId"))
        # Only if it is still this upload: another request may have started a new one.
        try:
            self.table.ddb.delete_item(
                TableName=self.table.name,
                Key=key(_pk(user_id), f"UPLOAD#{sha256}"),
                ConditionExpression="#u = :u",
                ExpressionAttributeNames={"#u": "uploadId"},
                ExpressionAttributeValues={":u": upload["uploadId"]},
            )
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise

    def _abort(self, user_id: str, sha256: str, upload_id: str) -> None:
        try:
            self.s3.abort_multipart_upload(
                Bucket=self.bucket, Key=self.object_name(user_id, sha256), UploadId=upload_id
            )
        except Exception as exc:
            if error_code(exc) not in _GONE:
                raise

    def _delete_row(self, user_id: str, sk: str) -> None:
        self.table.ddb.delete_item(TableName=self.table.name, Key=key(_pk(user_id), sk))


def _pieces(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(READ_BYTES)
    finally:
        body.close()
