"""How a migration runs: the one options object the client, the engine and each step of
a run share (a module of its own so that the run, :mod:`sdk._migration.run`, needs no
import of the engine that drives it)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .._conflicts.policy import ConflictPolicy
from .._errors import ConfigurationError

__all__ = ["MIN_BATCH_BYTES", "MigrationOptions"]

#: The smallest ``batch_bytes``: smaller bodies cost more in requests than any link saves.
MIN_BATCH_BYTES = 4096


@dataclasses.dataclass(frozen=True, kw_only=True)
class MigrationOptions:
    """How the migration runs. Every field has a safe default.

    >>> MigrationOptions(batch_size=500).max_in_flight
    2
    >>> try:
    ...     MigrationOptions(batch_size=0)
    ... except ConfigurationError as exc:
    ...     print(exc)
    batch_size must be at least 1, got 0
    """

    #: Items per batch, at most (the server's own limit caps it).
    batch_size: int = 5000
    #: Bytes per batch body, at most: the unit a dropped link resends, so keep it small
    #: on slow links. A batch closes before it would pass this; an item larger than it
    #: alone travels in a batch of its own. The server's own limit caps both.
    batch_bytes: int = 1 << 20
    #: Batches uploaded in parallel (the server's limit caps it).
    max_in_flight: int = 2
    #: gzip batch bodies when the server offers it.
    compress: bool = False
    #: Where snapshots go (a path, as a ``str`` or ``Path``); default: the user cache
    #: directory of the app.
    cache_dir: str | os.PathLike[str] | None = None
    #: How conflicts with the cloud's items are decided (default: the cloud's version).
    conflicts: ConflictPolicy = dataclasses.field(default_factory=ConflictPolicy)
    #: When a sync fetches the attachments pulled items reference: ``"eager"`` (every
    #: one, during the sync) or ``"lazy"`` (each on first use, through
    #: :meth:`sdk.MigrationClient.open_attachment`).
    fetch_attachments: str = "eager"

    def __post_init__(self) -> None:
        _whole("batch_size", self.batch_size, 1)
        if type(self.batch_bytes) is not int or self.batch_bytes < MIN_BATCH_BYTES:
            raise ConfigurationError(
                f"batch_bytes must be an integer >= {MIN_BATCH_BYTES}, got {self.batch_bytes!r}"
            )
        _whole("max_in_flight", self.max_in_flight, 1)
        if type(self.compress) is not bool:
            raise ConfigurationError(f"compress must be True or False, got {self.compress!r}")
        if self.cache_dir is not None:
            if not isinstance(self.cache_dir, (str, os.PathLike)) or not os.fspath(self.cache_dir):
                raise ConfigurationError(
                    f"cache_dir must be a folder's path (a str or a Path), got {self.cache_dir!r}"
                )
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        if self.fetch_attachments not in ("eager", "lazy"):
            raise ConfigurationError(
                f"fetch_attachments must be 'eager' or 'lazy', got {self.fetch_attachments!r}"
            )
        if not isinstance(self.conflicts, ConflictPolicy):
            raise ConfigurationError(
                f"conflicts must be a ConflictPolicy, got {type(self.conflicts).__name__}"
            )


def _whole(name: str, value: object, least: int) -> None:
    """A count option: an integer (not a bool) of at least ``least``.

    >>> _whole("max_in_flight", "2", 1)
    Traceback (most recent call last):
    ...
    sdk._errors.ConfigurationError: max_in_flight must be an integer, got '2'
    """
    if type(value) is not int:
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    if value < least:
        raise ConfigurationError(f"{name} must be at least {least}, got {value}")
