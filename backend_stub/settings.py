"""Server settings: one small frozen object, built explicitly or from the environment.

Nothing reads the environment at import time; :meth:`Settings.from_env` does, when
called (the CLI calls it)::

    >>> s = Settings.from_env({"MIGRATION_DATA_DIR": "/tmp/mig", "MIGRATION_SESSION_TTL": "60"})
    >>> s.data_dir, s.limits.session_ttl_seconds
    (PosixPath('/tmp/mig'), 60)

Environment variables:

``MIGRATION_DATA_DIR``
    Folder of the SQLite database (default ``./migration-data``).
``MIGRATION_JWT_SECRET``
    HS256 secret for bearer tokens, at least 32 bytes. Defaults to
    :data:`DEV_JWT_SECRET`, which is public and **not for production**.
``MIGRATION_SESSION_TTL``
    Seconds a session stays open after its last activity.
``MIGRATION_SUPPORTED_DATA_VERSIONS``
    Comma-separated data versions accepted (default ``1``).
``MIGRATION_LIMITS``
    JSON object of :class:`~sdk.contract.Limits` fields in camelCase, e.g.
    ``{"maxBatchItems": 1000}``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from sdk.contract import Limits

__all__ = ["DEFAULT_DATA_DIR", "DEV_JWT_SECRET", "Settings"]

#: The development secret used when none is configured. Anyone can mint tokens with it:
#: never use it for a server that holds real data.
DEV_JWT_SECRET = "dev-only-insecure-migration-secret-do-not-use-in-production"

#: Where ``from_env`` puts the database when ``MIGRATION_DATA_DIR`` is unset.
DEFAULT_DATA_DIR = Path("migration-data")

# HS256 keys shorter than the hash are weak (RFC 7518, section 3.2).
_MIN_SECRET_BYTES = 32


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """How a server instance behaves. ``data_dir=None`` keeps everything in memory.

    The session TTL is ``limits.session_ttl_seconds`` (it is reported to clients with
    the other limits).

    >>> Settings().supported_data_versions
    (1,)
    >>> Settings(jwt_secret="short")
    Traceback (most recent call last):
    ...
    ValueError: the JWT secret must be at least 32 bytes long
    """

    data_dir: Path | None = None
    jwt_secret: str = DEV_JWT_SECRET
    limits: Limits = dataclasses.field(default_factory=Limits)
    supported_data_versions: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        if len(self.jwt_secret.encode("utf-8")) < _MIN_SECRET_BYTES:
            raise ValueError(f"the JWT secret must be at least {_MIN_SECRET_BYTES} bytes long")
        if not self.supported_data_versions:
            raise ValueError("at least one supported data version is needed")
        if self.limits.session_ttl_seconds <= 0:
            raise ValueError("the session TTL must be positive")

    @property
    def session_ttl_ms(self) -> int:
        """The session TTL in milliseconds (the unit of every server timestamp)."""
        return self.limits.session_ttl_seconds * 1000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``MIGRATION_*`` variables (``environ`` defaults to ``os.environ``).

        >>> Settings.from_env({}).jwt_secret == DEV_JWT_SECRET
        True
        >>> Settings.from_env({"MIGRATION_SUPPORTED_DATA_VERSIONS": "1,2"}).supported_data_versions
        (1, 2)
        """
        env = os.environ if environ is None else environ
        try:
            limits = Limits.model_validate_json(env.get("MIGRATION_LIMITS") or "{}")
            ttl = env.get("MIGRATION_SESSION_TTL")
            if ttl:
                limits = limits.model_copy(update={"session_ttl_seconds": int(ttl)})
            versions = tuple(
                int(part)
                for part in env.get("MIGRATION_SUPPORTED_DATA_VERSIONS", "1").split(",")
                if part.strip()
            )
        except (ValidationError, ValueError) as exc:
            raise ValueError(f"invalid MIGRATION_* setting: {exc}") from exc
        return cls(
            data_dir=Path(env.get("MIGRATION_DATA_DIR") or DEFAULT_DATA_DIR),
            jwt_secret=env.get("MIGRATION_JWT_SECRET") or DEV_JWT_SECRET,
            limits=limits,
            supported_data_versions=versions,
        )
