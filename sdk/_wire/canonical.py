"""The pure part of the wire contract: constants, enums, the canonical encoding of an item
and the checksums built on it. No pydantic here, so the SDK runs where pydantic-core has no
wheel (Android, iOS); :mod:`sdk.contract` re-exports every name, and the server keeps using
it from there.

Either side can recompute the checksums from the items alone, whatever the batching::

    >>> item = {"collection": "lessons", "key": "l1", "data": {"score": 3},
    ...         "updatedAt": 1700000000000, "deleted": False}
    >>> canonical_item(item)
    b'{"collection":"lessons","data":{"score":3},"deleted":false,"key":"l1","updatedAt":1700000000000}'
    >>> len(item_digest(item))
    32
    >>> dataset_checksum([item_digest(item)]) == dataset_checksum_of([item])
    True
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable
from json.encoder import encode_basestring as _quote  # what ensure_ascii=False uses
from typing import Any, Literal, TypedDict

__all__ = [
    "API_PREFIX",
    "BLOB_SIZE_HEADER",
    "CHECKSUM_HEADER",
    "EMPTY_SHA256",
    "KEY_PATTERN",
    "MAX_INTEGER",
    "NAME_PATTERN",
    "PROBLEM_CONTENT_TYPE",
    "SHA256_PATTERN",
    "USER_ID_PATTERN",
    "ConflictSide",
    "Item",
    "PlanOutcome",
    "ProblemCode",
    "PushOutcome",
    "SessionStatus",
    "batch_body",
    "batch_checksum",
    "blob_chunk_count",
    "blob_chunk_size",
    "canonical_item",
    "canonical_item_parts",
    "canonical_json",
    "dataset_checksum",
    "dataset_checksum_of",
    "item_digest",
    "multiset_add",
    "multiset_checksum",
    "multiset_hex",
]

API_PREFIX = "/api/migration"
CHECKSUM_HEADER = "X-Content-SHA256"
PROBLEM_CONTENT_TYPE = "application/problem+json"
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
#: Collection names: short identifiers, so they are safe in paths, logs and file names.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
#: Keys: any non-empty text up to 512 characters, without control characters.
KEY_PATTERN = r"^[^\x00-\x1f]{1,512}$"
#: The largest integer SQLite stores (the server's too): an item's ``updatedAt``, a seq,
#: a size.
MAX_INTEGER = 2**63 - 1


# --------------------------------------------------------------------------- encoding


def canonical_json(value: Any) -> str:
    """Encode ``value`` canonically: sorted keys, no whitespace, no NaN.

    >>> canonical_json({"b": 1, "a": [1.5, "é"]})
    '{"a":[1.5,"é"],"b":1}'
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def canonical_item(item: Item) -> bytes:
    """The canonical UTF-8 bytes of one wire item (what its digest is taken over).

    >>> canonical_item({"collection": "c", "key": "k", "data": {},
    ...                 "updatedAt": 1, "deleted": True})
    b'{"collection":"c","data":{},"deleted":true,"key":"k","updatedAt":1}'
    """
    return canonical_json(item).encode("utf-8")


def canonical_item_parts(
    collection: str, key: str, data_json: str, updated_at: int, deleted: bool
) -> bytes:
    """:func:`canonical_item` of an item whose ``data`` is already canonical JSON text.

    Both sides keep item data as canonical JSON, so the hot paths (batching, digests of
    stored items) format the item around it instead of parsing and re-encoding it:

    >>> item = {"collection": "c", "key": "k\u00e9", "data": {"a": [1, "x"]},
    ...         "updatedAt": 5, "deleted": False}
    >>> canonical_item_parts("c", "k\u00e9", canonical_json(item["data"]), 5, False) == (
    ...     canonical_item(item))
    True
    """
    return _ITEM_FORMAT.format(
        _quote(collection), data_json, "true" if deleted else "false", _quote(key), updated_at
    ).encode("utf-8")


_ITEM_FORMAT = '{{"collection":{},"data":{},"deleted":{},"key":{},"updatedAt":{:d}}}'


