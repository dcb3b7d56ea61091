"""Offline-first migration SDK: move a device's local SQLite store to the cloud once,
with nothing lost and nothing duplicated.

    >>> import sdk
    >>> sorted(sdk.__all__) == sdk.__all__
    True

The public surface is everything in ``__all__``; modules starting with ``_`` are
private. ``sdk.contract`` (the wire models) is public too.
"""

import logging as _logging

from ._auto import AutoMigration, AutoState, AutoStatus, auto_migrate
from ._client import Detection, MigrationClient, migrate
from ._conflicts import Conflict, ConflictPolicy, FlaggedItem
from ._detect import LocalDetection, LocalState, detect_local
from ._errors import (
    AuthError,
    ConfigurationError,
    ConflictError,
    CorruptStoreError,
    EndpointError,
    ForeignStoreError,
    InvalidItemError,
    InvalidRequestError,
    JournalError,
    LegacyDatabaseError,
    MigrationBlockedError,
    MigrationError,
    NotFoundError,
    OfflineError,
    ProtocolError,
    RefusedError,
    ServerError,
    SnapshotError,
    StoreBusyError,
    StoreError,
    StoreNotFoundError,
    TransportError,
    UnsupportedDataVersionError,
    VerificationError,
)
from ._events import (
    DataConflictDetected,
    Event,
    LocalDataDetected,
    MigrationCompleted,
    MigrationFailed,
    MigrationStarted,
    Progress,
    ProgressPhase,
)
from ._legacy import LegacyCheck, LegacyImport, LegacyTable, import_legacy
from ._migrate import MigrationOptions, MigrationOutcome, MigrationResult
from ._plan import CollectionPlan, MigrationPlan
from ._retry import RetryPolicy
from ._store import LocalStore, default_store_path

__version__ = "0.1.0"

# A library logs, the app decides where it goes: without this, Python's last-resort handler
# would print the SDK's retry warnings on the stderr of an app that configured no logging.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__all__ = [
    "AuthError",
    "AutoMigration",
    "AutoState",
    "AutoStatus",
    "CollectionPlan",
    "ConfigurationError",
    "Conflict",
    "ConflictError",
    "ConflictPolicy",
    "CorruptStoreError",
    "DataConflictDetected",
    "Detection",
    "EndpointError",
    "Event",
    "FlaggedItem",
    "ForeignStoreError",
    "InvalidItemError",
    "InvalidRequestError",
    "JournalError",
    "LegacyCheck",
    "LegacyDatabaseError",
    "LegacyImport",
    "LegacyTable",
    "LocalDataDetected",
    "LocalDetection",
    "LocalState",
    "LocalStore",
    "MigrationBlockedError",
    "MigrationClient",
    "MigrationCompleted",
    "MigrationError",
    "MigrationFailed",
    "MigrationOptions",
    "MigrationOutcome",
    "MigrationPlan",
    "MigrationResult",
    "MigrationStarted",
    "NotFoundError",
    "OfflineError",
    "Progress",
    "ProgressPhase",
    "ProtocolError",
    "RefusedError",
    "RetryPolicy",
    "ServerError",
    "SnapshotError",
    "StoreBusyError",
    "StoreError",
    "StoreNotFoundError",
    "TransportError",
    "UnsupportedDataVersionError",
    "VerificationError",
    "auto_migrate",
    "default_store_path",
    "detect_local",
    "import_legacy",
    "migrate",
]
