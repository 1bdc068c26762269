"""Effects of every event kind at central: stock ledger with moving average cost, flags,
shifts with Z totals, transfers in transit, dead-letter replay, gap resend requests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.db import create_engine, create_sessionmaker
from central.ingest import registry
from central.ingest.gaps import GapMonitor
from central.ingest.handlers import (
    EventContext,
    IngestBatch,
    register_batch_handler,
    register_handler,
)
from central.ingest.stock import apply_movement, div_half_up
from central.ingest.worker import IngestWorker, MessageIn
from central.models import (
    AuditEntry,
    BranchSyncState,
    DeadLetter,
    Receipt,
    StockBalance,
    StockMovement,
)
from central.reports.service import shift_reconciliation, sync_health
from central.services.branches import add_branch
from central.services.dead_letters import replay_dead_letter
from central.services.documents import get_document
from central.services.shifts import close_day, list_shifts
from central.services.stock import list_transfers, rebuild_balances
from protocol import (
    BranchHeartbeat,
    ReceiptRecorded,
    ResendRequested,
    decode_resend,
    encode,
    up_subject,
)
from protocol.subjects import HEARTBEAT_KIND
from tests.central.chain_events import BranchBooks, message


@pytest.fixture
async def sessionmaker(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    maker = create_sessionmaker(engine)
    async with maker() as session, session.begin():
        for code in ("B1", "B2"):
            await add_branch(session, code=code, name=code)
    yield maker
    await engine.dispose()


def test_moving_average_cost_arithmetic() -> None:
    # 10 pcs at 1.00, then 10 at 1.50: average 1.25; selling 4 takes 5.00 off the value.
    first = apply_movement(0, 0, 0, 10_000, 100)
    assert (first.value, first.avg_cost_after) == (1000, 100)
    second = apply_movement(10_000, 1000, 100, 10_000, 150)
    assert (second.value_after, second.avg_cost_after) == (2500, 125)
    sale = apply_movement(20_000, 2500, 125, -4_000, None)
    assert (sale.unit_cost, sale.value, sale.quantity_after) == (125, -500, 16_000)
    # Selling everything leaves exactly nothing, whatever the rounding on the way.
    rest = apply_movement(3_000, 100, 33, -3_000, None)
    assert (rest.value_after, rest.quantity_after) == (0, 0)
    # Beyond stock: the extra goes at the average, and the balance is negative.
    over = apply_movement(1_000, 125, 125, -3_000, None)
    assert (over.value, over.quantity_after, over.negative) == (-375, -2_000, True)
    assert div_half_up(-5, 2) == -3
    assert div_half_up(5, 2) == 3


async def _totals(maker: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    async with maker() as session:
        balances = {
            (b.branch, b.sku): (b.quantity_milli, b.value, b.avg_cost)
            for b in await session.scalars(select(StockBalance))
        }
        receipts = (await session.scalars(select(Receipt).order_by(Receipt.id))).all()
    return {"balances": balances, "receipts": receipts}


async def test_stock_ledger_costs_flags_and_rebuild(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    books = BranchBooks("B1")
    books.document("goods_receipt", [("MILK", 10_000, 100), ("BREAD", 2_000, 80)])
    books.document("goods_receipt", [("MILK", 10_000, 150)])
    books.open_shift()
    sale = books.sale([("MILK", 4_000, 199)])
    short = books.sale([("BREAD", 3_000, 129)])  # only 2 in stock: accepted, flagged
    books.customer_return("MILK", 1_000, 199, original=sale.body.sale_id)  # type: ignore[union-attr]
    books.document("write_off", [("MILK", -500, None)])
    books.document("stocktake", [("MILK", -500, None)])
    worker = IngestWorker(sessionmaker)
    # Two batches, the second one first: effects still follow each branch's order
    # within a batch, and nothing is stored twice on redelivery.
    msgs = [message(e) for e in books.events]
    await worker.process(msgs[:4])
    await worker.process(msgs[4:])
    again = await worker.process(msgs)
    assert (again.stored, again.duplicates) == (0, len(msgs))

    totals = await _totals(sessionmaker)
    milk_qty, milk_value, milk_avg = totals["balances"][("B1", "MILK")]
    assert milk_qty == books.stock_milli["MILK"] == 16_000
    assert milk_avg == 125
    # 2500 in, 500 out at 1.25 (sale), back in 125, out 62.5 -> 63 twice.
    assert milk_value == 2500 - 500 + 125 - 63 - 62
    assert totals["balances"][("B1", "BREAD")][0] == -1_000
    flags = {r.sale_id: (r.negative_stock, r.late) for r in totals["receipts"]}
    assert flags == {
        sale.body.sale_id: (False, False),  # type: ignore[union-attr]
        short.body.sale_id: (True, False),  # type: ignore[union-attr]
    }
    async with sessionmaker() as session:
        cost = await session.scalar(
            select(StockMovement.value).where(StockMovement.event_id == sale.event_id)
        )
        assert cost == -500  # cost of goods sold, kept on the ledger row

    async with sessionmaker() as session, session.begin():
        report = await rebuild_balances(session, verify_only=True)
        assert report.agree
        assert report.movements == 8
        await session.execute(
            update(StockBalance).where(StockBalance.sku == "MILK").values(quantity_milli=1)
        )
    async with sessionmaker() as session, session.begin():
        broken = await rebuild_balances(session, verify_only=False)
    assert [(m[1], m[2], m[3], m[4]) for m in broken.mismatches] == [
        ("MILK", "quantity_milli", 1, 16_000)
    ]
    async with sessionmaker() as session, session.begin():
        assert (await rebuild_balances(session, verify_only=True)).agree
    assert (await _totals(sessionmaker))["balances"] == totals["balances"]


@pytest.mark.parametrize(("z_storno", "matches"), [(None, True), (100, False)])
async def test_z_matches_compares_the_z_storno_with_the_recorded_returns(
    sessionmaker: async_sessionmaker[AsyncSession], z_storno: int | None, matches: bool
) -> None:
    books = BranchBooks("B1")
    books.document("goods_receipt", [("MILK", 10_000, 100)])
    books.open_shift()
    sold = books.sale([("MILK", 2_000, 199)])
    books.customer_return("MILK", 1_000, 199, original=sold.body.sale_id)  # type: ignore[union-attr]
    # The Z's turnover and receipts agree; its storno is the returns (199) or not (100).
    books.close_shift(z_storno=z_storno)
    await IngestWorker(sessionmaker).process([message(e) for e in books.events])
    async with sessionmaker() as session:
        page = await list_shifts(
            session, branch="B1", till=None, date_from=None, date_to=None, limit=10, offset=0
        )
        day = page.items[0].local_date
        (row,) = (await shift_reconciliation(session, date_from=day, date_to=day, branch="B1")).rows
    (shift,) = page.items
    assert shift.z_turnover_total == shift.recorded.sales_total
    assert shift.z_matches is matches
    # The same verdict as the reconciliation report's.
    assert (row.differences == []) is matches


async def test_late_sales_are_stored_flagged_and_counted_in_their_shift(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    books = BranchBooks("B1")
    books.document("goods_receipt", [("MILK", 50_000, 100)])
    books.open_shift()
    books.sale([("MILK", 1_000, 200)])
    books.cash("in", 1000)
    late_sale = books.sale([("MILK", 2_000, 200)])
    books.close_shift()
    worker = IngestWorker(sessionmaker)
    # The close arrives before the last sale (the sale was held up in the outbox).
    held = [e for e in books.events if e is not late_sale]
    await worker.process([message(e) for e in held])
    await worker.process([message(late_sale)])
    async with sessionmaker() as session:
        flags = {r.sale_id: r.late for r in await session.scalars(select(Receipt))}
        page = await list_shifts(
            session, branch="B1", till=None, date_from=None, date_to=None, limit=10, offset=0
        )
        state = await session.get(BranchSyncState, "B1")
    assert flags[late_sale.body.sale_id] is True  # type: ignore[union-attr]
    assert sum(flags.values()) == 1
    shift = page.items[0]
    assert shift.status == "closed"
    assert shift.recorded.receipts_count == 2 == shift.z_receipts_count
    assert shift.recorded.sales_total == books.sales_total == shift.z_turnover_total
    assert shift.z_matches is True
    assert shift.late_receipts == 1
    assert shift.recorded.cash_in == 1000
    assert state is not None
    assert state.contiguous_seq == len(books.events)

    # A day closed at central: a sale filed into it afterwards is late too.
    async with sessionmaker() as session:
        await close_day(session, branch="B1", local_date=shift.local_date)
    after = books.sale([("MILK", 1_000, 200)], shift="S2")
    # So is a stock document (a write-off changes the closed day's figures too).
    written_off = books.document("write_off", [("MILK", -1_000, None)])
    await worker.process([message(after), message(written_off)])
    async with sessionmaker() as session:
        assert await session.scalar(select(Receipt.late).where(Receipt.event_id == after.event_id))
        document = await get_document(
            session,
            "B1",
            written_off.body.document_id,  # type: ignore[union-attr]
        )
        earlier = await get_document(
            session,
            "B1",
            books.events[0].body.document_id,  # type: ignore[union-attr]
        )
    assert (document.late, earlier.late) == (True, False)


async def test_transfers_match_out_and_in_in_either_order(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    b1, b2 = BranchBooks("B1"), BranchBooks("B2")
    b1.document("goods_receipt", [("MILK", 10_000, 120)])
    out = b1.document(
        "transfer_out", [("MILK", -4_000, None)], counterpart="B2", document_id="T-100"
    )
    inbound = b2.document(
        "transfer_in", [("MILK", 3_000, None)], counterpart="B1", transfer_ref="T-100"
    )
    worker = IngestWorker(sessionmaker)
    await worker.process([message(b1.events[0]), message(out)])
    async with sessionmaker() as session:
        page = await list_transfers(session, branch="B2", in_transit_only=True, limit=10, offset=0)
    assert [(t.status, t.lines[0].in_transit_milli) for t in page.items] == [("in_transit", 4_000)]
    await worker.process([message(inbound)])
    async with sessionmaker() as session:
        page = await list_transfers(session, branch=None, in_transit_only=False, limit=10, offset=0)
        b2_balance = await session.get(StockBalance, ("B2", "MILK"))
    transfer = page.items[0]
    # 3 of 4 arrived: received short by one (no longer in transit: a difference, at
    # the value it left with); received at the sender's cost.
    assert (transfer.status, transfer.lines[0].in_transit_milli) == (
        "received_with_differences",
        0,
    )
    assert (transfer.lines[0].difference_milli, transfer.lines[0].difference_value) == (
        -1_000,
        -120,
    )
    assert b2_balance is not None
    assert (b2_balance.quantity_milli, b2_balance.avg_cost) == (
        3_000,
        120,
    )

    # The inbound side first (another branch, another worker): matched when the out comes.
    b2.document("transfer_in", [("BREAD", 1_000, 90)], counterpart="B1", transfer_ref="T-200")
    b1.document("transfer_out", [("BREAD", -1_000, None)], counterpart="B2", document_id="T-200")
    await worker.process([message(b2.events[-1])])
    await worker.process([message(b1.events[-1])])
    async with sessionmaker() as session:
        page = await list_transfers(session, branch="B1", in_transit_only=False, limit=10, offset=0)
    by_ref = {t.transfer_ref: t for t in page.items}
    assert by_ref["T-200"].status == "received"
    assert by_ref["T-200"].lines[0].in_transit_milli == 0


async def test_a_transfer_received_in_full_moves_its_value_to_the_cent(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """3 units worth 319 leave at 106.33 a unit: the receiver's value was 3 x 106 = 318
    (the unit cost rounded first), a cent lost to the chain by a transfer."""
    b1, b2 = BranchBooks("B1"), BranchBooks("B2")
    b1.document("goods_receipt", [("MILK", 1_000, 99)])
    b1.document("goods_receipt", [("MILK", 2_000, 110)])
    out = b1.document("transfer_out", [("MILK", -3_000, None)], counterpart="B2", document_id="T-1")
    inbound = b2.document(
        "transfer_in", [("MILK", 3_000, None)], counterpart="B1", transfer_ref="T-1"
    )

    async def chain_value() -> int:
        async with sessionmaker() as session:
            return int(await session.scalar(select(func.sum(StockBalance.value))) or 0)

    worker = IngestWorker(sessionmaker)
    await worker.process([message(e) for e in b1.events[:2]])
    assert await chain_value() == 319
    await worker.process([message(out)])
    await worker.process([message(inbound)])
    async with sessionmaker() as session:
        page = await list_transfers(session, branch="B2", in_transit_only=False, limit=10, offset=0)
        b2_balance = await session.get(StockBalance, ("B2", "MILK"))
    line = page.items[0].lines[0]
    assert (line.sent_value, line.received_value) == (319, 319)
    assert await chain_value() == 319
    assert b2_balance is not None
    assert (b2_balance.quantity_milli, b2_balance.value, b2_balance.avg_cost) == (3_000, 319, 106)
    # The rebuild from the ledger agrees with the balances.
    async with sessionmaker() as session, session.begin():
        assert (await rebuild_balances(session, verify_only=True)).agree


async def test_a_transfer_received_in_part_takes_its_share_of_the_value(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    b1, b2 = BranchBooks("B1"), BranchBooks("B2")
    b1.document("goods_receipt", [("MILK", 1_000, 99)])
    b1.document("goods_receipt", [("MILK", 2_000, 110)])
    b1.document("transfer_out", [("MILK", -3_000, None)], counterpart="B2", document_id="T-2")
    b2.document("transfer_in", [("MILK", 2_000, None)], counterpart="B1", transfer_ref="T-2")
    await IngestWorker(sessionmaker).process([message(e) for e in b1.events])
    await IngestWorker(sessionmaker).process([message(e) for e in b2.events])
    async with sessionmaker() as session:
        b2_balance = await session.get(StockBalance, ("B2", "MILK"))
    assert b2_balance is not None
    # 319 x 2/3 = 212.67, rounded once.
    assert (b2_balance.quantity_milli, b2_balance.value) == (2_000, 213)


async def test_dead_letter_replay_after_the_fix(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    books = BranchBooks("B9")  # not registered yet
    books.sale([("MILK", 1_000, 100)])
    worker = IngestWorker(sessionmaker, branch_cache_s=0)
    garbage = MessageIn(subject="up.B1.receipt_recorded", data=b"\x93not msgpack")
    stats = await worker.process([message(books.events[0]), garbage])
    assert stats.dead_letters == 2
    async with sessionmaker() as session:
        letters = (await session.scalars(select(DeadLetter).order_by(DeadLetter.id))).all()
    unknown, bad = letters
    assert "unknown branch 'B9'" in unknown.reason

    # Replayed before the fix: fails again, stays open with the reason.
    first = await replay_dead_letter(sessionmaker, unknown.id)
    assert (first.status, first.attempts) == ("open", 2)
    async with sessionmaker() as session, session.begin():
        await add_branch(session, code="B9", name="B9")
    second = await replay_dead_letter(sessionmaker, unknown.id)
    assert second.status == "replayed"
    again = await replay_dead_letter(sessionmaker, bad.id)
    assert again.status == "open"
    assert "malformed event" in again.reason
    async with sessionmaker() as session:
        assert (
            await session.scalar(select(func.count(Receipt.id)).where(Receipt.branch == "B9")) == 1
        )


async def test_several_handlers_per_event_type_run_in_stage_order(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    calls: list[str] = []

    @register_handler(ReceiptRecorded)
    async def per_event(session: AsyncSession, ctx: EventContext) -> None:
        receipts = await session.scalar(
            select(func.count(Receipt.id)).where(Receipt.event_id == ctx.envelope.event_id)
        )
        calls.append(f"event:{receipts}")

    @register_batch_handler(ReceiptRecorded, stage=5)
    async def early(
        session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
    ) -> None:
        calls.append(f"early:{len(contexts)}")

    try:
        books = BranchBooks("B1")
        books.sale([("MILK", 1_000, 100)])
        books.sale([("MILK", 1_000, 100)])
        await IngestWorker(sessionmaker).process([message(e) for e in books.events])
    finally:
        registry._REGISTRY[:] = [
            r for r in registry._REGISTRY if r.handler not in (per_event, early)
        ]
    # The early one before central's own; the default-stage one after the receipt is stored.
    assert calls == ["early:2", "event:1", "event:1"]


def _heartbeat(
    branch: str, acked: int, first: int = 1, skipped: tuple[tuple[int, int], ...] = ()
) -> MessageIn:
    beat = BranchHeartbeat(
        branch=branch,
        sent_at=datetime.now(UTC),
        last_acked_seq=acked,
        last_recorded_seq=acked,
        first_seq=first,
        skipped_seqs=skipped,
    )
    return MessageIn(subject=up_subject(branch, HEARTBEAT_KIND), data=encode(beat))


def _recording_monitor(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> tuple[GapMonitor, list[ResendRequested]]:
    """A gap monitor acting on the second sighting, asking once an hour; what it asks."""
    sent: list[ResendRequested] = []

    async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        sent.append(decode_resend(payload))

    return GapMonitor(sessionmaker, publish, gap_after_s=0.0, retry_s=3600), sent


async def test_events_the_heartbeat_says_were_acked_but_central_lacks_are_asked_for(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """A gap at the tail (central's database restored, the store sending nothing more):
    only the heartbeat shows it. B2's first events were all lost."""
    books = BranchBooks("B1")
    for _ in range(3):
        books.sale([("MILK", 1_000, 100)])
    worker = IngestWorker(sessionmaker)
    await worker.process([message(books.events[0]), _heartbeat("B1", 3), _heartbeat("B2", 2)])
    monitor, sent = _recording_monitor(sessionmaker)
    await monitor.check()  # first sighting
    await monitor.check()
    assert sorted((r.branch, r.from_seq) for r in sent) == [("B1", 2), ("B2", 1)]
    # Once B1's are stored, only B2's gap is left (asked for, not asked again yet).
    await worker.process([message(e) for e in books.events[1:]])
    async with sessionmaker() as session:
        state = await session.get(BranchSyncState, "B1")
        b2 = await session.get(BranchSyncState, "B2")
    assert state is not None
    assert b2 is not None
    assert (state.contiguous_seq, state.max_seq) == (3, 3)
    assert (b2.contiguous_seq, b2.resend_requested_from) == (0, 1)
    sent.clear()
    await monitor.check()
    await monitor.check()
    assert sent == []


async def test_numbers_below_the_branch_databases_first_are_given_up_not_asked_for(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Central restored to before it numbered a replacement database from 10: the
    numbers 3..9 of the earlier database, given up then, are a gap again. The
    replacement cannot resend them (its heartbeat says it starts at 10)."""
    books = BranchBooks("B1")
    for _ in range(11):
        books.sale([("MILK", 1_000, 100)])
    held = [books.events[i] for i in (0, 1, 9, 10)]
    worker = IngestWorker(sessionmaker)
    await worker.process([message(e) for e in held] + [_heartbeat("B1", 11, first=10)])
    monitor, sent = _recording_monitor(sessionmaker)
    for _ in range(3):
        await monitor.check()
    assert sent == []
    async with sessionmaker() as session:
        row = next(r for r in (await sync_health(session)).rows if r.branch == "B1")
        state = await session.get(BranchSyncState, "B1")
        audited = list(
            await session.scalars(
                select(AuditEntry.after).where(AuditEntry.action == "branch.events_given_up")
            )
        )
    assert state is not None
    assert (state.contiguous_seq, state.lost_from_seq, state.lost_to_seq) == (11, 3, 9)
    assert row.lost_events == 7
    assert len(audited) == 1
    # One of them turns up after all (a copy from elsewhere): stored, one fewer lost.
    await worker.process([message(books.events[4])])
    async with sessionmaker() as session:
        row = next(r for r in (await sync_health(session)).rows if r.branch == "B1")
    assert row.lost_events == 6


async def _given_up(
    sessionmaker: async_sessionmaker[AsyncSession], branch: str
) -> tuple[int, int | None, int | None, int]:
    """A branch's contiguous sequence, lost range and lost events (sync health)."""
    async with sessionmaker() as session:
        state = await session.get(BranchSyncState, branch)
        row = next(r for r in (await sync_health(session)).rows if r.branch == branch)
    assert state is not None
    return state.contiguous_seq, state.lost_from_seq, state.lost_to_seq, row.lost_events


async def test_numbers_the_branch_database_skipped_are_given_up_the_rest_asked_for(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The branch's database was restored from a backup holding 1..2 and continued at
    11 (central then held 3..10); later central's own database went back to before 3.
    3..8 are a run the branch skipped: given up at once. 9 and 10 are not in that run
    (here: a narrower run, as if 9..10 were the branch's): asked for."""
    books = BranchBooks("B1")
    for _ in range(12):
        books.sale([("MILK", 1_000, 100)])
    held = [books.events[i] for i in (0, 1, 10, 11)]
    worker = IngestWorker(sessionmaker)
    await worker.process([message(e) for e in held] + [_heartbeat("B1", 12, skipped=((3, 8),))])
    monitor, sent = _recording_monitor(sessionmaker)
    for _ in range(3):
        await monitor.check()
    assert [(r.branch, r.from_seq) for r in sent] == [("B1", 9)]
    assert await _given_up(sessionmaker, "B1") == (8, 3, 8, 6)
    # The branch's next heartbeat names 3..10 (the run it really skipped): the rest of
    # the gap goes too, and the branch is not asked again.
    await worker.process([_heartbeat("B1", 12, skipped=((3, 10),))])
    sent.clear()
    for _ in range(3):
        await monitor.check()
    assert sent == []
    assert await _given_up(sessionmaker, "B1") == (12, 3, 10, 8)


async def test_a_persisting_gap_asks_the_branch_to_resend_once(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    books = BranchBooks("B1")
    for _ in range(4):
        books.sale([("MILK", 1_000, 100)])
    await IngestWorker(sessionmaker).process([message(e) for e in books.events if e.seq != 2])
    sent: list[tuple[str, bytes]] = []

    async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        sent.append((subject, payload))

    monitor = GapMonitor(sessionmaker, publish, gap_after_s=0.0, retry_s=3600)
    await monitor.check()  # first sighting
    requested = await monitor.check()
    await monitor.check()  # remembered: no spam
    assert [r.from_seq for r in requested] == [2]
    assert len(sent) == 1
    subject, payload = sent[0]
    assert subject == "down.branch.B1.command.resend"
    assert isinstance(decode_resend(payload), ResendRequested)
    # A second ingest process's monitor does not ask again either.
    other = GapMonitor(sessionmaker, publish, gap_after_s=0.0, retry_s=3600)
    await other.check()
    await other.check()
    assert len(sent) == 1
    await IngestWorker(sessionmaker).process([message(books.events[1])])
    async with sessionmaker() as session:
        state = await session.get(BranchSyncState, "B1")
    assert state is not None
    assert (state.contiguous_seq, state.max_seq) == (4, 4)
    assert await monitor.check() == []