def item_digest(item: Item) -> bytes:
    """SHA-256 (32 raw bytes) of :func:`canonical_item`.

    >>> item_digest({"collection": "c", "key": "k", "data": {}, "updatedAt": 1,
    ...              "deleted": False}).hex()[:16]
    '253caca58670dc23'
    """
    return hashlib.sha256(canonical_item(item)).digest()


def dataset_checksum(digests: Iterable[bytes]) -> str:
    """Hex SHA-256 over raw item digests, given in (collection, key) order.

    >>> dataset_checksum([]) == hashlib.sha256(b"").hexdigest()
    True
    """
    h = hashlib.sha256()
    for digest in digests:
        h.update(digest)
    return h.hexdigest()


def dataset_checksum_of(items: Iterable[Item]) -> str:
    """Dataset checksum of items in any order (sorts them by (collection, key)).

    >>> a = {"collection": "c", "key": "a", "data": {}, "updatedAt": 1, "deleted": False}
    >>> b = {"collection": "c", "key": "b", "data": {}, "updatedAt": 1, "deleted": False}
    >>> dataset_checksum_of([b, a]) == dataset_checksum_of([a, b])
    True
    """
    ordered = sorted(items, key=lambda i: (i["collection"], i["key"]))
    return dataset_checksum(item_digest(i) for i in ordered)


# The sync's checksum: an incremental multiset hash.
#
# The migration's dataset checksum hashes the item digests in key order, so one changed
# item means rehashing everything. The sync keeps, on both sides, the sum of the item
# digests (each read as a 256-bit big-endian integer) modulo 2**256 ("AdHash", Bellare and
# Micciancio, 1997): a write subtracts the old item's digest and adds the new one, so the
# checksum follows every change in O(1) and no order is needed.
#
# Its limits: it detects any accidental divergence (a lost, duplicated or altered item
# changes the sum unless digests cancel out, which SHA-256 makes as unlikely as a
# collision of a 256-bit hash), but it is not collision-resistant against an adversary
# who chooses many items (Wagner's generalized birthday attack finds a set of items with
# a chosen sum far faster than 2**128 work). It proves that two honest replicas agree; it
# is not a signature. A full recomputation from the items themselves stays available on
# both sides (``verify --full``), and an empty dataset sums to zero.
_MODULUS = 1 << 256


def multiset_add(total: int, digest: bytes, *, sign: int = 1) -> int:
    """Add (``sign=1``) or remove (``sign=-1``) one item digest from a multiset sum.

    >>> d = item_digest({"collection": "c", "key": "k", "data": {}, "updatedAt": 1,
    ...                  "deleted": False})
    >>> multiset_add(multiset_add(0, d), d, sign=-1)
    0
    """
    return (total + sign * int.from_bytes(digest, "big")) % _MODULUS


def multiset_checksum(digests: Iterable[bytes]) -> int:
    """The multiset sum of item digests, in any order.

    >>> a, b = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    >>> multiset_checksum([a, b]) == multiset_checksum([b, a])
    True
    """
    total = 0
    for digest in digests:
        total += int.from_bytes(digest, "big")
    return total % _MODULUS


def multiset_hex(total: int) -> str:
    """A multiset sum as 64 hex digits (how the wire and the store carry it).

    >>> multiset_hex(0)
    '0000000000000000000000000000000000000000000000000000000000000000'
    """
    return f"{total % _MODULUS:064x}"


def batch_body(canonical_items: Iterable[bytes]) -> bytes:
    """Assemble one batch body ``{"items":[...]}`` from canonical item bytes.

    >>> batch_body([b'{"a":1}', b'{"a":2}'])
    b'{"items":[{"a":1},{"a":2}]}'
    """
    return b'{"items":[' + b",".join(canonical_items) + b"]}"


def batch_checksum(body: bytes) -> str:
    """Hex SHA-256 of an uncompressed batch body (the ``X-Content-SHA256`` header).

    >>> batch_checksum(b"") == hashlib.sha256(b"").hexdigest()
    True
    """
    return hashlib.sha256(body).hexdigest()


# --------------------------------------------------------------------------- models


