"""The wire contract between the SDK and the migration server, defined once.

Both sides import this module: the SDK to build requests and read answers, the
reference server (``backend_stub``) to validate requests and shape answers. JSON
field names are camelCase, Python names snake_case (pydantic aliases).

It also defines the canonical encoding of an item and the checksums built on it,
so that either side can recompute them from the items alone, whatever the
batching::

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
from typing import Annotated, Any, Literal, TypedDict

import typing_extensions
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, with_config
from pydantic.alias_generators import to_camel

__all__ = [
    "API_PREFIX",
    "CHECKSUM_HEADER",
    "KEY_PATTERN",
    "NAME_PATTERN",
    "PROBLEM_CONTENT_TYPE",
    "USER_ID_PATTERN",
    "BatchReceipt",
    "CompleteMigrationRequest",
    "CompleteMigrationResponse",
    "ConflictSide",
    "DataConflict",
    "DataConflicts",
    "DetectMigrationResponse",
    "GetMigrationStatusResponse",
    "GetMigrationSummaryResponse",
    "Item",
    "ItemVersion",
    "Limits",
    "Manifest",
    "MigrationConfig",
    "MigrationSummary",
    "PlanConflict",
    "PlanEntry",
    "PlanOutcome",
    "PlanRequest",
    "PlanResponse",
    "Problem",
    "ProblemCode",
    "PullResponse",
    "PushChange",
    "PushOutcome",
    "PushRequest",
    "PushResponse",
    "PushResult",
    "Resolution",
    "ResolveConflictsRequest",
    "ResolveConflictsResponse",
    "SessionStatus",
    "StartMigrationRequest",
    "StartMigrationResponse",
    "SyncItem",
    "SyncStateResponse",
    "batch_body",
    "batch_checksum",
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


class WireModel(BaseModel):
    """Base of every wire model: camelCase aliases, unknown fields refused, frozen."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict with camelCase names.

        >>> Limits().wire()["maxBatchItems"]
        5000
        """
        return self.model_dump(mode="json", by_alias=True)


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


class Problem(WireModel):
    """An RFC 9457 problem+json body, plus our ``code`` extension.

    >>> Problem(type="about:blank", title="Not Found", status=404,
    ...         code=ProblemCode.NOT_FOUND).status
    404
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True
    )

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    code: ProblemCode | None = None


class Limits(WireModel):
    """What the server accepts; the SDK plans its batches within these.

    >>> Limits(max_batch_items=100).max_batch_items
    100
    """

    max_batch_items: int = 5000
    max_batch_bytes: int = 8 * 1024 * 1024
    max_items_per_migration: int = 10_000_000
    max_parallel_batches: int = 4
    session_ttl_seconds: int = 24 * 3600
    max_resolutions_per_request: int = 1000
    conflicts_page_size: int = 500


class DetectMigrationResponse(WireModel):
    """``GET /detect``: the server's view of whether this user can migrate now.

    >>> DetectMigrationResponse(has_local_data=True, item_count=3, data_version=1,
    ...     can_migrate=True, server_time=0).wire()["canMigrate"]
    True
    """

    has_local_data: bool
    item_count: int
    data_version: int | None
    can_migrate: bool
    reason: str | None = None
    already_migrated: bool = False
    migration_candidate: bool = False
    active_session_id: str | None = None
    supported_data_versions: list[int] = Field(default_factory=lambda: [1])
    limits: Limits = Field(default_factory=Limits)
    capabilities: list[str] = Field(default_factory=list)
    server_time: int


class Manifest(WireModel):
    """What the device is about to upload: counts, batch plan and dataset checksum.

    >>> Manifest(item_count=2, collections={"a": 2}, batch_size=1, batch_count=2,
    ...          dataset_checksum="0" * 64).batch_count
    2
    """

    item_count: int = Field(ge=0)
    collections: dict[str, int]
    batch_size: int = Field(ge=1)
    batch_count: int = Field(ge=0)
    dataset_checksum: str = Field(pattern=r"^[0-9a-f]{64}$")


class MigrationConfig(WireModel):
    """Optional client preferences sent with ``start``.

    >>> MigrationConfig().conflict_strategy
    'server_wins'
    """

    conflict_strategy: str = "server_wins"
    compression: Literal["gzip", "identity"] = "identity"


