"""Every error of the web API as ``application/problem+json`` (RFC 9457)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap
from sqlalchemy.exc import DBAPIError

from central.db import QUERY_CANCELED, database_unavailable, is_interrupted, sqlstate_of
from central.errors import DomainError, ReportTooSlow
from protocol.http_query import QueryRefused
from protocol.problems import (
    FieldError,
    Problem,
    is_not_utf8,
    not_utf8_problem,
    problem_title,
    validation_errors,
)

__all__ = ["exception_handlers", "problem_response"]

log = logging.getLogger(__name__)


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        content=msgspec.json.encode(problem),
        status_code=problem.status,
        media_type="application/problem+json",
        headers=headers,
    )


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if status == 400 and is_not_utf8(exc):  # msgspec 0.23's words for it
        return problem_response(not_utf8_problem(request.url.path))
    errors: tuple[FieldError, ...] = ()
    detail = exc.detail
    if isinstance(exc, ValidationException):
        # a missing body is named by the fields the route's body needs, as at the agent
        body = request.route_handler.parsed_fn_signature.parameters.get("data")
        errors = validation_errors(
            exc.extra,
            str(exc.detail),
            body.annotation if body is not None else None,
            exc.__cause__,
        )
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors) or exc.detail
        # A field at fault is 422 (unprocessable), like every other invalid field.
        status = 400 if not errors else 422
    problem = Problem(
        title=problem_title(status),
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=errors,
    )
    return problem_response(problem, headers=exc.headers)


def _query_refused(request: Request[Any, Any, Any], exc: QueryRefused) -> Response[bytes]:
    """An undeclared or repeated query parameter (``protocol.http_query``): 400 naming it."""
    return problem_response(exc.problem(request.url.path))


def _domain_error(request: Request[Any, Any, Any], exc: DomainError) -> Response[bytes]:
    errors = (FieldError(field=exc.field, message=exc.detail),) if exc.field else ()
    problem = Problem(
        title=exc.title,
        status=exc.status,
        detail=exc.detail,
        instance=request.url.path,
        errors=errors,
    )
    return problem_response(problem)


# How long a client or load balancer is asked to wait before trying again when the
# database cannot be reached (a restart or fail-over takes seconds).
DATABASE_RETRY_AFTER_S = 5


def _raised_by_database_driver(exc: BaseException) -> bool:
    """A connection error (refused, reset) raised inside the database layer, not by
    another link (NATS): asyncpg lets them out unwrapped when it connects."""
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.startswith(("sqlalchemy.", "asyncpg", "aiosqlite")):
            return True
        tb = tb.tb_next
    return False


def _database_unavailable(request: Request[Any, Any, Any], reason: str) -> Response[bytes]:
    """503 with Retry-After: the request changed nothing, the same request may succeed
    once the database is back. One line logged, no traceback (an outage is not a bug)."""
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, reason)
    problem = Problem(
        title="Database unavailable",
        status=503,
        detail=(
            f"the database is unavailable ({reason}); try again in a few seconds (a "
            "change whose connection was lost while committing may have been applied)"
        ),
        instance=request.url.path,
    )
    return problem_response(problem, headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)})


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, OSError) and _raised_by_database_driver(exc):
        reason = database_unavailable(exc)
        if reason is not None:
            return _database_unavailable(request, reason)
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    problem = Problem(
        title="Internal server error",
        status=HTTP_500_INTERNAL_SERVER_ERROR,
        detail="the server failed to handle this request; it has been logged",
        instance=request.url.path,
    )
    return problem_response(problem)


def _not_utf8(request: Request[Any, Any, Any], exc: UnicodeDecodeError) -> Response[bytes]:
    """msgspec before 0.23 raises UnicodeDecodeError (not its DecodeError, which Litestar
    turns into a 400) for a JSON string holding bytes that are not UTF-8, so such a body
    escaped as a 500. No route decodes other bytes as UTF-8 strictly, so the error is the
    client's: nothing was parsed, hence nothing recorded."""
    return problem_response(not_utf8_problem(request.url.path))


def _database_error(request: Request[Any, Any, Any], exc: DBAPIError) -> Response[bytes]:
    """A report the database cancelled at its statement timeout is the caller's to
    narrow (503, nothing changed: reports only read); a database that cannot be reached
    is a 503 to retry; any other database error is a 500."""
    reason = database_unavailable(exc)
    if reason is not None:
        return _database_unavailable(request, reason)
    stopped = sqlstate_of(exc) == QUERY_CANCELED or is_interrupted(exc)
    if stopped and request.url.path.startswith("/api/v1/reports"):
        limit = request.app.state.runtime.settings.report_statement_timeout_s
        return _domain_error(
            request,
            ReportTooSlow(
                f"the database stopped the report after {limit:g} s "
                "(report_statement_timeout_s): ask for a shorter period, one branch or a "
                "coarser grouping, or try again when the database is less busy"
            ),
        )
    return _internal_error(request, exc)


exception_handlers: ExceptionHandlersMap = {
    HTTPException: _http_exception,
    QueryRefused: _query_refused,
    DomainError: _domain_error,
    UnicodeDecodeError: _not_utf8,
    DBAPIError: _database_error,
    Exception: _internal_error,
}
