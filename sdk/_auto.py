"""The startup hook: one call at app start, the migration in a background thread.

:func:`auto_migrate` returns at once (it starts a thread and does no I/O of its own) and
the thread does the rest: nothing when the store is absent, empty or already migrated;
otherwise it migrates, waits with backoff while the device is offline or the server is
down, follows the progress of another instance of the app that holds the store's lock,
and leaves at a safe point when the app stops it. Nothing it meets raises into the app:
everything arrives as callbacks (see :class:`AutoMigration`)::

    migration = auto_migrate(server=URL, user_id=user_or_none, token=get_token,
                             app_name="FlashCards", on_progress=show_progress,
                             dispatch=ui_calls.put)   # callbacks run on the GUI thread
    ...
    migration.user_registered("u-42", get_token)     # the UserRegistered path
    ...
    migration.stop()                                 # at shutdown: resumes next start
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import enum
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import (
    AuthError,
    ConfigurationError,
    MigrationBlockedError,
    MigrationError,
    ServerError,
    StoreBusyError,
    StoreError,
    VerificationError,
)
from ._events import Event, Progress, ProgressPhase
from ._transport.retry import Retrier, RetryPolicy

# Start-up cost: auto_migrate() runs on the app's main thread, so this module imports only
# what is light (no httpx, sqlite-utils, wire models). The worker thread imports the rest,
# in the functions that use it.
if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from ._client import MigrationClient, Token
    from ._conflicts.policy import Conflict
    from ._migration.engine import MigrationResult
    from ._migration.options import MigrationOptions
    from ._sync.run import SyncResult

__all__ = ["AutoMigration", "AutoState", "AutoStatus", "auto_migrate", "journal_progress"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Between attempts while the app runs: 2 s, 4 s, ... at most 5 min, never giving up.
DEFAULT_BACKOFF = RetryPolicy(
    attempts=sys.maxsize, timeout=math.inf, initial=2.0, max_delay=300.0, jitter=1.0
)
#: The lock's ``MigrationBlockedError.reason`` (another process migrates this store).
_LOCKED = "in-progress"
#: The server's reason when another device of the same user is migrating.
_ACTIVE_SESSION = "active-session"

# Keyed by the journal's Phase values (a str enum): the journal is imported on first use.
_PHASE_PROGRESS = {
    "prepared": ProgressPhase.STARTING,
    "started": ProgressPhase.UPLOADING,
    "uploaded": ProgressPhase.RESOLVING,
    "resolved": ProgressPhase.COMPLETING,
    "completed": ProgressPhase.VERIFYING,
    "verified": ProgressPhase.VERIFYING,
}


class AutoState(str, enum.Enum):
    """Where the startup migration stands.

    Settled states (:meth:`AutoMigration.wait` returns on them): ``ANONYMOUS``,
    ``AWAITING_USER``, ``DONE``, ``SYNCED``, ``NOTHING_TO_MIGRATE``, ``FAILED``,
    ``STOPPED``, ``PAUSED``.

    >>> AutoState.RETRYING.value
    'retrying'
    >>> AutoState.DONE.settled, AutoState.MIGRATING.settled
    (True, False)
    """

    #: Looking at the local store.
    CHECKING = "checking"
    #: The store holds data but nobody is signed in: call ``user_registered()``.
    ANONYMOUS = "anonymous"
    #: Migrating (progress arrives through ``on_progress``).
    MIGRATING = "migrating"
    #: Offline, or the server is unavailable: trying again after ``retry_in`` seconds.
    RETRYING = "retrying"
    #: Another instance of the app migrates this store; its progress is relayed.
    WATCHING = "watching"
    #: Conflicts wait for the user's decision (``on_conflicts``).
    AWAITING_USER = "awaiting_user"
    #: Migrated and verified while this app ran.
    DONE = "done"
    #: Pushing local changes and pulling the cloud's (after the migration).
    SYNCING = "syncing"
    #: The last sync left the device in step with the cloud (or says what still waits);
    #: the hook syncs again after local writes, periodically, and on ``sync_now()``.
    SYNCED = "synced"
    #: No store, an empty one, or one migrated before: nothing was done.
    NOTHING_TO_MIGRATE = "nothing_to_migrate"
    #: Cannot finish without a change (a damaged store, a refusal): see ``error``.
    FAILED = "failed"
    #: Stopped by the app at a safe point; the next start resumes.
    STOPPED = "stopped"
    #: The app paused it (no network, or a metered one): no request until ``resume()``.
    PAUSED = "paused"

    @property
    def settled(self) -> bool:
        """True when nothing more happens without the app or the user doing something."""
        return self in _SETTLED


_SETTLED = frozenset(
    {
        AutoState.ANONYMOUS,
        AutoState.AWAITING_USER,
        AutoState.DONE,
        AutoState.SYNCED,
        AutoState.NOTHING_TO_MIGRATE,
        AutoState.FAILED,
        AutoState.STOPPED,
        AutoState.PAUSED,
    }
)


#: What each state tells the user, in plain words; a few states say more (see _told).
_MESSAGES = {
    AutoState.CHECKING: "Checking the data on this device",
    AutoState.ANONYMOUS: "Your data is kept on this device; it moves to the cloud once you sign up",
    AutoState.MIGRATING: "Moving your data to the cloud",
    AutoState.RETRYING: "Your data is safe on this device; waiting for the network to sync it",
    AutoState.WATCHING: "Another window of this app is moving your data to the cloud",
    AutoState.AWAITING_USER: "Some items changed both here and in the cloud: choose which to keep",
    AutoState.DONE: "Your data is now in the cloud",
    AutoState.SYNCING: "Syncing your data with the cloud",
    AutoState.SYNCED: "Your data is up to date in the cloud",
    AutoState.NOTHING_TO_MIGRATE: "There is nothing on this device to move to the cloud",
    AutoState.FAILED: "Your data could not be moved to the cloud; it stays safe on this device",
    AutoState.STOPPED: "Paused; it continues the next time the app starts",
    AutoState.PAUSED: "Your data is safe on this device; syncing is paused",
}
#: The user's sentence for the reasons :meth:`AutoMigration.set_network` pauses with.
_NO_NETWORK = "the network is unavailable"
_METERED = "the network is metered"
_PAUSED_MESSAGES = {
    _NO_NETWORK: "Your data is safe on this device; it syncs when the network is back",
    _METERED: "Your data is safe on this device; it syncs once you are off a metered network",
}


@dataclasses.dataclass(frozen=True)
class AutoStatus:
    """One state change: ``message`` is a short sentence for the user (a label's text: plain
    words, never an exception's), ``detail`` the technical text (for a log, or support);
    ``error`` is the last failure (in ``RETRYING`` and ``FAILED``), ``retry_in`` the
    seconds until the next try.

    >>> status = AutoStatus(AutoState.RETRYING, "offline: [Errno 111]", retry_in=4.0)
    >>> status.message
    'Your data is safe on this device; waiting for the network to sync it'
    >>> status.retry_in
    4.0
    """

    state: AutoState
    detail: str
    error: MigrationError | None = None
    retry_in: float | None = None
    #: The user's sentence; when not given, the state's own (told apart by the error's
    #: kind: offline, signed out, a damaged store, ...).
    message: str = ""

    def __post_init__(self) -> None:
        if not self.message:
            object.__setattr__(self, "message", _told(self.state, self.error))


def _told(state: AutoState, error: MigrationError | None) -> str:
    """The user's sentence for a state reached because of ``error``: what it means for
    their data and what, if anything, they can do; never the error's own text."""
    if state is AutoState.RETRYING:
        if isinstance(error, AuthError):
            return "Your data is safe on this device; waiting to sign you in again"
        if isinstance(error, MigrationBlockedError):
            return (
                "Your data is safe on this device; waiting for another of your devices to "
                "finish moving its data"
            )
        if isinstance(error, ServerError):
            return "Your data is safe on this device; the cloud is busy, trying again soon"
    if state is AutoState.FAILED:
        if isinstance(error, StoreError):
            return (
                "The data on this device could not be read, so none of it was moved to the "
                "cloud; contact support"
            )
        if isinstance(error, AuthError):
            return "Your account could not be verified: sign in again; your data stays here"
        if isinstance(error, ConfigurationError):
            return "This app is not set up to reach the cloud; your data stays on this device"
        if isinstance(error, VerificationError):
            return (
                "The cloud's copy did not match this device's, so this device kept its data "
                "as it is; contact support"
            )
    return _MESSAGES[state]


class AutoMigration:
    """The handle :func:`auto_migrate` returns; safe to use from any thread.

    Callbacks (each optional, each given one argument):

    - ``on_progress(Progress)``: for a progress bar, also while another instance migrates;
    - ``on_event(Event)``: the SDK's events (``MigrationStarted``, ``MigrationFailed``, ...);
    - ``on_state(AutoStatus)``: every state change, with a sentence to show;
    - ``on_conflicts(list)``: conflicts the user must decide (see :meth:`resolve`);
    - ``on_done(MigrationResult)``: migrated and verified while the app ran;
    - ``on_sync(SyncResult)``: a sync ended (after the migration the hook keeps the store
      in step with the cloud: soon after local writes, every ``sync_interval`` seconds,
      and on :meth:`sync_now`); remote changes arrive as ``RemoteChangesApplied`` events;
    - ``on_failure(MigrationError)``: it cannot finish without a change (``FAILED``).

    With ``sync=False`` the hook only migrates, and ends there.

    They run on the migration thread, unless ``dispatch`` is given: a function that runs
    a zero-argument callable on the app's own thread (a ``queue.Queue().put`` the GUI loop
    drains, for example). A callback that raises is logged and ignored.

    >>> import tempfile, pathlib
    >>> store = pathlib.Path(tempfile.mkdtemp()) / "store.sqlite3"   # no store there
    >>> migration = auto_migrate(server="http://127.0.0.1:9", user_id="u1", token="t",
    ...                          store_path=store, sync=False)  # migrate only
    >>> migration.wait(timeout=10)
    <AutoState.NOTHING_TO_MIGRATE: 'nothing_to_migrate'>
    """

    def __init__(
        self,
        *,
        user_id: str | None,
        token: Token | None,
        server: str | None = None,
        http_client: httpx.Client | None = None,
        store_path: str | Path | None = None,
        app_name: str | None = None,
        options: MigrationOptions | None = None,
        retry: RetryPolicy | None = None,
        backoff: RetryPolicy | None = None,
        watch_interval: float = 0.5,
        shutdown_timeout: float = 5.0,
        on_progress: Callable[[Progress], object] | None = None,
        on_event: Callable[[Event], object] | None = None,
        on_state: Callable[[AutoStatus], object] | None = None,
        on_conflicts: Callable[[list[Conflict]], object] | None = None,
        on_done: Callable[[MigrationResult], object] | None = None,
        on_failure: Callable[[MigrationError], object] | None = None,
        dispatch: Callable[[Callable[[], None]], object] | None = None,
        sync: bool = True,
        sync_interval: float = 60.0,
        push_delay: float = 1.0,
        on_sync: Callable[[SyncResult], object] | None = None,
    ) -> None:
        # Nothing here may fail or block: arguments are checked by the worker, which
        # reports a bad one as FAILED instead of raising into the app's start-up.
        self._user_id = user_id
        self._token = token
        self._server = server
        self._http_client = http_client
        self._store_path = store_path
        self._app_name = app_name
        self._options = options
        self._retry = retry
        self._backoff = backoff or DEFAULT_BACKOFF
        self._watch_interval = watch_interval
        self._shutdown_timeout = shutdown_timeout
        self._on_progress = on_progress
        self._on_event = on_event
        self._on_state = on_state
        self._on_conflicts = on_conflicts
        self._on_done = on_done
        self._on_failure = on_failure
        self._dispatch = dispatch
        self._sync = sync
        self._sync_interval = sync_interval
        self._push_delay = push_delay
        self._on_sync = on_sync
        self._last_sync: SyncResult | None = None
        self._sync_asked = threading.Event()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._wake = threading.Event()
        #: Why the app paused the hook (``None``: it runs), and the event that makes a
        #: migration or sync in flight leave at its next safe point (set by stop() too).
        self._paused: str | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = AutoStatus(AutoState.CHECKING, "not started yet")
        self._progress: Progress | None = None
        self._result: MigrationResult | None = None
        self._client: MigrationClient | None = None
        self._asked: set[str] = set()
        self._at_exit_registered = False
        # start() calls made, and how many of them the running thread has taken in.
        self._requests = 0
        self._handled = 0

    # ------------------------------------------------------------------ public

    @property
    def status(self) -> AutoStatus:
        """The current state, with its sentence and last error."""
        with self._cond:
            return self._status

    @property
    def state(self) -> AutoState:
        """The current :class:`AutoState`."""
        return self.status.state

    @property
    def progress(self) -> Progress | None:
        """The last progress reported (``None`` before the first)."""
        with self._cond:
            return self._progress

    @property
    def result(self) -> MigrationResult | None:
        """The result of the last migration attempt that ended (``None`` before one)."""
        with self._cond:
            return self._result

    @property
    def last_sync(self) -> SyncResult | None:
        """The last sync that ended (``None`` before one): what went up and down, what
        still waits, whether the device was in step with the cloud."""
        with self._cond:
            return self._last_sync

    def sync_now(self) -> None:
        """Sync now (say, when the app comes to the foreground or the network returns),
        instead of at the next local write or ``sync_interval``."""
        self._sync_asked.set()
        with self._cond:
            alive = self._thread is not None and self._thread.is_alive()
            if alive:
                self._wake.set()
        if not alive:
            self.start()

    def pause(self, reason: str = "paused by the app") -> None:
        """Send nothing until :meth:`resume`: a migration or sync in flight leaves at its
        next safe point (the next start or resume continues it), and the status says
        ``PAUSED`` with ``reason`` in its detail. Local writes wait on the device."""
        with self._cond:
            self._paused = reason
            self._halt.set()
            self._wake.set()

    def resume(self) -> None:
        """Undo :meth:`pause`: the hook goes on at once (a pending sync runs now)."""
        with self._cond:
            self._paused = None
            if not self._stop.is_set():
                self._halt.clear()
            if self._status.state is AutoState.PAUSED:
                # Not settled from now on, so wait() waits for what the thread does next.
                self._status = AutoStatus(AutoState.MIGRATING, "continuing")
            self._wake.set()

    def set_network(self, *, available: bool, metered: bool = False) -> None:
        """Tell the hook what the platform says of the network (Android's
        ``ConnectivityManager``, iOS's ``NWPathMonitor``): it pauses while the network is
        unavailable or metered, and resumes when it is back::

            migration.set_network(available=True, metered=False)   # Wi-Fi again

        To sync over a metered network too, pass ``metered=False`` always.
        """
        if not available:
            self.pause(_NO_NETWORK)
        elif metered:
            self.pause(_METERED)
        else:
            self.resume()

    @property
    def paused(self) -> bool:
        """Whether the app paused the hook (:meth:`pause`, :meth:`set_network`)."""
        with self._cond:
            return self._paused is not None

    @property
    def running(self) -> bool:
        """Whether the migration thread is alive."""
        with self._cond:
            return self._thread is not None and self._thread.is_alive()

    def start(self) -> AutoMigration:
        """Start the migration thread, or wake it if it waits; returns ``self`` at once."""
        with self._cond:
            self._requests += 1
            if self._thread is None or not self._thread.is_alive():
                self._spawn()
                return self
            if self._status.state.settled:
                # Not settled any more from now on, so wait() cannot return early; the
                # thread reports its next state (or, if it is just ending, a new one
                # starts: see _work).
                self._status = AutoStatus(AutoState.MIGRATING, "continuing")
            self._wake.set()
        return self

    def _spawn(self) -> None:
        """Start a migration thread; call with ``self._cond`` held."""
        self._handled = self._requests
        self._stop.clear()
        if self._paused is None:
            self._halt.clear()
        self._wake.clear()
        self._status = AutoStatus(AutoState.CHECKING, "looking at the local store")
        self._thread = threading.Thread(target=self._work, name="sdk-auto-migrate", daemon=True)
        self._thread.start()
        if not self._at_exit_registered:
            # A daemon thread would just be cut off at exit; this stops it cleanly.
            atexit.register(self._at_exit)
            self._at_exit_registered = True

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Stop the migration at its next safe point and wait up to ``timeout`` seconds.

        Returns whether the thread has ended. The journal keeps everything, so the next
        start (or :meth:`start`) resumes; call it when the app closes.
        """
        with self._cond:
            thread = self._thread
            self._handled = self._requests  # a stop cancels the start() calls before it
            self._stop.set()
            self._halt.set()
            self._wake.set()
        if thread is None:
            return True
        if thread is threading.current_thread():
            return False  # called from a callback on the migration thread itself
        thread.join(timeout)
        return not thread.is_alive()

    def wait(self, timeout: float | None = None) -> AutoState:
        """Block until the state is settled (see :class:`AutoState`) or ``timeout``
        passes; return the state. For scripts and tests: a GUI uses the callbacks."""
        with self._cond:
            self._cond.wait_for(lambda: self._status.state.settled, timeout)
            return self._status.state

    def retry_now(self) -> None:
        """Try again now: wake a migration waiting to retry (say, when the app sees the
        network come back), or start a new one after ``FAILED`` or ``STOPPED``."""
        self.start()

    def user_registered(self, user_id: str, token: Token) -> None:
        """The user just registered (or signed in): migrate their local data now.

        This is the app's side of ``UserRegistered``: an anonymous user's store is
        migrated to the new account at once instead of at the next start.
        """
        with self._cond:
            self._user_id = user_id
            self._token = token
        self.start()

    def pending_conflicts(self) -> list[Conflict]:
        """The conflicts waiting for the user (also after a restart: they are journaled).

        Reads the journal beside the store; safe from the GUI thread.
        """
        with self._borrowed_client() as client:
            return client.pending_conflicts()

    def resolve(self, conflict_id: str, choice: str, data: dict[str, Any] | None = None) -> int:
        """Record the user's decision on one conflict: keep ``"local"`` (this device's),
        ``"server"`` (the cloud's) or ``"merged"`` with ``data``. Returns how many still
        wait; when none does, the migration continues by itself.

        Journaled at once, so a decision survives a restart. Raises
        :class:`sdk.ConfigurationError` for an unknown conflict or a bad choice (the
        app's own mistake, unlike everything the migration meets).
        """
        with self._borrowed_client() as client:
            client.resolve_conflict(conflict_id, choice, data)
            remaining = len(client.pending_conflicts())
        if remaining == 0:
            self.start()
        return remaining

    @contextlib.contextmanager
    def _borrowed_client(self) -> Iterator[MigrationClient]:
        with self._cond:
            client = self._client
        if client is not None:
            yield client  # only the journal is used: safe beside the migration thread
            return
        with self._new_client() as client:
            yield client

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            # Nothing may escape into the app (or the thread's excepthook).
            if isinstance(exc, MigrationError):
                error = exc
            else:
                logger.exception("the startup migration failed unexpectedly")
                error = MigrationError(
                    f"the startup migration failed unexpectedly ({type(exc).__name__}: "
                    f"{exc}); the next start tries again; please report this"
                )
                error.__cause__ = exc
            self._fail(error)
        finally:
            with self._cond:
                if self._requests > self._handled:
                    self._spawn()  # start() came while this thread was ending
                self._cond.notify_all()

    def _run(self) -> None:
        from ._store.detect import LocalState, detect_local, store_file
        from ._store.local import default_store_path

        self._notify(self._on_state, self.status)  # start() set it without telling
        path = (
            store_file(self._store_path, "store_path")
            if self._store_path is not None
            else default_store_path(str(self._app_name))
            if self._app_name is not None
            else None
        )
        local = None
        if path is not None:
            try:
                local = detect_local(path)
            except StoreBusyError:
                local = None  # the app is writing: the migration itself waits for it
            if local is not None:
                local.raise_for_state()
        with self._cond:
            anonymous = self._user_id is None
        settled = local is not None and local.state in (
            LocalState.NO_STORE,
            LocalState.EMPTY,
            LocalState.MIGRATED,
        )
        if settled and (anonymous or not self._sync):
            assert local is not None
            self._set(AutoState.NOTHING_TO_MIGRATE, local.reason)
            return
        if anonymous:
            self._set(
                AutoState.ANONYMOUS,
                "the local data waits for the user to register; it migrates then",
            )
            return
        with self._new_client() as client:
            with self._cond:
                self._client = client
            try:
                if settled:  # nothing to migrate: sync (a new device downloads the data)
                    self._keep_in_sync(client, at_once=True)
                elif self._loop(client) and self._sync:
                    self._keep_in_sync(client, at_once=False)
            finally:
                with self._cond:
                    self._client = None

    def _new_client(self) -> MigrationClient:
        from ._client import MigrationClient

        with self._cond:
            user_id, token = self._user_id, self._token
        if user_id is None:
            raise ConfigurationError("nobody is signed in yet: call user_registered() first")
        return MigrationClient(
            user_id=user_id,
            token=token,  # type: ignore[arg-type]  # a missing token is reported as FAILED
            server=self._server,
            http_client=self._http_client,
            store_path=self._store_path,
            app_name=self._app_name,
            options=self._options,
            retry=self._retry,
            on_progress=self._relay_progress,
            on_event=self._relay_event,
        )

    def _loop(self, client: MigrationClient) -> bool:
        """Migrate until done; True when the store is now in the cloud's keeping."""
        from ._migration.engine import MigrationOutcome
        from ._migration.lock import MigrationLock, lock_path_for

        retries = Retrier(self._backoff).start()
        lock = MigrationLock(lock_path_for(client.store_path))
        while True:
            if self._stop.is_set():
                self._set(AutoState.STOPPED, "stopped; the migration resumes at the next start")
                return False
            if self._hold():
                continue  # paused, then resumed or stopped: look again
            if not lock.try_acquire():
                self._watch(client.store_path)
                continue
            lock.release()  # only a probe: migrate() takes the lock itself
            self._set(AutoState.MIGRATING, "migrating the local data to the cloud")
            try:
                result = client.migrate(stop=self._halt)
            except MigrationBlockedError as exc:
                if exc.reason == _LOCKED:
                    continue  # another instance took the lock since the probe
                if exc.reason != _ACTIVE_SESSION:
                    raise
                error: MigrationError = exc
            except AuthError as exc:
                if exc.status != 401:
                    raise
                error = exc  # the token provider may have a valid token next time
            except MigrationError as exc:
                if not exc.retryable:
                    raise
                error = exc
            else:
                if result.outcome is MigrationOutcome.STOPPED and not self._stop.is_set():
                    continue  # paused at a safe point: wait for resume() above
                if result.outcome is MigrationOutcome.AWAITING_RESOLUTION:
                    self._awaiting(client, result)
                    continue
                self._finished(result)
                return result.outcome in (
                    MigrationOutcome.COMPLETED,
                    MigrationOutcome.ALREADY_MIGRATED,
                )
            decision = retries.next_delay()
            if decision.delay is None:
                raise error
            self._set(
                AutoState.RETRYING,
                f"will try again in {decision.delay:.0f} s: {error}",
                error=error,
                retry_in=decision.delay,
            )
            self._pause(decision.delay)

    def _keep_in_sync(self, client: MigrationClient, *, at_once: bool) -> None:
        """Sync soon after local writes (``push_delay`` after the last of a burst), every
        ``sync_interval`` seconds and on :meth:`sync_now`; back off while offline; leave
        at a safe point when stopped."""
        from ._store.local import unwatch_writes, watch_writes

        written = watch_writes(client.store_path, self._wake)
        retries = Retrier(self._backoff).start()
        delay: float | None = 0.0 if at_once else self._sync_interval
        try:
            while True:
                if delay:
                    self._wait_for_work(written, delay)
                if self._stop.is_set():
                    # Stopped between syncs: nothing was interrupted, the state stands
                    # (a sync cut short reports STOPPED below).
                    return
                if self._hold():
                    delay = 0.0  # resumed: sync at once (or leave, when stopped)
                    continue
                self._settle_burst(written)
                written.clear()
                self._sync_asked.clear()
                self._set(AutoState.SYNCING, "bringing this device and the cloud in step")
                try:
                    result = client.sync(stop=self._halt)
                except MigrationBlockedError as exc:
                    if exc.reason != _LOCKED:
                        raise
                    delay = self._watch_interval  # another instance syncs this store
                    continue
                except AuthError as exc:
                    if exc.status != 401:
                        raise
                    error: MigrationError = exc
                except MigrationError as exc:
                    if not exc.retryable:
                        raise
                    error = exc
                else:
                    if result.stopped and not self._stop.is_set():
                        delay = 0.0  # paused at a safe point: wait for resume() above
                        continue
                    retries = Retrier(self._backoff).start()
                    delay = self._synced(client, result)
                    continue
                decision = retries.next_delay()
                if decision.delay is None:
                    raise error
                self._set(
                    AutoState.RETRYING,
                    f"will sync again in {decision.delay:.0f} s: {error}",
                    error=error,
                    retry_in=decision.delay,
                )
                delay = decision.delay
        finally:
            unwatch_writes(client.store_path, written)

    def _synced(self, client: MigrationClient, result: SyncResult) -> float | None:
        """Report a finished sync; returns how long to wait before the next one."""
        with self._cond:
            self._last_sync = result
        self._notify(self._on_sync, result)
        if result.stopped:
            self._set(AutoState.STOPPED, "stopped; syncing resumes at the next start")
            return 0.0
        if result.pending_conflicts:
            conflicts = client.pending_conflicts()
            with self._cond:
                fresh = {c.conflict_id for c in conflicts} != self._asked
                self._asked = {c.conflict_id for c in conflicts}
            self._set(
                AutoState.AWAITING_USER,
                f"{len(conflicts)} item(s) changed both here and in the cloud: choose which "
                "to keep",
            )
            if fresh:
                self._notify(self._on_conflicts, conflicts)
            return self._sync_interval
        if result.pending_changes:
            detail = f"{result.pending_changes} local change(s) wait for the next sync"
            message = "Your latest changes will be synced shortly"
        else:
            detail = "this device and the cloud hold the same data"
            message = _MESSAGES[AutoState.SYNCED]
        self._set(AutoState.SYNCED, detail, message=message)
        return self._sync_interval

    def _wait_for_work(self, written: threading.Event, seconds: float) -> None:
        """Sleep until a local write, a wake-up (``sync_now``, ``resolve``, ``stop``) or
        ``seconds`` pass (a write sets the wake-up event too)."""
        if not (written.is_set() or self._sync_asked.is_set()):
            self._wake.wait(seconds)
        with self._cond:
            self._wake.clear()
            self._handled = self._requests

    def _settle_burst(self, written: threading.Event) -> None:
        """Let a burst of writes finish (no write for ``push_delay``, at most 10 times
        that) so one push carries it."""
        if not written.is_set() or self._sync_asked.is_set():
            return
        deadline = time.monotonic() + 10 * self._push_delay
        while not self._stop.is_set() and time.monotonic() < deadline:
            written.clear()
            if not self._stop.wait(self._push_delay) and not written.is_set():
                return

    def _finished(self, result: MigrationResult) -> None:
        from ._migration.engine import MigrationOutcome

        with self._cond:
            self._result = result
        outcome = result.outcome
        if outcome is MigrationOutcome.STOPPED:
            self._set(AutoState.STOPPED, "stopped; the migration resumes at the next start")
        elif outcome is MigrationOutcome.NOTHING_TO_MIGRATE:
            self._set(AutoState.NOTHING_TO_MIGRATE, "the local store holds nothing to migrate")
        else:
            # COMPLETED here, or ALREADY_MIGRATED by another instance while this one waited.
            count = result.item_count
            items = f"{count} item{'s' * (count != 1)}"
            self._set(
                AutoState.DONE,
                f"{items} migrated and verified",
                message=f"Your data ({items}) is now in the cloud",
            )
            self._notify(self._on_done, result)

    def _awaiting(self, client: MigrationClient, result: MigrationResult) -> None:
        """Hand the waiting conflicts to the app, then sleep until it decided them all
        (:meth:`resolve` wakes the thread) or asks to stop."""
        conflicts = client.pending_conflicts()
        with self._cond:
            self._result = result
            fresh = {c.conflict_id for c in conflicts} != self._asked
            self._asked = {c.conflict_id for c in conflicts}
        self._set(
            AutoState.AWAITING_USER,
            f"{len(conflicts)} item(s) changed both here and in the cloud: choose which to keep",
        )
        if fresh:
            self._notify(self._on_conflicts, conflicts)
        self._pause(None)

    def _watch(self, store_path: Path) -> None:
        self._set(
            AutoState.WATCHING,
            "another instance of the app is migrating this data; following its progress",
        )
        progress = journal_progress(store_path)
        if progress is not None and progress != self.progress:
            self._relay_progress(progress)
        self._pause(self._watch_interval)

    def _hold(self) -> bool:
        """Wait while the app has paused the hook; True when it waited (then the caller
        looks at ``stop`` again before anything else)."""
        held = False
        while not self._stop.is_set():
            with self._cond:
                reason = self._paused
            if reason is None:
                break
            held = True
            self._set(
                AutoState.PAUSED,
                f"paused ({reason}); nothing is sent until resume()",
                message=_PAUSED_MESSAGES.get(reason, ""),
            )
            self._pause(None)
        return held

    def _pause(self, seconds: float | None) -> None:
        self._wake.wait(seconds)
        with self._cond:
            self._wake.clear()
            self._handled = self._requests  # whoever woke us is served by going on

    # ------------------------------------------------------------------ reporting

    def _set(
        self,
        state: AutoState,
        detail: str,
        *,
        error: MigrationError | None = None,
        retry_in: float | None = None,
        message: str = "",
    ) -> None:
        status = AutoStatus(state, detail, error, retry_in, message)
        with self._cond:
            changed = status != self._status
            self._status = status
            self._cond.notify_all()
        if changed:
            logger.info("startup migration: %s (%s)", state.value, detail)
            self._notify(self._on_state, status)

    def _fail(self, error: MigrationError) -> None:
        logger.warning("startup migration failed: %s", error)
        self._set(AutoState.FAILED, str(error), error=error)
        self._notify(self._on_failure, error)

    def _relay_progress(self, progress: Progress) -> None:
        with self._cond:
            self._progress = progress
        self._notify(self._on_progress, progress)

    def _relay_event(self, event: Event) -> None:
        self._notify(self._on_event, event)

    def _notify(self, callback: Callable[[_T], object] | None, value: _T) -> None:
        if callback is None:
            return

        def call() -> None:
            try:
                callback(value)
            except Exception:
                logger.exception("a startup-migration callback raised; ignoring it")

        if self._dispatch is None:
            call()
            return
        try:
            self._dispatch(call)
        except Exception:
            logger.exception("the dispatch function raised; a callback was dropped")

    def _at_exit(self) -> None:
        if not self.stop(self._shutdown_timeout):
            logger.warning(
                "the startup migration did not stop within %.1f s; it resumes next start",
                self._shutdown_timeout,
            )


def auto_migrate(
    *,
    user_id: str | None,
    token: Token | None,
    server: str | None = None,
    http_client: httpx.Client | None = None,
    store_path: str | Path | None = None,
    app_name: str | None = None,
    options: MigrationOptions | None = None,
    retry: RetryPolicy | None = None,
    backoff: RetryPolicy | None = None,
    watch_interval: float = 0.5,
    shutdown_timeout: float = 5.0,
    on_progress: Callable[[Progress], object] | None = None,
    on_event: Callable[[Event], object] | None = None,
    on_state: Callable[[AutoStatus], object] | None = None,
    on_conflicts: Callable[[list[Conflict]], object] | None = None,
    on_done: Callable[[MigrationResult], object] | None = None,
    on_failure: Callable[[MigrationError], object] | None = None,
    dispatch: Callable[[Callable[[], None]], object] | None = None,
    sync: bool = True,
    sync_interval: float = 60.0,
    push_delay: float = 1.0,
    on_sync: Callable[[SyncResult], object] | None = None,
) -> AutoMigration:
    """The startup hook: call it once at app start; it returns at once and migrates in
    a background thread when there is something to migrate.

    ``user_id`` is ``None`` while nobody is signed in (call
    :meth:`AutoMigration.user_registered` later); ``token`` is a string or, better, a
    function returning a fresh token (asked again after a 401). ``retry`` is the policy
    of each HTTP call; ``backoff`` spaces the attempts while offline (by default 2 s
    doubling to 5 min, for as long as the app runs). At interpreter exit the migration is
    stopped (waiting up to ``shutdown_timeout`` s); call :meth:`AutoMigration.stop`
    yourself to choose when. After the migration (or when there is nothing to migrate and
    a user is signed in) it keeps the store in step with the cloud: ``push_delay`` seconds
    after a burst of local writes, every ``sync_interval`` seconds, and on
    :meth:`AutoMigration.sync_now` (``sync=False``: migrate only). See
    :class:`AutoMigration` for the callbacks::

        migration = auto_migrate(server="https://api.example.com", user_id=session.user,
                                 token=session.fresh_token, app_name="FlashCards",
                                 on_progress=bar.update, dispatch=ui_calls.put)
    """
    return AutoMigration(
        user_id=user_id,
        token=token,
        server=server,
        http_client=http_client,
        store_path=store_path,
        app_name=app_name,
        options=options,
        retry=retry,
        backoff=backoff,
        watch_interval=watch_interval,
        shutdown_timeout=shutdown_timeout,
        on_progress=on_progress,
        on_event=on_event,
        on_state=on_state,
        on_conflicts=on_conflicts,
        on_done=on_done,
        on_failure=on_failure,
        dispatch=dispatch,
        sync=sync,
        sync_interval=sync_interval,
        push_delay=push_delay,
        on_sync=on_sync,
    ).start()


def journal_progress(store_path: str | Path) -> Progress | None:
    """The progress of the migration journaled beside ``store_path``, read from its
    journal and snapshot plan (so any process can follow another's migration), or
    ``None`` when none is journaled.

    >>> import tempfile, pathlib
    >>> journal_progress(pathlib.Path(tempfile.mkdtemp()) / "store.sqlite3") is None
    True
    """
    from ._migration.journal import Phase, journal_path_for, peek_journal
    from ._store.snapshot import open_snapshot

    peeked = peek_journal(journal_path_for(store_path))
    if peeked is None:
        return None
    record, acked = peeked
    total = record.item_count
    phase = _PHASE_PROGRESS[record.phase.value]
    if record.phase is Phase.PREPARED:
        return Progress(phase, 0, total)
    if record.phase is not Phase.STARTED:
        return Progress(phase, total, total)
    try:
        with open_snapshot(record.snapshot_path) as snapshot:
            plan = snapshot.batch_sizes()
    except MigrationError:
        # The snapshot is being replaced: estimate from the share of batches held.
        done = round(total * len(acked) / record.batch_count) if record.batch_count else 0
        return Progress(phase, min(done, total), total)
    return Progress(
        phase,
        sum(items for seq, items, _ in plan if seq in acked),
        total,
        sum(size for seq, _, size in plan if seq in acked),
        sum(size for _, _, size in plan),
    )