class StartMigrationRequest(WireModel):
    """``POST /start``; idempotent on ``migration_id``.

    >>> m = Manifest(item_count=0, collections={}, batch_size=1, batch_count=0,
    ...              dataset_checksum="0" * 64)
    >>> StartMigrationRequest(migration_id="mig-0001", device_id="d1", data_version=1,
    ...                       manifest=m).wire()["migrationId"]
    'mig-0001'
    """

    migration_id: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")
    device_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    data_version: int
    config: MigrationConfig | None = None
    manifest: Manifest


class StartMigrationResponse(WireModel):
    """Answer to ``start``: the session and the batches the server already holds.

    >>> StartMigrationResponse(session_id="s", migration_id="m", status="created",
    ...     estimated_duration=1.0, received_batches=[], server_time=0).status
    <SessionStatus.CREATED: 'created'>
    """

    session_id: str
    migration_id: str
    status: SessionStatus
    estimated_duration: float
    received_batches: list[int]
    server_time: int
    expires_at: int | None = None


class BatchReceipt(WireModel):
    """Answer to ``PUT .../batches/{seq}``; a replay returns the stored receipt.

    >>> BatchReceipt(seq=0, item_count=1, checksum="0" * 64, new_count=1,
    ...              unchanged_count=0, conflict_count=0).replayed
    False
    """

    seq: int
    item_count: int
    checksum: str
    new_count: int
    unchanged_count: int
    conflict_count: int
    replayed: bool = False


class GetMigrationStatusResponse(WireModel):
    """``GET /status``: the truth about which batches the server holds.

    >>> GetMigrationStatusResponse(session_id="s", status="uploading", progress=0.5,
    ...     current_step="uploading", batch_count=2, received_batches=[0]).progress
    0.5
    """

    session_id: str
    migration_id: str | None = None
    status: SessionStatus
    progress: float
    current_step: str
    errors: list[str] = Field(default_factory=list)
    batch_count: int
    received_batches: list[int]
    processed_batches: int = 0
    conflict_count: int = 0
    unresolved_conflicts: int = 0
    expires_at: int | None = None


class ItemVersion(WireModel):
    """One side of a conflict: the item's content and, for the cloud, its provenance.

    >>> ItemVersion(data={}, updated_at=1, deleted=False).version is None
    True
    """

    data: dict[str, Any]
    updated_at: int
    deleted: bool
    version: int | None = None
    device_id: str | None = None


ConflictSide = Literal["local", "server"]


class DataConflict(WireModel):
    """An item whose local and cloud versions differ.

    >>> v = ItemVersion(data={}, updated_at=1, deleted=False)
    >>> DataConflict(conflict_id="c1", collection="a", key="k", local=v, server=v).resolved
    False
    """

    conflict_id: str
    collection: str
    key: str
    local: ItemVersion
    server: ItemVersion
    resolved: bool = False
    resolution: str | None = None


class DataConflicts(WireModel):
    """One page of conflicts; follow ``next_cursor`` until it is ``None``.

    >>> DataConflicts(conflicts=[], total=0, unresolved=0).next_cursor is None
    True
    """

    conflicts: list[DataConflict]
    total: int
    unresolved: int
    next_cursor: str | None = None


class Resolution(WireModel):
    """The device's decision for one conflict. ``merged`` carries the merged item.

    >>> Resolution(conflict_id="c1", choice="server").choice
    'server'
    """

    conflict_id: str
    choice: Literal["local", "server", "merged"]
    data: dict[str, Any] | None = None
    updated_at: int | None = None
    deleted: bool | None = None
    strategy: str | None = None


class ResolveConflictsRequest(WireModel):
    """``POST /resolve-conflicts``; replaying the same resolutions changes nothing.

    >>> ResolveConflictsRequest(session_id="s", resolutions=[]).resolutions
    []
    """

    session_id: str
    resolutions: list[Resolution]


class ResolveConflictsResponse(WireModel):
    """How many resolutions were recorded and how many conflicts remain.

    >>> ResolveConflictsResponse(resolved_count=1, remaining_conflicts=0).remaining_conflicts
    0
    """

    resolved_count: int
    remaining_conflicts: int


