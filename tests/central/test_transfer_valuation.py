"""A transfer in is received at the value with which its transfer out left the sender,
also when both arrive in one batch (in either branch order), when the in reaches
central first (revalued when the out comes), and whatever cost the receiver typed; a
batch where two branches each receive what the other sends later still posts
everything."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from central.db import create_sessionmaker
from central.ingest.stock import COST_CORRECTION
from central.ingest.worker import IngestWorker
from central.models import StockBalance, StockMovement
from central.reports import service
from central.reports.backlog import apply_summary_backlog
from central.services.branches import add_branch
from central.services.stock import list_transfers, rebuild_balances
from tests.central.chain_events import BranchBooks, message
from tests.central.summaries import assert_kept_equals_rebuilt


@pytest.fixture
async def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    maker = create_sessionmaker(engine)
    async with maker() as session, session.begin():
        for code in ("B2", "B3"):
            await add_branch(session, code=code, name=code)
    return maker


async def _balance(maker: async_sessionmaker[AsyncSession], branch: str, sku: str) -> list[int]:
    async with maker() as session:
        b = await session.get(StockBalance, (branch, sku))
        assert b is not None
        return [b.quantity_milli, b.value, b.avg_cost]


async def _chain_value(maker: async_sessionmaker[AsyncSession]) -> int:
    async with maker() as session:
        return int(await session.scalar(select(func.sum(StockBalance.value))) or 0)


async def _received(maker: async_sessionmaker[AsyncSession], ref: str) -> list[tuple[int, int]]:
    async with maker() as session:
        page = await list_transfers(session, branch=None, in_transit_only=False, limit=50, offset=0)
    transfer = next(t for t in page.items if t.transfer_ref == ref)
    return [(line.sent_value, line.received_value) for line in transfer.lines]


@pytest.mark.parametrize("receiver_first", [False, True])
async def test_out_and_in_in_one_batch(
    sessionmaker: async_sessionmaker[AsyncSession], receiver_first: bool
) -> None:
    # B3 sends to B1 (the receiver's events come first in the batch) or B1 to B2.
    sender, receiver = ("B3", "B1") if receiver_first else ("B1", "B2")
    out_books, in_books = BranchBooks(sender), BranchBooks(receiver)
    out_books.document("goods_receipt", [("COFFEE", 4_000, 300), ("BREAD", 5_000, 150)])
    out_books.document(
        "transfer_out",
        [("COFFEE", -2_000, None), ("BREAD", -5_000, None)],
        counterpart=receiver,
        document_id="TO-1",
    )
    # The receiver had coffee at another cost; it types a cost of its own on the bread.
    in_books.document("goods_receipt", [("COFFEE", 1_000, 500)])
    in_books.document(
        "transfer_in",
        [("COFFEE", 2_000, None), ("BREAD", 5_000, 9_999)],
        counterpart=sender,
        transfer_ref="TO-1",
    )
    in_books.open_shift()
    in_books.sale([("BREAD", 1_000, 250)])
    worker = IngestWorker(sessionmaker)
    await worker.process([message(e) for e in [*out_books.events, *in_books.events]])

    assert await _received(sessionmaker, "TO-1") == [(750, 750), (600, 600)]
    # 1 coffee at 5.00 and 2 at 3.00; 4 loaves left of 5 at 1.50.
    assert await _balance(sessionmaker, receiver, "COFFEE") == [3_000, 1_100, 367]
    assert await _balance(sessionmaker, receiver, "BREAD") == [4_000, 600, 150]
    # A transfer creates no value: the chain holds what was bought less the loaf sold.
    assert await _chain_value(sessionmaker) == 1200 + 750 + 500 - 150
    async with sessionmaker() as session, session.begin():
        assert (await rebuild_balances(session, verify_only=True)).agree


async def test_crossing_transfers_in_one_batch(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """B1 receives from B2 before it sends to B2, and B2 the other way round: each in
    waits for an out that comes after the other branch's in. Nothing is lost: the
    earlier in (B1's) goes first at what is known (no soap there: 0), which lets B1's
    out go, so B2's in is received at the value B1's tea left at."""
    b1, b2 = BranchBooks("B1"), BranchBooks("B2")
    b1.document("goods_receipt", [("TEA", 2_000, 100)])
    b2.document("goods_receipt", [("SOAP", 2_000, 200)])
    b1.document("transfer_in", [("SOAP", 1_000, None)], counterpart="B2", transfer_ref="X-2")
    b1.document("transfer_out", [("TEA", -1_000, None)], counterpart="B2", document_id="X-1")
    b2.document("transfer_in", [("TEA", 1_000, None)], counterpart="B1", transfer_ref="X-1")
    b2.document("transfer_out", [("SOAP", -1_000, None)], counterpart="B1", document_id="X-2")
    worker = IngestWorker(sessionmaker)
    result = await worker.process([message(e) for e in [*b1.events, *b2.events]])
    assert result.stored == 6
    assert (await _balance(sessionmaker, "B1", "SOAP"))[0] == 1_000
    assert await _balance(sessionmaker, "B2", "TEA") == [1_000, 100, 100]
    assert (await _balance(sessionmaker, "B2", "SOAP"))[0] == 1_000
    async with sessionmaker() as session, session.begin():
        assert (await rebuild_balances(session, verify_only=True)).agree


async def test_in_before_out_in_separate_batches_keeps_the_typed_cost_only_without_sender(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The out already at central: the receiver's typed cost does not count."""
    b1, b2 = BranchBooks("B1"), BranchBooks("B2")
    b1.document("goods_receipt", [("MILK", 2_000, 80)])
    b1.document("transfer_out", [("MILK", -2_000, None)], counterpart="B2", document_id="M-1")
    b2.document("transfer_in", [("MILK", 2_000, 5_000)], counterpart="B1", transfer_ref="M-1")
    worker = IngestWorker(sessionmaker)
    await worker.process([message(e) for e in b1.events])
    await worker.process([message(e) for e in b2.events])
    assert await _received(sessionmaker, "M-1") == [(160, 160)]
    assert await _balance(sessionmaker, "B2", "MILK") == [2_000, 160, 80]


async def test_a_second_out_under_the_ref_values_nothing(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """B1's out T is at central; one batch then brings B3's out under the same ref (a
    discrepancy: sent twice) and B2's in: the in is valued at B1's out alone, as it
    would be in a batch of its own."""
    b1, b2, b3 = BranchBooks("B1"), BranchBooks("B2"), BranchBooks("B3")
    b1.document("goods_receipt", [("TEA", 10_000, 100)])
    b1.document("transfer_out", [("TEA", -10_000, None)], counterpart="B2", document_id="T")
    b3.document("goods_receipt", [("TEA", 10_000, 500)])
    b3.document(
        "transfer_out",
        [("TEA", -10_000, None)],
        counterpart="B2",
        document_id="D2",
        transfer_ref="T",
    )
    b2.document("transfer_in", [("TEA", 10_000, None)], counterpart="B1", transfer_ref="T")
    worker = IngestWorker(sessionmaker)
    await worker.process([message(e) for e in b1.events])
    await worker.process([message(e) for e in [*b2.events, *b3.events]])
    assert await _balance(sessionmaker, "B2", "TEA") == [10_000, 1_000, 100]
    async with sessionmaker() as session, session.begin():
        assert (await rebuild_balances(session, verify_only=True)).agree


@pytest.mark.parametrize(("typed_cost", "booked"), [(None, 0), (5_000, 20_000)])
async def test_in_before_out_is_revalued_when_the_out_arrives(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    typed_cost: int | None,
    booked: int,
) -> None:
    """B1 is offline: B2's receipt of 4 milks and its sale of one reach central first,
    the milk coming in at B2's average (none: 0) or at a cost B2 typed (50.00). When
    B1's out arrives (4 at 0.80), the receipt is brought to 3.20 on its own day: the 3
    still on hand to 0.80 each, the one sold (it left at the wrong cost) into cost of
    goods sold. Redelivered, nothing changes again."""
    b1, b2 = BranchBooks("B1"), BranchBooks("B2")
    b1.document("goods_receipt", [("MILK", 4_000, 80)])
    b1.document("transfer_out", [("MILK", -4_000, None)], counterpart="B2", document_id="M-2")
    received = b2.document(
        "transfer_in", [("MILK", 4_000, typed_cost)], counterpart="B1", transfer_ref="M-2"
    )
    b2.open_shift()
    b2.sale([("MILK", 1_000, 119)])
    worker = IngestWorker(sessionmaker)
    await worker.process([message(e) for e in b2.events])
    assert (await _balance(sessionmaker, "B2", "MILK"))[:2] == [3_000, booked * 3 // 4]
    out_batch = [message(e) for e in b1.events]
    await worker.process(out_batch)
    assert (await worker.process(out_batch)).stored == 0
    await apply_summary_backlog(engine)

    difference = 320 - booked
    kept = difference * 3 // 4
    assert await _received(sessionmaker, "M-2") == [(320, 320)]
    assert await _balance(sessionmaker, "B2", "MILK") == [3_000, 240, 80]
    # The chain holds what B1 bought less the milk sold at its cost.
    assert await _chain_value(sessionmaker) == 320 - 80
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                select(
                    StockMovement.branch,
                    StockMovement.doc_type,
                    StockMovement.doc_ref,
                    StockMovement.quantity_milli,
                    StockMovement.value,
                    StockMovement.value_after,
                    StockMovement.occurred_at,
                )
                .where(StockMovement.branch == "B2", StockMovement.quantity_milli == 0)
                .order_by(StockMovement.id)
            )
        ).all()
    document = received.body.document_id  # type: ignore[union-attr]
    assert [tuple(r) for r in rows] == [
        (
            "B2",
            "transfer_in",
            document,
            0,
            difference,
            booked * 3 // 4 + difference,
            received.occurred_at,
        ),
        ("B2", COST_CORRECTION, document, 0, kept - difference, 240, received.occurred_at),
    ]
    async with sessionmaker() as session, session.begin():
        assert (await rebuild_balances(session, verify_only=True)).agree
    await assert_kept_equals_rebuilt(sessionmaker)

    day = date(2026, 11, 27)
    async with sessionmaker() as session:
        movement = await service.stock_movement(
            session, date_from=day, date_to=day, branch=None, group_by="branch"
        )
        margin = await service.gross_margin(
            session, date_from=day, date_to=day, branch="B2", group_by="product"
        )
    by_branch = {r.branch: r for r in movement.rows}
    # What left B1 came into B2, whichever side central saw first.
    assert by_branch["B1"].transfers_out_value == by_branch["B2"].transfers_in_value == 320
    assert by_branch["B2"].cost_corrections_value == kept - difference
    assert by_branch["B2"].closing_value == 240
    milk = margin.rows[0].figures
    # The milk sold cost 0.80: what it left at plus the correction.
    assert (milk.cost_of_goods_sold, milk.cost_corrections) == (80, difference - kept)


async def test_two_early_receipts_under_one_document_id_are_each_revalued(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Document ids are each branch's own: B2 and B3 both number their receipt "TI-1"
    (of two transfers), both before the outs reach central; one batch then brings both
    outs. Each transfer's received value follows its own receipt."""
    b1, b2, b3 = BranchBooks("B1"), BranchBooks("B2"), BranchBooks("B3")
    b1.document("goods_receipt", [("TEA", 4_000, 100), ("SOAP", 2_000, 300)])
    b1.document("transfer_out", [("TEA", -4_000, None)], counterpart="B2", document_id="X")
    b1.document("transfer_out", [("SOAP", -2_000, None)], counterpart="B3", document_id="Y")
    b2.document(
        "transfer_in",
        [("TEA", 4_000, None)],
        counterpart="B1",
        transfer_ref="X",
        document_id="TI-1",
    )
    b3.document(
        "transfer_in",
        [("SOAP", 2_000, None)],
        counterpart="B1",
        transfer_ref="Y",
        document_id="TI-1",
    )
    worker = IngestWorker(sessionmaker)
    await worker.process([message(e) for e in [*b2.events, *b3.events]])
    await worker.process([message(e) for e in b1.events])
    assert await _received(sessionmaker, "X") == [(400, 400)]
    assert await _received(sessionmaker, "Y") == [(600, 600)]
    assert await _balance(sessionmaker, "B2", "TEA") == [4_000, 400, 100]
    assert await _balance(sessionmaker, "B3", "SOAP") == [2_000, 600, 300]
