"""The app factory: :func:`create_app` builds a server from settings; nothing at import.

Every refusal leaves as ``application/problem+json``, including FastAPI's own request
validation errors, unknown routes and wrong methods::

    >>> app = create_app(Settings())
    >>> next(iter(app.openapi()["paths"]))
    '/api/migration/{userId}/detect'
    >>> app.state.storage.close()
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from backend_stub.batches import put_batch
from backend_stub.blob_routes import blob_router
from backend_stub.completion import complete_migration
from backend_stub.identity import token_verifier
from backend_stub.problems import ApiError, code_for_status, problem_response
from backend_stub.routes import BatchIntake, router
from backend_stub.service import now_ms
from backend_stub.settings import Settings
from backend_stub.storage import Storage
from backend_stub.storage.records import CommitRolling
from backend_stub.storage.sqlite import SQLiteStorage
from backend_stub.sync_routes import sync_router
from sdk.contract import CompleteMigrationResponse, ProblemCode

__all__ = ["create_app", "open_storage"]

logger = logging.getLogger(__name__)

#: ``Retry-After`` of a write refused while the user's migration rolls forward (a
#: slice of its roll-forward takes about a second on AWS).
ROLLING_RETRY_AFTER_S = 5


def open_storage(settings: Settings) -> Storage:
    """The storage ``settings`` describe: SQLite in ``data_dir`` (in memory if ``None``),
    or, with ``backend="aws"``, :class:`~backend_stub.storage.aws.AwsStorage`.

    >>> storage = open_storage(Settings())
    >>> storage.latest_session("alice") is None
    True
    >>> storage.close()
    """
    if settings.backend == "aws":
        # Imported here: only the aws backend needs boto3 (the ``aws`` extra).
        from backend_stub.storage.aws import AwsStorage

        return AwsStorage.open(settings.aws)
    if settings.data_dir is None:
        return SQLiteStorage.in_memory()
    return SQLiteStorage.open(settings.data_dir)


def create_app(
    settings: Settings | None = None,
    *,
    storage: Storage | None = None,
    clock: Callable[[], int] | None = None,
) -> FastAPI:
    """A migration server. ``settings`` default to :meth:`Settings.from_env` (so
    ``uvicorn --factory backend_stub:create_app`` works). Seams: ``storage`` (default:
    :func:`open_storage`; a storage passed in is not closed by the app) and ``clock`` (ms
    since the epoch; tests move it to expire sessions).

    >>> app = create_app(Settings(), clock=lambda: 0)
    >>> app.state.clock()
    0
    """
    settings = settings or Settings.from_env()
    owned = storage is None
    store = open_storage(settings) if storage is None else storage

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            store.close()

    app = FastAPI(
        title="Offline-first migration server (reference)",
        version="0.1.0",
        lifespan=lifespan,
        # Starlette would answer a trailing slash with a 307 whose Location is built
        # from the request's Host header (an open redirect); here it is a 404 problem.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.storage = store
    app.state.clock = clock or now_ms
    app.state.token_verifier = token_verifier(settings)
    app.state.batch_intake = _batch_intake(settings)
    app.state.completer = _completer(settings)
    app.include_router(router)
    app.include_router(sync_router)
    app.include_router(blob_router)
    _install_problem_handlers(app)
    return app


def _completer(settings: Settings) -> Callable[..., CompleteMigrationResponse]:
    """What ``POST .../complete`` runs: the commit in the request (embedded), or the
    decision, the commit queued for the worker (aws: no request writes the dataset)."""
    if settings.backend == "aws":
        from backend_stub.committing import request_commit

        return request_commit
    return complete_migration


def _batch_intake(settings: Settings) -> BatchIntake:
    """What ``PUT .../batches/{seq}`` runs: processing in the request (embedded), or
    storing and queueing (aws; the worker processes)."""
    if settings.backend == "aws":
        from backend_stub.worker import accept_batch

        # Calls to S3 and SQS wait on the network: in the thread pool, side by side.
        return BatchIntake(accept_batch, inline=False)
    # On the embedded database a batch is CPU work and statements on the one SQLite
    # connection, behind its one lock, which every request takes: batches never ran
    # side by side, and requests waited for each other's transactions anyway. In the
    # thread pool each batch only paid for the hand-offs between threads fighting over
    # the GIL (the writer waits for it again after each row it inserts). On the event
    # loop, the upload of 1,000,000 items took about 13 s instead of 16 (`make bench`).
    return BatchIntake(put_batch, inline=True)


def _install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return problem_response(
            exc.status,
            exc.code,
            exc.detail,
            instance=request.url.path,
            extra=exc.extra,
            headers=exc.headers,
        )

    @app.exception_handler(CommitRolling)
    async def commit_rolling(request: Request, exc: CommitRolling) -> Response:
        # Bounded requests: the worker's jobs finish the migration's roll-forward (a
        # request doing it would take time in proportion to the migration's size).
        return problem_response(
            503,
            ProblemCode.MIGRATION_COMMITTING,
            f"the migration {exc.session_id} of this user is being committed: the user's"
            " items cannot be written until it is done; retry after Retry-After seconds",
            instance=request.url.path,
            extra={"sessionId": exc.session_id},
            headers={"Retry-After": str(ROLLING_RETRY_AFTER_S)},
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors: list[dict[str, Any]] = [
            {
                "loc": [str(part) for part in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        return problem_response(
            422,
            ProblemCode.VALIDATION_FAILED,
            f"invalid {'.'.join(first['loc']) or 'request'}: {first['msg']}",
            instance=request.url.path,
            extra={"errors": errors[:20]},
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem_response(
            exc.status_code,
            code_for_status(exc.status_code),
            detail,
            instance=request.url.path,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(
            500, None, "the server failed unexpectedly: retry later", instance=request.url.path
        )
