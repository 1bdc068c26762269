"""Domain errors that the web API turns into RFC 9457 problem details."""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "DomainError",
    "NotFoundError",
    "ReportTooSlow",
    "SummariesBehind",
    "ValidationFailed",
]


class DomainError(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class ValidationFailed(DomainError):
    status = 422
    title = "Invalid input"


class NotFoundError(DomainError):
    status = 404
    title = "Not found"


class ConflictError(DomainError):
    status = 409
    title = "Conflict"


class ReportTooSlow(DomainError):
    """The database cancelled a report's statement at ``report_statement_timeout_s``."""

    status = 503
    title = "Report took too long"


class SummariesBehind(DomainError):
    """A report's summary tables were still taking in stored events when its time
    limit (``report_statement_timeout_s``) ran out; what was added is kept."""

    status = 503
    title = "Report summaries are catching up"
