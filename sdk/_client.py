"""The SDK's front door: :class:`MigrationClient` and the one-call :func:`migrate`."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import platformdirs

from ._conflicts.policy import Conflict, resolved_item
from ._errors import (
    AttachmentMissingError,
    ConfigurationError,
    MigrationBlockedError,
    MigrationError,
    NotFoundError,
    OfflineError,
)
from ._events import Event, Hooks, MigrationFailed, Progress
from ._migration.engine import MigrationOutcome, MigrationResult, run_migration
from ._migration.journal import Journal, journal_path_for
from ._migration.lock import MigrationLock, lock_path_for
from ._migration.options import MigrationOptions
from ._migration.plan import MigrationPlan, make_plan
from ._stopping import stoppable_sleep
from ._store.detect import LocalDetection, LocalState, detect_local, inspect_store, store_file
from ._store.local import LocalStore, default_store_path
from ._store.schema import connect_read_only
from ._store.values import Attachment
from ._sync.attachments import fetch
from ._sync.engine import run_sync
from ._sync.proof import SyncStatus, sync_status
from ._sync.push import decide_waiting, waiting_conflicts
from ._sync.run import SyncResult
from ._transport.http import Transport
from ._transport.retry import RetryPolicy
from ._wire import models as c

__all__ = ["Detection", "MigrationClient", "migrate"]

Token = str | Callable[[], str]


@dataclasses.dataclass(frozen=True)
class Detection:
    """What the device holds (``local``) and what the server says (``server``, asked only
    when there is something to migrate).

    >>> import pathlib
    >>> from sdk import LocalState, LocalDetection
    >>> local = LocalDetection(LocalState.EMPTY, pathlib.Path("s.sqlite3"), "no items")
    >>> Detection(local=local, server=None).should_migrate
    False
    """

    local: LocalDetection
    server: c.DetectMigrationResponse | None

    @property
    def should_migrate(self) -> bool:
        """True when the store holds data and the server accepts its migration."""
        return (
            self.local.state is LocalState.READY
            and self.server is not None
            and self.server.can_migrate
        )


class MigrationClient:
    """Migrates one user's local store to the migration server.

    Give it the server (a URL, or your own ``httpx.Client`` whose ``base_url`` is the
    server), the user and their token (a string, or a callable returning a fresh one),
    and the store (``store_path``, or ``app_name`` for the platform's default place)::

        with MigrationClient(server="http://127.0.0.1:8000", user_id="u1",
                             token=get_token, app_name="FlashCards") as client:
            if client.detect().should_migrate:
                result = client.migrate()

    Every method may be called again after any failure or crash: the journal beside
    the store makes :meth:`migrate` continue the same migration.

    ``request_timeout`` bounds each HTTP request (connect, read, write) when the client
    makes its own connection from ``server=``; give your own ``http_client=`` to tune
    more. The retry policy bounds a call's retries as a whole.
    """

    def __init__(
        self,
        *,
        user_id: str,
        token: Token,
        server: str | None = None,
        http_client: httpx.Client | None = None,
        request_timeout: float = 30.0,
        store_path: str | Path | None = None,
        app_name: str | None = None,
        options: MigrationOptions | None = None,
        retry: RetryPolicy | None = None,
        on_progress: Callable[[Progress], object] | None = None,
        on_event: Callable[[Event], object] | None = None,
    ) -> None:
        if (server is None) == (http_client is None):
            raise ConfigurationError(
                "give exactly one of server= (a URL) or http_client= (an httpx.Client "
                "whose base_url is the server)"
            )
        if store_path is None and app_name is None:
            raise ConfigurationError(
                "give store_path= (the store's file) or app_name= (to use the platform's "
                "default data folder for that app)"
            )
        self.options = options or MigrationOptions()
        self.store_path = (
            store_file(store_path, "store_path")
            if store_path is not None
            else default_store_path(str(app_name))
        )
        self.cache_dir = (
            Path(self.options.cache_dir)
            if self.options.cache_dir is not None
            else Path(platformdirs.user_cache_dir(app_name or "offline-migrate", appauthor=False))
            / "snapshots"
        )
        self.hooks = Hooks(on_progress=on_progress, on_event=on_event)
        retry = retry or RetryPolicy()
        # Retry waits end early when a migrate(stop=...) caller sets its stop event.
        self._stop: threading.Event | None = None
        if http_client is not None:
            self.transport = Transport(
                http_client, user_id=user_id, token=token, retry=retry, sleep=self._sleep
            )
        else:
            self.transport = Transport.from_url(
                str(server),
                user_id=user_id,
                token=token,
                timeout=request_timeout,
                retry=retry,
                sleep=self._sleep,
            )

    def __enter__(self) -> MigrationClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        self.transport.close()

    def detect(self) -> Detection:
        """Look at the store (read-only) and, when it holds data, ask the server."""
        local = detect_local(self.store_path)
        server = None
        if local.state is LocalState.READY:
            server = self.transport.detect(
                has_local_data=True,
                item_count=local.item_count,
                data_version=local.data_version,
                device_id=local.device_id,
            )
        return Detection(local=local, server=server)

    def migrate(self, *, stop: threading.Event | None = None) -> MigrationResult:
        """Run the migration to the end, or continue the one a crash interrupted.

        ``stop``: set it from another thread (at app shutdown) to leave at the next safe
        point, between batches or steps or during a retry wait; the result's outcome is
        then ``STOPPED`` and the next call resumes.

        Raises :class:`sdk.MigrationBlockedError` when another process is migrating
        the same store, :class:`sdk.OfflineError` when the server stays unreachable
        (call again later: it resumes), and the other :class:`sdk.MigrationError` types.
        """
        if self._untouchable(creates=False):
            return MigrationResult(outcome=MigrationOutcome.NOTHING_TO_MIGRATE)
        with MigrationLock(lock_path_for(self.store_path)):
            self._stop = stop
            try:
                result = self._migrate_locked(stop)
                if result.outcome in _SYNC_AFTER and _synced(self.store_path):
                    # Done means the cloud holds what the device holds now: push what the
                    # app wrote during the migration, pull what other devices put there.
                    synced = self._sync_locked(stop, full=False)
                    result = dataclasses.replace(
                        result, sync=synced, verified=result.verified and synced.verified
                    )
                return result
            finally:
                self._stop = None

    def sync(self, *, stop: threading.Event | None = None, full: bool = False) -> SyncResult:
        """Bring the store and the cloud in step, both ways, and prove it.

        Pushes every pending local change (conflicts with changes made elsewhere are
        decided by ``options.conflicts``, or wait for the app under ``manual``), pulls what
        changed in the cloud since the last sync, then checks that both hold the same
        dataset (``verified``). A store that was never migrated is migrated first (the
        migration is the first sync); a device without a store, or with an empty one,
        downloads the user's whole dataset. Interrupted anywhere, it resumes.

        ``full`` recomputes both checksums from every item instead of the running ones
        (an audit; O(items) on both sides)::

            result = client.sync()
            print(result.pushed, result.pulled, result.pending_changes, result.verified)
        """
        self._untouchable(creates=True)
        with MigrationLock(lock_path_for(self.store_path)):
            self._stop = stop
            try:
                # Not counted: a sync costs O(changes), whatever the store holds.
                local = inspect_store(self.store_path, count=False).raise_for_state()
                if local.state is LocalState.READY and not _synced(self.store_path):
                    migrated = self._migrate_locked(stop)
                    if migrated.outcome is MigrationOutcome.NOTHING_TO_MIGRATE:
                        return self._sync_locked(stop, full=full)  # empty: download
                    if migrated.outcome is not MigrationOutcome.COMPLETED:
                        return SyncResult(
                            pending_changes=detect_local(self.store_path).item_count,
                            pending_conflicts=migrated.pending_conflicts,
                            stopped=migrated.outcome is MigrationOutcome.STOPPED,
                            migration=migrated,
                        )
                    if not _synced(self.store_path):  # a server without sync
                        raise MigrationBlockedError(
                            "the server migrated this store but offers no sync (its detect "
                            "lists no 'sync' capability); update the server",
                            reason="no-sync",
                        )
                    return dataclasses.replace(
                        self._sync_locked(stop, full=full), migration=migrated
                    )
                return self._sync_locked(stop, full=full)
            finally:
                self._stop = None

    def verify(self, *, full: bool = False) -> SyncStatus:
        """Check, changing nothing, whether the device and the cloud hold the same data
        now: no local change pending, nothing new in the cloud, equal checksums. ``full``
        recomputes both checksums from every item (an audit; O(items) on both sides)::

            status = client.verify()
            print(status.verified, status.pending_changes, status.changes_to_pull)
        """
        with LocalStore(self.store_path, create=False) as store:
            return sync_status(store, self.transport, full=full)

    def _untouchable(self, *, creates: bool) -> bool:
        """Look before putting a lock or a journal beside the store: a path that holds
        something not ours (another app's file, a folder, a damaged store) raises its
        typed error and gets nothing written beside it; a missing store (with no journal
        of a migration in progress) is True, "nothing to do", unless the call ``creates``
        one (a sync on a new device)."""
        local = inspect_store(self.store_path, count=False)
        if local.state is LocalState.NO_STORE:
            return not creates and not journal_path_for(self.store_path).exists()
        try:
            local.raise_for_state()
        except MigrationError as exc:
            self.hooks.emit(MigrationFailed(session_id=None, error=str(exc), retryable=False))
            raise
        return False

    def _migrate_locked(self, stop: threading.Event | None) -> MigrationResult:
        with self._journal() as journal:
            try:
                return run_migration(
                    store_path=self.store_path,
                    transport=self.transport,
                    journal=journal,
                    options=self.options,
                    cache_dir=self.cache_dir,
                    hooks=self.hooks,
                    stop=stop,
                )
            except MigrationError as exc:
                record = journal.load()
                self.hooks.emit(
                    MigrationFailed(
                        session_id=record.session_id if record else None,
                        error=str(exc),
                        retryable=exc.retryable,
                    )
                )
                raise

    def _sync_locked(self, stop: threading.Event | None, *, full: bool) -> SyncResult:
        try:
            return run_sync(
                store_path=self.store_path,
                transport=self.transport,
                policy=self.options.conflicts,
                hooks=self.hooks,
                stop=stop,
                full=full,
                fetch_attachments=self.options.fetch_attachments,
            )
        except NotFoundError as exc:
            raise MigrationBlockedError(
                f"the server offers no sync ({exc}); update the server, or point the SDK at "
                "one whose detect lists the 'sync' capability",
                reason="no-sync",
            ) from exc

    def fetch_attachment(self, attachment: Attachment | str) -> None:
        """Download an attachment the store knows only by reference (a sync with
        ``fetch_attachments="lazy"``) into the store, resuming a download cut off before.
        Give it to a store to fetch on first use: ``store.fetch_attachment =
        client.fetch_attachment``; offline, :class:`~sdk.AttachmentMissingError` says so::

            store.fetch_attachment = client.fetch_attachment
            photo = store.read_attachment(card["photo"])  # downloaded if not here yet
        """
        sha = attachment.sha256 if isinstance(attachment, Attachment) else attachment
        with LocalStore(self.store_path, create=False) as store:
            try:
                fetch(self.transport, store, sha)
            except OfflineError as exc:
                raise AttachmentMissingError(
                    f"attachment {sha} is not on this device yet and the server cannot be "
                    f"reached ({exc}); try again once online",
                    path=str(self.store_path),
                    sha256=sha,
                ) from exc

    def status(self) -> c.GetMigrationStatusResponse:
        """The server's status of this device's migration (or the user's latest)."""
        with self._journal() as journal:
            record = journal.load()
        return self.transport.status(record.session_id if record else None)

    def summary(self) -> c.GetMigrationSummaryResponse:
        """The server's summary of this device's migration (or the user's latest)."""
        with self._journal() as journal:
            record = journal.load()
        return self.transport.summary(record.session_id if record else None)

    def cancel(self) -> bool:
        """Cancel the migration in progress, if any: the server purges what it staged,
        the journal and snapshot are dropped, the store is untouched. Returns whether
        there was one to cancel."""
        if self._untouchable(creates=False):
            return False
        with MigrationLock(lock_path_for(self.store_path)), self._journal() as journal:
            record = journal.load()
            if record is None:
                return False
            if record.session_id is not None:
                self.transport.cancel(record.session_id)
            Path(record.snapshot_path).unlink(missing_ok=True)
            journal.clear()
            return True

    def plan(self) -> MigrationPlan:
        """Predict the migration before any item leaves the device: per collection, how
        many items are new, unchanged or in conflict with the cloud, and what the
        conflict policy (``options.conflicts``) would do with each conflict. Only keys
        and digests are sent; nothing is written on either side::

            plan = client.plan()
            print(plan.new_items, plan.unchanged_items, plan.conflicts,
                  plan.resolutions_by_kind, plan.pending_conflicts)
        """
        return make_plan(self.store_path, self.transport, self.options.conflicts)

    def pending_conflicts(self) -> list[Conflict]:
        """The conflicts waiting for the app's decision (``manual``, deferred by a
        callback, or flagged with a ``manual`` fallback), in (collection, key) order.

        Read from the journal beside the store: it works offline and after a restart.
        Show both sides to the user, then call :meth:`resolve_conflict` for each::

            for conflict in client.pending_conflicts():
                keep = ask_user(conflict.local, conflict.server)  # "local" or "server"
                client.resolve_conflict(conflict.conflict_id, keep)
            result = client.migrate()  # applies the decisions, posts them, completes
        """
        with self._journal() as journal:
            rows = journal.pending()
        waiting = [Conflict.from_json(row.conflict) for row in rows if row.choice is None]
        if _synced(self.store_path):
            with LocalStore(self.store_path, create=False) as store:
                waiting.extend(waiting_conflicts(store))
        return sorted(waiting, key=lambda x: (x.collection, x.key))

    def resolve_conflict(
        self, conflict_id: str, choice: str, data: dict[str, Any] | None = None
    ) -> None:
        """Decide one pending conflict: keep the ``"local"`` version, the ``"server"``'s,
        or ``"merged"`` with ``data`` (the merged JSON object; the item gets the later of
        the two ``updatedAt``). The decision is journaled, so it survives a restart;
        the next :meth:`migrate` writes it into the store, posts it and continues.
        Deciding the same conflict again replaces the decision.

        Raises :class:`sdk.ConfigurationError` for an unknown (or already applied)
        conflict id, a bad choice, or merged data that is not a JSON object::

            client.resolve_conflict(conflict.conflict_id, "merged",
                                    data={**conflict.server["data"], "score": 10})
        """
        if conflict_id.startswith("sync-") and _synced(self.store_path):
            with LocalStore(self.store_path, create=False) as store:
                if decide_waiting(store, conflict_id, choice, data):
                    return
        with self._journal() as journal:
            rows = {row.conflict_id: row for row in journal.pending()}
            row = rows.get(conflict_id)
            if row is None:
                raise ConfigurationError(
                    f"no conflict {conflict_id!r} waits for a decision; list the waiting "
                    "ones with pending_conflicts() (a decision already applied by "
                    "migrate() cannot be changed)"
                )
            decision = resolved_item(Conflict.from_json(row.conflict), choice, data)
            assert decision.item is not None
            if not journal.decide(conflict_id, decision.choice, decision.item):
                raise ConfigurationError(
                    f"conflict {conflict_id!r} was applied by a migration running at the "
                    "same time; its decision can no longer change"
                )

    def _journal(self) -> Journal:
        return Journal(journal_path_for(self.store_path))

    def _sleep(self, seconds: float) -> None:
        stop = self._stop
        if stop is None:
            time.sleep(seconds)
        else:
            stoppable_sleep(stop)(seconds)


_SYNC_AFTER = (MigrationOutcome.COMPLETED, MigrationOutcome.ALREADY_MIGRATED)


def _synced(store_path: Path) -> bool:
    """Whether the store keeps in step with the cloud (it knows where the sync stands)."""
    try:
        conn = connect_read_only(store_path)
    except sqlite3.Error:
        return False
    try:
        row = conn.execute("SELECT 1 FROM store_meta WHERE key = 'sync_cursor'").fetchone()
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return row is not None


def migrate(
    *,
    user_id: str,
    token: Token,
    server: str | None = None,
    http_client: httpx.Client | None = None,
    request_timeout: float = 30.0,
    store_path: str | Path | None = None,
    app_name: str | None = None,
    options: MigrationOptions | None = None,
    on_progress: Callable[[Progress], object] | None = None,
    on_event: Callable[[Event], object] | None = None,
) -> MigrationResult:
    """Migrate a store in one call (see :class:`MigrationClient` for the arguments)::

    result = migrate(server=url, user_id="u1", token=token, app_name="FlashCards")
    assert result.verified
    """
    with MigrationClient(
        user_id=user_id,
        token=token,
        server=server,
        http_client=http_client,
        request_timeout=request_timeout,
        store_path=store_path,
        app_name=app_name,
        options=options,
        on_progress=on_progress,
        on_event=on_event,
    ) as client:
        return client.migrate()