@with_config(ConfigDict(extra="forbid", strict=True))
class PlanEntry(typing_extensions.TypedDict):
    """One item of a plan page: its address and the hex SHA-256 of its canonical encoding
    (:func:`item_digest`). A TypedDict, so a page stays a list of plain dicts.

    >>> item = {"collection": "c", "key": "k", "data": {}, "updatedAt": 1, "deleted": False}
    >>> PlanEntry(collection="c", key="k", digest=item_digest(item).hex())["digest"][:8]
    '253caca5'
    """

    collection: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    key: Annotated[str, StringConstraints(pattern=KEY_PATTERN)]
    digest: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class PlanRequest(WireModel):
    """``POST /plan``: one page of at most ``limits.max_batch_items`` entries, strictly
    ascending by (collection, key). Only keys and digests leave the device.

    >>> PlanRequest(entries=[{"collection": "c", "key": "k", "digest": "0" * 64}]
    ...             ).entries[0]["key"]
    'k'
    """

    entries: list[PlanEntry]


#: What the cloud would make of one planned item.
PlanOutcome = Literal["new", "unchanged", "conflict"]


class PlanConflict(WireModel):
    """A planned item whose cloud version differs: the cloud's side, for the policy.

    >>> PlanConflict(collection="c", key="k",
    ...              server=ItemVersion(data={}, updated_at=1, deleted=True)).server.deleted
    True
    """

    collection: str
    key: str
    server: ItemVersion


class PlanResponse(WireModel):
    """Answer to ``POST /plan``: one outcome per entry, in the request's order, and the
    cloud's version of every entry in conflict. Read-only: nothing is staged or recorded.

    >>> PlanResponse(outcomes=["new"], conflicts=[], new_count=1, unchanged_count=0,
    ...              conflict_count=0, server_time=0).wire()["newCount"]
    1
    """

    outcomes: list[PlanOutcome]
    conflicts: list[PlanConflict]
    new_count: int
    unchanged_count: int
    conflict_count: int
    server_time: int


class CompleteMigrationRequest(WireModel):
    """``POST /sessions/{id}/complete``: confirm with the dataset checksum.

    >>> CompleteMigrationRequest(dataset_checksum="0" * 64).wire()
    {'datasetChecksum': '0000000000000000000000000000000000000000000000000000000000000000'}
    """

    dataset_checksum: str = Field(pattern=r"^[0-9a-f]{64}$")


class CompleteMigrationResponse(WireModel):
    """Result of the commit. ``cloud_checksum`` covers the migrated keys as the cloud now
    holds them, in the dataset checksum's definition, so the device can verify.

    A server that commits off the request path (the AWS backend) first answers with
    ``status`` ``committing``, an empty ``cloud_checksum`` and ``completed_at`` 0: the
    client polls ``GET /status`` and asks again once it moved on.

    >>> CompleteMigrationResponse(session_id="s", status="completed", item_count=1,
    ...     applied_count=1, dataset_checksum="a", cloud_checksum="a",
    ...     completed_at=0).status.is_final
    True
    """

    session_id: str
    status: SessionStatus
    item_count: int
    applied_count: int
    dataset_checksum: str
    cloud_checksum: str
    completed_at: int
    #: What the commit found, so the device needs no second pass over the cloud
    #: (``GET /summary`` re-verifies from scratch); ``None`` from older servers.
    new_items: int | None = None
    unchanged_items: int | None = None
    conflicts: int | None = None
    resolutions_by_kind: dict[str, int] = Field(default_factory=dict)
    #: Where the sync continues: every item this commit wrote carries ``sync_seq``; the
    #: cloud held up to ``sync_prior_seq`` before it, which the device pulls once to get
    #: what other devices put there. ``None`` from servers without sync.
    sync_seq: int | None = None
    sync_prior_seq: int | None = None


class MigrationSummary(WireModel):
    """Counts and checksums of a finished (or failed) migration.

    >>> MigrationSummary(total_items=0, new_items=0, unchanged_items=0, conflicts=0,
    ...     duration_ms=0, dataset_checksum=None, cloud_checksum=None, verified=False
    ... ).resolutions_by_kind
    {}
    """

    total_items: int
    new_items: int
    unchanged_items: int
    conflicts: int
    resolutions_by_kind: dict[str, int] = Field(default_factory=dict)
    collections: dict[str, int] = Field(default_factory=dict)
    duration_ms: int
    dataset_checksum: str | None
    cloud_checksum: str | None
    verified: bool


