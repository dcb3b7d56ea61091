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
    HS256 secret for bearer tokens (development mode), at least 32 bytes. Defaults to
    :data:`DEV_JWT_SECRET`, which is public and **not for production**.
``MIGRATION_JWKS_URL``, ``MIGRATION_JWT_ISSUER``, ``MIGRATION_JWT_AUDIENCE``, ...
    Verify an identity provider's RS256/ES256 tokens instead (see
    :class:`IdentitySettings`); HS256 tokens are then refused.
``MIGRATION_SESSION_TTL``
    Seconds a session stays open after its last activity.
``MIGRATION_SUPPORTED_DATA_VERSIONS``
    Comma-separated data versions accepted (default ``1``).
``MIGRATION_LIMITS``
    JSON object of :class:`~sdk.contract.Limits` fields in camelCase, e.g.
    ``{"maxBatchItems": 1000}``.
``MIGRATION_IDLE_TIMEOUT``, ``MIGRATION_HEADER_TIMEOUT``, ``MIGRATION_BODY_TIMEOUT``
    Seconds a client of ``python -m backend_stub`` has to start a request (5), to send
    its head (10) and its body (120); then the connection is closed
    (:class:`ConnectionTimeouts`).
``MIGRATION_BACKEND``
    ``sqlite`` (the default: embedded, batches processed as they arrive) or ``aws``
    (DynamoDB, S3, SQS and EventBridge; batches processed by ``python -m backend_stub
    worker`` or the SQS-triggered Lambda). The ``aws`` backend reads the variables of
    :class:`AwsSettings`; credentials come from the usual AWS chain (environment, profile,
    role), never from these settings.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from sdk.contract import Limits

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEV_JWT_SECRET",
    "S3_MIN_PART_BYTES",
    "AwsSettings",
    "ConnectionTimeouts",
    "IdentitySettings",
    "Settings",
]

#: The development secret used when none is configured. Anyone can mint tokens with it:
#: never use it for a server that holds real data.
DEV_JWT_SECRET = "dev-only-insecure-migration-secret-do-not-use-in-production"

#: Where ``from_env`` puts the database when ``MIGRATION_DATA_DIR`` is unset.
DEFAULT_DATA_DIR = Path("migration-data")

# HS256 keys shorter than the hash are weak (RFC 7518, section 3.2).
_MIN_SECRET_BYTES = 32

Backend = Literal["sqlite", "aws"]


