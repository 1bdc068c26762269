"""Errors of the agent's services, shown to tills as RFC 9457 problem details."""

from __future__ import annotations

__all__ = [
    "AgentError",
    "Conflict",
    "DeviceFailed",
    "Forbidden",
    "Gone",
    "NotFound",
    "Rejected",
    "StorageFull",
]


class AgentError(Exception):
    status = 400
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        field: str | None = None,
        fields: tuple[tuple[str, str], ...] = (),
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        # Several fields at fault, each with its own message (``field`` is the first).
        self.fields = fields
        # What the problem's reader can use beside the words (the problem's ``extra``).
        self.extra = extra


class Rejected(AgentError):
    status = 422
    title = "Invalid input"


class Forbidden(AgentError):
    status = 403
    title = "Forbidden"


class NotFound(AgentError):
    status = 404
    title = "Not found"


class Conflict(AgentError):
    status = 409
    title = "Conflict"


class Gone(AgentError):
    """What was asked for existed here once and no longer does (and will not again)."""

    status = 410
    title = "Gone"


class StorageFull(AgentError):
    """The local database cannot grow: new facts are refused, recorded ones stay intact."""

    status = 507
    title = "Storage full"


class DeviceFailed(AgentError):
    """A device the operation needs did not do it (the condition is in the detail)."""

    status = 503
    title = "Device unavailable"

    def __init__(self, detail: str, *, condition: str = "", field: str | None = None) -> None:
        super().__init__(detail, field=field)
        self.condition = condition
