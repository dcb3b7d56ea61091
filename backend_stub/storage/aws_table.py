"""Plain DynamoDB and S3 calls for the ``aws`` backend, with their failures translated.

:class:`Table` pages queries, retries the unprocessed part of batch calls, turns a cancelled
transaction into the :class:`~backend_stub.storage.StorageError` of the write that failed,
and keeps large values in S3 (content-addressed, encrypted, SHA-256 checked both ways)::

    >>> sha256_b64("00" * 32)
    'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from backend_stub.storage.aws_resources import AwsResources
from backend_stub.storage.aws_rows import INLINE_LIMIT, Row, key, s
from backend_stub.storage.aws_unit import Op, expression_names
from backend_stub.storage.records import StorageError, VersionConflict

__all__ = ["DamagedObject", "Table", "sha256_b64"]

logger = logging.getLogger(__name__)

_BATCH_GET = 100
_BATCH_WRITE = 25
_UNPROCESSED_ROUNDS = 8


class DamagedObject(StorageError):
    """An S3 object does not match the SHA-256 it was stored with.

    >>> issubclass(DamagedObject, StorageError)
    True
    """


def sha256_b64(hex_digest: str) -> str:
    """The base64 form S3 uses for a hex SHA-256 (``x-amz-checksum-sha256``).

    >>> sha256_b64("ff" * 32).endswith("/8=")
    True
    """
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (empty for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class Table:
    """The backend's table and bucket, through the clients of ``resources``.

    >>> from backend_stub.settings import AwsSettings
    >>> table = Table(AwsResources(AwsSettings(endpoint_url="http://127.0.0.1:1")))
    >>> table.name
    'offline-migrate'
    """

    def __init__(self, resources: AwsResources) -> None:
        self.resources = resources
        self.name = resources.table
        self.ddb = resources.dynamodb
        self.s3 = resources.s3

    # ------------------------------------------------------------------ reads

    def get(self, pk: str, sk: str, *, projection: str | None = None) -> Row | None:
        """One item, strongly consistent."""
        args: dict[str, Any] = {"TableName": self.name, "Key": key(pk, sk), "ConsistentRead": True}
        if projection:
            args["ProjectionExpression"] = projection
            args["ExpressionAttributeNames"] = expression_names(projection)
        item: Row | None = self.ddb.get_item(**args).get("Item")
        return item

    def query(
        self,
        pk: str,
        *,
        prefix: str | None = None,
        after: str | None = None,
        limit: int | None = None,
        projection: str | None = None,
    ) -> Iterator[Row]:
        """Items of one partition in sort-key order (strongly consistent), paged lazily.

        ``prefix`` keeps the sort keys that start with it; ``after`` starts past a sort key;
        ``limit`` is the page size asked of DynamoDB (the iterator goes on past it).
        """
        condition = "#pk = :pk"
        values: Row = {":pk": s(pk)}
        if prefix is not None:
            condition += " AND begins_with(#sk, :prefix)"
            values[":prefix"] = s(prefix)
        elif after is not None:
            condition += " AND #sk > :after"
            values[":after"] = s(after)
        args: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ExpressionAttributeNames": expression_names(condition, projection),
            "ConsistentRead": True,
        }
        if prefix is not None and after is not None:
            args["ExclusiveStartKey"] = key(pk, after)
        if projection:
            args["ProjectionExpression"] = projection
        if limit:
            args["Limit"] = limit
        while True:
            page = self.ddb.query(**args)
            yield from page.get("Items", [])
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            args["ExclusiveStartKey"] = last

    def scan(self, condition: str, values: Row) -> Iterator[Row]:
        """Every item matching a filter (debugging aids only: a scan reads the table)."""
        args: dict[str, Any] = {
            "TableName": self.name,
            "FilterExpression": condition,
            "ExpressionAttributeValues": values,
            "ExpressionAttributeNames": expression_names(condition),
            "ConsistentRead": True,
        }
        while True:
            page = self.ddb.scan(**args)
            yield from page.get("Items", [])
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            args["ExclusiveStartKey"] = last

    def batch_get(self, keys: Sequence[Row], *, projection: str | None = None) -> list[Row]:
        """The items among ``keys`` that exist (strongly consistent), in no given order."""
        found: list[Row] = []
        for start in range(0, len(keys), _BATCH_GET):
            request: dict[str, Any] = {"Keys": list(keys[start : start + _BATCH_GET])}
            request["ConsistentRead"] = True
            if projection:
                request["ProjectionExpression"] = projection
                request["ExpressionAttributeNames"] = expression_names(projection)
            pending: dict[str, Any] = {self.name: request}
            for round_ in range(_UNPROCESSED_ROUNDS):
                answer = self.ddb.batch_get_item(RequestItems=pending)
                found.extend(answer.get("Responses", {}).get(self.name, []))
                pending = answer.get("UnprocessedKeys") or {}
                if not pending:
                    break
                _backoff(round_)
            else:
                raise StorageError("DynamoDB kept some reads unprocessed: retry later")
        return found

    # ------------------------------------------------------------------ writes

    def put(self, item: Row, *, condition: str | None = None, values: Row | None = None) -> None:
        """One conditional put; a failed condition is :class:`VersionConflict`."""
        args: dict[str, Any] = {"TableName": self.name, "Item": item}
        if condition:
            args["ConditionExpression"] = condition
            args["ExpressionAttributeNames"] = expression_names(condition)
            if values:
                args["ExpressionAttributeValues"] = values
        try:
            self.ddb.put_item(**args)
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise VersionConflict(item["pk"]["S"]) from exc
            raise

    def update(
        self,
        pk: str,
        sk: str,
        expression: str,
        *,
        condition: str | None = None,
        values: Row | None = None,
    ) -> Row | None:
        """One conditional update; ``None`` when the condition failed, else the new item."""
        args: dict[str, Any] = {
            "TableName": self.name,
            "Key": key(pk, sk),
            "UpdateExpression": expression,
            "ExpressionAttributeNames": expression_names(expression, condition),
            "ReturnValues": "ALL_NEW",
        }
        if values:
            args["ExpressionAttributeValues"] = values
        if condition:
            args["ConditionExpression"] = condition
        try:
            item: Row = self.ddb.update_item(**args)["Attributes"]
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        return item

    def batch_write(self, puts: Sequence[Row] = (), deletes: Sequence[Row] = ()) -> None:
        """Unconditional puts and deletes (by key), 25 a call, until all are done."""
        requests: list[dict[str, Any]] = [{"PutRequest": {"Item": item}} for item in puts]
        requests += [{"DeleteRequest": {"Key": k}} for k in deletes]
        for start in range(0, len(requests), _BATCH_WRITE):
            pending: dict[str, Any] = {self.name: requests[start : start + _BATCH_WRITE]}
            for round_ in range(_UNPROCESSED_ROUNDS):
                pending = self.ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems")
                if not pending:
                    break
                _backoff(round_)
            else:
                raise StorageError("DynamoDB kept some writes unprocessed: retry later")

    def transact(self, ops: Sequence[Op]) -> None:
        """Apply ``ops`` all or nothing.

        A failed condition raises the ``failure`` of the first op that failed; a
        conflicting concurrent transaction is a :class:`VersionConflict` (retry from fresh
        reads). The client request token makes botocore's own retries idempotent.
        """
        items = []
        for op in ops:
            ((kind, body),) = op.item.items()
            items.append({kind: {"TableName": self.name, **body}})
        try:
            self.ddb.transact_write_items(
                TransactItems=items,
                ClientRequestToken=uuid.uuid4().hex,
            )
        except Exception as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
            for op, reason in zip(ops, reasons, strict=False):
                if reason.get("Code") == "ConditionalCheckFailed":
                    failure = op.failure(f"{op.target[0]}/{op.target[1]}")
                    # Which write failed, and what it found (a fenced write takes it over).
                    failure.__dict__.update(target=op.target, item=reason.get("Item"))
                    raise failure from exc
            if any(r.get("Code") == "TransactionConflict" for r in reasons):
                raise VersionConflict("a concurrent transaction touched the same items") from exc
            raise StorageError(f"DynamoDB cancelled a transaction: {reasons}") from exc

    # ------------------------------------------------------------------ S3

    def put_object(self, name: str, body: bytes, checksum: str, **metadata: str) -> None:
        """Store ``body`` (hex SHA-256 ``checksum``) encrypted, checked by S3 on arrival."""
        answer = self.s3.put_object(
            Bucket=self.resources.bucket,
            Key=name,
            Body=body,
            ChecksumAlgorithm="SHA256",
            Metadata={"sha256": checksum, **metadata},
            **self.resources.sse_args(),
        )
        stored = answer.get("ChecksumSHA256")
        if stored is not None and stored != sha256_b64(checksum):
            raise DamagedObject(f"S3 stored {name} with another SHA-256: the body was altered")

    def get_object(self, name: str, checksum: str) -> bytes:
        """The body of an object, verified against its hex SHA-256 ``checksum``."""
        try:
            answer = self.s3.get_object(
                Bucket=self.resources.bucket, Key=name, ChecksumMode="ENABLED"
            )
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                raise DamagedObject(f"{name} is missing from the bucket") from exc
            raise
        body: bytes = answer["Body"].read()
        if hashlib.sha256(body).hexdigest() != checksum:
            raise DamagedObject(f"{name} does not match its SHA-256: the stored copy is damaged")
        return body

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix``."""
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.resources.bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(
                    Bucket=self.resources.bucket, Delete={"Objects": keys, "Quiet": True}
                )

    # ------------------------------------------------------------------ large values

    def pack(self, name: str, text: str) -> tuple[Row, int]:
        """``{name: text}`` for the row, or a reference to an S3 blob when ``text`` is large.

        Blobs are named by their SHA-256, so writing one before the row is visible is
        harmless (the same name always holds the same bytes). Returns the attributes and
        their approximate size.
        """
        raw = text.encode("utf-8")
        if len(raw) <= INLINE_LIMIT:
            return {name: s(text)}, len(raw) + 64
        digest = hashlib.sha256(raw).hexdigest()
        self.put_object(f"blobs/{digest}", raw, digest)
        return {f"{name}Ref": s(digest)}, 128

    def unpack(self, row: Row, name: str) -> str:
        """The text :meth:`pack` stored under ``name``."""
        if name in row:
            return str(row[name]["S"])
        digest = str(row[f"{name}Ref"]["S"])
        return self.get_object(f"blobs/{digest}", digest).decode("utf-8")


def _backoff(round_: int) -> None:
    # DynamoDB hands back unprocessed work when a partition is busy: wait a little.
    time.sleep(min(0.05 * 2**round_, 2.0))
