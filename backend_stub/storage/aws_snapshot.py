"""The migrated snapshot of a sliced commit, uploaded in parts (``aws`` backend).

The snapshot (every staged item, canonical JSON lines in (collection, key) order,
encrypted, with its SHA-256 in the object's metadata) may be hundreds of megabytes: no
single job writes it. Each slice reads staged items until it holds a multipart upload's
part (:data:`PART_BYTES`, S3's minimum but for the last) and uploads it as the next
part; replaying a slice uploads the same part again. The last slice completes the
upload, then reads the object back once, as a stream, for its SHA-256 and line count
(a hash cannot be carried from slice to slice), and sets them as its metadata::

    >>> PART_BYTES
    5242880
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backend_stub.storage.aws import AwsStorage
    from backend_stub.storage.records import Key

__all__ = ["PART_BYTES", "snapshot_name", "snapshot_part", "start_snapshot"]

#: Bytes of one uploaded part (S3 refuses smaller parts but for the last one).
PART_BYTES = 5 * 1024 * 1024


def snapshot_name(session_id: str) -> str:
    """The S3 key of a session's snapshot.

    >>> snapshot_name("s1")
    'sessions/s1/snapshot.jsonl'
    """
    return f"sessions/{session_id}/snapshot.jsonl"


def start_snapshot(storage: AwsStorage, session_id: str) -> str:
    """Start the snapshot's multipart upload; returns its upload id.

    >>> start_snapshot(storage, "s1")  # doctest: +SKIP
    'VXBsb2FkIElE...'
    """
    resources = storage.resources
    answer = resources.s3.create_multipart_upload(
        Bucket=resources.bucket,
        Key=snapshot_name(session_id),
        ChecksumAlgorithm="SHA256",
        **resources.sse_args(),
    )
    upload: str = answer["UploadId"]
    return upload


def snapshot_part(
    storage: AwsStorage,
    session_id: str,
    upload: str,
    parts: list[dict[str, Any]],
    after: Key | None,
    limit: int,
) -> tuple[list[dict[str, Any]], Key | None, bool]:
    """Upload the next part (staged items past ``after``); returns the parts so far,
    the last key read and whether the snapshot is complete.

    >>> snapshot_part(storage, "s1", upload, [], None, 2000)  # doctest: +SKIP
    ([{'PartNumber': 1, 'ETag': '"..."', 'ChecksumSHA256': '...'}], None, True)
    """
    body = bytearray()
    last = after
    ended = False
    while len(body) < PART_BYTES:
        page = storage.staged_items(session_id, after=last, limit=limit)
        for staged in page:
            body += staged.item.encode("utf-8") + b"\n"
        if page:
            last = (page[-1].collection, page[-1].key)
        if len(page) < limit:
            ended = True
            break
    resources = storage.resources
    if body or not parts:
        number = len(parts) + 1
        try:
            answer = resources.s3.upload_part(
                Bucket=resources.bucket,
                Key=snapshot_name(session_id),
                UploadId=upload,
                PartNumber=number,
                Body=bytes(body),
                ChecksumAlgorithm="SHA256",
            )
        except resources.s3.exceptions.NoSuchUpload:
            if not ended:
                raise
            # This last slice ran before and completed the upload; only its record is new.
        else:
            part = {"PartNumber": number, "ETag": answer["ETag"]}
            if "ChecksumSHA256" in answer:
                part["ChecksumSHA256"] = answer["ChecksumSHA256"]
            parts = [*parts, part]
    if ended:
        _finish(storage, session_id, upload, parts)
    return parts, last, ended


def _finish(storage: AwsStorage, session_id: str, upload: str, parts: list[dict[str, Any]]) -> None:
    resources = storage.resources
    name = snapshot_name(session_id)
    # An earlier try of this slice may have completed it already.
    with contextlib.suppress(resources.s3.exceptions.NoSuchUpload):
        resources.s3.complete_multipart_upload(
            Bucket=resources.bucket, Key=name, UploadId=upload, MultipartUpload={"Parts": parts}
        )
    digest = hashlib.sha256()
    count = 0
    stream = resources.s3.get_object(Bucket=resources.bucket, Key=name)["Body"]
    for chunk in stream.iter_chunks(1024 * 1024):
        digest.update(chunk)
        count += chunk.count(b"\n")
    resources.s3.copy_object(
        Bucket=resources.bucket,
        Key=name,
        CopySource={"Bucket": resources.bucket, "Key": name},
        MetadataDirective="REPLACE",
        Metadata={"sha256": digest.hexdigest(), "items": str(count)},
        ChecksumAlgorithm="SHA256",
        **resources.sse_args(),
    )
