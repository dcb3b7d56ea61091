"""The sync: after the migration, the store and the cloud stay in step, both ways.

One sync is three steps, each resumable after a kill at any point:

1. **Push.** Pending local changes (:mod:`sdk._store.changes` records them with every write)
   go up in batches. Each batch is written to the store's outbox before it is sent and
   sent again byte for byte after a crash: the server applies a push id once. The answer
   is applied in one transaction with the outbox row's removal: ``applied`` and
   ``unchanged`` changes stop being pending (unless the app wrote them again meanwhile),
   a ``conflict`` is decided by the same :class:`~sdk.ConflictPolicy` as the migration's,
   and its outcome is pushed by the next batch (or waits for the app, ``manual``).
2. **Pull.** Pages of the user's changes since the store's cursor, each written in one
   transaction together with the new cursor; a row with an unpushed local change is never
   overwritten (the next push meets the conflict and the policy decides). After a
   migration, the items the cloud held before it (another device's) are pulled once, up
   to the seq the migration started from; a new device pulls everything.
3. **Proof.** When the last page is applied and nothing is pending, the store's running
   multiset checksum must equal the cloud's: "verified" means the device holds exactly
   what the cloud holds, now.

Use it through :meth:`sdk.MigrationClient.sync`; this module is the engine behind it.

The steps are :mod:`sdk._sync.push`, :mod:`sdk._sync.pull` and :mod:`sdk._sync.proof`;
what they share is :mod:`sdk._sync.run`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

from .._conflicts.policy import ConflictPolicy
from .._errors import CorruptStoreError, ServerError
from .._events import Hooks, ProgressPhase
from .._stopping import Stopped
from .._store import changes
from .._store.local import LocalStore
from .._wire.canonical import ProblemCode
from .attachments import fetch_referenced, upload_referenced
from .proof import _prove
from .pull import _pull
from .push import _apply_app_decisions, _push_batch, _resend_outbox
from .run import SyncResult, _result, _Sync, refuse_another_user

__all__ = ["run_sync"]

logger = logging.getLogger(__name__)

#: Push batches one sync sends at most: an app that writes faster than the network
#: takes them still sees the sync end (its writes stay pending for the next one).
_MAX_PUSH_ROUNDS = 100


def run_sync(
    *,
    store_path: Path,
    transport: Any,
    policy: ConflictPolicy,
    hooks: Hooks,
    stop: threading.Event | None = None,
    full: bool = False,
    fetch_attachments: str = "eager",
) -> SyncResult:
    """Push, pull and prove, once. Creates the store when there is none (a new device
    then bootstraps the user's data). The caller holds the store's migration lock.
    Attachments go up before the push that references them; those the pulled items
    reference come down during the sync (``"eager"``) or on first use (``"lazy"``)."""
    eager = fetch_attachments == "eager"
    try:
        return _sync_once(store_path, transport, policy, hooks, stop, full, eager)
    except CorruptStoreError:
        # Rows that a snapshot or a sync reads whole can still sit behind a damaged index
        # (quick_check does not compare indexes with their tables): indexes are derived,
        # so rebuild them and try once more; damage in the rows themselves raises again.
        logger.warning("rebuilding the indexes of %s: one was damaged", store_path)
        with LocalStore(store_path) as store, store._writing("rebuild the indexes") as conn:
            conn.execute("REINDEX")
        return _sync_once(store_path, transport, policy, hooks, stop, full, eager)


def _sync_once(
    store_path: Path,
    transport: Any,
    policy: ConflictPolicy,
    hooks: Hooks,
    stop: threading.Event | None,
    full: bool,
    eager: bool,
) -> SyncResult:
    with LocalStore(store_path) as store:
        run = _Sync(store, transport, policy, hooks, stop)
        _claim(store, transport.user_id)
        try:
            upload_referenced(
                transport,
                store_path,
                pending_only=True,
                progress=hooks.progress,
                phase=ProgressPhase.PUSHING,
            )
            _push_all(run)
            page = _pull(run)
            if eager:
                fetch_referenced(transport, store)
            return _prove(run, page, full=full)
        except Stopped:
            logger.info("sync stopped at a safe point; the next sync resumes")
            return dataclasses.replace(_result(run), stopped=True)


def _push_all(run: _Sync) -> None:
    """The push step. While the server commits a migration of the user (``503
    migration-committing``, outlasting the transport's waits), the changes stay pending
    and the sync goes on with the pull: the next sync pushes them."""
    try:
        _resend_outbox(run)
        _apply_app_decisions(run)
        for _round in range(_MAX_PUSH_ROUNDS):
            run.check_stop()
            if not _push_batch(run):
                break
    except ServerError as exc:
        if exc.code != ProblemCode.MIGRATION_COMMITTING.value:
            raise
        logger.info("the push waits for the user's migration to be committed: %s", exc)


def _claim(store: LocalStore, user_id: str) -> None:
    """A store keeps one user's data in step: the first sync (or the migration) names the
    user; another user is refused before anything is sent or written."""
    with store._writing("name the store's user") as conn:
        owner = changes.meta(conn, "sync_user").get("sync_user")
        if owner is None:
            changes.set_meta(conn, sync_user=user_id)
        if owner is None or owner == user_id:
            changes.repair(conn)  # writes made around the SDK: pending, and counted
    refuse_another_user(
        store,
        owner,
        user_id,
        "give each user a store of their own (a store_path or app_name per user); nothing was sent",
    )
