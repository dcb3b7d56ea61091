"""The wire contract between the SDK and the migration server, defined once.

The reference server (``backend_stub``) imports this module to validate requests and
shape answers, and its OpenAPI comes from it. The SDK reads and writes the same models
in their light form, :mod:`sdk._wire.models`: dataclasses generated from this module
(``python -m sdk._wire.generate``) and validated by :mod:`sdk._wire.validate` exactly as
pydantic validates these, so the SDK needs no pydantic (pydantic-core has no Android or iOS
wheel); tests/test_wire.py proves the two forms equal. JSON field names are camelCase,
Python names snake_case (pydantic aliases).

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

Typed values in ``data`` are plain JSON on the wire, one-key objects the SDK's store
writes and reads back (defined once in ``sdk._store.values``): ``{"$bytes": "<standard
base64>"}`` for binary values (``b""`` is ``{"$bytes": ""}``), ``{"$attachment": {"sha256",
"size", "mediaType"}}`` for an attachment and ``{"$large": {"sha256", "size", "type"}}`` for
a value kept apart as a blob. Canonical encoding and digests are taken over that encoded
JSON, like any other data, so both sides agree on them without knowing the types, and the
checksum covers each blob through its hash.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

try:
    import typing_extensions
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints, with_config
    from pydantic.alias_generators import to_camel
except ImportError as exc:  # on a phone, say: pydantic-core has no Android or iOS wheel
    raise ImportError(
        "sdk.contract is the wire contract's pydantic definition, for the server and tests: "
        "install offline-migrate[server] to use it. The SDK itself needs no pydantic: it "
        "reads and writes the same models through sdk._wire"
    ) from exc

# The pure part lives apart so the SDK can use it without pydantic; re-exported here.
from ._wire.canonical import (
    API_PREFIX,
    BLOB_SIZE_HEADER,
    CHECKSUM_HEADER,
    EMPTY_SHA256,
    KEY_PATTERN,
    MAX_INTEGER,
    NAME_PATTERN,
    PROBLEM_CONTENT_TYPE,
    SHA256_PATTERN,
    USER_ID_PATTERN,
    ConflictSide,
    Item,
    PlanOutcome,
    ProblemCode,
    PushOutcome,
    SessionStatus,
    batch_body,
    batch_checksum,
    blob_chunk_count,
    blob_chunk_size,
    canonical_item,
    canonical_item_parts,
    canonical_json,
    dataset_checksum,
    dataset_checksum_of,
    item_digest,
    multiset_add,
    multiset_checksum,
    multiset_hex,
)

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
    "BatchReceipt",
    "BlobChunkReceipt",
    "BlobChunkUrl",
    "BlobCompleteRequest",
    "BlobQueryRequest",
    "BlobQueryResponse",
    "BlobState",
    "BlobUploadPlan",
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

# --------------------------------------------------------------------------- models


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
    #: Attachments travel in chunks of this size (the last one is the rest); 5 MiB is
    #: S3's smallest multipart part, so one chunk is one part.
    blob_chunk_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    max_blob_bytes: int = Field(default=1024 * 1024 * 1024, ge=0)


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


# --------------------------------------------------------------------------- blobs
#
# Attachments and large values travel apart from the batches, content-addressed per
# user: ``/blobs/query`` says what the server holds (and which chunks of an upload in
# progress), ``PUT /blobs/{sha256}/chunks/{index}`` sends one chunk (raw bytes),
# ``POST /blobs/{sha256}/complete`` verifies the whole and keeps it, ``GET /blobs/{sha256}``
# reads it back (ranges allowed).

Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]


class BlobUploadPlan(WireModel):
    """A blob about to be uploaded: its size and the hex SHA-256 of each of its chunks
    (``blobChunkBytes`` each, the last the rest), so signed URLs can bind each checksum.

    >>> BlobUploadPlan(sha256=EMPTY_SHA256, size=0, chunks=[]).size
    0
    """

    sha256: Sha256
    size: int = Field(ge=0, le=2**63 - 1)
    chunks: list[Sha256] = Field(max_length=100_000)


class BlobQueryRequest(WireModel):
    """``POST /blobs/query``: which of these blobs (hex SHA-256 names) does the server hold?

    >>> BlobQueryRequest(blobs=[EMPTY_SHA256]).wire()["blobs"][0][:8]
    'e3b0c442'
    """

    blobs: list[Sha256] = Field(min_length=1, max_length=1000)
    #: Blobs (among ``blobs``) the client is about to upload, with each chunk's SHA-256:
    #: a server that takes chunks straight into its storage answers signed URLs for them.
    uploads: list[BlobUploadPlan] = Field(default_factory=list, max_length=100)


class BlobChunkUrl(WireModel):
    """Where to ``PUT`` chunk ``index`` directly (a signed storage URL, no bearer token),
    with ``headers`` to send exactly as given (they are part of the signature: the
    chunk's checksum and length, so the storage checks both).

    >>> BlobChunkUrl(index=0, url="https://bucket.example/k?sig").wire()["headers"]
    {}
    """

    index: int = Field(ge=0)
    url: str
    headers: dict[str, str] = Field(default_factory=dict)


class BlobState(WireModel):
    """What the server has of one blob of this user. ``held``: complete and verified
    (``size`` is its size). Otherwise ``received_chunks`` lists the chunks of an upload in
    progress (``size`` the size it announced), so a client sends only the others.

    >>> BlobState(sha256=EMPTY_SHA256, held=False).wire()["receivedChunks"]
    []
    """

    sha256: Sha256
    held: bool
    size: int | None = None
    received_chunks: list[int] = Field(default_factory=list)
    #: For a blob the request listed in ``uploads``, on a server that offers direct
    #: upload: a signed URL per missing chunk (maybe not all of them; ask again for more,
    #: and again when one has expired).
    chunk_urls: list[BlobChunkUrl] = Field(default_factory=list)


class BlobQueryResponse(WireModel):
    """Answer to ``/blobs/query``: one state per asked blob, in the request's order.

    >>> BlobQueryResponse(blobs=[]).blobs
    []
    """

    blobs: list[BlobState]
    #: The server takes chunks straight into its storage: list the blobs to upload in
    #: ``uploads`` (with their chunks' SHA-256) and ``PUT`` each chunk to its URL.
    direct_upload: bool = False


class BlobChunkReceipt(WireModel):
    """Answer to a chunk upload: every chunk the server now holds (all of them when the
    blob is held already). Replaying a chunk answers the same receipt.

    >>> BlobChunkReceipt(sha256=EMPTY_SHA256, index=0, received_chunks=[0]).wire()["index"]
    0
    """

    sha256: Sha256
    index: int
    received_chunks: list[int]


class BlobCompleteRequest(WireModel):
    """``POST /blobs/{sha256}/complete``: the whole blob's size in bytes.

    >>> BlobCompleteRequest(size=0).size
    0
    """

    size: int = Field(ge=0, le=2**63 - 1)
