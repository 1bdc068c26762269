"""What a branch learns late about its fiscal printers, at central: a fiscal number found
after the sale went up without one (set once, found by fiscal number, counted as fiscal
on its shift; redelivered or sent again it changes nothing; refused with a reason for a
receipt central does not hold or that has another number; kept until its receipt
arrives when it comes first), and managers' interventions on the printers (stored,
listed on their shift and through the API). Real SQLite (and PostgreSQL when set)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.db import create_engine, create_sessionmaker
from central.ingest.fiscal import sweep_waiting_fiscal_numbers
from central.ingest.worker import IngestWorker
from central.models import DeadLetter, LateFiscalNumberRow, Receipt
from central.services.branches import add_branch
from central.services.fiscal import list_fiscal_interventions
from central.services.receipts import ReceiptQuery, list_receipts
from central.services.shifts import list_shifts
from protocol.events import LateFiscalNumber, ReceiptRecorded
from tests.central.chain_events import BranchBooks, message
from tests.conftest import register_branch


@pytest.fixture
async def sessionmaker(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    maker = create_sessionmaker(engine)
    async with maker() as session, session.begin():
        await add_branch(session, code="B1", name="B1")
    yield maker
    await engine.dispose()


async def _receipt(maker: async_sessionmaker[AsyncSession], sale_id: str) -> Receipt:
    async with maker() as session:
        found = await session.scalar(select(Receipt).where(Receipt.sale_id == sale_id))
    assert found is not None
    return found


def _sale_id(envelope: Any) -> str:
    assert isinstance(envelope.body, ReceiptRecorded)
    return envelope.body.sale_id


async def _shift(maker: async_sessionmaker[AsyncSession]) -> Any:
    async with maker() as session:
        page = await list_shifts(
            session, branch="B1", till=None, date_from=None, date_to=None, limit=10, offset=0
        )
    (shift,) = page.items
    return shift


async def test_a_late_fiscal_number_reaches_the_receipt_once(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    books = BranchBooks("B1")
    books.document("goods_receipt", [("MILK", 10_000, 100)])
    books.open_shift()
    unfiscal = books.sale([("MILK", 1_000, 199)], unfiscal=True)
    books.sale([("MILK", 1_000, 199)])
    worker = IngestWorker(sessionmaker)
    await worker.process([message(e) for e in books.events])
    assert (await _receipt(sessionmaker, _sale_id(unfiscal))).fiscal_number is None
    assert (await _shift(sessionmaker)).unfiscal_receipts == 1

    late = books.late_fiscal_number(unfiscal, "77")
    books.close_shift()
    stored = await worker.process([message(late), message(books.events[-1])])
    assert (stored.stored, stored.dead_letters) == (2, 0)
    receipt = await _receipt(sessionmaker, _sale_id(unfiscal))
    assert (receipt.fiscal_number, receipt.fiscalized_at) == ("77", unfiscal.occurred_at)
    async with sessionmaker() as session:
        found = await list_receipts(session, ReceiptQuery(fiscal_number="77", limit=10, offset=0))
    assert [(r.sale_id, r.fiscalized_at) for r in found.items] == [
        (_sale_id(unfiscal), unfiscal.occurred_at)
    ]
    shift = await _shift(sessionmaker)
    assert (shift.unfiscal_receipts, shift.recorded.receipts_count, shift.z_matches) == (
        0,
        2,
        True,
    )

    # Redelivered: a duplicate, nothing applied twice.
    again = await worker.process([message(e) for e in books.events])
    assert (again.stored, again.duplicates, again.dead_letters) == (0, len(books.events), 0)
    # The same number sent again under a new event (an agent restored from a backup):
    # stored, changes nothing.
    resent = books._add(late.body)
    assert (await worker.process([message(resent)])).stored == 1
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                select(LateFiscalNumberRow.status, LateFiscalNumberRow.applied_at.is_not(None))
            )
        ).all()
        letters = (await session.scalars(select(DeadLetter))).all()
    assert sorted(tuple(r) for r in rows) == [("already", True), ("applied", True)]
    assert letters == []
    assert (await _receipt(sessionmaker, _sale_id(unfiscal))).fiscal_number == "77"


async def test_a_late_number_for_an_unknown_or_numbered_receipt_is_a_dead_letter(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    books = BranchBooks("B1")
    books.document("goods_receipt", [("MILK", 10_000, 100)])
    books.open_shift()
    fiscal = books.sale([("MILK", 1_000, 199)])
    # A receipt central holds with another number, and one it never had (the seq of an
    # event it holds: nothing is still to come).
    other = books.late_fiscal_number(fiscal, "99")
    ghost_body = msgspec.structs.replace(
        books.late_fiscal_number(fiscal, "98").body, document_id="no-such-sale"
    )
    books.events.pop()
    ghost = books._add(ghost_body)
    after = books.sale([("MILK", 1_000, 199)])
    result = await IngestWorker(sessionmaker).process([message(e) for e in books.events])
    # The two refused, everything else stored: nothing blocked.
    assert (result.stored, result.dead_letters) == (len(books.events) - 2, 2)
    async with sessionmaker() as session:
        letters = {
            d.seq: d.reason
            for d in await session.scalars(select(DeadLetter).order_by(DeadLetter.seq))
        }
    assert set(letters) == {other.seq, ghost.seq}
    assert "already has fiscal number F" in letters[other.seq]
    assert "late fiscal number 99 for sale" in letters[other.seq]
    assert "central holds no such document" in letters[ghost.seq]
    assert "no-such-sale" in letters[ghost.seq]
    receipt = await _receipt(sessionmaker, _sale_id(fiscal))
    assert receipt.fiscal_number == fiscal.body.fiscal_number  # type: ignore[union-attr]
    assert (await _receipt(sessionmaker, _sale_id(after))).fiscal_number is not None


async def test_a_late_number_that_arrives_before_its_receipt_waits_for_it(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    books = BranchBooks("B1")
    books.open_shift()
    unfiscal = books.sale([("MILK", 1_000, 199)], unfiscal=True)
    late = books.late_fiscal_number(unfiscal, "501")
    worker = IngestWorker(sessionmaker)
    # The receipt is in another worker's batch (or a dead letter to replay): the number
    # comes first and waits.
    first = await worker.process([message(books.events[0]), message(late)])
    assert (first.stored, first.dead_letters) == (2, 0)
    async with sessionmaker() as session:
        waiting = await session.get(LateFiscalNumberRow, late.event_id)
        assert waiting is not None
        assert (waiting.status, waiting.applied_at) == ("waiting", None)
    await worker.process([message(unfiscal)])
    receipt = await _receipt(sessionmaker, _sale_id(unfiscal))
    assert (receipt.fiscal_number, receipt.fiscalized_at) == ("501", unfiscal.occurred_at)
    async with sessionmaker() as session:
        applied = await session.get(LateFiscalNumberRow, late.event_id)
        assert applied is not None
        assert applied.status == "applied"
        assert applied.applied_at is not None
    assert isinstance(late.body, LateFiscalNumber)


async def test_fiscal_interventions_are_stored_and_listed(
    central: Any, central_client: Any
) -> None:
    await register_branch(central, "A1")
    books = BranchBooks("A1")
    books.open_shift()
    unfiscal = books.sale([("MILK", 1_000, 199)], unfiscal=True)
    books.intervention("completed_unfiscal", document=f"sale {_sale_id(unfiscal)}")
    books.intervention("closed", receipt_number=41, document="sale s-41")
    books.intervention("cancelled", receipt_number=42)
    worker = IngestWorker(central.sessionmaker)
    await worker.process([message(e) for e in books.events])
    again = await worker.process([message(e) for e in books.events])
    assert again.stored == 0

    shifts = (await central_client.get("/api/v1/shifts", params={"branch": "A1"})).json()
    (shift,) = shifts["items"]
    assert [
        (i["action"], i["receipt_number"], i["document"]) for i in shift["fiscal_interventions"]
    ] == [
        ("completed_unfiscal", None, f"sale {_sale_id(unfiscal)}"),
        ("closed", 41, "sale s-41"),
        ("cancelled", 42, ""),
    ]
    assert shift["unfiscal_receipts"] == 1
    listed = (
        await central_client.get(
            "/api/v1/fiscal-interventions", params={"branch": "A1", "action": "closed"}
        )
    ).json()
    assert listed["total"] == 1
    (closed,) = listed["items"]
    assert (closed["till"], closed["shift_id"], closed["paid_before"], closed["cash_added"]) == (
        "T1",
        "S1",
        400,
        600,
    )
    assert closed["reason"] == "payment refused"
    unknown = await central_client.get("/api/v1/fiscal-interventions", params={"branch": "ZZ"})
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")
    backwards = await central_client.get(
        "/api/v1/fiscal-interventions",
        params={"date_from": "2026-11-28", "date_to": "2026-11-27"},
    )
    assert backwards.status_code == 422
    assert backwards.json()["errors"][0]["field"] == "date_from"
    async with central.sessionmaker() as session:
        page = await list_fiscal_interventions(
            session,
            branch=None,
            till="T1",
            action=None,
            date_from=unfiscal.occurred_at.date(),
            date_to=None,
            limit=2,
            offset=0,
        )
    assert (len(page.items), page.total) == (2, 3)


async def test_a_number_left_waiting_beside_its_receipt_is_applied_by_the_sweep(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Two workers on PostgreSQL: the receipt's batch looked for waiting numbers before
    the number's batch committed its waiting row, the number's batch looked for the
    receipt before the receipt's committed. Both commit; the number waits beside a
    receipt that has none. The gap monitor's sweep settles it (nothing else would)."""
    books = BranchBooks("B1")
    books.open_shift()
    unfiscal = books.sale([("MILK", 1_000, 199)], unfiscal=True)
    late = books.late_fiscal_number(unfiscal, "601")
    worker = IngestWorker(sessionmaker)
    # The number first (it waits), then the receipt's batch made as if it had not seen
    # the waiting row: the waiting row is put back to waiting and the number taken off.
    await worker.process([message(books.events[0]), message(late)])
    await worker.process([message(unfiscal)])
    async with sessionmaker() as session, session.begin():
        row = await session.get(LateFiscalNumberRow, late.event_id)
        assert row is not None
        row.status, row.applied_at = "waiting", None
        row.received_at = row.received_at.replace(year=row.received_at.year - 1)
        receipt = await session.scalar(select(Receipt).where(Receipt.sale_id == _sale_id(unfiscal)))
        assert receipt is not None
        receipt.fiscal_number, receipt.fiscalized_at = None, None
    assert await sweep_waiting_fiscal_numbers(sessionmaker) == 1
    receipt = await _receipt(sessionmaker, _sale_id(unfiscal))
    assert (receipt.fiscal_number, receipt.fiscalized_at) == ("601", unfiscal.occurred_at)
    async with sessionmaker() as session:
        settled = await session.get(LateFiscalNumberRow, late.event_id)
        assert settled is not None
        assert settled.status == "applied"
    # Once settled, a second sweep finds nothing to do.
    assert await sweep_waiting_fiscal_numbers(sessionmaker) == 0