class Item(TypedDict):
    """One item on the wire. A TypedDict, so a batch stays a list of plain dicts.

    >>> Item(collection="prefs", key="theme", data={"v": "dark"},
    ...      updatedAt=1700000000000, deleted=False)["key"]
    'theme'
    """

    collection: str
    key: str
    data: dict[str, Any]
    updatedAt: int  # camelCase: the wire's own name
    deleted: bool


class SessionStatus(str, enum.Enum):
    """States of a migration session on the server.

    >>> SessionStatus("completed").is_final
    True
    """

    CREATED = "created"
    UPLOADING = "uploading"
    PROCESSING = "processing"
    AWAITING_RESOLUTION = "awaiting_resolution"
    READY = "ready"
    COMMITTING = "committing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_STATES


_FINAL_STATES = frozenset(
    {SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.CANCELLED, SessionStatus.EXPIRED}
)


class ProblemCode(str, enum.Enum):
    """Machine-readable ``code`` of a problem+json answer; the SDK maps it to an error type.

    >>> ProblemCode("batch-mismatch").name
    'BATCH_MISMATCH'
    """

    INVALID_REQUEST = "invalid-request"
    VALIDATION_FAILED = "validation-failed"
    BAD_CHECKSUM = "bad-checksum"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not-found"
    ALREADY_MIGRATED = "already-migrated"
    ACTIVE_SESSION = "active-session"
    INVALID_STATE = "invalid-state"
    BATCH_OUT_OF_RANGE = "batch-out-of-range"
    BATCH_MISMATCH = "batch-mismatch"
    DUPLICATE_ITEM = "duplicate-item"
    BATCHES_MISSING = "batches-missing"
    CONFLICTS_UNRESOLVED = "conflicts-unresolved"
    CHECKSUM_MISMATCH = "checksum-mismatch"
    SESSION_EXPIRED = "session-expired"
    VERSION_CONFLICT = "version-conflict"
    PAYLOAD_TOO_LARGE = "payload-too-large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported-media-type"
    UNSUPPORTED_DATA_VERSION = "unsupported-data-version"
    METHOD_NOT_ALLOWED = "method-not-allowed"
    PUSH_MISMATCH = "push-mismatch"
    #: 503: the user's migration is being committed; retry after ``Retry-After``.
    MIGRATION_COMMITTING = "migration-committing"


#: Which side of a conflict an outcome keeps.
ConflictSide = Literal["local", "server"]
#: What the cloud would make of one planned item.
PlanOutcome = Literal["new", "unchanged", "conflict"]
#: What the cloud made of one pushed change: ``applied`` (written at a new seq),
#: ``unchanged`` (the cloud holds equal data already: never a conflict) or ``conflict``
#: (the cloud's version moved past the change's base: decide, then push the outcome).
PushOutcome = Literal["applied", "unchanged", "conflict"]


# --------------------------------------------------------------------------- blobs

#: The hex SHA-256 that names a blob: 64 lower-case hex characters.
SHA256_PATTERN = r"^[0-9a-f]{64}$"
#: Header of a chunk upload: the size in bytes of the whole blob the chunk belongs to.
BLOB_SIZE_HEADER = "X-Blob-Size"
#: The name of the empty blob (it has no chunks; ``complete`` alone stores it).
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def blob_chunk_count(size: int, chunk: int) -> int:
    """How many chunks a blob of ``size`` bytes travels in (``chunk`` bytes each, the
    last one the rest; an empty blob has none).

    >>> [blob_chunk_count(size, 4) for size in (0, 1, 4, 5)]
    [0, 1, 1, 2]
    """
    if size < 0 or chunk < 1:
        raise ValueError(f"a blob size is >= 0 and a chunk size >= 1, got {size} and {chunk}")
    return -(-size // chunk)


def blob_chunk_size(size: int, chunk: int, index: int) -> int:
    """The size in bytes of chunk ``index`` of a blob of ``size`` bytes.

    >>> [blob_chunk_size(10, 4, i) for i in range(3)]
    [4, 4, 2]
    """
    count = blob_chunk_count(size, chunk)
    if not 0 <= index < count:
        raise ValueError(f"a blob of {size} bytes has chunks 0..{count - 1}, not {index}")
    return chunk if index < count - 1 else size - chunk * (count - 1)
