"""The summary backlog (PostgreSQL): the per-product report rows an ingest batch stores
and one applier at a time adds to their tables later, and every report before it
reads them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import date
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from central.db import QUERY_CANCELED, create_sessionmaker, limit_statement_time, sqlstate_of
from central.embedded_nats import EmbeddedNats
from central.errors import SummariesBehind
from central.ingest.worker import IngestWorker
from central.models import SalesProductDaily, SummaryBacklog, SummaryRejected
from central.reports import service
from central.reports.backlog import apply_summary_backlog
from tests.central.chain_events import BranchBooks, message, publish_books
from tests.central.summaries import assert_kept_equals_rebuilt
from tests.conftest import PG_URL_ENV, central_settings, running_central, wait_until

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"needs {PG_URL_ENV}"),
]

NOV_1, NOV_30 = date(2026, 11, 1), date(2026, 11, 30)


def _history(books: BranchBooks, sales: int) -> None:
    for n in range(sales):
        books.sale([("MILK", 1_000 + n, 199), ("BREAD", 500, 320)])


async def _ingest(engine: AsyncEngine, books: BranchBooks, start: int = 0) -> None:
    worker = IngestWorker(create_sessionmaker(engine))
    events = books.events[start:]
    for first in range(0, len(events), 5):
        stats = await worker.process([message(e) for e in events[first : first + 5]])
        assert stats.dead_letters == 0


async def _waiting(engine: AsyncEngine) -> int:
    async with create_sessionmaker(engine)() as session:
        return int(await session.scalar(select(func.count()).select_from(SummaryBacklog)) or 0)


async def _health(engine: AsyncEngine) -> Any:
    async with create_sessionmaker(engine)() as session:
        return await service.sync_health(session)


async def _sold(engine: AsyncEngine) -> dict[str, int]:
    async with create_sessionmaker(engine)() as session:
        rows = await session.execute(
            select(SalesProductDaily.sku, func.sum(SalesProductDaily.qty_milli)).group_by(
                SalesProductDaily.sku
            )
        )
        return {sku: int(qty) for sku, qty in rows}


async def _stocked_books() -> BranchBooks:
    books = BranchBooks("B1")
    books.document("goods_receipt", [("MILK", 500_000, 100), ("BREAD", 100_000, 150)])
    return books


async def test_batches_leave_their_rows_and_applying_adds_them_once(
    pg_engine: AsyncEngine,
) -> None:
    books = await _stocked_books()
    _history(books, 30)
    await _ingest(pg_engine, books)
    waiting = await _waiting(pg_engine)
    # One row per event and product: the goods receipt's two, each sale's two.
    assert waiting == 2 + 30 * 2
    assert await _sold(pg_engine) == {}
    assert (await _health(pg_engine)).summary_backlog == waiting
    assert await apply_summary_backlog(pg_engine) == waiting
    assert await _waiting(pg_engine) == 0
    assert (await _health(pg_engine)).summary_backlog == 0
    assert await _sold(pg_engine) == books.sold_milli
    assert await apply_summary_backlog(pg_engine) == 0
    assert await _sold(pg_engine) == books.sold_milli
    await assert_kept_equals_rebuilt(create_sessionmaker(pg_engine))


async def test_appliers_at_once_apply_every_row_once(pg_engine: AsyncEngine) -> None:
    books = await _stocked_books()
    _history(books, 40)
    await _ingest(pg_engine, books)
    waiting = await _waiting(pg_engine)
    applied = await asyncio.gather(
        apply_summary_backlog(pg_engine, wait=True, chunk=9),
        apply_summary_backlog(pg_engine, wait=True, chunk=9),
        apply_summary_backlog(pg_engine, chunk=9),
    )
    assert sum(applied) == waiting
    assert await _waiting(pg_engine) == 0
    assert await _sold(pg_engine) == books.sold_milli
    await assert_kept_equals_rebuilt(create_sessionmaker(pg_engine))


async def test_reports_include_the_rows_still_waiting(pg_engine: AsyncEngine) -> None:
    books = await _stocked_books()
    _history(books, 12)
    await _ingest(pg_engine, books)
    assert await _waiting(pg_engine) > 0
    async with create_sessionmaker(pg_engine)() as session:
        report = await service.sales_report(
            session, date_from=NOV_1, date_to=NOV_30, group_by="product"
        )
    assert {r.sku: r.figures.qty_milli for r in report.rows} == books.sold_milli
    assert await _waiting(pg_engine) == 0


async def test_stock_movement_is_one_moment_while_rows_wait(
    pg_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows stored after the report applied the backlog are in today's balance, not
    yet in the movement tables: the report takes them off the balance too, so it shows
    the moment its movements describe (not an opening off by those sales)."""
    books = await _stocked_books()
    _history(books, 10)
    await _ingest(pg_engine, books)
    sessionmaker = create_sessionmaker(pg_engine)

    async def movement() -> Any:
        async with sessionmaker() as session:
            return await service.stock_movement(
                session, date_from=NOV_1, date_to=NOV_30, branch="B1"
            )

    before = await movement()
    stored = len(books.events)
    _history(books, 5)
    await _ingest(pg_engine, books, start=stored)

    async def not_applied(session: Any) -> None:
        return None

    monkeypatch.setattr(service, "summaries_current", not_applied)
    assert (await movement()).rows == before.rows
    monkeypatch.undo()
    after = await movement()
    assert {r.sku: r.closing_milli for r in after.rows} == books.stock_milli
    assert {r.sku: r.opening_milli for r in after.rows} == {"MILK": 0, "BREAD": 0}