class GetMigrationSummaryResponse(WireModel):
    """``GET /summary``: the result, its summary and what the user might do next.

    >>> s = MigrationSummary(total_items=0, new_items=0, unchanged_items=0, conflicts=0,
    ...     duration_ms=0, dataset_checksum=None, cloud_checksum=None, verified=False)
    >>> GetMigrationSummaryResponse(session_id="s", result="completed", summary=s).result
    <SessionStatus.COMPLETED: 'completed'>
    """

    session_id: str
    result: SessionStatus
    summary: MigrationSummary
    recommendations: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- sync
#
# After the migration the device and the cloud stay in step. The cloud gives every write
# a place in the user's one total order of changes, its ``seq`` (all items written by one
# request share one seq). A device remembers, per item, the seq of the cloud version its
# content derives from (``baseSeq``) and, per store, how far it has read the order (an
# opaque ``cursor``).


class SyncItem(typing_extensions.TypedDict):
    """One item of a pull page: a wire item plus the ``seq`` that last wrote it.

    >>> SyncItem(collection="c", key="k", data={}, updatedAt=1, deleted=False, seq=3)["seq"]
    3
    """

    collection: str
    key: str
    data: dict[str, Any]
    updatedAt: int
    deleted: bool
    seq: int


class PushChange(WireModel):
    """One local change: the item as the device now holds it, and the seq of the cloud
    version it was based on (``None``: the device never saw this item in the cloud).

    >>> PushChange(collection="c", key="k", data={}, updated_at=1, deleted=False,
    ...            base_seq=None).wire()["baseSeq"] is None
    True
    """

    collection: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    key: Annotated[str, StringConstraints(pattern=KEY_PATTERN)]
    data: dict[str, Any]
    updated_at: int = Field(ge=0, le=2**63 - 1)
    deleted: bool
    base_seq: int | None = Field(ge=0, le=2**63 - 1)


class PushRequest(WireModel):
    """``POST /sync/push``: a batch of local changes, applied all at once and exactly once:
    replaying the same ``push_id`` with the same changes answers the stored response.

    >>> PushRequest(push_id="push-0001", device_id="d1", changes=[]).wire()["pushId"]
    'push-0001'
    """

    push_id: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")
    device_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    changes: list[PushChange]


#: What the cloud made of one pushed change: ``applied`` (written at a new seq),
#: ``unchanged`` (the cloud holds equal data already: never a conflict) or ``conflict``
#: (the cloud's version moved past the change's base: decide, then push the outcome).
PushOutcome = Literal["applied", "unchanged", "conflict"]


class PushResult(WireModel):
    """The outcome of one change, in the request's order. ``seq`` is the seq of the item
    the cloud holds now; ``server`` is that item when it is not the pushed one
    (``unchanged``, ``conflict``), so the device can take it without another request.

    >>> PushResult(collection="c", key="k", outcome="applied", seq=4).server is None
    True
    """

    collection: str
    key: str
    outcome: PushOutcome
    seq: int
    server: ItemVersion | None = None


class PushResponse(WireModel):
    """Answer to a push: one result per change, and the cloud's state after it.

    >>> PushResponse(results=[], seq=0, checksum="0" * 64, item_count=0).replayed
    False
    """

    results: list[PushResult]
    seq: int
    checksum: str
    item_count: int
    replayed: bool = False


class PullResponse(WireModel):
    """``GET /sync/changes?since=CURSOR``: the cloud's items changed after the cursor, in
    the user's order, oldest first. Follow ``cursor`` while ``has_more``; when it is false,
    ``seq``, ``checksum`` and ``item_count`` describe the cloud as of that page.

    >>> PullResponse(changes=[], cursor="0", has_more=False, seq=0,
    ...              checksum="0" * 64, item_count=0).has_more
    False
    """

    changes: list[SyncItem]
    cursor: str
    has_more: bool
    seq: int
    checksum: str
    item_count: int


class SyncStateResponse(WireModel):
    """``GET /sync/state``: the user's cloud dataset in brief. ``full`` says the checksum
    was recomputed from every item instead of read from the running sum.

    >>> SyncStateResponse(seq=0, checksum="0" * 64, item_count=0, full=False).seq
    0
    """

    seq: int
    checksum: str
    item_count: int
    full: bool
    #: With ``since`` (a cursor) and ``deviceId``: how many items a pull from that cursor
    #: would bring to that device.
    changes_since: int | None = None
