"""Every error the SDK raises. Errors from the layers below (sqlite3, httpx, OS) are
translated where they happen and chained (``raise X from exc``); none leaks bare.

The tree::

    MigrationError
    ├── ConfigurationError          bad arguments or settings
    │   └── EndpointError           the server URL or its TLS set-up is wrong (never "offline")
    ├── InvalidItemError            an item that cannot be stored or sent as it is
    ├── StoreError                  the local store cannot be used
    │   ├── StoreNotFoundError
    │   ├── ForeignStoreError       a SQLite file, but not ours
    │   ├── CorruptStoreError       not a database, or damaged
    │   ├── UnsupportedDataVersionError
    │   ├── StoreBusyError          locked by another writer for too long
    │   └── AttachmentMissingError  the store does not hold an attachment's content
    ├── SnapshotError               the snapshot could not be taken or validated
    ├── JournalError                the migration journal cannot be read or written
    ├── LegacyDatabaseError         the app's own (pre-SDK) database cannot be read
    ├── TransportError              talking to the server failed
    │   ├── OfflineError            no connection, timeouts (the migration waits, resumes)
    │   ├── ServerError             5xx / 429 that outlasted the retries
    │   ├── ProtocolError           an answer that breaks the wire contract
    │   └── RefusedError            the server answered 4xx (problem+json)
    │       ├── AuthError           401 / 403
    │       ├── NotFoundError       404
    │       ├── ConflictError       409
    │       └── InvalidRequestError 400 / 413 / 415 / 422
    ├── MigrationBlockedError       the server says this user cannot migrate now
    └── VerificationError           the cloud does not hold what the device holds

Every message says what happened and what to do::

    >>> err = OfflineError("cannot reach http://x: connection refused")
    >>> isinstance(err, TransportError), err.retryable
    (True, True)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AttachmentMissingError",
    "AuthError",
    "ConfigurationError",
    "ConflictError",
    "CorruptStoreError",
    "EndpointError",
    "ForeignStoreError",
    "InvalidItemError",
    "InvalidRequestError",
    "JournalError",
    "LegacyDatabaseError",
    "MigrationBlockedError",
    "MigrationError",
    "NotFoundError",
    "OfflineError",
    "ProtocolError",
    "RefusedError",
    "ServerError",
    "SnapshotError",
    "StoreBusyError",
    "StoreError",
    "StoreNotFoundError",
    "TransportError",
    "UnsupportedDataVersionError",
    "VerificationError",
]


class MigrationError(Exception):
    """Base of every SDK error; catch it to catch them all.

    >>> issubclass(StoreError, MigrationError)
    True
    """

    #: Whether trying the same thing again later may succeed.
    retryable: bool = False


class ConfigurationError(MigrationError, ValueError):
    """An argument or setting is invalid; the message names it and what is allowed.

    >>> isinstance(ConfigurationError("batch_size must be >= 1, got 0"), ValueError)
    True
    """


class EndpointError(ConfigurationError):
    """The server URL, or the TLS set-up behind it, is wrong: a certificate this device
    cannot verify, ``https://`` to a plain-HTTP server, or a URL that is not the migration
    server (``detect`` answers 404). Retrying cannot help, so it is never taken for being
    offline; the message says what to check.

    >>> issubclass(EndpointError, ConfigurationError), EndpointError("x").retryable
    (True, False)
    """


class InvalidItemError(MigrationError, ValueError):
    """An item that cannot be stored or migrated: bad collection name or key, data that is
    not a JSON object, NaN, text that is not valid Unicode. The message names the item.

    >>> InvalidItemError("lessons/l1: data must be a JSON object, got list").args[0][:11]
    'lessons/l1:'
    """


class StoreError(MigrationError):
    """The local store cannot be used. ``path`` names the file.

    >>> StoreError("locked", path="/tmp/x.db").path
    '/tmp/x.db'
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StoreNotFoundError(StoreError):
    """No store at the given path (and the caller asked not to create one).

    >>> issubclass(StoreNotFoundError, StoreError)
    True
    """


class ForeignStoreError(StoreError):
    """The file is a SQLite database of another application, or not SQLite at all.

    >>> issubclass(ForeignStoreError, StoreError)
    True
    """


