"""Wire items on the server: one validation per batch, and seeding a user's cloud data.

A batch body is validated by a single pydantic ``TypeAdapter`` pass (no model object per
row; items stay plain dicts), then each item is encoded canonically once, for its digest::

    >>> body = b'{"items":[{"collection":"c","key":"k","data":{},"updatedAt":1,"deleted":false}]}'
    >>> [row.item["key"] for row in parse_batch(body, max_items=10)]
    ['k']
"""

from __future__ import annotations

import hashlib
import logging
import operator
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice, repeat
from typing import Annotated, Any, NamedTuple, overload

from pydantic import ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from backend_stub.bodies import reject_duplicate_members, validation_problem
from backend_stub.problems import ApiError
from backend_stub.storage import CloudItem, Storage
from sdk import _fastjson as fastjson
from sdk.contract import (
    KEY_PATTERN,
    NAME_PATTERN,
    Item,
    ProblemCode,
    batch_body,
    canonical_json,
)

__all__ = [
    "MAX_TIMESTAMP",
    "EncodedItem",
    "ParsedBatch",
    "cloud_item",
    "parse_batch",
    "seed_cloud_items",
    "validate_item",
]

logger = logging.getLogger(__name__)

#: The largest `updatedAt` accepted: SQLite integers are 64-bit.
MAX_TIMESTAMP = 2**63 - 1


class _WireItem(TypedDict):
    # strict: 1.0 is not an int, 0 is not a bool; the canonical encoding must not depend
    # on what the parser coerced.
    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]

    collection: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    key: Annotated[str, StringConstraints(pattern=KEY_PATTERN)]
    data: dict[str, Any]
    updatedAt: Annotated[int, Field(ge=0, le=MAX_TIMESTAMP)]
    deleted: bool


class _BatchBody(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]

    items: list[_WireItem]


_BATCH = TypeAdapter(_BatchBody)
_ENVELOPE_HEAD = len(b'{"items":[')
_ENVELOPE_TAIL = len(b"]}")
_ITEM_HEAD = b'{"collection":'
_DATA_OFFSET = len(b'"","data":')  # around a collection name (ASCII), after _ITEM_HEAD
_ITEM = TypeAdapter(_WireItem)


class EncodedItem(NamedTuple):
    """A validated item, its data's canonical JSON and the SHA-256 of its canonical bytes.

    >>> row = parse_batch(b'{"items":[{"collection":"c","key":"k","data":{},"updatedAt":1,'
    ...                   b'"deleted":false}]}', max_items=1)[0]
    >>> from sdk.contract import item_digest
    >>> row.data, row.digest == item_digest(row.item)
    ('{}', True)
    """

    item: Item
    data: str
    digest: bytes


#: An item's fields besides its data, as :meth:`ParsedBatch.fields` gives them by column.
_FIELDS_BUT_DATA = operator.itemgetter("collection", "key", "updatedAt", "deleted")


class ParsedBatch(Sequence[EncodedItem]):
    """A valid batch's items as :func:`parse_batch` gives them: a sequence of
    :class:`EncodedItem`, held as columns (the items, their data's canonical JSON, their
    digests) so that what reads them by column (:func:`backend_stub.batches.classify`)
    makes no tuple per item.

    >>> batch = parse_batch(b'{"items":[{"collection":"c","data":{},"deleted":false,'
    ...                     b'"key":"k","updatedAt":1}]}', max_items=1)
    >>> len(batch), batch[0].data, batch.fields()
    (1, '{}', (('c',), ('k',), (1,), (False,)))
    """

    __slots__ = ("_fields", "datas", "digests", "items")

    def __init__(
        self,
        items: Sequence[Item],
        datas: Sequence[str],
        digests: Sequence[bytes],
        fields: tuple[Sequence[str], Sequence[str], Sequence[int], Sequence[bool]] | None = None,
    ) -> None:
        self.items, self.datas, self.digests = items, datas, digests
        self._fields = fields

    @classmethod
    def of(cls, rows: Sequence[EncodedItem]) -> ParsedBatch:
        """The batch of ``rows`` (itself when it is one already)."""
        if isinstance(rows, ParsedBatch):
            return rows
        return cls([r.item for r in rows], [r.data for r in rows], [r.digest for r in rows])

    def fields(self) -> tuple[Sequence[str], Sequence[str], Sequence[int], Sequence[bool]]:
        """The items' collections, keys, ``updatedAt`` and ``deleted``, a column each."""
        if self._fields is None:
            columns = tuple(zip(*map(_FIELDS_BUT_DATA, self.items), strict=True)) or ((),) * 4
            self._fields = columns  # type: ignore[assignment]
        return self._fields  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, index: int) -> EncodedItem: ...

    @overload
    def __getitem__(self, index: slice) -> list[EncodedItem]: ...

    def __getitem__(self, index: int | slice) -> EncodedItem | list[EncodedItem]:
        if isinstance(index, slice):
            return list(self)[index]
        return EncodedItem(self.items[index], self.datas[index], self.digests[index])

    def __iter__(self) -> Iterator[EncodedItem]:
        return map(EncodedItem, self.items, self.datas, self.digests)


