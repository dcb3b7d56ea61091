"""Sync on the ``aws`` backend: each user's head, the log that pulls page through, and
the pushes kept for their replays.

* **The head** (``syncSeq``, ``syncSum`` as 64 hex digits, ``syncCount``) lives on the
  user's profile, next to the commit pointer. Only a commit's flip moves it
  (:mod:`backend_stub.storage.aws_cloud`), in the transaction that is the commit point,
  conditioned on the commit generation the unit read and on the seq it replaces: every
  write of a unit shares one seq per user, and the head moves once per commit, however
  often its roll-forward resumes after a crash.
* **Every cloud item** carries the ``seq`` of the write that put it there and its
  ``digest``; a unit computes the checksum's change from the digests it replaces, read
  at the generation its flip is conditioned on.
* **The sync log**: partition ``USER#{user}#SEQ``, sort key ``{seq:020d}#{c}#{k}``, so a
  strongly consistent query walks the user's items in (seq, collection, key) order from
  any position. Entries are keys only. The roll-forward writes an item's entry after
  copying the item and drops its previous one; a reader keeps an entry only if its item
  (resolved through the pointer) is at that seq, so entries that lag, repeat or went
  stale never show. While a commit rolls, its own entries (all at the head's seq, the
  last one) are read from its set-aside rows instead. Each page is read under the
  profile's seqlock, so it is consistent with the head returned with it.

Why not a global secondary index on ``(user, seq)``: a GSI is only eventually
consistent. A pull that reaches the head moves its cursor to the head's seq, so an item
the index had not caught up with yet would fall behind every cursor and be missed for
good, the one thing sync must never do. The log costs two more writes per item written
(its entry, the old entry's delete) and a batch read per hundred items pulled. Known
limit: one partition per user, so a migration of millions of items writes its entries
at one partition's throughput during the roll-forward (after the commit point: nothing
waits on it but the roll-forward itself).

Where a pull page starts in the log::

    >>> start_of((3, "", "")), start_of((3, "c", "k")), start_of(None)
    ('00000000000000000003$', '00000000000000000003#c#k', None)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import NamedTuple

from backend_stub.storage.aws_cloud import PROFILE, CloudItems
from backend_stub.storage.aws_rows import (
    Row,
    aside_pk,
    cloud_of,
    get_s,
    item_key,
    key,
    log_pk,
    log_sk,
    n,
    opt_n,
    opt_s,
    push_sk,
    s,
    split_log_sk,
    user_pk,
)
from backend_stub.storage.aws_table import Table
from backend_stub.storage.records import (
    CloudItem,
    PullPage,
    PushRecord,
    SyncedItem,
    SyncHead,
    VersionConflict,
)
from sdk.contract import multiset_add

__all__ = ["Profile", "full_checksum", "pull_page", "push_of", "push_row", "read_profile"]

# A reader racing commit after commit of the same user gives up after this many views.
_ROUNDS = 20
# Log entries checked against their items per batch read.
_CHECK = 100
_PROFILE_ATTRS = "#gen, #rolling, #rollingSeq, #syncSeq, #syncSum, #syncCount"

Position = tuple[int, str, str]


class Profile(NamedTuple):
    """What a reader needs of the user's profile: the commit pointer and the sync head.

    >>> Profile(4, "tx1", 9, SyncHead(9, 0, 0)).view
    5
    """

    generation: int
    rolling: str | None
    rolling_seq: int | None
    head: SyncHead

    @property
    def view(self) -> int:
        """The commit generation a read now sees (a rolling commit counts as cleared)."""
        return self.generation + (1 if self.rolling is not None else 0)


def read_profile(table: Table, user_id: str) -> Profile:
    """The user's pointer and head, from one strongly consistent read (on DynamoDB; the
    tests run it on moto).

    >>> read_profile(table, "nobody").head  # doctest: +SKIP
    SyncHead(seq=0, checksum=0, item_count=0)
    """
    row = table.get(user_pk(user_id), PROFILE, projection=_PROFILE_ATTRS)
    if row is None:
        return Profile(0, None, None, SyncHead(0, 0, 0))
    total = opt_s(row, "syncSum")
    head = SyncHead(
        opt_n(row, "syncSeq") or 0, int(total, 16) if total else 0, opt_n(row, "syncCount") or 0
    )
    return Profile(opt_n(row, "gen") or 0, opt_s(row, "rolling"), opt_n(row, "rollingSeq"), head)


def pull_page(
    cloud: CloudItems, user_id: str, *, after: Position | None, until: int | None, limit: int
) -> PullPage:
    """:meth:`~backend_stub.storage.Storage.pull_page`: up to ``limit`` items after
    ``after``, and the head they are consistent with (on DynamoDB, as in the tests).

    >>> [s.seq for s in pull_page(cloud, "alice", after=None, until=None, limit=2).items]
    ... # doctest: +SKIP
    [1, 1]
    """
    for _ in range(_ROUNDS):
        before = read_profile(cloud.table, user_id)
        rows = _page(cloud, user_id, before, after, until, limit)
        if _pointer(read_profile(cloud.table, user_id)) == _pointer(before):
            # Large values are content-addressed blobs: reading them later is safe.
            items = [SyncedItem(_item(cloud, row), opt_n(row, "seq") or 0) for row in rows]
            return PullPage(items, before.head)
    raise VersionConflict(f"the cloud items of {user_id} kept changing while read")


def full_checksum(cloud: CloudItems, user_id: str, *, page: int = 1000) -> tuple[int, int]:
    """The multiset checksum and count recomputed from every item's content, all of
    them read at one head (the walk starts again if a commit lands meanwhile).

    >>> full_checksum(cloud, "nobody")  # doctest: +SKIP
    (0, 0)
    """
    for _ in range(_ROUNDS):
        before = read_profile(cloud.table, user_id)
        total = count = 0
        after: Position | None = None
        while True:
            rows = _page(cloud, user_id, before, after, None, page)
            for row in rows:
                total = multiset_add(total, _item(cloud, row).digest())
            count += len(rows)
            if len(rows) < page:
                break
            last = rows[-1]
            after = (opt_n(last, "seq") or 0, get_s(last, "collection"), get_s(last, "key"))
        if _pointer(read_profile(cloud.table, user_id)) == _pointer(before):
            return total, count
    raise VersionConflict(f"the cloud items of {user_id} kept changing while read")


def start_of(after: Position | None) -> str | None:
    """The log sort key a page starts after (a bare seq: past every entry of it)."""
    if after is None:
        return None
    seq, collection, item = after
    if collection or item:
        return log_sk(seq, collection, item)
    return f"{seq:020d}$"  # '#' < '$': past every entry of that seq, before the next seq


def push_row(
    table: Table, user_id: str, push_id: str, record: PushRecord, now: int, *, retention_s: int
) -> Row:
    """The row that keeps an applied push's answer (a large answer goes to S3) for
    ``retention_s``: replays come within minutes, and a push id is never reused.

    >>> from backend_stub.settings import AwsSettings
    >>> from backend_stub.storage.aws_resources import AwsResources
    >>> table = Table(AwsResources(AwsSettings(endpoint_url="http://127.0.0.1:1")))
    >>> row = push_row(table, "alice", "push-0001", PushRecord("ab", "{}"), 5, retention_s=60)
    >>> row["sk"], row["response"]
    ({'S': 'PUSH#push-0001'}, {'S': '{}'})
    """
    row = key(user_pk(user_id), push_sk(push_id))
    row.update(table.pack("response", record.response)[0])
    row.update(
        {
            "requestDigest": s(record.request_digest),
            "createdAt": n(now),
            "ttl": n(int(time.time()) + retention_s),
        }
    )
    return row


def push_of(table: Table, row: Row) -> PushRecord:
    """The :class:`PushRecord` of a :func:`push_row`.

    >>> row = {"requestDigest": {"S": "ab"}, "response": {"S": "{}"}}
    >>> push_of(Table.__new__(Table), row)
    PushRecord(request_digest='ab', response='{}')
    """
    return PushRecord(get_s(row, "requestDigest"), table.unpack(row, "response"))


# ----------------------------------------------------------------------------- internals


def _pointer(profile: Profile) -> tuple[int, str | None]:
    return profile.generation, profile.rolling


def _item(cloud: CloudItems, row: Row) -> CloudItem:
    return cloud_of(row, cloud.table.unpack(row, "data"))


def _page(
    cloud: CloudItems,
    user_id: str,
    profile: Profile,
    after: Position | None,
    until: int | None,
    limit: int,
) -> list[Row]:
    """The effective rows of one page, as of ``profile`` (the caller checks it held)."""
    last = profile.head.seq if until is None else min(until, profile.head.seq)
    rolling_seq = profile.rolling_seq if profile.rolling is not None else None
    # The rolling commit's entries come from its set-aside rows, after the log's.
    logged = last if rolling_seq is None else min(last, rolling_seq - 1)
    found: list[Row] = []
    entries = cloud.table.query(
        log_pk(user_id), after=start_of(after), limit=min(limit, 1000), projection="#sk"
    )
    for chunk in _chunks(entries, _CHECK):
        places = [split_log_sk(get_s(r, "sk")) for r in chunk]
        wanted = [p for p in places if p[0] <= logged]
        rows = cloud.effective(user_id, [(c, k) for _, c, k in wanted], profile.rolling)
        for seq, collection, item in wanted:
            row = rows.get((collection, item))
            if row is not None and opt_n(row, "seq") == seq:
                found.append(row)
                if len(found) == limit:
                    return found
        if len(wanted) < len(places):
            break
    if profile.rolling is None or rolling_seq is None or rolling_seq > last:
        return found
    if after is None or after[0] < rolling_seq:
        start = None
    elif after[0] == rolling_seq and (after[1] or after[2]):
        start = item_key(after[1], after[2])
    else:
        return found
    # A commit rolling now is the last seq: no other write can land until it is cleared.
    for row in cloud.table.query(aside_pk(profile.rolling, user_id), after=start, limit=limit):
        if opt_n(row, "seq") == rolling_seq:
            found.append(row)
            if len(found) == limit:
                break
    return found


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
