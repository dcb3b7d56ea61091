"""The migrated snapshot of a sliced commit, uploaded in parts (``aws`` backend).

The snapshot (every staged item, canonical JSON lines in (collection, key) order,
encrypted) may be hundreds of megabytes: no single job writes it. Each slice reads
staged items until it holds exactly :data:`PART_BYTES` (an item may straddle two parts:
the record keeps how many of its bytes went into the earlier one) and uploads them as
the next part of a multipart upload, with its SHA-256, which S3 checks; replaying a
slice uploads the same part again. The last slice completes the upload.

Its checksum is S3's own for a multipart object, **composite SHA-256**: the SHA-256 of
the parts' SHA-256s, suffixed with the number of parts (``head_object`` with
``ChecksumMode="ENABLED"`` answers it as ``ChecksumSHA256``, base64). Every part but the
last holds :data:`PART_BYTES` (recorded with the item count in the object's metadata,
``part-bytes`` and ``items``), so anyone can recompute it from the body
(:func:`composite_sha256`). A SHA-256 of the whole body would need one job to read it
all back, at a million items hundreds of megabytes::

    >>> PART_BYTES
    5242880
    >>> composite_sha256(b"abc", part_bytes=2)
    'EVMj5WLEpP33zqztymYNxLvhOJ2rkyOq0IRAkHx0JtA=-2'
"""

from __future__ import annotations

import base64
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


def composite_sha256(body: bytes, *, part_bytes: int = PART_BYTES) -> str:
    """S3's composite SHA-256 of ``body`` uploaded in parts of ``part_bytes``: base64 of
    the SHA-256 over the parts' SHA-256s, ``-`` the number of parts."""
    pieces = [body[i : i + part_bytes] for i in range(0, len(body), part_bytes)] or [b""]
    digests = b"".join(hashlib.sha256(piece).digest() for piece in pieces)
    return f"{base64.b64encode(hashlib.sha256(digests).digest()).decode()}-{len(pieces)}"


def start_snapshot(storage: AwsStorage, session_id: str, items: int) -> str:
    """Start the snapshot's multipart upload of ``items`` lines; returns its upload id.

    >>> start_snapshot(storage, "s1", 3)  # doctest: +SKIP
    'VXBsb2FkIElE...'
    """
    resources = storage.resources
    answer = resources.s3.create_multipart_upload(
        Bucket=resources.bucket,
        Key=snapshot_name(session_id),
        ChecksumAlgorithm="SHA256",
        Metadata={"items": str(items), "part-bytes": str(PART_BYTES)},
        **resources.sse_args(),
    )
    upload: str = answer["UploadId"]
    return upload


def snapshot_part(
    storage: AwsStorage,
    session_id: str,
    upload: str,
    parts: list[dict[str, Any]],
    position: tuple[Key | None, int],
    limit: int,
) -> tuple[list[dict[str, Any]], tuple[Key | None, int], bool]:
    """Upload the next part: the staged items past ``position`` (the last key written
    whole, and the bytes of the next item written already); returns the parts so far,
    the position after this part and whether the snapshot is complete.

    >>> snapshot_part(storage, "s1", upload, [], (None, 0), 2000)  # doctest: +SKIP
    ([{'PartNumber': 1, 'ETag': '"..."', 'ChecksumSHA256': '...'}], (None, 0), True)
    """
    body, position, ended = _fill(storage, session_id, position, limit)
    resources = storage.resources
    if body or not parts:
        number = len(parts) + 1
        try:
            answer = resources.s3.upload_part(
                Bucket=resources.bucket,
                Key=snapshot_name(session_id),
                UploadId=upload,
                PartNumber=number,
                Body=body,
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
        # An earlier try of this slice may have completed it already.
        with contextlib.suppress(resources.s3.exceptions.NoSuchUpload):
            resources.s3.complete_multipart_upload(
                Bucket=resources.bucket,
                Key=snapshot_name(session_id),
                UploadId=upload,
                MultipartUpload={"Parts": parts},
            )
    return parts, position, ended


def _fill(
    storage: AwsStorage, session_id: str, position: tuple[Key | None, int], limit: int
) -> tuple[bytes, tuple[Key | None, int], bool]:
    """Exactly :data:`PART_BYTES` of lines from ``position`` on (fewer: the last part)."""
    body = bytearray()
    last, skip = position
    while True:
        page = storage.staged_items(session_id, after=last, limit=limit)
        for staged in page:
            line = staged.item.encode("utf-8") + b"\n"
            room = PART_BYTES - len(body)
            if len(line) - skip > room:
                body += line[skip : skip + room]
                return bytes(body), (last, skip + room), False
            body += line[skip:]
            last, skip = (staged.collection, staged.key), 0
        if len(page) < limit:
            return bytes(body), (last, 0), True
        if len(body) == PART_BYTES:
            return bytes(body), (last, 0), False