def _encode(item: Item) -> tuple[EncodedItem, bytes]:
    """The encoded item, and its canonical bytes."""
    try:
        data, canonical = fastjson.encode_item(item)
    except ValueError as exc:
        raise ApiError(
            400,
            ProblemCode.INVALID_REQUEST,
            f"item {item['collection']}/{item['key']} holds NaN or Infinity, which JSON lacks",
        ) from exc
    return EncodedItem(item, data, hashlib.sha256(canonical).digest()), canonical


def parse_batch(body: bytes, *, max_items: int) -> ParsedBatch:
    """Validate a batch body and encode its items.

    400: not JSON (or NaN, or nested too deep); 422: wrong shape, an empty batch, or
    items not strictly ascending by (collection, key); 413: more than ``max_items``.

    >>> parse_batch(b'{"items": []}', max_items=10)
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: a batch holds at least one item
    """
    fast = _parse_canonical(body, max_items)
    return fast if fast is not None else _parse_general(body, max_items)


def _parse_general(body: bytes, max_items: int) -> ParsedBatch:
    """:func:`parse_batch` for any body: pydantic validates it, and says what is wrong."""
    try:
        items: list[Item] = _BATCH.validate_json(body)["items"]  # type: ignore[assignment]
    except ValidationError as exc:
        raise validation_problem(exc) from exc
    if len(items) > max_items:
        raise ApiError(
            413,
            ProblemCode.PAYLOAD_TOO_LARGE,
            f"the batch holds {len(items)} items, more than the limit of {max_items}",
            extra={"limit": max_items},
        )
    if not items:
        raise ApiError(422, ProblemCode.VALIDATION_FAILED, "a batch holds at least one item")
    previous: tuple[str, str] | None = None
    for index, item in enumerate(items):
        key = (item["collection"], item["key"])
        if previous is not None and key <= previous:
            raise ApiError(
                422,
                ProblemCode.VALIDATION_FAILED,
                f"items must be strictly ascending by (collection, key); item {index}"
                f" ({key[0]}/{key[1]}) is not",
            )
        previous = key
    cut = _cut_canonical(body, items)
    if cut is not None:
        return cut
    encoded = [_encode(item) for item in items]
    # A body that is not canonical may repeat a member, which pydantic would hide: it is
    # parsed once more to find out.
    if body != batch_body(canonical for _, canonical in encoded):
        reject_duplicate_members(body)
    return ParsedBatch.of([row for row, _ in encoded])


_ITEM_SEPARATOR = b'},{"collection":'
_DELETED_MEMBER = b',"deleted":'
_FIELDS = operator.itemgetter("collection", "key", "data", "updatedAt", "deleted")
_FIELD_TYPES = ({str}, {str}, {dict}, {int}, {bool})
_NAME_MATCH = re.compile(NAME_PATTERN).fullmatch
_KEY_MATCH = re.compile(KEY_PATTERN).fullmatch


def _parse_canonical(body: bytes, max_items: int) -> ParsedBatch | None:
    """The items of a valid canonical batch body (what the SDK sends), checked a column
    at a time in C instead of by pydantic item by item; ``None`` for any other body, which
    the general path then decides (with pydantic's own error when it is invalid).

    Every check here is one pydantic makes, or stricter: a body passes only if it is what
    the general path would accept and cut the same way. Integers beyond 64 bits, NaN and
    lone surrogates are parsed by the stdlib (:func:`sdk._fastjson.loads`) and then fail
    the canonical comparison or a check; repeated members make the body not canonical.

    >>> body = (b'{"items":[{"collection":"c","data":{},"deleted":false,"key":"k",'
    ...         b'"updatedAt":1}]}')
    >>> [row.data for row in _parse_canonical(body, 10)]
    ['{}']
    >>> _parse_canonical(body.replace(b'"updatedAt":1', b'"updatedAt":1.0'), 10) is None
    True
    """
    try:
        document = fastjson.loads_canonical(body)
        if type(document) is not dict or document.keys() != {"items"}:
            return None
        items = document["items"]
        if type(items) is not list or not 0 < len(items) <= max_items:
            return None
        if set(map(type, items)) != {dict} or set(map(len, items)) != {5}:
            return None
        columns = list(zip(*map(_FIELDS, items), strict=True))  # KeyError: a member missing
        if list(map(set, map(map, repeat(type), columns))) != list(_FIELD_TYPES):
            return None
        collections, keys, _, stamps, deletes = columns
        if min(stamps) < 0 or max(stamps) > MAX_TIMESTAMP:
            return None
        if not all(map(_NAME_MATCH, set(collections))) or not all(map(_KEY_MATCH, keys)):
            return None
        pairs = list(zip(collections, keys, strict=True))
        if not all(map(operator.lt, pairs, islice(pairs, 1, None))):
            return None
        return _cut(body, items, collections, (collections, keys, stamps, deletes))
    except (ValueError, TypeError, KeyError, RecursionError):
        return None


