"""The sync's pull: pages of the user's changes since the store's cursor, each written
with the new cursor in one transaction, never over an unpushed local change; after a
migration, the cloud's items from before it are pulled once (the backfill).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import repeat
from operator import itemgetter
from typing import Any

from .. import _fastjson as fastjson
from .._errors import ProtocolError
from .._events import Progress, ProgressPhase, RemoteChangesApplied
from .._failpoints import failpoint
from .._store import changes
from .._store.local import check_item
from .._wire.canonical import KEY_PATTERN, MAX_INTEGER, NAME_PATTERN
from .page import PulledPage
from .run import PULL_PAGE, _Sync

__all__: list[str] = []  # the engine calls _pull; nothing here is for others

_NAME_RE = re.compile(NAME_PATTERN)
_KEY_RE = re.compile(KEY_PATTERN)


@dataclasses.dataclass(frozen=True)
class _Page:
    seq: int
    checksum: str
    item_count: int


def _pull(run: _Sync) -> _Page:
    """Pull the backfill (if a migration left one), then everything since the cursor.
    Returns the head described by the last page."""
    state = _sync_meta(run)
    until = state.get("sync_backfill_until")
    if until is not None:
        _pull_range(run, since_key="sync_backfill_cursor", until=int(until))
    return _pull_range(run, since_key="sync_cursor", until=None)


def _pull_range(run: _Sync, *, since_key: str, until: int | None) -> _Page:
    """Pull pages until the last one. The next page is asked for (from the cursor the page
    in hand gave) while this one is written into the store, so the server's work and the
    device's overlap; each page is written with its cursor, so a kill resumes from the
    last page written."""

    def fetch(since: str | None) -> bytes:
        return run.transport.pull(  # type: ignore[no-any-return]
            since=since, until=until, limit=PULL_PAGE, device_id=run.store.device_id
        )

    run.check_stop()
    with (
        run.store._bulk_writes(),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdk-pull") as ahead,
    ):
        upcoming: Future[bytes] = ahead.submit(fetch, _sync_meta(run).get(since_key))
        try:
            while True:
                # Parsed here, not on the fetching thread: the items are parsed one at a
                # time as they are checked (sdk/_sync/page.py says why).
                pulled = PulledPage(upcoming.result())
                page = pulled.envelope
                run.round_trips += 1
                done = not page["hasMore"]
                if not done:
                    upcoming = ahead.submit(fetch, page["cursor"])
                failpoint("sync.pull.answered")
                _apply_page(run, pulled, since_key=since_key, until=until)
                if done:
                    return _Page(page["seq"], page["checksum"], page["itemCount"])
                run.check_stop()
        except BaseException:
            upcoming.cancel()
            raise


def _apply_page(run: _Sync, pulled: PulledPage, *, since_key: str, until: int | None) -> None:
    texts = pulled.texts()
    columns = None if texts is None else _pulled_texts(texts)
    if columns is None:
        columns = changes.Pulled.of(*pulled.rows(_pulled_page))
    page = pulled.envelope
    with run.store._writing("apply pulled changes") as conn:
        written = changes.take_pulled(conn, columns)
        if until is not None and not page["hasMore"]:
            changes.set_meta(conn, sync_backfill_until=None, sync_backfill_cursor=None)
        else:
            changes.set_meta(conn, **{since_key: page["cursor"]})
        if until is None:
            changes.set_meta(conn, sync_seq=str(page["seq"]))
    failpoint("sync.pull.applied")
    run.pulled += written
    if written:
        counts = Counter(columns.collections)
        run.hooks.emit(RemoteChangesApplied(count=written, collections=dict(counts)))
    # The total is unknown until the last page: one more page is the honest guess.
    expected = run.pulled + (PULL_PAGE if page["hasMore"] else 0)
    run.hooks.progress(Progress(ProgressPhase.PULLING, run.pulled, expected))


#: Items read at once by :func:`_pulled_texts`: few enough that they die young (a whole
#: page of dicts alive together fills the oldest generation; see sdk/_sync/page.py).
_CHUNK = 250
_MEMBERS = itemgetter("seq", "collection", "key", "updatedAt", "deleted", "data")


def _pulled_texts(texts: list[bytes]) -> changes.Pulled | None:
    """:func:`_pulled_page` of a page whose items' texts are their canonical JSON (with
    ``seq`` among the members), as the server writes them: a chunk of items is read and
    checked in a few calls into C, a column at a time, and each item's data text and
    canonical bytes are cut from its text. ``None`` when any item is not such a usual
    item (or orjson is missing): the page then takes the item-at-a-time path.

    The checks are :func:`_pulled_page`'s for a usual item. The item's members are in
    canonical order (collection, data, deleted, key, seq, updatedAt): the data starts
    after the collection's name (as long quoted as its length plus 2: it is a name) and
    ends at the last ``,"deleted":``; the last ``,"seq":`` is the seq member's (what
    follows the data is the deleted flag, the key, a JSON string where a quote is
    escaped, and numbers). Without the seq member, the text is the item's canonical
    bytes."""
    name_ok, key_ok, sha256 = _NAME_RE.fullmatch, _KEY_RE.fullmatch, hashlib.sha256
    collections: list[str] = []
    keys: list[str] = []
    datas: list[str] = []
    stamps: list[int] = []
    deletes: list[int] = []
    seqs: list[int] = []
    digests: list[bytes] = []
    for start in range(0, len(texts), _CHUNK):
        chunk = texts[start : start + _CHUNK]
        values = fastjson.loads_canonical_parts(chunk)
        if values is None or set(map(type, values)) != {dict} or set(map(len, values)) != {6}:
            return None
        try:
            columns = zip(*map(_MEMBERS, values), strict=True)
            seq_of, collection_of, key_of, stamp_of, deleted_of, data_of = columns
        except KeyError:
            return None
        if (
            list(map(set, map(map, repeat(type), (seq_of, stamp_of, collection_of, key_of))))
            != [{int}, {int}, {str}, {str}]
            or set(map(type, deleted_of)) != {bool}
            or set(map(type, data_of)) != {dict}
            or min(seq_of) < 0
            or min(stamp_of) < 0
            or max(max(seq_of), max(stamp_of)) > MAX_INTEGER  # beyond 64 bits
            or not all(map(name_ok, set(collection_of)))
            or not all(map(key_ok, key_of))
        ):
            return None
        cuts = [text.rfind(b',"seq":') for text in chunk]
        datas.extend(
            text[len(collection) + 24 : text.rfind(b',"deleted":')].decode()
            for text, collection in zip(chunk, collection_of, strict=True)
        )
        digests.extend(
            sha256(text[:cut] + text[text.index(b",", cut + 7) :]).digest()
            for text, cut in zip(chunk, cuts, strict=True)
        )
        collections.extend(collection_of)
        keys.extend(key_of)
        stamps.extend(stamp_of)
        deletes.extend(map(int, deleted_of))
        seqs.extend(seq_of)
    return changes.Pulled(collections, keys, datas, stamps, deletes, seqs, digests)


def _pulled_page(page: Iterable[Any]) -> tuple[list[tuple[changes.Row, int]], list[bytes]]:
    """A page's items as rows with their seqs, and their digests. The common case costs
    one orjson call per item (the data's canonical text and the item's canonical bytes
    together); anything unusual goes through the full checks of :func:`_pulled`."""
    items: list[tuple[changes.Row, int]] = []
    digests: list[bytes] = []
    name_ok, key_ok = _NAME_RE.fullmatch, _KEY_RE.fullmatch
    sha256, encode = hashlib.sha256, fastjson.encode_item
    for raw in page:
        try:
            seq = raw["seq"]
            collection, key, updated_at, deleted = (
                raw["collection"],
                raw["key"],
                raw["updatedAt"],
                raw["deleted"],
            )
            usual = (
                len(raw) == 6
                and type(seq) is int
                and 0 <= seq <= MAX_INTEGER
                and type(collection) is str
                and type(key) is str
                and type(raw["data"]) is dict
                and type(updated_at) is int
                and 0 <= updated_at <= MAX_INTEGER
                and type(deleted) is bool
                and name_ok(collection) is not None
                and key_ok(key) is not None
            )
        except (KeyError, TypeError):
            usual = False
        if usual:
            del raw["seq"]
            try:
                text, canonical = encode(raw)  # refuses text that is not valid Unicode
            except (TypeError, ValueError, RecursionError):
                raw["seq"] = seq
            else:
                items.append(((collection, key, text, updated_at, int(deleted)), seq))
                digests.append(sha256(canonical).digest())
                continue
        row, seq, digest = _pulled(raw)
        items.append((row, seq))
        digests.append(digest)
    return items, digests


def _pulled(raw: Any) -> tuple[changes.Row, int, bytes]:
    """One pulled item, checked as any write to the store is, with its digest."""
    try:
        seq = raw.pop("seq")
        collection, key = raw["collection"], raw["key"]
        updated_at, deleted = raw["updatedAt"], raw["deleted"]
        if len(raw) != 5:
            raise KeyError(sorted(raw))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(
            f"a pulled item is not a wire item ({exc!r}); the server and the SDK disagree on "
            "the wire contract, update whichever is older"
        ) from exc
    if type(seq) is not int or not 0 <= seq <= MAX_INTEGER:
        raise ProtocolError(f"a pulled item has no valid seq ({seq!r}); update the server")
    if type(updated_at) is int and updated_at > MAX_INTEGER:
        raise ProtocolError(
            f"a pulled item's updatedAt ({updated_at}) is beyond 64 bits, which no server"
            " stores; update the server"
        )
    text = check_item(collection, key, raw["data"], updated_at, deleted, encode=fastjson.canonical)
    # One more C call gives the item's canonical bytes (what the checksum hashes).
    _, canonical = fastjson.encode_item(raw)
    row = (collection, key, text, updated_at, int(deleted))
    return row, seq, hashlib.sha256(canonical).digest()


def _sync_meta(run: _Sync) -> dict[str, str]:
    with run.store._reading("read the sync state") as conn:
        return changes.meta(
            conn, "sync_cursor", "sync_backfill_until", "sync_backfill_cursor", "sync_seq"
        )
