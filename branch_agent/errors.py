"""Errors of the agent's services, shown to tills as RFC 9457 problem details."""

from __future__ import annotations

__all__ = ["AgentError", "Conflict", "NotFound", "Rejected"]


class AgentError(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class Rejected(AgentError):
    status = 422
    title = "Invalid input"


class NotFound(AgentError):
    status = 404
    title = "Not found"


class Conflict(AgentError):
    status = 409
    title = "Conflict"
