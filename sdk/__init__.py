"""Offline-first migration SDK: move a device's local SQLite store to the cloud once,
with nothing lost and nothing duplicated.

    >>> import sdk
    >>> sorted(sdk.__all__) == sdk.__all__
    True

The public surface is everything in ``__all__``; modules starting with ``_`` are
private. ``sdk.contract`` (the wire models, defined with pydantic for the server) is public
too; the SDK itself reads and writes them in their light form (``sdk._wire``), so it runs
without pydantic.

Importing ``sdk`` costs next to nothing: each public name is imported from its module on
first use (PEP 562), so an app that only calls :func:`sdk.auto_migrate` at start-up does
not pay for httpx or sqlite-utils on its main thread (the hook's background thread loads
them).
"""

import importlib as _importlib
import logging as _logging
import typing as _typing

__version__ = "0.1.0"

# A library logs, the app decides where it goes: without this, Python's last-resort handler
# would print the SDK's retry warnings on the stderr of an app that configured no logging.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

#: Every public name and the private module that defines it: one line per name. A name is
#: imported on first access, then cached in this module's namespace.
_EXPORTS: dict[str, str] = {
    "AsyncMigrationClient": "._aio",
    "Attachment": "._store.values",
    "AttachmentMissingError": "._errors",
    "AuthError": "._errors",
    "AutoMigration": "._auto",
    "AutoState": "._auto",
    "AutoStatus": "._auto",
    "CollectionPlan": "._migration.plan",
    "ConfigurationError": "._errors",
    "Conflict": "._conflicts.policy",
    "ConflictError": "._errors",
    "ConflictPolicy": "._conflicts.policy",
    "CorruptStoreError": "._errors",
    "DataConflictDetected": "._events",
    "Detection": "._client",
    "EndpointError": "._errors",
    "Event": "._events",
    "FlaggedItem": "._conflicts.policy",
    "ForeignStoreError": "._errors",
    "InvalidItemError": "._errors",
    "InvalidRequestError": "._errors",
    "JournalError": "._errors",
    "LegacyCheck": "._store.legacy",
    "LegacyDatabaseError": "._errors",
    "LegacyImport": "._store.legacy",
    "LegacyTable": "._store.legacy_rows",
    "LocalDataDetected": "._events",
    "LocalDetection": "._store.detect",
    "LocalState": "._store.detect",
    "LocalStore": "._store.local",
    "MigrationBlockedError": "._errors",
    "MigrationClient": "._client",
    "MigrationCompleted": "._events",
    "MigrationError": "._errors",
    "MigrationFailed": "._events",
    "MigrationOptions": "._migration.options",
    "MigrationOutcome": "._migration.engine",
    "MigrationPlan": "._migration.plan",
    "MigrationResult": "._migration.engine",
    "MigrationStarted": "._events",
    "NotFoundError": "._errors",
    "OfflineError": "._errors",
    "Progress": "._events",
    "ProgressPhase": "._events",
    "ProtocolError": "._errors",
    "RefusedError": "._errors",
    "RemoteChangesApplied": "._events",
    "RetryPolicy": "._transport.retry",
    "ServerError": "._errors",
    "SnapshotError": "._errors",
    "StoreBusyError": "._errors",
    "StoreError": "._errors",
    "StoreNotFoundError": "._errors",
    "SyncCompleted": "._events",
    "SyncResult": "._sync.run",
    "SyncStatus": "._sync.proof",
    "TransportError": "._errors",
    "UnsupportedDataVersionError": "._errors",
    "VerificationError": "._errors",
    "auto_migrate": "._auto",
    "default_store_path": "._store.local",
    "detect_local": "._store.detect",
    "import_legacy": "._store.legacy",
    "migrate": "._client",
}

__all__ = sorted(_EXPORTS)

if _typing.TYPE_CHECKING:  # what type checkers and IDEs see (tests keep it equal to _EXPORTS)
    from ._aio import AsyncMigrationClient as AsyncMigrationClient
    from ._auto import AutoMigration as AutoMigration
    from ._auto import AutoState as AutoState
    from ._auto import AutoStatus as AutoStatus
    from ._auto import auto_migrate as auto_migrate
    from ._client import Detection as Detection
    from ._client import MigrationClient as MigrationClient
    from ._client import migrate as migrate
    from ._conflicts.policy import Conflict as Conflict
    from ._conflicts.policy import ConflictPolicy as ConflictPolicy
    from ._conflicts.policy import FlaggedItem as FlaggedItem
    from ._errors import AttachmentMissingError as AttachmentMissingError
    from ._errors import AuthError as AuthError
    from ._errors import ConfigurationError as ConfigurationError
    from ._errors import ConflictError as ConflictError
    from ._errors import CorruptStoreError as CorruptStoreError
    from ._errors import EndpointError as EndpointError
    from ._errors import ForeignStoreError as ForeignStoreError
    from ._errors import InvalidItemError as InvalidItemError
    from ._errors import InvalidRequestError as InvalidRequestError
    from ._errors import JournalError as JournalError
    from ._errors import LegacyDatabaseError as LegacyDatabaseError
    from ._errors import MigrationBlockedError as MigrationBlockedError
    from ._errors import MigrationError as MigrationError
    from ._errors import NotFoundError as NotFoundError
    from ._errors import OfflineError as OfflineError
    from ._errors import ProtocolError as ProtocolError
    from ._errors import RefusedError as RefusedError
    from ._errors import ServerError as ServerError
    from ._errors import SnapshotError as SnapshotError
    from ._errors import StoreBusyError as StoreBusyError
    from ._errors import StoreError as StoreError
    from ._errors import StoreNotFoundError as StoreNotFoundError
    from ._errors import TransportError as TransportError
    from ._errors import UnsupportedDataVersionError as UnsupportedDataVersionError
    from ._errors import VerificationError as VerificationError
    from ._events import DataConflictDetected as DataConflictDetected
    from ._events import Event as Event
    from ._events import LocalDataDetected as LocalDataDetected
    from ._events import MigrationCompleted as MigrationCompleted
    from ._events import MigrationFailed as MigrationFailed
    from ._events import MigrationStarted as MigrationStarted
    from ._events import Progress as Progress
    from ._events import ProgressPhase as ProgressPhase
    from ._events import RemoteChangesApplied as RemoteChangesApplied
    from ._events import SyncCompleted as SyncCompleted
    from ._migration.engine import MigrationOutcome as MigrationOutcome
    from ._migration.engine import MigrationResult as MigrationResult
    from ._migration.options import MigrationOptions as MigrationOptions
    from ._migration.plan import CollectionPlan as CollectionPlan
    from ._migration.plan import MigrationPlan as MigrationPlan
    from ._store.detect import LocalDetection as LocalDetection
    from ._store.detect import LocalState as LocalState
    from ._store.detect import detect_local as detect_local
    from ._store.legacy import LegacyCheck as LegacyCheck
    from ._store.legacy import LegacyImport as LegacyImport
    from ._store.legacy import import_legacy as import_legacy
    from ._store.legacy_rows import LegacyTable as LegacyTable
    from ._store.local import LocalStore as LocalStore
    from ._store.local import default_store_path as default_store_path
    from ._store.values import Attachment as Attachment
    from ._sync.proof import SyncStatus as SyncStatus
    from ._sync.run import SyncResult as SyncResult
    from ._transport.retry import RetryPolicy as RetryPolicy


#: Public submodules, imported on first access too.
_SUBMODULES = frozenset({"contract"})


def __getattr__(name: str) -> _typing.Any:
    if name in _SUBMODULES:
        return _importlib.import_module(f".{name}", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
