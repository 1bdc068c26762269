"""Domain errors that the web API turns into RFC 9457 problem details."""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "ConflictError",
    "DomainError",
    "NotFoundError",
    "ReportTooSlow",
    "SummariesBehind",
    "ValidationFailed",
    "check_aware",
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


def check_aware(moment: datetime | None, field: str) -> None:
    """A moment given to the API (body or query) must say its UTC offset: a bare
    wall-clock time is a different moment in each branch's zone. A 422 naming ``field``
    (never a 500 from comparing it with the stored, aware moments)."""
    if moment is not None and moment.tzinfo is None:
        raise ValidationFailed(
            f"{field} needs a time zone (an offset or Z, e.g. 2026-12-01T06:00:00Z)",
            field=field,
        )
