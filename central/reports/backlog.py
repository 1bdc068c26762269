"""The summary backlog (PostgreSQL): per-product summary rows ingestion has stored and
the applier has not yet added to their tables.

Ingest batches used to upsert some 13,000 per-product summary rows each, holding their
locks until commit, so two workers waited on each other for most of a batch. They now
COPY those rows into ``rpt_summary_backlog`` in their own transaction (an event and
its backlog rows are stored together, exactly once), and one applier at a time adds
them to the tables: every ``summary_interval_s`` and whenever the up stream runs dry,
from each ingest process (whichever gets the backlog's lock; the others skip), and
before every report that reads those
tables, so a report always includes every event stored before it started. Rows that
arrived in one second for the same (branch, day, product) become one upsert.

SQLite (one writer, the embedded set-up) writes those tables in the batch's
transaction as before: its backlog stays empty and every call here returns at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import TypeVar

from sqlalchemy import Interval, cast, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from central.errors import SummariesBehind
from central.failures import FailureLog
from central.models.reports import SummaryBacklog
from central.reports.projections import BacklogBusy, apply_backlog, set_aside_first

__all__ = [
    "BACKLOG_CHUNK",
    "SummaryApplier",
    "apply_summary_backlog",
    "summaries_current",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Rows per applying transaction (about 30,000 receipts of 8 lines): a long backlog is
# applied in several commits rather than one transaction holding everything.
BACKLOG_CHUNK = 250_000


async def apply_summary_backlog(
    engine: AsyncEngine,
    *,
    wait: bool = False,
    chunk: int = BACKLOG_CHUNK,
    crash_before_commit: bool = False,
    time_limit_s: float = 0,
) -> int:
    """Apply the whole backlog, a chunk per transaction; the rows applied.

    ``wait``: wait for another applier to finish, then apply what is left (reports);
    otherwise return 0 at once when one is at work (the periodic appliers).
    ``time_limit_s`` (a report's own limit; 0: none): every statement may run that
    long, the wait for another applier included, then the database cancels it
    (SQLSTATE 57014); and once that much time has passed with rows still waiting,
    :class:`SummariesBehind` is raised. The chunks applied by then stay committed, so
    the next report (or the periodic applier) goes on from there.
    A chunk the database refuses for its data (a sum beyond 64 bits) is halved until
    the row at fault stands alone, which is set aside in ``rpt_summary_rejected``
    (logged, counted by sync health): one bad row never holds up the others.
    ``crash_before_commit``: fault injection for the kill test (exit with the chunk
    applied but not committed)."""
    if engine.dialect.name != "postgresql":
        return 0
    total = 0
    size = chunk
    started = time.monotonic()
    while True:
        try:
            taken = await _in_transaction(
                engine,
                partial(apply_backlog, limit=size, wait=wait),
                crash_before_commit,
                time_limit_s,
            )
        except BacklogBusy:
            return total
        except DBAPIError as exc:
            if not _data_error(exc):
                raise
            if size > 1:
                size //= 2
                continue
            error = str(exc.orig)[:2000]
            moved = await _in_transaction(engine, partial(set_aside_first, error=error), False)
            log.error("summary backlog row %s set aside, it cannot be added: %s", moved, error)
            size = chunk
            continue
        total += taken
        if taken < size:
            return total
        if time_limit_s > 0 and time.monotonic() - started >= time_limit_s:
            raise SummariesBehind(
                f"the report summaries are still taking in stored events (a backlog after "
                f"a burst or an outage): {total:,} rows were added in {time_limit_s:g} s "
                "(report_statement_timeout_s) and are kept; try again in a minute"
            )


def _data_error(exc: DBAPIError) -> bool:
    # SQLSTATE class 22, data exception (22003: a bigint sum out of range).
    return str(getattr(exc.orig, "sqlstate", "")).startswith("22")


async def _in_transaction(
    engine: AsyncEngine,
    work: Callable[[Session], T],
    crash_before_commit: bool,
    time_limit_s: float = 0,
) -> T:
    """``work`` in a REPEATABLE READ transaction of its own, committed; each statement
    limited to ``time_limit_s`` (0: not limited)."""
    async with engine.connect() as plain:
        conn = await plain.execution_options(isolation_level="REPEATABLE READ")
        async with AsyncSession(bind=conn) as session, session.begin():
            if time_limit_s > 0:
                # SET takes no snapshot: ``work`` still locks before its first read.
                milliseconds = max(1, round(time_limit_s * 1000))
                await session.execute(text(f"SET LOCAL statement_timeout = {milliseconds}"))
            result = await session.run_sync(work)
            if result and crash_before_commit:
                from central.ingest.worker import CRASH_EXIT_CODE

                log.error("fault injection: exiting with the backlog applied, uncommitted")
                os._exit(CRASH_EXIT_CODE)
            return result


async def summaries_current(session: AsyncSession) -> None:
    """Before a report reads the per-product tables: apply what is waiting (in
    transactions of their own; nothing to do, one index probe), within the report's
    own statement timeout (:func:`central.db.limit_statement_time`), which bounds the
    whole applying too (:class:`SummariesBehind` beyond it)."""
    engine = session.bind
    if not isinstance(engine, AsyncEngine) or engine.dialect.name != "postgresql":
        return
    first = select(SummaryBacklog.id).order_by(SummaryBacklog.id).limit(1).scalar_subquery()
    limit = func.extract("epoch", cast(func.current_setting("statement_timeout"), Interval))
    waiting, limit_s = (await session.execute(select(first, limit))).one()
    if waiting is not None:
        await apply_summary_backlog(engine, wait=True, time_limit_s=float(limit_s))


class SummaryApplier:
    """Applies the backlog every ``interval_s``, and at once when :meth:`wake` is
    called (an ingest worker found nothing to fetch); one per ingest process.

    A longer interval means bigger chunks, and rows of one (branch, day, product) that
    arrive within it become one upsert: applying 30,000 receipts of 8 lines (20
    branches x 2,000 products) in one chunk took 3.7 s, in chunks of 2,000 receipts
    about 13 s. Reports apply what is waiting themselves, so the interval never makes
    a report stale; it bounds how much a report may have to apply first."""

    def __init__(
        self, engine: AsyncEngine, *, interval_s: float, crash_before_commit: bool = False
    ) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.crash_before_commit = crash_before_commit
        self.applied = 0
        self._woken = asyncio.Event()
        self.failures = FailureLog(log, "summary backlog applier")

    def wake(self) -> None:
        self._woken.set()

    async def run(self, stop: asyncio.Event) -> None:
        if self.engine.dialect.name != "postgresql":
            return
        while not stop.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self.interval_s)
            self._woken.clear()
            if stop.is_set():
                break
            try:
                self.applied += await apply_summary_backlog(
                    self.engine, crash_before_commit=self.crash_before_commit
                )
            except Exception as exc:  # database unavailable: the rows wait, try again
                self.failures.failed_on_database(exc, retry="the rows wait and it is tried again")
            else:
                self.failures.ok()