async def test_central_applies_the_backlog_once_the_stream_is_drained(
    pg_engine: AsyncEngine, nats_server: EmbeddedNats
) -> None:
    """No timer (an hour): the in-process worker's applier runs when the worker has
    stored what there was."""
    books = await _stocked_books()
    _history(books, 25)
    settings = central_settings(
        pg_engine.url.render_as_string(hide_password=False),
        nats_server.url,
        summary_interval_s=3600.0,
    )
    async with running_central(settings):
        await publish_books(nats_server.url, books)

        async def applied() -> bool:
            return await _sold(pg_engine) == books.sold_milli

        await wait_until(applied, timeout=20)
    assert await _waiting(pg_engine) == 0


async def test_the_command_line_applies_the_backlog(pg_engine: AsyncEngine) -> None:
    books = await _stocked_books()
    _history(books, 6)
    await _ingest(pg_engine, books)
    waiting = await _waiting(pg_engine)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "central",
        "reports",
        "apply-backlog",
        env={**os.environ, "BACKROOM_DATABASE_URL": pg_engine.url.render_as_string(False)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert json.loads(out) == {"applied": waiting}
    assert await _waiting(pg_engine) == 0
    assert await _sold(pg_engine) == books.sold_milli


async def test_a_row_that_cannot_be_added_is_set_aside_and_holds_up_nothing(
    pg_engine: AsyncEngine,
) -> None:
    """Goods received twice in one day, each 2^62 thousandths (a write-off between, so
    the balance stays in range): their day's sum is beyond 64 bits. The applier halves
    its chunk until that row stands alone, sets it aside, and applies every other row;
    reports keep working."""
    books = BranchBooks("B1")
    books.document("goods_receipt", [("BREAD", 100_000, 150)])
    huge = 2**62
    books.document("goods_receipt", [("SALT", huge, 0)])
    books.document("write_off", [("SALT", -huge, None)])
    _history(books, 3)
    books.document("goods_receipt", [("SALT", huge, 0)])
    _history(books, 4)
    await _ingest(pg_engine, books)
    waiting = await _waiting(pg_engine)
    assert await apply_summary_backlog(pg_engine, chunk=8) == waiting - 1
    assert await _waiting(pg_engine) == 0
    health = await _health(pg_engine)
    assert (health.summary_backlog, health.summary_rejected) == (0, 1)
    async with create_sessionmaker(pg_engine)() as session:
        (rejected,) = (await session.execute(select(SummaryRejected))).scalars().all()
        assert (rejected.sku, rejected.doc_type, rejected.qty) == ("SALT", "goods_receipt", huge)
        assert "out of range" in rejected.error
        report = await service.stock_movement(
            session, date_from=NOV_1, date_to=NOV_30, branch="B1", sku="BREAD"
        )
    # Everything else is in the tables: BREAD's sales to the last one.
    assert await _sold(pg_engine) == books.sold_milli
    (bread,) = report.rows
    assert bread.closing_milli == books.stock_milli["BREAD"]


async def test_a_report_waits_for_another_applier_no_longer_than_its_limit(
    pg_engine: AsyncEngine,
) -> None:
    """The report session's statement timeout bounds the applying it does first: another
    applier holding the backlog (a long chunk) makes it wait 0.5 s, not for ever."""
    books = await _stocked_books()
    _history(books, 5)
    await _ingest(pg_engine, books)
    waiting = await _waiting(pg_engine)
    async with pg_engine.connect() as applier:
        await applier.execute(text(_LOCK_AS_APPLIER))
        async with create_sessionmaker(pg_engine)() as session:
            await limit_statement_time(session, 0.5)
            started = time.monotonic()
            with pytest.raises(DBAPIError) as cancelled:
                async with asyncio.timeout(10):  # without the limit: waits for the lock
                    await service.sales_report(
                        session, date_from=NOV_1, date_to=NOV_30, group_by="product"
                    )
            assert sqlstate_of(cancelled.value) == QUERY_CANCELED
            assert 0.5 <= time.monotonic() - started < 5
        await applier.rollback()
    assert await _waiting(pg_engine) == waiting
    async with create_sessionmaker(pg_engine)() as session:
        await limit_statement_time(session, 30)
        report = await service.sales_report(
            session, date_from=NOV_1, date_to=NOV_30, group_by="product"
        )
    assert {r.sku: r.figures.qty_milli for r in report.rows} == books.sold_milli


async def test_applying_for_a_report_stops_at_its_limit_and_keeps_what_it_added(
    pg_engine: AsyncEngine,
) -> None:
    """A backlog longer than a report's time limit (after an outage): the report gets a
    clear error once the limit has passed, the chunks added by then stay, and the next
    applier goes on from there to the same totals."""
    books = await _stocked_books()
    _history(books, 150)
    await _ingest(pg_engine, books)
    waiting = await _waiting(pg_engine)
    with pytest.raises(SummariesBehind) as behind:
        # One row a transaction: some 300 transactions, far beyond 0.2 s.
        await apply_summary_backlog(pg_engine, wait=True, chunk=1, time_limit_s=0.2)
    left = await _waiting(pg_engine)
    assert 0 < left < waiting
    assert f"{waiting - left:,} rows were added in 0.2 s" in behind.value.detail
    assert behind.value.status == 503
    assert await apply_summary_backlog(pg_engine) == left
    assert await _sold(pg_engine) == books.sold_milli
    await assert_kept_equals_rebuilt(create_sessionmaker(pg_engine))


# What an applier at work holds (central.reports.projections).
_LOCK_AS_APPLIER = "LOCK TABLE rpt_summary_backlog IN SHARE UPDATE EXCLUSIVE MODE"