#: S3's smallest multipart part (all but the last): an attachment's chunk on AWS.
S3_MIN_PART_BYTES = 5 * 1024 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class AwsSettings:
    """Where the ``aws`` backend keeps things, and how its batch queue behaves.

    Each field has a ``MIGRATION_AWS_*`` variable (the upper-cased field name), read by
    :meth:`from_env`. ``endpoint_url`` points every client at one endpoint (moto, LocalStack);
    leave it unset on AWS.

    >>> AwsSettings.from_env({"MIGRATION_AWS_TABLE": "mig", "MIGRATION_AWS_MAX_RECEIVES": "3"})
    AwsSettings(region='us-east-1', endpoint_url=None, table='mig', ...max_receives=3, ...)
    >>> AwsSettings(sse="none")
    Traceback (most recent call last):
    ...
    ValueError: MIGRATION_AWS_SSE must be 'AES256' or 'aws:kms', got 'none'
    """

    #: AWS region of every resource.
    region: str = "us-east-1"
    #: One endpoint for every client (moto, LocalStack); ``None`` on AWS.
    endpoint_url: str | None = None
    #: The DynamoDB table (single-table design: sessions, ledger, items, outbox).
    table: str = "offline-migrate"
    #: The S3 bucket of batch bodies, snapshots and large values.
    bucket: str = "offline-migrate-data"
    #: The SQS queue of batch jobs (and inbound ``UserRegistered`` events).
    queue: str = "offline-migrate-jobs"
    #: The dead-letter queue of the job queue.
    dead_letter_queue: str = "offline-migrate-jobs-dlq"
    #: The EventBridge bus events are published on (and ``UserRegistered`` arrives on).
    event_bus: str = "offline-migrate"
    #: Receives of a job before SQS moves it to the dead-letter queue.
    max_receives: int = 5
    #: Seconds a received job stays invisible, and a worker's lease on its batch.
    visibility_timeout: int = 300
    #: First retry delay of a failed job, doubled per receive (seconds).
    retry_delay: float = 2.0
    #: Days the working set of a session (staged items, conflicts, batches) is kept.
    retention_days: int = 30
    #: Items one slice of a commit handles (one job of the worker each).
    commit_slice: int = 2000
    #: Server-side encryption of S3 objects: ``AES256`` or ``aws:kms``.
    sse: str = "AES256"
    #: The KMS key for ``aws:kms`` (``None``: the account's AWS-managed key).
    kms_key_id: str | None = None
    #: Attachments go straight between client and S3 by presigned URLs (``true`` behind
    #: API Gateway + Lambda, whose 6 MB request limit a 5 MiB chunk does not fit).
    blob_direct: bool = False
    #: Seconds a presigned attachment URL stays valid.
    blob_url_seconds: int = 900

    def __post_init__(self) -> None:
        if self.sse not in ("AES256", "aws:kms"):
            raise ValueError(f"MIGRATION_AWS_SSE must be 'AES256' or 'aws:kms', got {self.sse!r}")
        if not 1 <= self.max_receives <= 1000:
            raise ValueError("MIGRATION_AWS_MAX_RECEIVES must be between 1 and 1000")
        if not 1 <= self.visibility_timeout <= 43_200:
            raise ValueError("MIGRATION_AWS_VISIBILITY_TIMEOUT must be between 1 and 43200")
        if not 1 <= self.commit_slice <= 100_000:
            raise ValueError("MIGRATION_AWS_COMMIT_SLICE must be between 1 and 100000")
        if not 1 <= self.blob_url_seconds <= 604_800:  # SigV4's longest
            raise ValueError("MIGRATION_AWS_BLOB_URL_SECONDS must be between 1 and 604800")
        if self.retry_delay < 0 or self.retention_days < 1:
            raise ValueError("MIGRATION_AWS_RETRY_DELAY and _RETENTION_DAYS must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AwsSettings:
        """Settings from ``MIGRATION_AWS_*`` variables; unset ones keep their default.

        The region falls back to ``AWS_REGION`` and ``AWS_DEFAULT_REGION``.

        >>> AwsSettings.from_env({"AWS_REGION": "eu-west-1"}).region
        'eu-west-1'
        >>> AwsSettings.from_env({"MIGRATION_AWS_BLOB_DIRECT": "true"}).blob_direct
        True
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        region = env.get("MIGRATION_AWS_REGION") or env.get("AWS_REGION")
        region = region or env.get("AWS_DEFAULT_REGION")
        if region:
            values["region"] = region
        for field in dataclasses.fields(cls):
            raw = env.get(f"MIGRATION_AWS_{field.name.upper()}")
            if not raw or field.name == "region":
                continue
            if field.type in ("int",):
                values[field.name] = int(raw)
            elif field.type in ("float",):
                values[field.name] = float(raw)
            elif field.type in ("bool",):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"MIGRATION_AWS_{field.name.upper()} must be true or false")
                values[field.name] = raw.lower() in ("true", "1")
            else:
                values[field.name] = raw
        return cls(**values)  # type: ignore[arg-type]


#: Signature algorithms an identity provider's tokens may use: asymmetric only, so the
#: server holds no secret that could mint a token (and ``none``/``HS*`` never pass).
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class IdentitySettings:
    """How tokens of a real identity provider (Cognito, Auth0, Keycloak, Firebase...) are
    verified: signatures from the provider's JWKS, then issuer, audience and expiry.

    The ``MIGRATION_JWKS_URL``, ``MIGRATION_JWT_ISSUER`` and ``MIGRATION_JWT_AUDIENCE``
    variables are required together; the others have defaults. The token's ``sub`` is the
    user id.

    >>> IdentitySettings.from_env({
    ...     "MIGRATION_JWKS_URL": "https://idp.example/.well-known/jwks.json",
    ...     "MIGRATION_JWT_ISSUER": "https://idp.example/",
    ...     "MIGRATION_JWT_AUDIENCE": "migration-api, migration-api-staging",
    ... }).audience
    ('migration-api', 'migration-api-staging')
    >>> IdentitySettings.from_env({}) is None
    True
    >>> IdentitySettings(jwks_url="http://idp.example/jwks", issuer="i", audience=("a",))
    Traceback (most recent call last):
    ...
    ValueError: MIGRATION_JWKS_URL must be an https:// URL (http:// only on loopback), got '...'
    """

    #: ``MIGRATION_JWKS_URL``: where the provider publishes its public keys.
    jwks_url: str
    #: ``MIGRATION_JWT_ISSUER``: the exact ``iss`` claim required.
    issuer: str
    #: ``MIGRATION_JWT_AUDIENCE`` (comma-separated): the ``aud`` must name one of these.
    audience: tuple[str, ...]
    #: ``MIGRATION_JWT_ALGORITHMS`` (comma-separated): the signature algorithms accepted.
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    #: ``MIGRATION_JWT_LEEWAY``: seconds of clock skew tolerated on ``exp``, ``nbf``, ``iat``.
    leeway: int = 30
    #: ``MIGRATION_JWKS_CACHE_SECONDS``: how long fetched keys are used before a refetch.
    cache_seconds: int = 600
    #: ``MIGRATION_JWKS_REFETCH_SECONDS``: at most one refetch per this many seconds for a
    #: token signed by an unknown key (rotation), or after the JWKS could not be fetched.
    refetch_seconds: int = 30
    #: ``MIGRATION_JWKS_TIMEOUT``: seconds a JWKS fetch may take.
    timeout: float = 5.0

    def __post_init__(self) -> None:
        url = self.jwks_url
        loopback = any(url.startswith(f"http://{host}") for host in _LOOPBACK_HOSTS)
        if not (url.startswith("https://") or loopback):
            raise ValueError(
                "MIGRATION_JWKS_URL must be an https:// URL (http:// only on loopback), "
                f"got {url!r}"
            )
        if not self.issuer.strip():
            raise ValueError("MIGRATION_JWT_ISSUER must name the issuer (the tokens' iss claim)")
        if not self.audience or not all(a.strip() for a in self.audience):
            raise ValueError("MIGRATION_JWT_AUDIENCE must name at least one audience (aud claim)")
        refused = [a for a in self.algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if refused or not self.algorithms:
            raise ValueError(
                f"MIGRATION_JWT_ALGORITHMS must be among {', '.join(ASYMMETRIC_ALGORITHMS)}, "
                f"got {', '.join(self.algorithms) or 'nothing'}"
            )
        if not 0 <= self.leeway <= 300:
            raise ValueError("MIGRATION_JWT_LEEWAY must be between 0 and 300 seconds")
        if not 1 <= self.cache_seconds <= 86_400:
            raise ValueError("MIGRATION_JWKS_CACHE_SECONDS must be between 1 and 86400")
        if not 0 <= self.refetch_seconds <= 3600:
            raise ValueError("MIGRATION_JWKS_REFETCH_SECONDS must be between 0 and 3600")
        if not 0 < self.timeout <= 30:
            raise ValueError("MIGRATION_JWKS_TIMEOUT must be more than 0 and at most 30 seconds")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> IdentitySettings | None:
        """Settings from ``MIGRATION_JWKS_*``/``MIGRATION_JWT_*`` variables, or ``None``
        when ``MIGRATION_JWKS_URL`` is unset (the HS256 development mode).

        >>> IdentitySettings.from_env({"MIGRATION_JWT_ISSUER": "https://idp.example/"})
        Traceback (most recent call last):
        ...
        ValueError: MIGRATION_JWT_ISSUER is set but MIGRATION_JWKS_URL is not: set it too
        """
        env = os.environ if environ is None else environ
        names = {
            "issuer": "MIGRATION_JWT_ISSUER",
            "audience": "MIGRATION_JWT_AUDIENCE",
            "algorithms": "MIGRATION_JWT_ALGORITHMS",
            "leeway": "MIGRATION_JWT_LEEWAY",
            "cache_seconds": "MIGRATION_JWKS_CACHE_SECONDS",
            "refetch_seconds": "MIGRATION_JWKS_REFETCH_SECONDS",
            "timeout": "MIGRATION_JWKS_TIMEOUT",
        }
        url = env.get("MIGRATION_JWKS_URL", "").strip()
        if not url:
            for name in names.values():
                if env.get(name):
                    raise ValueError(f"{name} is set but MIGRATION_JWKS_URL is not: set it too")
            return None
        for name in ("MIGRATION_JWT_ISSUER", "MIGRATION_JWT_AUDIENCE"):
            if not env.get(name, "").strip():
                raise ValueError(f"MIGRATION_JWKS_URL is set, so {name} is needed too")
        values: dict[str, object] = {"jwks_url": url}
        for field, name in names.items():
            raw = env.get(name, "").strip()
            if not raw:
                continue
            try:
                if field in ("audience", "algorithms"):
                    values[field] = tuple(p.strip() for p in raw.split(",") if p.strip())
                elif field == "timeout":
                    values[field] = float(raw)
                elif field == "issuer":
                    values[field] = raw
                else:
                    values[field] = int(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}") from None
        return cls(**values)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConnectionTimeouts:
    """Seconds a client has for each phase of a request on ``python -m backend_stub``
    (:mod:`backend_stub.timeouts` enforces them): a slow or silent client cannot hold a
    connection open for ever. Each is a deadline for the whole phase, so trickling
    bytes does not extend it.

    >>> ConnectionTimeouts()
    ConnectionTimeouts(idle=5.0, header=10.0, body=120.0)
    >>> ConnectionTimeouts(header=0)
    Traceback (most recent call last):
    ...
    ValueError: MIGRATION_HEADER_TIMEOUT must be a positive number of seconds, got 0
    """

    #: Before a connection's first request, and between requests (keep-alive).
    idle: float = 5.0
    #: From a request's first byte to the end of its head.
    header: float = 10.0
    #: From the end of a request's head to the end of its body (a batch is at most
    #: ``Limits.max_batch_bytes``: raise it for slow links).
    body: float = 120.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not value > 0:
                raise ValueError(
                    f"MIGRATION_{field.name.upper()}_TIMEOUT must be a positive number of "
                    f"seconds, got {value}"
                )
            object.__setattr__(self, field.name, float(value))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConnectionTimeouts:
        """Timeouts from ``MIGRATION_{IDLE,HEADER,BODY}_TIMEOUT``; unset ones keep their
        default.

        >>> ConnectionTimeouts.from_env({"MIGRATION_BODY_TIMEOUT": "30"}).body
        30.0
        """
        env = os.environ if environ is None else environ
        values = {}
        for field in dataclasses.fields(cls):
            raw = env.get(f"MIGRATION_{field.name.upper()}_TIMEOUT")
            if raw:
                values[field.name] = float(raw)
        return cls(**values)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """How a server instance behaves. ``data_dir=None`` keeps everything in memory.

    On AWS (without an ``endpoint_url``), ``limits.blob_chunk_bytes`` must be at least
    :data:`S3_MIN_PART_BYTES`.

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
    #: ``sqlite`` (embedded, in ``data_dir``) or ``aws`` (see :class:`AwsSettings`).
    backend: Backend = "sqlite"
    aws: AwsSettings = dataclasses.field(default_factory=AwsSettings)
    #: An identity provider's tokens (see :class:`IdentitySettings`); ``None``: HS256
    #: tokens signed with ``jwt_secret`` (development mode).
    identity: IdentitySettings | None = None
    #: How long a client may take to send a request (``python -m backend_stub`` only).
    timeouts: ConnectionTimeouts = dataclasses.field(default_factory=ConnectionTimeouts)

    def __post_init__(self) -> None:
        if self.backend not in ("sqlite", "aws"):
            raise ValueError(f"MIGRATION_BACKEND must be 'sqlite' or 'aws', got {self.backend!r}")
        if len(self.jwt_secret.encode("utf-8")) < _MIN_SECRET_BYTES:
            raise ValueError(f"the JWT secret must be at least {_MIN_SECRET_BYTES} bytes long")
        if not self.supported_data_versions:
            raise ValueError("at least one supported data version is needed")
        if self.limits.session_ttl_seconds <= 0:
            raise ValueError("the session TTL must be positive")
        if (
            self.backend == "aws"
            and self.aws.endpoint_url is None
            and self.limits.blob_chunk_bytes < S3_MIN_PART_BYTES
        ):
            # Every chunk is one multipart part, and S3 refuses to complete an upload
            # with a smaller part than this (moto and LocalStack can be told otherwise).
            raise ValueError(
                f"on AWS, blobChunkBytes must be at least {S3_MIN_PART_BYTES} (5 MiB, S3's"
                f" smallest multipart part), not {self.limits.blob_chunk_bytes}"
            )

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
            aws = AwsSettings.from_env(env)
            identity = IdentitySettings.from_env(env)
            if identity is not None and env.get("MIGRATION_JWT_SECRET"):
                raise ValueError(
                    "MIGRATION_JWT_SECRET and MIGRATION_JWKS_URL are both set: tokens come "
                    "from the identity provider, unset MIGRATION_JWT_SECRET"
                )
            timeouts = ConnectionTimeouts.from_env(env)
        except (ValidationError, ValueError) as exc:
            raise ValueError(f"invalid MIGRATION_* setting: {exc}") from exc
        return cls(
            data_dir=Path(env.get("MIGRATION_DATA_DIR") or DEFAULT_DATA_DIR),
            jwt_secret=env.get("MIGRATION_JWT_SECRET") or DEV_JWT_SECRET,
            limits=limits,
            supported_data_versions=versions,
            backend=env.get("MIGRATION_BACKEND") or "sqlite",  # type: ignore[arg-type]
            aws=aws,
            identity=identity,
            timeouts=timeouts,
        )
