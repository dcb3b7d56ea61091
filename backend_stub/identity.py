"""Who may call: the verifier of bearer tokens a server uses, chosen by its settings.

Two verifiers share one small protocol (:class:`TokenVerifier`):

* :class:`SharedSecretVerifier`, the development mode: HS256 tokens signed with
  ``MIGRATION_JWT_SECRET`` (the CLI's ``token`` command mints them);
* :class:`JwksVerifier`, for a real identity provider: RS256/ES256 tokens whose keys come
  from the provider's JWKS URL (PyJWT's ``PyJWKClient``), with issuer, audience and clock
  leeway checked, and key rotation followed.

An unreachable or broken JWKS answers **503** problem+json with ``Retry-After``, not 401:
the token may well be valid, the server just cannot check it now. A 401 tells a client to
throw its token away and sign in again; a 503 tells it to wait and retry, which is what
the SDK does for an outage (the migration waits and resumes)::

    >>> verifier = token_verifier(Settings())
    >>> from backend_stub.auth import issue_token
    >>> verifier.verify(issue_token("alice", Settings().jwt_secret))
    'alice'
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import jwt

from backend_stub.auth import unauthenticated, verify_token
from backend_stub.problems import ApiError
from backend_stub.settings import DEV_JWT_SECRET, IdentitySettings, Settings

__all__ = [
    "JwksVerifier",
    "SharedSecretVerifier",
    "TokenVerifier",
    "announce_token_mode",
    "token_verifier",
]

logger = logging.getLogger(__name__)

_UNKNOWN_KEY = "the bearer token is signed by a key the identity provider lacks"

# Key types each algorithm family signs with; a key of another type is never tried.
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC"}


class TokenVerifier(Protocol):
    """Turns a bearer token into its user id, or raises :class:`ApiError` (401 or 503).

    ``blocking`` says whether :meth:`verify` may wait on the network (then the server
    calls it off the event loop).

    >>> SharedSecretVerifier(DEV_JWT_SECRET).blocking
    False
    """

    @property
    def blocking(self) -> bool: ...

    def verify(self, token: str) -> str: ...


@dataclasses.dataclass(frozen=True)
class SharedSecretVerifier:
    """HS256 tokens signed with a shared secret: the development mode.

    >>> SharedSecretVerifier(DEV_JWT_SECRET).verify("not-a-token")
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: the bearer token is invalid: get a new one
    """

    secret: str
    blocking: ClassVar[bool] = False

    def verify(self, token: str) -> str:
        return verify_token(token, self.secret)


class JwksVerifier:
    """An identity provider's tokens, checked against the keys of its JWKS URL.

    The key set is fetched on first use and kept ``cache_seconds``. A token signed by a
    key the set does not hold (the provider rotated its keys) refetches the set, at most
    once per ``refetch_seconds``, so a flood of made-up key ids cannot flood the provider;
    a failed fetch is not retried within that time either (503 at once), while tokens of
    keys already known keep working. A JWK that names its ``alg`` is used for that
    algorithm only; one that does not is taken as RS256 (RSA) or by its curve (EC).
    ``clock`` is a monotonic clock in seconds (tests move it).

    >>> settings = IdentitySettings(jwks_url="https://idp.example/jwks.json",
    ...                             issuer="https://idp.example/", audience=("api",))
    >>> JwksVerifier(settings).verify("eyJhbGciOiJub25lIn0.e30.")
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: the bearer token is signed with 'none'; this server accepts ...
    """

    blocking: ClassVar[bool] = True

    def __init__(
        self, settings: IdentitySettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        # The client fetches and parses; the cache is ours, on our clock, so that a
        # failed or rate-limited fetch never hides keys already known.
        self._client = jwt.PyJWKClient(
            settings.jwks_url,
            cache_jwk_set=False,
            timeout=settings.timeout,
            headers={"User-Agent": "offline-migrate-server"},
        )
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}  # kid -> PyJWK of the last fetched set
        self._fetched_at: float | None = None  # when that set was fetched
        self._refetched_at: float | None = None  # last refetch for an unknown key id
        self._failed_at: float | None = None  # last fetch that failed

    def verify(self, token: str) -> str:
        """The token's subject once signature, issuer, audience and times check out."""
        settings = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _invalid("the bearer token is invalid: get a new one") from exc
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in settings.algorithms:
            raise _invalid(
                f"the bearer token is signed with {algorithm!r}; this server accepts "
                f"{', '.join(settings.algorithms)}"
            )
        if not isinstance(kid, str) or not kid:
            raise _invalid("the bearer token names no signing key (kid): get a new one")
        key = self._signing_key(kid)
        if key.key_type != _KEY_TYPES[algorithm[:2]] or key.algorithm_name not in (
            algorithm,
            None,
        ):
            # The header's algorithm must be the key's own: no RS/HS or RS/PS confusion.
            raise _invalid(f"the bearer token's algorithm {algorithm} does not match its key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=list(settings.audience),
                issuer=settings.issuer,
                leeway=settings.leeway,
                options={"require": ["sub", "exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _invalid("the bearer token has expired: get a new one") from exc
        except jwt.InvalidAudienceError as exc:
            raise _invalid("the bearer token is meant for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise _invalid("the bearer token comes from another issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the bearer token has no {exc.claim!r} claim") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _invalid("the bearer token is invalid: get a new one") from exc
        subject = claims["sub"]
        if not isinstance(subject, str):  # pragma: no cover - PyJWT already checks this
            raise _invalid("the bearer token has no user subject")
        return subject

    def _signing_key(self, kid: str) -> Any:
        settings = self.settings
        with self._lock:
            now = self._clock()
            fresh = self._fetched_at is not None and now - self._fetched_at < settings.cache_seconds
            if fresh and kid in self._keys:
                return self._keys[kid]
            if self._failed_at is not None and now - self._failed_at < settings.refetch_seconds:
                raise _unavailable(settings.refetch_seconds - (now - self._failed_at))
            if fresh:  # an unknown key id: the provider may have rotated its keys
                if (
                    self._refetched_at is not None
                    and now - self._refetched_at < settings.refetch_seconds
                ):
                    raise _invalid(_UNKNOWN_KEY)
                self._refetched_at = now
                logger.info("refetching the JWKS for an unknown key id")
            self._fetch(now)
            if kid not in self._keys:
                raise _invalid(_UNKNOWN_KEY)
            return self._keys[kid]

    def _fetch(self, now: float) -> None:
        try:
            keys = self._client.get_signing_keys(refresh=True)
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, jwt.InvalidKeyError) as exc:
            self._failed_at = now
            logger.warning("the JWKS at %s cannot be used: %s", self.settings.jwks_url, exc)
            raise _unavailable(self.settings.refetch_seconds) from exc
        self._keys = {key.key_id: key for key in keys if key.key_id}
        self._fetched_at, self._failed_at = now, None


def token_verifier(settings: Settings) -> TokenVerifier:
    """The verifier ``settings`` call for: JWKS when ``settings.identity`` is set.

    >>> token_verifier(Settings()).blocking
    False
    """
    if settings.identity is not None:
        return JwksVerifier(settings.identity)
    return SharedSecretVerifier(settings.jwt_secret)


def announce_token_mode(settings: Settings) -> None:
    """Log how tokens are verified: a WARNING in the HS256 development mode.

    >>> announce_token_mode(Settings())
    """
    identity = settings.identity
    if identity is None:
        secret = (
            "the public development secret (anyone can mint tokens)"
            if settings.jwt_secret == DEV_JWT_SECRET
            else "MIGRATION_JWT_SECRET"
        )
        logger.warning(
            "development mode: bearer tokens are HS256 JWTs signed with %s; set "
            "MIGRATION_JWKS_URL, MIGRATION_JWT_ISSUER and MIGRATION_JWT_AUDIENCE to verify "
            "an identity provider's tokens instead",
            secret,
        )
        return
    logger.info(
        "bearer tokens: %s from %s, issuer %s, audience %s",
        "/".join(identity.algorithms),
        identity.jwks_url,
        identity.issuer,
        ", ".join(identity.audience),
    )


def _invalid(detail: str) -> ApiError:
    return unauthenticated(detail, "invalid_token")


def _unavailable(retry_after: float) -> ApiError:
    seconds = max(1, round(retry_after))
    return ApiError(
        503,
        None,
        "the identity provider's keys (JWKS) cannot be fetched to check the token: retry later",
        headers={"Retry-After": str(seconds)},
    )
