"""Authentication of every head-office API request, and the audit safety net.

The middleware resolves the bearer token to a ``Principal`` (401 when missing,
malformed, unknown, expired or revoked), and the app-level guard ``authorize``
checks the role the route requires (403). Routes declared public (``opt=PUBLIC``)
and the paths in ``PUBLIC_PATH_PATTERNS`` (health, OpenAPI docs) skip both.

For a successful write (non-GET, 2xx) in which no service called
``record_change``, the middleware records a generic audit entry with the request
body, so every change through the API is in the audit log.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from central.auth.context import Principal, RequestAudit, current_request_audit
from central.auth.roles import (
    READ_METHODS,
    Role,
    is_public_path,
    required_roles,
)
from protocol.problems import BEARER_CHALLENGE

__all__ = ["ApiAuthMiddleware", "authorize"]

log = logging.getLogger(__name__)

# Generic audit entries keep at most this much of a request body.
AUDIT_BODY_LIMIT = 64 * 1024


def _public_scope(scope: Scope) -> bool:
    return is_public_path(scope.get("path", ""))


def _bearer(scope: Scope) -> str:
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            break
    raise NotAuthorizedException(
        "credentials are required: Authorization: Bearer <token>", headers=BEARER_CHALLENGE
    )


class ApiAuthMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)
    exclude_opt_key = "public"

    def __init__(self) -> None:
        # Health and the OpenAPI docs: by request path (the docs' route paths differ).
        self.should_bypass_for_scope = _public_scope

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        from central.services.users import authenticate_token

        token = _bearer(scope)
        runtime = Litestar.from_scope(scope).state.runtime
        async with runtime.sessionmaker() as session:
            principal = await authenticate_token(session, token)
        if principal is None:
            raise NotAuthorizedException(
                "the token is unknown, expired or revoked", headers=BEARER_CHALLENGE
            )
        scope["user"] = principal
        scope["auth"] = principal.token_id
        method = str(scope.get("method", "GET"))
        audit = RequestAudit(
            actor=principal.name, actor_role=principal.role, method=method, path=scope["path"]
        )
        writes = method not in READ_METHODS
        status = 0
        body = bytearray()

        async def receive_capturing() -> Any:
            message = await receive()
            if message["type"] == "http.request" and len(body) < AUDIT_BODY_LIMIT:
                body.extend(message.get("body", b"")[: AUDIT_BODY_LIMIT - len(body)])
            return message

        async def send_capturing(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        reset = current_request_audit.set(audit)
        try:
            await next_app(scope, receive_capturing if writes else receive, send_capturing)
        finally:
            current_request_audit.reset(reset)
        if writes and 200 <= status < 300 and audit.entries == 0:
            await _generic_entry(runtime, audit, bytes(body))


async def _generic_entry(runtime: Any, audit: RequestAudit, body: bytes) -> None:
    from central.services.audit import record_change

    after: Any
    try:
        after = json.loads(body) if body else None
    except ValueError:
        after = {"body": body.decode("utf-8", "replace")}
    try:
        async with runtime.sessionmaker() as session, session.begin():
            await record_change(
                session, action="request", target=audit.path, after=after, actor=audit
            )
    except Exception:
        # The change itself is committed; a lost audit line must be loud, not fatal.
        log.exception("audit entry of %s %s not recorded", audit.method, audit.path)


def authorize(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """App-level guard: the caller's role must be one the route allows."""
    path = connection.scope["path"]
    if handler.opt.get("public") or is_public_path(path):
        return
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal):
        raise NotAuthorizedException("credentials are required", headers=BEARER_CHALLENGE)
    method = str(connection.scope.get("method", "GET"))
    allowed = required_roles(method, path, handler.opt)
    if Role(principal.role) not in allowed:
        roles = ", ".join(sorted(r.value for r in allowed))
        raise PermissionDeniedException(
            f"role {principal.role!r} may not {method} {path}; allowed: {roles}"
        )
