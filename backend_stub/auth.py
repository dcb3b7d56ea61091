"""Bearer tokens: JWTs whose subject is the user id of the path.

In development the reference server mints its own HS256 tokens (:func:`issue_token`, the
CLI's ``token`` command); a deployment verifies its identity provider's tokens instead
(:mod:`backend_stub.identity`, configured by :class:`~backend_stub.settings.IdentitySettings`)::

    >>> from backend_stub.settings import DEV_JWT_SECRET
    >>> token = issue_token("alice", DEV_JWT_SECRET, ttl=60)
    >>> verify_token(token, DEV_JWT_SECRET)
    'alice'
"""

from __future__ import annotations

import re
import time
from typing import Annotated

import jwt
from fastapi import Depends, Path, Request
from starlette.concurrency import run_in_threadpool

from backend_stub.problems import ApiError
from sdk.contract import USER_ID_PATTERN, ProblemCode

__all__ = ["ALGORITHM", "authenticated_user", "issue_token", "verify_token"]

#: The only algorithm of development tokens; in particular ``none`` is refused.
ALGORITHM = "HS256"

_USER_ID = re.compile(USER_ID_PATTERN)


def issue_token(user_id: str, secret: str, ttl: int = 3600, *, now: float | None = None) -> str:
    """A signed token for ``user_id``, valid ``ttl`` seconds from ``now`` (default: now).

    >>> from backend_stub.settings import DEV_JWT_SECRET
    >>> issue_token("alice", DEV_JWT_SECRET).count(".")
    2
    """
    issued = int(time.time() if now is None else now)
    return jwt.encode(
        {"sub": user_id, "iat": issued, "exp": issued + ttl}, secret, algorithm=ALGORITHM
    )


def verify_token(token: str, secret: str) -> str:
    """The token's subject, or :class:`~backend_stub.problems.ApiError` 401.

    Expired, tampered, unsigned (``alg: none``) and malformed tokens are all refused.

    >>> from backend_stub.settings import DEV_JWT_SECRET
    >>> verify_token("not-a-token", DEV_JWT_SECRET)
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: the bearer token is invalid: get a new one
    """
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise unauthenticated(
            "the bearer token has expired: get a new one", "invalid_token"
        ) from exc
    except jwt.InvalidTokenError as exc:
        raise unauthenticated(
            "the bearer token is invalid: get a new one", "invalid_token"
        ) from exc
    subject = claims["sub"]
    if not isinstance(subject, str):  # pragma: no cover - PyJWT already checks this
        raise unauthenticated("the bearer token has no user subject", "invalid_token")
    return subject


def authenticated_user(request: Request, user_id: Annotated[str, Path(alias="userId")]) -> str:
    """FastAPI dependency: the path's user id, once the bearer token proves it.

    Order of checks: a valid token (401, or 503 when an identity provider's keys cannot
    be fetched), a well-formed user id (400), the token's subject is that user (403). The
    app's ``state.token_verifier`` checks the token.

    >>> from types import SimpleNamespace
    >>> from starlette.requests import Request
    >>> from backend_stub.identity import token_verifier
    >>> from backend_stub.settings import Settings
    >>> settings = Settings()
    >>> token = issue_token("alice", settings.jwt_secret)
    >>> state = SimpleNamespace(token_verifier=token_verifier(settings))
    >>> request = Request({"type": "http", "app": SimpleNamespace(state=state),
    ...                    "headers": [(b"authorization", f"Bearer {token}".encode())]})
    >>> authenticated_user(request, "alice")
    'alice'
    >>> authenticated_user(request, "bob")
    Traceback (most recent call last):
    ...
    backend_stub.problems.ApiError: the bearer token belongs to another user
    """
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthenticated("send 'Authorization: Bearer <token>'", None)
    subject: str = request.app.state.token_verifier.verify(token.strip())
    if not _USER_ID.fullmatch(user_id):
        raise ApiError(400, ProblemCode.INVALID_REQUEST, f"malformed user id {user_id!r}")
    if subject != user_id:
        raise ApiError(403, ProblemCode.FORBIDDEN, "the bearer token belongs to another user")
    return user_id


async def _authenticated_user(
    request: Request, user_id: Annotated[str, Path(alias="userId")]
) -> str:
    if request.app.state.token_verifier.blocking:
        # It may fetch an identity provider's keys: never on the event loop.
        return await run_in_threadpool(authenticated_user, request, user_id)
    return authenticated_user(request, user_id)


#: The authenticated user of a request, as a route parameter.
UserId = Annotated[str, Depends(_authenticated_user)]


def unauthenticated(detail: str, error: str | None) -> ApiError:
    """A 401 with its ``WWW-Authenticate`` challenge (RFC 6750)."""
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return ApiError(
        401, ProblemCode.UNAUTHENTICATED, detail, headers={"WWW-Authenticate": challenge}
    )
