"""The till API: HTTP on the store LAN; every till authenticates with its own token."""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Controller, Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.params import HeaderParameter, JSONBody
from litestar.types import ExceptionHandlersMap

from branch_agent.errors import AgentError
from branch_agent.schemas import SaleIn, SaleOut
from branch_agent.settings import TillConfig
from protocol.problems import FieldError, Problem

if TYPE_CHECKING:
    from branch_agent.agent import Agent

__all__ = ["create_till_app"]

log = logging.getLogger(__name__)


class AgentHealth(msgspec.Struct, kw_only=True):
    status: str
    branch: str
    nats: str
    outbox_backlog: int


def _agent(state: State) -> Agent:
    agent: Agent = state.agent
    return agent


def _authenticated_till(
    state: State,
    authorization: Annotated[
        str | None, HeaderParameter(name="Authorization", required=False)
    ] = None,
) -> TillConfig:
    agent = _agent(state)
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise NotAuthorizedException("a till token is required: Authorization: Bearer <token>")
    for till in agent.settings.tills:
        if till.token and hmac.compare_digest(till.token.encode(), token.encode()):
            return till
    raise NotAuthorizedException("unknown till token")


class SaleController(Controller):
    path = "/api/v1/sales"
    tags = ["sales"]
    dependencies = {"till": Provide(_authenticated_till, sync_to_thread=False)}

    @post(
        "/",
        operation_id="recordSale",
        summary="Record a sale (idempotent on the till's sale_id): 201 new, 200 repeat",
    )
    async def record_sale(
        self, state: State, till: NamedDependency[TillConfig], data: JSONBody[SaleIn]
    ) -> Response[SaleOut]:
        sale, created = await _agent(state).sales.record_sale(till.id, data)
        return Response(sale, status_code=201 if created else 200)


class HealthController(Controller):
    path = "/health"
    tags = ["operations"]

    @get("/", operation_id="getAgentHealth", summary="Liveness of the agent and its NATS link")
    async def health(self, state: State) -> AgentHealth:
        return await _agent(state).health()


def _problem(
    status: int, title: str, detail: str, path: str, errors: tuple[FieldError, ...] = ()
) -> Response[bytes]:
    body = Problem(title=title, status=status, detail=detail, instance=path, errors=errors)
    return Response(
        msgspec.json.encode(body), status_code=status, media_type="application/problem+json"
    )


def _on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    errors: tuple[FieldError, ...] = ()
    status = exc.status_code
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        errors = tuple(
            FieldError(field=str(e.get("key", "body")), message=str(e.get("message", "")))
            for e in exc.extra
            if isinstance(e, dict)
        )
        status = 422 if errors else 400
    return _problem(
        status, "Invalid input" if status == 422 else "Error", exc.detail, request.url.path, errors
    )


def _on_agent_error(request: Request[Any, Any, Any], exc: AgentError) -> Response[bytes]:
    errors = (FieldError(field=exc.field, message=exc.detail),) if exc.field else ()
    return _problem(exc.status, exc.title, exc.detail, request.url.path, errors)


def _on_crash(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return _problem(
        500, "Internal server error", "the agent failed to handle this request", request.url.path
    )


_handlers: ExceptionHandlersMap = {
    HTTPException: _on_http,
    AgentError: _on_agent_error,
    Exception: _on_crash,
}


def create_till_app(agent: Agent) -> Litestar:
    return Litestar(
        route_handlers=[SaleController, HealthController],
        state=State({"agent": agent}),
        exception_handlers=_handlers,
        request_max_body_size=1024 * 1024,
        openapi_config=OpenAPIConfig(
            title=f"Backroom till API ({agent.settings.branch})", version="1.0.0", path="/docs"
        ),
    )
