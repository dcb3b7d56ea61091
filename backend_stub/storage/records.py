"""The records the migration server keeps, and the conditions backends report.

Sessions, batches and conflicts are frozen dataclasses; the per-item rows of the hot path
(staged and cloud items) stay named tuples, so a batch builds no object graph per row::

    >>> item = CloudItem("lessons", "l1", '{"score":3}', 1700000000000, False, 1, "phone")
    >>> item.wire()["data"], item.version
    ({'score': 3}, 1)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import repeat
from json.encoder import encode_basestring as _quote
from typing import NamedTuple, overload

from sdk.contract import (
    BatchReceipt,
    CompleteMigrationResponse,
    DataConflict,
    Item,
    ItemVersion,
    Manifest,
    MigrationConfig,
    SessionStatus,
    canonical_item_parts,
    canonical_json,
)

__all__ = [
    "Backlog",
    "Batch",
    "CloudItem",
    "CommitRolling",
    "Conflict",
    "DuplicateBatch",
    "DuplicateItem",
    "DuplicateSession",
    "Key",
    "NewItems",
    "PullPage",
    "PushRecord",
    "Session",
    "StagedItem",
    "StagedTally",
    "StorageError",
    "SyncHead",
    "SyncedItem",
    "VersionConflict",
]

#: ``(collection, key)``: how an item is addressed everywhere.
Key = tuple[str, str]


class StorageError(Exception):
    """Base of the conditions a backend reports to the service layer.

    >>> issubclass(VersionConflict, StorageError)
    True
    """


class VersionConflict(StorageError):
    """A conditional write lost: the record changed since it was read. Re-read and retry.

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> storage = SQLiteStorage.in_memory()
    >>> m = Manifest(item_count=0, collections={}, batch_size=1, batch_count=0,
    ...              dataset_checksum="0" * 64)
    >>> s = Session(id="s1", user_id="u", migration_id="mig-0001", device_id="d",
    ...             data_version=1, manifest=m, config=None, status=SessionStatus.CREATED,
    ...             version=1, created_at=0, updated_at=0, expires_at=10)
    >>> storage.insert_session(s)
    >>> storage.update_session(s).version
    2
    >>> storage.update_session(s)  # still version 1: another write got there first
    Traceback (most recent call last):
    ...
    backend_stub.storage.records.VersionConflict: s1
    >>> storage.close()
    """


class DuplicateSession(StorageError):
    """A session with this ``(user, migration id)`` already exists.

    >>> raise DuplicateSession("mig-0001")
    Traceback (most recent call last):
    ...
    backend_stub.storage.records.DuplicateSession: mig-0001
    """


class DuplicateBatch(StorageError):
    """This ``(session, seq)`` was stored by a concurrent request.

    >>> issubclass(DuplicateBatch, StorageError)
    True
    """


class CommitRolling(StorageError):
    """A migration of the user was committed and its worker still copies it onto the
    items (a sliced commit's roll-forward): a write of the user's items waits, since
    finishing it here would take time in proportion to the migration's size.

    >>> CommitRolling("alice", "s1").session_id
    's1'
    """

    def __init__(self, user_id: str, session_id: str) -> None:
        super().__init__(f"the migration {session_id} of {user_id} is being committed")
        self.user_id = user_id
        self.session_id = session_id


class DuplicateItem(StorageError):
    """An item key of the batch is already staged in this session by another batch.

    >>> issubclass(DuplicateItem, StorageError)
    True
    """


@dataclasses.dataclass(frozen=True)
class Session:
    """One migration of one device's store to one user's cloud data.

    ``received_count`` and ``staged_count`` are kept on the session (not only derived
    from the batches) so that the version check serialises concurrent batches and the
    staged total can never pass the manifest.

    >>> m = Manifest(item_count=0, collections={}, batch_size=1, batch_count=0,
    ...              dataset_checksum="0" * 64)
    >>> s = Session(id="s1", user_id="u", migration_id="mig-0001", device_id="d",
    ...             data_version=1, manifest=m, config=None, status=SessionStatus.CREATED,
    ...             version=1, created_at=0, updated_at=0, expires_at=10)
    >>> s.status_at(5), s.status_at(10)
    (<SessionStatus.CREATED: 'created'>, <SessionStatus.EXPIRED: 'expired'>)
    """

    id: str
    user_id: str
    migration_id: str
    device_id: str
    data_version: int
    manifest: Manifest
    config: MigrationConfig | None
    status: SessionStatus
    version: int
    created_at: int
    updated_at: int
    expires_at: int
    completed_at: int | None = None
    received_count: int = 0
    staged_count: int = 0
    conflicts_announced: bool = False
    result: CompleteMigrationResponse | None = None
    error: str | None = None

    def status_at(self, now: int) -> SessionStatus:
        """The status as readers see it at ``now``: a stale open session reads as expired
        (a committing one never does: its commit was decided and finishes)."""
        committing = self.status is SessionStatus.COMMITTING
        if not self.status.is_final and not committing and self.expires_at <= now:
            return SessionStatus.EXPIRED
        return self.status

    def is_active(self, now: int) -> bool:
        """Open (not final) and not expired: such a session blocks a new one for the user."""
        return not self.status_at(now).is_final

    @property
    def all_batches_held(self) -> bool:
        """Whether every batch of the manifest's plan has been stored."""
        return self.received_count >= self.manifest.batch_count


@dataclasses.dataclass(frozen=True)
class Batch:
    """A stored batch: its checksum (for replays) and what conflict detection found.

    >>> Batch(session_id="s", seq=0, checksum="c", item_count=2, new_count=2,
    ...       unchanged_count=0, conflict_count=0, received_at=0).receipt(replayed=True).replayed
    True
    """

    session_id: str
    seq: int
    checksum: str
    item_count: int
    new_count: int
    unchanged_count: int
    conflict_count: int
    received_at: int

    def receipt(self, *, replayed: bool = False) -> BatchReceipt:
        """The wire answer for this batch."""
        return BatchReceipt(
            seq=self.seq,
            item_count=self.item_count,
            checksum=self.checksum,
            new_count=self.new_count,
            unchanged_count=self.unchanged_count,
            conflict_count=self.conflict_count,
            replayed=replayed,
        )


class StagedTally(NamedTuple):
    """A session's staged items as completion takes them when none needs a closer look:
    the SHA-256 over their digests in (collection, key) order, and their count per
    outcome.

    >>> import hashlib
    >>> StagedTally(hashlib.sha256(), Counter(new=2)).outcomes["new"]
    2
    """

    digests: hashlib._Hash
    outcomes: Counter[str]


class Backlog(NamedTuple):
    """Batches a backend holds but has not processed yet, and why others failed processing.

    A backend that processes each batch as it arrives (SQLite) never has a backlog; one
    that queues them (AWS) reports the pending ones (``GET /status`` then says
    ``processing``) and the failed ones (dropped from the held batches, so the client
    sends them again, with the reason in ``errors``).

    >>> Backlog(pending=[3], failures=["batch 4 could not be processed: ..."]).pending
    [3]
    """

    pending: list[int]
    failures: list[str]


def _wire(collection: str, key: str, data: str, updated_at: int, deleted: bool) -> Item:
    return Item(
        collection=collection,
        key=key,
        data=json.loads(data),
        updatedAt=updated_at,
        deleted=deleted,
    )


class StagedItem(NamedTuple):
    """One uploaded item, held until completion, in the cloud's own parts: ``data`` is the
    canonical JSON of the object, so completion writes it as it is, without cutting or
    encoding anything.

    ``outcome`` is ``new``, ``unchanged`` or ``conflict``; ``cloud_version`` is the version
    of the cloud item seen when it was classified (``None``: there was none), so that
    completion can tell whether the cloud changed since.

    >>> staged = StagedItem("c", "k", 0, '{"a":1}', 7, False, b"", "new", None)
    >>> staged.item
    '{"collection":"c","data":{"a":1},"deleted":false,"key":"k","updatedAt":7}'
    >>> staged.as_cloud(version=1, device_id="d")
    CloudItem(collection='c', key='k', data='{"a":1}', updated_at=7, deleted=False, \
version=1, device_id='d')
    """

    collection: str
    key: str
    seq: int
    data: str
    updated_at: int
    deleted: bool
    digest: bytes
    outcome: str
    cloud_version: int | None

    @property
    def item(self) -> str:
        """The uploaded item's canonical JSON (what ``digest`` is taken over)."""
        return canonical_item_parts(
            self.collection, self.key, self.data, self.updated_at, self.deleted
        ).decode("utf-8")

    def wire(self) -> Item:
        """The uploaded wire item."""
        return _wire(self.collection, self.key, self.data, self.updated_at, self.deleted)

    def as_cloud(self, *, version: int, device_id: str) -> CloudItem:
        """The cloud record holding this item."""
        return CloudItem(
            self.collection,
            self.key,
            self.data,
            self.updated_at,
            self.deleted,
            version,
            device_id,
        )

    @classmethod
    def from_text(
        cls,
        collection: str,
        key: str,
        seq: int,
        text: str,
        digest: bytes,
        outcome: str,
        cloud_version: int | None,
    ) -> StagedItem:
        """The staged item whose canonical JSON is ``text`` (a backend that stores it whole).

        The canonical layout is fixed (``{"collection":..,"data":..,"deleted":..,"key":..,
        "updatedAt":..}``, sorted keys), so the data's canonical JSON is the text between
        the known head and tail, cut without parsing:

        >>> text = '{"collection":"c","data":{"a":[1]},"deleted":false,"key":"k","updatedAt":7}'
        >>> StagedItem.from_text("c", "k", 0, text, b"", "new", None).item == text
        True
        """
        head = '{"collection":' + _quote(collection) + ',"data":'
        rest, _, updated_at = text[:-1].rpartition(',"updatedAt":')
        rest, _, quoted_key = rest.rpartition(',"key":')
        rest, _, deleted = rest.rpartition(',"deleted":')
        if (
            text.startswith(head)
            and text.endswith("}")
            and quoted_key == _quote(key)
            and deleted in ("true", "false")
            and updated_at.isdigit()
        ):
            parts = (rest[len(head) :], int(updated_at), deleted == "true")
        else:  # not the canonical layout: never written by this server, but stay correct
            item: Item = json.loads(text)
            parts = (canonical_json(item["data"]), item["updatedAt"], item["deleted"])
        return cls(collection, key, seq, *parts, digest, outcome, cloud_version)


class NewItems(Sequence[StagedItem]):
    """A batch's staged items when every one is new (a first migration's batches), held as
    the columns they were parsed into: a backend that writes columns
    (:meth:`SQLiteStorage.insert_batch`) makes no tuple per item, and any other reads
    them as :class:`StagedItem` values, made as it asks for each.

    >>> items = NewItems(3, ["c", "c"], ["k", "l"], ['{"a":1}', "{}"], [7, 8], [False, True],
    ...                  [b"1", b"2"])
    >>> len(items), items[1]
    (2, StagedItem(collection='c', key='l', seq=3, data='{}', updated_at=8, deleted=True, \
digest=b'2', outcome='new', cloud_version=None))
    >>> [item.key for item in items] == ["k", "l"] and items[:1] == [items[0]]
    True
    """

    __slots__ = ("collections", "datas", "deletes", "digests", "keys", "seq", "stamps")

    def __init__(
        self,
        seq: int,
        collections: Sequence[str],
        keys: Sequence[str],
        datas: Sequence[str],
        stamps: Sequence[int],
        deletes: Sequence[bool],
        digests: Sequence[bytes],
    ) -> None:
        self.seq = seq
        self.collections, self.keys, self.datas = collections, keys, datas
        self.stamps, self.deletes, self.digests = stamps, deletes, digests

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> StagedItem: ...

    @overload
    def __getitem__(self, index: slice) -> list[StagedItem]: ...

    def __getitem__(self, index: int | slice) -> StagedItem | list[StagedItem]:
        if isinstance(index, slice):
            return list(self)[index]
        return StagedItem(
            self.collections[index],
            self.keys[index],
            self.seq,
            self.datas[index],
            self.stamps[index],
            self.deletes[index],
            self.digests[index],
            "new",
            None,
        )

    def __iter__(self) -> Iterator[StagedItem]:
        return map(
            StagedItem,
            self.collections,
            self.keys,
            repeat(self.seq),
            self.datas,
            self.stamps,
            self.deletes,
            self.digests,
            repeat("new"),
            repeat(None),
        )


class CloudItem(NamedTuple):
    """A user's item as the cloud holds it. ``data`` is the canonical JSON of the object.

    >>> CloudItem("c", "k", "{}", 1, False, 1, "d1").wire()["updatedAt"]
    1
    """

    collection: str
    key: str
    data: str
    updated_at: int
    deleted: bool
    version: int
    device_id: str

    def wire(self) -> Item:
        """The item in wire form (what its digest is taken over)."""
        return _wire(self.collection, self.key, self.data, self.updated_at, self.deleted)

    def digest(self) -> bytes:
        """The canonical item digest, comparable with an uploaded item's.

        ``data`` is stored canonical, so the item is formatted around it, not re-encoded.
        """
        canonical = canonical_item_parts(
            self.collection, self.key, self.data, self.updated_at, self.deleted
        )
        return hashlib.sha256(canonical).digest()

    def as_version(self) -> ItemVersion:
        """This item as the ``server`` side of a conflict."""
        return ItemVersion(
            data=json.loads(self.data),
            updated_at=self.updated_at,
            deleted=self.deleted,
            version=self.version,
            device_id=self.device_id,
        )


@dataclasses.dataclass(frozen=True)
class Conflict:
    """An uploaded item that differs from the cloud's, and the device's decision on it.

    >>> v = ItemVersion(data={}, updated_at=1, deleted=False)
    >>> Conflict(id="c1", session_id="s", collection="a", key="k", local=v,
    ...          server=v).wire().resolved
    False
    """

    id: str
    session_id: str
    collection: str
    key: str
    local: ItemVersion
    server: ItemVersion
    resolved: bool = False
    choice: str | None = None
    strategy: str | None = None
    merged: ItemVersion | None = None

    def wire(self) -> DataConflict:
        """The wire form listed by ``GET .../conflicts``."""
        return DataConflict(
            conflict_id=self.id,
            collection=self.collection,
            key=self.key,
            local=self.local,
            server=self.server,
            resolved=self.resolved,
            resolution=self.choice,
        )


class SyncHead(NamedTuple):
    """Where a user's cloud data stands: the last seq written, the running multiset
    checksum of every item (:func:`sdk.contract.multiset_add`) and how many items
    (tombstones included) it covers.

    >>> SyncHead(0, 0, 0).seq
    0
    """

    seq: int
    checksum: int
    item_count: int


class SyncedItem(NamedTuple):
    """A cloud item and the seq of the write that put it there.

    >>> SyncedItem(CloudItem("c", "k", "{}", 1, False, 1, "d"), 7).seq
    7
    """

    item: CloudItem
    seq: int


class PullPage(NamedTuple):
    """One page of a user's changes, and the head read in the same snapshot.

    >>> PullPage([], SyncHead(0, 0, 0)).head.item_count
    0
    """

    items: list[SyncedItem]
    head: SyncHead


class PushRecord(NamedTuple):
    """What the server keeps of an applied push, to answer its replays.

    >>> PushRecord("ab" * 32, "{}").response
    '{}'
    """

    request_digest: str
    response: str