async def test_a_settle_pending_decision_is_stored_under_its_new_action(
    central: Any, central_client: Any
) -> None:
    """The agent's settle-pending decisions carry action values central's code never
    names (``cash_move_printed``, ``z_report_not_printed``...): ``action`` is free text
    on the wire, so they are stored and listed as they come, no dead letter."""
    await register_branch(central, "A1")
    books = BranchBooks("A1")
    books.open_shift()
    books.intervention("cash_move_printed", document="cash move out-1")
    books.intervention("z_report_not_printed", document="the Z report of shift S1")
    await IngestWorker(central.sessionmaker).process([message(e) for e in books.events])
    listed = (
        await central_client.get(
            "/api/v1/fiscal-interventions", params={"action": "cash_move_printed"}
        )
    ).json()
    assert [(i["action"], i["document"], i["amount"]) for i in listed["items"]] == [
        ("cash_move_printed", "cash move out-1", 1000)
    ]
    (shift,) = (await central_client.get("/api/v1/shifts", params={"branch": "A1"})).json()["items"]
    assert [i["action"] for i in shift["fiscal_interventions"]] == [
        "cash_move_printed",
        "z_report_not_printed",
    ]
    async with central.sessionmaker() as session:
        assert (await session.scalars(select(DeadLetter))).all() == []
