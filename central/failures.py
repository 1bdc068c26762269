"""Logging a failure that repeats (a database or NATS outage retried every second) as
one line when it starts or changes and one when it ends, never one per retry."""

from __future__ import annotations

import logging
import time

from central.db import database_unavailable

__all__ = ["FailureLog", "nats_reason", "one_line"]


def one_line(exc: BaseException) -> str:
    """The exception as one line: its type and first line of text (``None`` texts of
    nats-py's errors left out)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def nats_reason(exc: BaseException) -> str:
    """A NATS failure in words: nats-py's JetStream errors often carry no text at all
    (``code=None err_code=None description='None'``)."""
    from nats.errors import NoRespondersError
    from nats.js.errors import APIError, ServiceUnavailableError

    if isinstance(exc, ServiceUnavailableError) and not exc.description:
        return (
            "JetStream unavailable (503: no leader for the stream or consumer; "
            "a NATS node lost or restarting, or no JetStream quorum)"
        )
    if isinstance(exc, NoRespondersError):
        return "no JetStream server answered (JetStream down or not enabled)"
    if isinstance(exc, APIError) and exc.description:
        return f"JetStream error {exc.err_code or exc.code}: {exc.description}"
    text = str(exc).removeprefix("nats: ").strip()
    if "authorization violation" in text.lower():
        return f"{text}: the server refused central's credentials (nats_creds missing or wrong?)"
    return text if text else type(exc).__name__


class FailureLog:
    """The failure state of one retried activity (``what``, e.g. "ingest batch")."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.reason: str | None = None
        self.failures = 0
        self._since = 0.0
        self._seen: set[str] = set()

    def failed(self, reason: str, *, retry: str, exc: BaseException | None = None) -> None:
        """Another failure: logged when it starts the failure or its reason is new in
        it (reasons that alternate, a refusal then the reset that follows it, are logged
        once each). ``exc``: its traceback with that line (a bug, not an outage)."""
        if self.reason is None:
            self._since = time.monotonic()
        if reason not in self._seen:
            self._seen.add(reason)
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
        self._seen.clear()
