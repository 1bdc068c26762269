"""Two shifts under one id (an agent from before unique shift ids, restored from a
backup or replaced): central filed the second opening and closing over the first,
losing its float and Z and showing a shift closed before it opened. Now an opening or
closing for a shift that holds another one is kept apart, whole, and shown."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import func, select

from central.db import create_engine, create_sessionmaker
from central.ingest.worker import IngestWorker
from central.models import ShiftIdConflict
from central.reports import service
from central.services.branches import add_branch
from central.services.shifts import list_shifts
from protocol import ShiftClosed, ShiftOpened, ZReportTotals
from tests.central.chain_events import BranchBooks, message


async def _shifts(sessionmaker: Any) -> dict[str, Any]:
    async with sessionmaker() as session:
        page = await list_shifts(
            session, branch="B1", till=None, date_from=None, date_to=None, limit=100, offset=0
        )
    return {s.shift_id: s for s in page.items}


def _close(books: BranchBooks, shift: str, cashier: str, receipts: int, z: int) -> Any:
    total = 100 * receipts
    return books._add(
        ShiftClosed(
            till="T2",
            shift_id=shift,
            cashier=cashier,
            receipts_count=receipts,
            sales_total=total,
            payments_by_type={"cash": total},
            z_report=ZReportTotals(
                report_number=z, turnover_by_vat_group={"B": total}, receipts_count=receipts
            ),
        )
    )


async def test_a_second_shift_under_a_held_id_is_kept_apart_not_merged(db_url: str) -> None:
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await add_branch(session, code="B1", name="B1")
    worker = IngestWorker(sessionmaker)
    books = BranchBooks("B1")
    eve_open = books._add(ShiftOpened(till="T2", shift_id="T2-2", cashier="eve", opening_float=777))
    eve_close = _close(books, "T2-2", "eve", 2, 7)
    # The restored database gives T2-2 again: zoe's opening, and later a closing.
    zoe_open = books._add(ShiftOpened(till="T2", shift_id="T2-2", cashier="zoe", opening_float=1))
    zoe_close = _close(books, "T2-2", "zoe", 1, 8)
    # A shift whose closing arrives before its opening is still one shift (either order).
    late_open = books._add(ShiftOpened(till="T2", shift_id="T2-3", cashier="max"))
    late_close = _close(books, "T2-3", "max", 0, 9)
    try:
        await worker.process([message(e) for e in (eve_open, eve_close, zoe_open, late_close)])
        await worker.process([message(e) for e in (zoe_close, late_open)])
        shifts = await _shifts(sessionmaker)
        eve = shifts["T2-2"]
        # Eve's shift as she had it: her float, her closing and Z, opened before closed.
        assert (eve.cashier, eve.opening_float, eve.status) == ("eve", 777, "closed")
        assert (eve.reported.receipts_count, eve.z_report_number) == (2, 7)
        assert eve.opened_at is not None
        assert eve.closed_at is not None
        assert eve.opened_at < eve.closed_at
        # Zoe's opening and closing, whole, beside it.
        assert [
            (c.kind, c.event_id, c.cashier, c.opening_float, c.receipts_count, c.z_report_number)
            for c in eve.id_conflicts
        ] == [
            ("opened", zoe_open.event_id, "zoe", 1, None, None),
            ("closed", zoe_close.event_id, "zoe", None, 1, 8),
        ]
        max_shift = shifts["T2-3"]
        assert (max_shift.status, max_shift.z_report_number, max_shift.id_conflicts) == (
            "closed",
            9,
            [],
        )
        async with sessionmaker() as session:
            report = await service.shift_reconciliation(
                session, date_from=date(2026, 11, 27), date_to=date(2026, 11, 27), branch="B1"
            )
        row = next(r for r in report.rows if r.shift_id == "T2-2")
        assert row.id_conflicts == 2
        # (no receipts here: the counts of the closing differ too)
        assert ("id_conflicts", "central", 0, 2) in [
            (d.field, d.source, d.recorded, d.reported) for d in row.differences
        ]

        # Redelivered, every one of them (and once more inside a batch): nothing doubles.
        everything = [eve_open, eve_close, zoe_open, zoe_close, late_open, late_close]
        again = await worker.process([message(e) for e in [*everything, zoe_open]])
        assert again.stored == 0
        assert await _shifts(sessionmaker) == shifts
        async with sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(ShiftIdConflict)) == 2
    finally:
        await engine.dispose()
