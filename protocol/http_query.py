"""The query-string rule of both HTTP APIs (head office's and the agent's till API): a
request may name only the query parameters its route declares, and a single-valued one
only once. Anything else is refused with a 400 problem naming each parameter at fault.

The web framework ignores a query parameter no route declares and keeps the last value
of one given twice: a misspelt ``brnach=B001`` listed the whole chain, ``grup_by=``
gave the default grouping and ``group_by=branch&group_by=product`` only the second,
each a 200 that looked like an answer. Installed once per app as a plugin
(:class:`QueryParameterRule`): its guard compares the request's query keys with the
parameters the framework itself parses for the route (the handler's and its
dependencies'), so no route declares anything twice, and every operation of the
OpenAPI document describes the 400 (the problem body) it may answer.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.exceptions import ClientException
from litestar.openapi.datastructures import ResponseSpec
from litestar.plugins import InitPlugin, ReceiveRoutePlugin
from litestar.routes import HTTPRoute

from protocol.problems import FieldError, Problem, problem_title

if TYPE_CHECKING:
    from litestar.config.app import AppConfig
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler
    from litestar.routes import BaseRoute

__all__ = ["BAD_REQUEST_DESCRIPTION", "QueryParameterRule", "QueryRefused", "query_errors"]

BAD_REQUEST_DESCRIPTION = (
    "Bad request: a problem (RFC 9457) naming each field or query parameter at fault in "
    "errors[].field, e.g. a query parameter the operation does not declare (a misspelt one "
    "included) or a single-valued one given more than once (refused before anything is "
    "done), or a body that is not valid UTF-8 JSON (field body)"
)


class _Declared(msgspec.Struct, frozen=True):
    """What one route takes in its query string."""

    names: frozenset[str]
    # Parameters of a list type: given once per value.
    repeatable: frozenset[str]


def query_errors(
    query: Mapping[str, Sequence[str]], *, declared: Collection[str], repeatable: Collection[str]
) -> tuple[FieldError, ...]:
    """The query parameters at fault in ``query`` (each name with its values, in the
    order of the request): a name not ``declared``, or one given more than once that is
    not ``repeatable``."""
    errors: list[FieldError] = []
    for name, values in query.items():
        if name not in declared:
            takes = ", ".join(sorted(declared)) or "none"
            message = f"not a query parameter of this route (it takes: {takes})"
            errors.append(FieldError(field=name, message=message))
        elif len(values) > 1 and name not in repeatable:
            message = f"given {len(values)} times: it takes one value"
            errors.append(FieldError(field=name, message=message))
    return tuple(errors)


class QueryRefused(ClientException):
    """A 400 naming the query parameters at fault (see :func:`query_errors`)."""

    def __init__(self, errors: tuple[FieldError, ...]) -> None:
        super().__init__(detail="; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors

    def problem(self, instance: str) -> Problem:
        return Problem(
            title=problem_title(self.status_code),
            status=self.status_code,
            detail=self.detail,
            instance=instance,
            errors=self.errors,
        )


class QueryParameterRule(InitPlugin, ReceiveRoutePlugin):
    """Adds the app-level guard refusing undeclared and repeated query parameters, after
    the app's own guards (central's token and role checks answer first; the agent checks
    tokens in dependencies, after every guard), and the 400 problem to every documented
    operation. Operations left out of the OpenAPI document (the documentation pages
    themselves) are not checked. The app maps :class:`QueryRefused` to its problem
    response."""

    __slots__ = ("_declared",)

    def __init__(self) -> None:
        # Per route handler (the framework's own object for the route, not the copy a
        # guard is handed): the query it declares, None when it is not checked.
        self._declared: dict[BaseRouteHandler, _Declared | None] = {}

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.guards = [*app_config.guards, self._refuse_undeclared]
        return app_config

    def receive_route(self, route: BaseRoute) -> None:
        if not isinstance(route, HTTPRoute):
            return
        for handler, kwargs_model in route.route_handler_map.values():
            if not handler.resolve_include_in_schema():
                self._declared[handler] = None
                continue
            self._declared[handler] = _Declared(
                names=frozenset(p.field_alias for p in kwargs_model.expected_query_params),
                repeatable=frozenset(kwargs_model.sequence_query_parameter_names),
            )
            responses = dict(handler.responses or {})
            responses.setdefault(
                400,
                ResponseSpec(
                    data_container=Problem,
                    description=BAD_REQUEST_DESCRIPTION,
                    media_type="application/problem+json",
                    generate_examples=False,
                ),
            )
            handler.responses = responses

    def _refuse_undeclared(
        self, connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        declared = self._declared.get(connection.route_handler)
        if declared is None:
            return
        query: dict[str, list[str]] = {}
        for name, value in connection.query_params.items():  # every pair, in order
            query.setdefault(name, []).append(value)
        errors = query_errors(query, declared=declared.names, repeatable=declared.repeatable)
        if errors:
            raise QueryRefused(errors)
