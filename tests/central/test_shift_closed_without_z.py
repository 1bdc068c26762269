"""A shift closed without Z figures by the store manager's decision (its printer gone):
the closing says whether a Z report was printed at all (``z_printed``), central keeps it
and shows it in the shift list and the shift reconciliation, beside ``z_matches`` null.
A closing from before the field, or one with a Z, says nothing (null)."""

from __future__ import annotations

import msgspec

from central.db import create_engine, create_sessionmaker
from central.ingest.worker import IngestWorker
from central.reports import service
from central.services.branches import add_branch
from protocol import ShiftClosed, ShiftOpened, ZReportTotals
from protocol.codec import decode_envelope
from tests.central.chain_events import BranchBooks, message
from tests.central.test_shift_id_conflicts import _shifts


def _closed(shift: str, z: ZReportTotals | None, z_printed: bool | None) -> ShiftClosed:
    return ShiftClosed(
        till="T1",
        shift_id=shift,
        receipts_count=1,
        sales_total=100,
        payments_by_type={"cash": 100},
        z_report=z,
        z_printed=z_printed,
    )


async def test_a_close_without_z_says_no_z_was_printed_at_central(db_url: str) -> None:
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await add_branch(session, code="B1", name="B1")
    worker = IngestWorker(sessionmaker)
    books = BranchBooks("B1")
    z = ZReportTotals(report_number=3, turnover_by_vat_group={"B": 100}, receipts_count=1)
    events = [
        books._add(ShiftOpened(till="T1", shift_id="T1-1")),
        books._add(_closed("T1-1", None, False)),  # printer gone before the close
        books._add(ShiftOpened(till="T1", shift_id="T1-2")),
        books._add(_closed("T1-2", None, True)),  # the old printer printed it, unread
        books._add(ShiftOpened(till="T1", shift_id="T1-3")),
        books._add(_closed("T1-3", z, None)),
    ]
    try:
        await worker.process([message(e) for e in events])
        shifts = await _shifts(sessionmaker)
        assert {k: (s.z_printed, s.z_matches) for k, s in shifts.items()} == {
            "T1-1": (False, None),
            "T1-2": (True, None),
            "T1-3": (None, False),  # no receipts recorded at central: the Z differs
        }
        day = shifts["T1-1"].local_date
        async with sessionmaker() as session:
            report = await service.shift_reconciliation(
                session, date_from=day, date_to=day, branch="B1"
            )
        assert {r.shift_id: r.z_printed for r in report.rows} == {
            "T1-1": False,
            "T1-2": True,
            "T1-3": None,
        }
    finally:
        await engine.dispose()


def test_an_older_agents_closing_decodes_without_z_printed() -> None:
    books = BranchBooks("B1")
    env = books._add(_closed("T1-1", None, False))
    as_dict = msgspec.to_builtins(env)
    del as_dict["body"]["z_printed"]
    body = decode_envelope(msgspec.msgpack.encode(as_dict)).body
    assert isinstance(body, ShiftClosed)
    assert body.z_printed is None