def _cut_canonical(body: bytes, items: list[Item]) -> ParsedBatch | None:
    """The encoded items cut out of ``body`` when it is exactly their canonical batch body
    (what the SDK sends); ``None`` otherwise (or without orjson), and each item is then
    encoded on its own.

    One call into orjson encodes the whole batch for the comparison, instead of two per
    item. The items are then found at each ``},{"collection":``, which may also occur
    inside an item's data: then there are more pieces than items and the body is not cut.
    Every real boundary has it, so as many pieces as items means the cuts are the
    boundaries. An item's data ends at its last ``,"deleted":`` (the key that follows is
    a string, where that text would be escaped).

    >>> body = (b'{"items":[{"collection":"c","data":{"a":[{"b":1}]},"deleted":false,'
    ...         b'"key":"k","updatedAt":1},{"collection":"c","data":{},"deleted":true,'
    ...         b'"key":"l","updatedAt":2}]}')
    >>> [r.data for r in parse_batch(body, max_items=2)]
    ['{"a":[{"b":1}]}', '{}']
    """
    if fastjson.canonical_bytes({"items": items}) != body:
        return None
    return _cut(body, items, [item["collection"] for item in items])


def _cut(
    body: bytes,
    items: list[Item],
    collections: Sequence[str],
    fields: tuple[Sequence[str], Sequence[str], Sequence[int], Sequence[bool]] | None = None,
) -> ParsedBatch | None:
    """:func:`_cut_canonical` of a body known to be the canonical batch of ``items``."""
    # Each piece is an item without its first member's name and its closing brace.
    pieces = body[_ENVELOPE_HEAD + len(_ITEM_HEAD) : -_ENVELOPE_TAIL - 1].split(_ITEM_SEPARATOR)
    if len(pieces) != len(items):
        return None
    sha256, head, deleted = hashlib.sha256, _ITEM_HEAD, _DELETED_MEMBER
    texts = [
        piece[_DATA_OFFSET + len(collection) : piece.rfind(deleted)].decode()
        for collection, piece in zip(collections, pieces, strict=True)
    ]
    digests = [sha256(head + piece + b"}").digest() for piece in pieces]
    return ParsedBatch(items, texts, digests, fields)


def validate_item(value: Mapping[str, Any]) -> Item:
    """Validate one wire item given as a Python mapping (``ValueError`` if invalid).

    >>> validate_item({"collection": "c", "key": "k", "data": {}, "updatedAt": 1,
    ...                "deleted": False})["collection"]
    'c'
    """
    item: Item = _ITEM.validate_python(value)
    canonical_json(item)  # NaN and Infinity have no JSON form
    return item


def cloud_item(item: Item, *, version: int, device_id: str) -> CloudItem:
    """The cloud record holding ``item`` at ``version``, written by ``device_id``.

    >>> cloud_item({"collection": "c", "key": "k", "data": {"b": 1, "a": 2}, "updatedAt": 5,
    ...             "deleted": False}, version=1, device_id="d1").data
    '{"a":2,"b":1}'
    """
    return CloudItem(
        item["collection"],
        item["key"],
        canonical_json(item["data"]),
        item["updatedAt"],
        item["deleted"],
        version,
        device_id,
    )


def seed_cloud_items(
    storage: Storage,
    user_id: str,
    items: Iterable[Mapping[str, Any]],
    *,
    device_id: str = "seed",
    now: int | None = None,
) -> int:
    """Write items into a user's cloud data, as another device would have. Returns the count.

    An item already in the cloud gets the next version (so a session that staged it sees
    the change). Everything is written in one transaction; any invalid item writes
    nothing (``ValueError``).

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> item = {"collection": "c", "key": "k", "data": {}, "updatedAt": 1, "deleted": False}
    >>> seed_cloud_items(storage, "alice", [item, item | {"key": "j"}])
    2
    >>> storage.cloud_items("alice", [("c", "k")])[("c", "k")].version
    1
    >>> storage.close()
    """
    when = int(time.time() * 1000) if now is None else now
    valid: dict[tuple[str, str], Item] = {}
    for number, value in enumerate(items, start=1):
        try:
            item = validate_item(value)
        except ValueError as exc:
            raise ValueError(f"item {number} is not a valid wire item: {exc}") from exc
        valid[(item["collection"], item["key"])] = item
    keys = sorted(valid)
    with storage.atomic():
        current = storage.cloud_items(user_id, keys)
        storage.put_cloud_items(
            user_id,
            [
                cloud_item(
                    valid[key],
                    version=current[key].version + 1 if key in current else 1,
                    device_id=device_id,
                )
                for key in keys
            ],
            when,
        )
    logger.info("seeded %d cloud items for user %s", len(keys), user_id)
    return len(keys)
