"""Refusals as problem+json (RFC 9457): one exception type, one way to render it.

Service code raises :class:`ApiError`; the app's handlers render it, and every other
refusal (validation, unknown route, wrong method), as a :class:`~sdk.contract.Problem`
with the machine-readable ``code`` the SDK maps to its error types::

    >>> err = ApiError(409, ProblemCode.ACTIVE_SESSION, "finish it first",
    ...                extra={"activeSessionId": "s1"})
    >>> body = problem_body(err.status, err.code, err.detail, extra=err.extra)
    >>> body["code"], body["activeSessionId"], body["title"]
    ('active-session', 's1', 'Conflict')
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

from sdk.contract import PROBLEM_CONTENT_TYPE, Problem, ProblemCode

__all__ = ["ApiError", "code_for_status", "problem_body", "problem_response"]

_CODE_BY_STATUS = {
    400: ProblemCode.INVALID_REQUEST,
    401: ProblemCode.UNAUTHENTICATED,
    403: ProblemCode.FORBIDDEN,
    404: ProblemCode.NOT_FOUND,
    405: ProblemCode.METHOD_NOT_ALLOWED,
    409: ProblemCode.INVALID_STATE,
    413: ProblemCode.PAYLOAD_TOO_LARGE,
    415: ProblemCode.UNSUPPORTED_MEDIA_TYPE,
    422: ProblemCode.VALIDATION_FAILED,
}


_STANDARD_MEMBERS = frozenset({"type", "title", "status", "detail", "instance", "code"})


class ApiError(Exception):
    """A request the server refuses: HTTP status, problem code, and what to do about it.

    ``extra`` adds members to the problem body (camelCase names); ``headers`` are sent
    with the answer.

    >>> ApiError(404, ProblemCode.NOT_FOUND, "no such session").status
    404
    """

    def __init__(
        self,
        status: int,
        code: ProblemCode | None,
        detail: str,
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


def code_for_status(status: int) -> ProblemCode | None:
    """The default problem code of an HTTP status.

    >>> code_for_status(415)
    <ProblemCode.UNSUPPORTED_MEDIA_TYPE: 'unsupported-media-type'>
    """
    return _CODE_BY_STATUS.get(status)


def problem_body(
    status: int,
    code: ProblemCode | None,
    detail: str | None,
    *,
    instance: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of a problem answer.

    >>> problem_body(404, ProblemCode.NOT_FOUND, "gone")["type"]
    'about:blank'
    """
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    # Extension members never shadow the standard ones.
    members = {k: v for k, v in (extra or {}).items() if k not in _STANDARD_MEMBERS}
    problem = Problem(
        title=title, status=status, detail=detail, instance=instance, code=code, **members
    )
    return problem.model_dump(mode="json", by_alias=True, exclude_none=True)


def problem_response(
    status: int,
    code: ProblemCode | None,
    detail: str | None,
    *,
    instance: str | None = None,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An ``application/problem+json`` response.

    >>> problem_response(413, ProblemCode.PAYLOAD_TOO_LARGE, "too big").media_type
    'application/problem+json'
    """
    return JSONResponse(
        problem_body(status, code, detail, instance=instance, extra=extra),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=dict(headers or {}),
    )
