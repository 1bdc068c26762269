"""Who is calling: the authenticated principal and the audit state of one request."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = ["Principal", "RequestAudit", "current_request_audit"]


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    name: str
    role: str
    token_id: int


@dataclass(slots=True)
class RequestAudit:
    """Set by the API middleware for each authenticated request; read by ``record_change``."""

    actor: str
    actor_role: str
    method: str = ""
    path: str = ""
    # Services that recorded their own before/after set this; the middleware then
    # adds no generic entry for the request.
    entries: int = 0
    extra: dict[str, str] = field(default_factory=dict)


current_request_audit: ContextVar[RequestAudit | None] = ContextVar(
    "current_request_audit", default=None
)
