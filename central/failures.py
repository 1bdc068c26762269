"""Logging a failure that repeats (a database or NATS outage retried every second) as
one line when it starts or changes and one when it ends, never one per retry."""

from __future__ import annotations

import logging
import time

from central.db import database_unavailable

__all__ = ["FailureLog", "one_line"]


def one_line(exc: BaseException) -> str:
    """The exception as one line: its type and first line of text (``None`` texts of
    nats-py's errors left out)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class FailureLog:
    """The failure state of one retried activity (``what``, e.g. "ingest batch")."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.reason: str | None = None
        self.failures = 0
        self._since = 0.0

    def failed(self, reason: str, *, retry: str, exc: BaseException | None = None) -> None:
        """Another failure: logged when it is the first or its reason changed. ``exc``:
        its traceback with that line (an unexpected error, not an outage)."""
        if reason != self.reason:
            if self.reason is None:
                self._since = time.monotonic()
            self.logger.warning(
                "%s failing: %s; %s (logged again when this changes)",
                self.what,
                reason,
                retry,
                exc_info=exc,
            )
        self.reason = reason
        self.failures += 1

    def failed_on_database(self, exc: BaseException, *, retry: str) -> None:
        """A failure of work on the database: an outage is named in one line, anything
        else (a bug) gets its traceback once."""
        outage = database_unavailable(exc)
        self.failed(
            f"database unavailable: {outage}" if outage else one_line(exc),
            retry=retry,
            exc=None if outage else exc,
        )

    def ok(self) -> None:
        """It worked: the end of a failure, if one was going on, is logged."""
        if self.reason is None:
            return
        self.logger.warning(
            "%s recovered after %d failed attempts in %.1f s (last: %s)",
            self.what,
            self.failures,
            time.monotonic() - self._since,
            self.reason,
        )
        self.reason = None
        self.failures = 0
