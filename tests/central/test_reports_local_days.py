"""Local days: a shift over midnight, DST hours, branches in three zones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from branch_agent.outbox import utc_offset_min
from central.db import create_engine, create_sessionmaker
from central.ingest.worker import IngestWorker, MessageIn
from central.reports import service
from central.reports.backlog import apply_summary_backlog
from central.reports.rebuild import rebuild_summaries, summary_rows
from central.services.branches import add_branch
from central.services.receipts import ReceiptQuery, list_receipts
from protocol import EventEnvelope, Payment, encode, up_subject
from protocol.events import ShiftClosed, ShiftOpened, event_kind
from protocol.ids import new_event_id
from tests.central.reports_history import line, sale
from tests.central.test_reports import _catalog

ZONES = {"BER": "Europe/Berlin", "KOL": "Asia/Kolkata", "NYC": "America/New_York"}


def envelopes(*events: tuple[str, str, Any]) -> list[MessageIn]:
    """(branch, local ISO time with offset, body): offsets as the agent computes them."""
    seq: dict[str, int] = {}
    out = []
    for branch, when, body in events:
        seq[branch] = seq.get(branch, 0) + 1
        moment = datetime.fromisoformat(when).astimezone(UTC)
        env = EventEnvelope(
            event_id=new_event_id(),
            branch=branch,
            seq=seq[branch],
            occurred_at=moment,
            utc_offset_min=utc_offset_min(ZONES[branch], moment),
            body=body,
        )
        out.append(MessageIn(subject=up_subject(branch, event_kind(body)), data=encode(env)))
    return out


def sold(n: int, amount: int, shift: str = "S1") -> Any:
    return sale(
        f"r{n}",
        shift,
        "ann",
        (line(1, "A", 1000, amount, amount, 2000),),
        (Payment(type="cash", amount=amount),),
    )


@pytest.fixture
async def ingest(db_url: str) -> AsyncIterator[Any]:
    engine = create_engine(db_url)
    sm = create_sessionmaker(engine)
    async with sm() as s, s.begin():
        for code, tz in ZONES.items():
            await add_branch(s, code=code, name=code, timezone=tz)
        await _catalog(s)

    async def run(*events: tuple[str, str, Any]) -> async_sessionmaker[AsyncSession]:
        assert (await IngestWorker(sm).process(envelopes(*events))).dead_letters == 0
        # PostgreSQL leaves the per-product summaries in the backlog: applied, so the
        # tables compared with their rebuild hold every event (SQLite: nothing waits).
        await apply_summary_backlog(engine)
        return sm

    try:
        yield run
    finally:
        await engine.dispose()


async def test_a_shift_opened_before_midnight_is_reconciled_on_its_own_day_only(
    ingest: Any,
) -> None:
    sm = await ingest(
        ("BER", "2026-03-28T23:00:00+01:00", ShiftOpened(till="T1", shift_id="S1", cashier="ann")),
        ("BER", "2026-03-29T00:30:00+01:00", sold(1, 100)),
        (
            "BER",
            "2026-03-29T01:30:00+01:00",
            ShiftClosed(
                till="T1",
                shift_id="S1",
                cashier="ann",
                receipts_count=2,
                sales_total=100,
                payments_by_type={"cash": 100},
            ),
        ),
    )
    rows = {}
    for day in (date(2026, 3, 28), date(2026, 3, 29)):
        async with sm() as s:
            rep = await service.shift_reconciliation(s, date_from=day, date_to=day, branch="BER")
        rows[day] = [(r.shift_id, r.local_date, r.closed, len(r.differences)) for r in rep.rows]
    # The day of a shift is the day it was opened (its one difference: 2 receipts vs 1).
    assert rows == {date(2026, 3, 28): [("S1", date(2026, 3, 28), True, 1)], date(2026, 3, 29): []}


async def test_sales_by_hour_on_dst_days_in_berlin(ingest: Any) -> None:
    sm = await ingest(
        ("BER", "2026-03-29T01:30:00+01:00", sold(1, 100)),
        ("BER", "2026-03-29T03:30:00+02:00", sold(2, 200)),
        ("BER", "2026-03-29T23:30:00+02:00", sold(3, 300)),
        ("BER", "2026-10-25T02:30:00+02:00", sold(4, 400)),
        ("BER", "2026-10-25T02:30:00+01:00", sold(5, 500)),
        ("BER", "2026-10-25T23:30:00+01:00", sold(6, 600)),
    )

    async def hours() -> dict[Any, int]:
        async with sm() as s:
            rep = await service.sales_report(
                s,
                date_from=date(2026, 3, 29),
                date_to=date(2026, 10, 25),
                branch="BER",
                group_by="day,hour",
                compare=False,
            )
        return {(r.local_date, r.hour): r.figures.revenue for r in rep.rows}

    expected = {
        (date(2026, 3, 29), 1): 100,
        (date(2026, 3, 29), 3): 200,
        (date(2026, 3, 29), 23): 300,
        (date(2026, 10, 25), 2): 900,
        (date(2026, 10, 25), 23): 600,
    }
    assert await hours() == expected
    async with sm() as s:
        before = await summary_rows(s)
    async with sm() as s, s.begin():
        await rebuild_summaries(s)
    async with sm() as s:
        assert await summary_rows(s) == before
    assert await hours() == expected


async def test_each_branch_its_own_local_day_in_one_range(ingest: Any) -> None:
    events = []
    for n, (branch, offset) in enumerate((("KOL", "+05:30"), ("NYC", "-05:00"), ("BER", "+01:00"))):
        events += [
            (branch, f"2026-01-31T23:50:00{offset}", sold(10 * n + 1, 100, f"{branch}1")),
            (branch, f"2026-02-01T00:10:00{offset}", sold(10 * n + 2, 200, f"{branch}1")),
        ]
    sm = await ingest(*events)
    feb1 = date(2026, 2, 1)
    async with sm() as s:
        rep = await service.sales_report(s, date_from=feb1, date_to=feb1, group_by="branch,day")
        page = await list_receipts(s, ReceiptQuery(date_from=feb1, date_to=feb1))
    assert {
        (r.branch, r.local_date): (r.figures.revenue, r.previous.revenue if r.previous else None)
        for r in rep.rows
    } == {(b, feb1): (200, 100) for b in ZONES}
    assert sorted((r.branch, r.occurred_at_local) for r in page.items) == [
        ("BER", "2026-02-01T00:10:00+01:00"),
        ("KOL", "2026-02-01T00:10:00+05:30"),
        ("NYC", "2026-02-01T00:10:00-05:00"),
    ]
