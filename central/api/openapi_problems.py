"""The error answers of each operation in the OpenAPI document.

Litestar documents the success answer and whatever a route declares; the problems
central answers from its middleware, guards and services (401, 403, 404, 422, 503)
were in no operation, so a client generated from the document knew only 200 and 400.
:class:`ProblemResponses` adds them to each operation that can answer them, derived
from what the route is (its roles, parameters, body), so no route declares them by
hand. A route's own declaration of a status wins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar.openapi.datastructures import ResponseSpec
from litestar.plugins import ReceiveRoutePlugin
from litestar.routes import HTTPRoute

from central.auth.roles import ALL_ROLES, is_public_path, required_roles, route_group
from protocol.problems import Problem

if TYPE_CHECKING:
    from litestar.routes import BaseRoute

__all__ = ["CONFLICT", "PROBLEM_DESCRIPTIONS", "ProblemResponses"]

PROBLEM_DESCRIPTIONS: dict[int, str] = {
    401: "Missing, malformed, unknown, expired or revoked bearer token "
    "(with WWW-Authenticate: Bearer)",
    403: "The token's role may not call this operation",
    404: "Not found: the record the path names, or an unknown branch (errors[].field "
    "names it, e.g. branch)",
    422: "Invalid input: a missing, malformed or invalid parameter or body field, named "
    "in errors[].field (a report: reversed dates, a period too long, an unknown grouping, "
    "more rows than report_max_rows)",
    409: "Conflict with what central holds (the record exists already, or its state or "
    "another record refuses the change), named in errors[].field; nothing changed",
    503: "The database is unavailable (Retry-After: 5), or a report took longer than "
    "report_statement_timeout_s",
}

# Lists whose branch filter is no check of the branch: dead letters of a branch central
# does not know are listed (and replayed) like any other.
_BRANCH_NOT_CHECKED = frozenset({"dead-letters"})


def _problem(status: int) -> ResponseSpec:
    return ResponseSpec(
        data_container=Problem,
        description=PROBLEM_DESCRIPTIONS[status],
        media_type="application/problem+json",
        generate_examples=False,
    )


# Declared by the routes that can answer it (``responses=CONFLICT``): no rule tells them.
CONFLICT: dict[int, ResponseSpec] = {409: _problem(409)}


class ProblemResponses(ReceiveRoutePlugin):
    """Adds the problem answers (RFC 9457) an operation can give to its OpenAPI entry."""

    def receive_route(self, route: BaseRoute) -> None:
        if not isinstance(route, HTTPRoute):
            return
        for handler, kwargs_model in route.route_handler_map.values():
            if not handler.resolve_include_in_schema():
                continue
            if handler.opt.get("public") or is_public_path(route.path):
                continue
            statuses = [401]
            if any(
                required_roles(method, route.path, handler.opt) != ALL_ROLES
                for method in handler.http_methods
            ):
                statuses.append(403)
            query = {p.field_alias for p in kwargs_model.expected_query_params}
            if kwargs_model.expected_path_params or (
                "branch" in query and route_group(route.path) not in _BRANCH_NOT_CHECKED
            ):
                statuses.append(404)
            if query or "data" in handler.parsed_fn_signature.parameters:
                statuses.append(422)
            statuses.append(503)
            responses = dict(handler.responses or {})
            for status in statuses:
                responses.setdefault(status, _problem(status))
            handler.responses = responses