class CorruptStoreError(StoreError):
    """The file claims to be our store but is damaged (truncated, byte-flipped, ...).

    >>> issubclass(CorruptStoreError, StoreError)
    True
    """


class UnsupportedDataVersionError(StoreError):
    """The store's data version is newer or older than this SDK (or the server) supports.

    >>> issubclass(UnsupportedDataVersionError, StoreError)
    True
    """


class StoreBusyError(StoreError):
    """The store stayed locked by another writer longer than the SDK waits.

    >>> issubclass(StoreBusyError, StoreError)
    True
    """

    retryable = True


class AttachmentMissingError(StoreError):
    """The store does not hold an attachment's content: never stored on this device, or
    known only by reference (synced lazily, not fetched yet). ``sha256`` names it.

    >>> AttachmentMissingError("not here", sha256="0" * 64).sha256[:4]
    '0000'
    """

    def __init__(self, message: str, *, path: str | None = None, sha256: str = "") -> None:
        super().__init__(message, path=path)
        self.sha256 = sha256


class SnapshotError(MigrationError):
    """The snapshot could not be written or failed validation (disk full, bad item, ...).

    >>> issubclass(SnapshotError, MigrationError)
    True
    """


class JournalError(MigrationError):
    """The migration journal could not be read or written.

    >>> issubclass(JournalError, MigrationError)
    True
    """


class LegacyDatabaseError(MigrationError):
    """The app's own database, which :func:`sdk.import_legacy` reads, cannot be read: it
    is missing, damaged, locked, or holds what SQLite cannot decode. ``path`` names that
    file (never the SDK's store, which such a failure leaves as it was), ``table`` and
    ``column`` where the import was when it failed (``None`` when not known).

    >>> e = LegacyDatabaseError("old.db is locked", path="old.db", table="t", retryable=True)
    >>> (e.path, e.table, e.column, e.retryable, isinstance(e, StoreError))
    ('old.db', 't', None, True, False)
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        table: str | None = None,
        column: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.table = table
        self.column = column
        self.retryable = retryable


class TransportError(MigrationError):
    """Talking to the migration server failed.

    >>> issubclass(TransportError, MigrationError)
    True
    """


class OfflineError(TransportError):
    """The server could not be reached (no network, refused connection, timeout).

    Not a crash: the migration keeps its journal and resumes when called again.

    >>> issubclass(OfflineError, TransportError)
    True
    """

    retryable = True


class ServerError(TransportError):
    """The server kept answering 5xx or 429 until the retry budget ran out; ``code`` is
    its last answer's problem code, if it had one.

    >>> e = ServerError("busy", status=503, code="migration-committing")
    >>> (e.status, e.code, e.retryable)
    (503, 'migration-committing', True)
    """

    retryable = True

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ProtocolError(TransportError):
    """The server's answer does not follow the wire contract (wrong shape or type).

    >>> issubclass(ProtocolError, TransportError)
    True
    """


class RefusedError(TransportError):
    """The server refused the request (4xx). ``problem`` holds the problem+json body.

    >>> e = RefusedError("no", status=409, code="batch-mismatch", problem={})
    >>> (e.status, e.code)
    (409, 'batch-mismatch')
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        problem: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.problem = problem or {}


class AuthError(RefusedError):
    """401 or 403: the token is missing, expired, or for another user.

    >>> issubclass(AuthError, RefusedError)
    True
    """


class NotFoundError(RefusedError):
    """404: the session does not exist (or belongs to someone else).

    >>> issubclass(NotFoundError, RefusedError)
    True
    """


class ConflictError(RefusedError):
    """409: the request clashes with the session's state (see ``code``).

    >>> issubclass(ConflictError, RefusedError)
    True
    """


class InvalidRequestError(RefusedError):
    """400, 413, 415 or 422: the server rejected the request's content.

    >>> issubclass(InvalidRequestError, RefusedError)
    True
    """


class MigrationBlockedError(MigrationError):
    """The server says this user cannot migrate now; ``reason`` says why.

    >>> MigrationBlockedError("already migrated", reason="already-migrated").reason
    'already-migrated'
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class VerificationError(MigrationError):
    """After completion the cloud's checksum differs from the device's expected state.

    The local store is left untouched and not marked migrated.

    >>> issubclass(VerificationError, MigrationError)
    True
    """
