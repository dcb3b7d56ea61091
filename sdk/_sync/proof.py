"""Where the device stands against the cloud: the read-only :func:`sync_status`, and
the proof that ends a sync (nothing pending, and the store's running checksum equal to
the cloud's, or a :class:`~sdk.VerificationError`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from .._errors import VerificationError
from .._events import Progress, ProgressPhase, SyncCompleted
from .._store import changes
from .._store.local import LocalStore, now_ms
from .._wire import canonical as c
from .attachments import lacking_in_cloud
from .pull import _Page
from .run import SyncResult, _pending, _result, _Sync, refuse_another_user

__all__ = ["SyncStatus", "sync_status"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyncStatus:
    """Where the device stands against the cloud, read without changing anything.

    ``verified`` is true when nothing waits either way and both checksums are equal: the
    device holds what the cloud holds, now. The cloud's side is ``None`` offline.

    >>> SyncStatus(pending_changes=0, pending_conflicts=0, local_checksum="0" * 64,
    ...            local_item_count=0).verified
    False
    """

    pending_changes: int
    pending_conflicts: int
    local_checksum: str
    local_item_count: int
    #: Items a pull would bring (changed in the cloud since the last sync).
    changes_to_pull: int | None = None
    cloud_checksum: str | None = None
    cloud_item_count: int | None = None
    cloud_seq: int | None = None
    #: The cloud's seq as of the last page this device read.
    synced_seq: int | None = None
    #: When a sync last proved the device in step (ms since the epoch).
    last_sync_at: int | None = None
    verified: bool = False
    full: bool = False
    #: Attachments the items reference that the cloud lacks (``None`` offline).
    attachments_missing: int | None = None


def sync_status(store: LocalStore, transport: Any | None, *, full: bool = False) -> SyncStatus:
    """Compare the store with the cloud (``transport=None``: the device's side only).
    ``full`` recomputes both checksums from every item."""
    if transport is not None:
        with store._reading("read the store's user") as conn:
            owner = changes.meta(conn, "sync_user").get("sync_user")
        refuse_another_user(store, owner, transport.user_id, f"verify it as {owner!r}")
    with store._writing("settle writes made around the SDK") as conn:
        changes.repair(conn)
    with store._reading("read the sync state") as conn:
        pending = _pending(conn)
        waiting = conn.execute(
            "SELECT count(*) FROM sync_conflicts WHERE choice IS NULL"
        ).fetchone()[0]
        if full:
            local, count = changes.full_checksum(conn)
        else:
            local = changes.local_checksum(conn)
            (count,) = conn.execute("SELECT count(*) FROM items").fetchone()
        state = changes.meta(conn, "sync_cursor", "sync_seq", "last_sync_at")
    base = SyncStatus(
        pending_changes=pending,
        pending_conflicts=waiting,
        local_checksum=c.multiset_hex(local),
        local_item_count=count,
        synced_seq=int(state["sync_seq"]) if "sync_seq" in state else None,
        last_sync_at=int(state["last_sync_at"]) if "last_sync_at" in state else None,
        full=full,
    )
    if transport is None:
        return base
    cloud = transport.sync_state(
        full=full, since=state.get("sync_cursor", "0"), device_id=store.device_id
    )
    lacking = lacking_in_cloud(transport, store.path)
    return dataclasses.replace(
        base,
        changes_to_pull=cloud.changes_since,
        cloud_checksum=cloud.checksum,
        cloud_item_count=cloud.item_count,
        cloud_seq=cloud.seq,
        attachments_missing=len(lacking),
        verified=pending == 0
        and waiting == 0
        and not lacking
        and not cloud.changes_since
        and cloud.checksum == base.local_checksum,
    )


def _prove(run: _Sync, page: _Page, *, full: bool) -> SyncResult:
    with run.store._writing("record the sync") as conn:
        pending = _pending(conn)
        waiting = conn.execute(
            "SELECT count(*) FROM sync_conflicts WHERE choice IS NULL"
        ).fetchone()[0]
        local = changes.local_checksum(conn)
        count = page.item_count  # counting the rows would cost O(items); needed on failure
        if full:
            local, count = changes.full_checksum(conn)
        verified_now = pending == 0 and c.multiset_hex(local) == page.checksum
        if pending == 0 and not verified_now:
            # Before crying wolf: the running checksum trusts the stored digests, which
            # damage the SDK could not see may have changed. Recount from the rows.
            recounted, count = changes.full_checksum(conn)
            if c.multiset_hex(recounted) == page.checksum:
                logger.warning("the store's running checksum was off; rebuilt from its rows")
                local = changes.rebuild(conn)
                verified_now = True
        if verified_now:
            changes.set_meta(conn, last_sync_at=str(now_ms()))
    cloud = page.checksum
    if full:
        state = run.transport.sync_state(full=True)
        run.round_trips += 1
        cloud = state.checksum
        verified_now = verified_now and state.checksum == c.multiset_hex(local)
    if pending == 0 and not verified_now:
        raise VerificationError(
            f"after the sync the device holds {count} items with checksum "
            f"{c.multiset_hex(local)} and the cloud {page.item_count} with {cloud}, though "
            "nothing is pending on the device; the local store was left as it is: run "
            "verify --full, and contact support if it still differs"
        )
    result = dataclasses.replace(
        _result(run),
        pending_changes=pending,
        pending_conflicts=waiting,
        seq=page.seq,
        cloud_checksum=cloud,
        local_checksum=c.multiset_hex(local),
        verified=verified_now,
        full=full,
    )
    run.hooks.emit(
        SyncCompleted(
            pushed=result.pushed,
            pulled=result.pulled,
            pending_changes=pending,
            pending_conflicts=waiting,
            verified=result.verified,
            seq=page.seq,
        )
    )
    run.hooks.progress(Progress(ProgressPhase.DONE, count, count))
    return result
