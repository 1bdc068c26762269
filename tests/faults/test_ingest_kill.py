"""An ingest worker SIGKILLed between its database commit and its ack: JetStream
redelivers the batch to the restarted worker, and nothing is counted twice (a
redelivered transfer document is not a second receipt)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import func, select

from central.db import create_engine, create_sessionmaker
from central.embedded_nats import EmbeddedNats
from central.ingest.stock import COST_CORRECTION
from central.models import (
    DeadLetter,
    FiscalInterventionRow,
    IngestedEvent,
    LateFiscalNumberRow,
    Receipt,
    StockBalance,
    StockMovement,
    StockTransferDiscrepancy,
)
from central.services.branches import add_branch
from central.services.documents import get_document
from central.services.stock import list_transfers
from tests.central.chain_events import BranchBooks, ingest_env, publish_books
from tests.conftest import wait_until
from tests.faults.ingest_process import ingest_until_crash, running_ingest


async def test_crash_after_commit_before_ack_doubles_nothing(
    db_url: str, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await add_branch(session, code="K1", name="K1")
        await add_branch(session, code="K2", name="K2")
    books, other = BranchBooks("K1"), BranchBooks("K2")
    books.document("goods_receipt", [("MILK", 100_000, 100)])
    for n in range(60):
        books.sale([("MILK", 1_000 + n, 199)])
        if n == 3:
            # WATER sold before it was ever received, then received in the same batch:
            # the receipt's cost correction must not be posted again on redelivery.
            books.sale([("WATER", 10_000, 99)])
        if n == 4:
            # TEA sold before it was ever received, 2 received at 1.00 (covering 2 of
            # the 4), then 3 brought back by a customer: the return covers the other 2
            # at the average; neither correction posted again on redelivery.
            tea_sale = books.sale([("TEA", 4_000, 250)])
        if n == 6:
            books.document("goods_receipt", [("TEA", 2_000, 100)])
        if n == 8:
            books.customer_return("TEA", 3_000, 250, tea_sale.body.sale_id)  # type: ignore[union-attr]
        if n == 5:
            # Transfers in the batch committed and redelivered: a receipt in two parts
            # (before K2's out reaches central) and an out K2 receives in two parts
            # later; redelivered, neither is received twice nor counted again.
            books.document_in_parts(
                "transfer_in",
                [("SALT", 3_000, 20), ("SUGAR", 2_000, 50)],
                per_part=1,
                counterpart="K2",
                transfer_ref="TK-1",
            )
        if n == 7:
            books.document("transfer_out", [("MILK", -5_000, None)], counterpart="K2")
            out_ref = books.events[-1].body.document_id  # type: ignore[union-attr]
        if n == 10:
            books.document("goods_receipt", [("WATER", 20_000, 33)])
        if n == 14:
            # A stocktake too big for one message, its parts at the end of the first
            # batch of 25 (committed, never acked) and the start of the next.
            stocktake: list[tuple[str, int, int | None]] = [
                (f"ITEM{k:03d}", 1_000 * (k % 5 + 1), None) for k in range(30)
            ]
            parts = books.document_in_parts("stocktake", stocktake, per_part=20)
            assert [e.seq for e in parts] == [25, 26]
            stocktake_id = f"K1-doc-{parts[0].seq}"
    other.document("goods_receipt", [("SALT", 9_000, 20), ("SUGAR", 9_000, 50)])
    other.document(
        "transfer_out",
        [("SALT", -3_000, None), ("SUGAR", -2_000, None)],
        counterpart="K1",
        document_id="TK-1",
    )
    other.document_in_parts(
        "transfer_in", [("MILK", 5_000, None)], per_part=1, counterpart="K1", transfer_ref=out_ref
    )
    await publish_books(nats_server.url, books, other)
    env = ingest_env(db_url, nats_server.url, str(tmp_path), BACKROOM_INGEST_BATCH="25")
    log = (tmp_path / "worker.log").open("wb")
    try:
        # It dies right after its first commit, before the ack.
        await ingest_until_crash(env, "BACKROOM_FAULT_CRASH_AFTER_COMMIT", log)
        async with sessionmaker() as session:
            committed = await session.scalar(select(func.count()).select_from(IngestedEvent))
        assert committed is not None
        assert 0 < committed <= 25  # one batch stored, never acked

        async with running_ingest(env, log):

            async def drained() -> bool:
                async with sessionmaker() as session:
                    n = await session.scalar(select(func.count()).select_from(IngestedEvent))
                return n == len(books.events) + len(other.events)

            await wait_until(drained, timeout=60)
            # Past the ack wait: the crashed batch's redelivery has come and gone.
            async with sessionmaker() as session:
                before = await session.scalar(select(func.count(Receipt.id)))
            await asyncio.sleep(3)
    finally:
        log.close()
    async with sessionmaker() as session:
        receipts = await session.scalar(select(func.count(Receipt.id)))
        sales = await session.scalar(select(func.sum(Receipt.total)))
        milk = await session.get(StockBalance, ("K1", "MILK"))
    assert receipts == before == 62
    assert sales == books.sales_total
    assert milk is not None
    assert milk.quantity_milli == books.stock_milli["MILK"]
    async with sessionmaker() as session:
        water = await session.get(StockBalance, ("K1", "WATER"))
        corrections = await session.scalar(
            select(func.count()).where(StockMovement.doc_type == COST_CORRECTION)
        )
        tea = await session.get(StockBalance, ("K1", "TEA"))
    # 20 received at 0.33 cover 10 sold at 0: the 10 left are worth 3.30, once; TEA's
    # receipt and return each corrected once: the 1 left is worth 1.00.
    assert water is not None
    assert tea is not None
    assert (water.quantity_milli, water.value, water.avg_cost, corrections) == (10_000, 330, 33, 3)
    assert (tea.quantity_milli, tea.value, tea.avg_cost) == (1_000, 100, 100)
    async with sessionmaker() as session:
        document = await get_document(session, "K1", stocktake_id)
        stock = {
            b.sku: b.quantity_milli
            for b in await session.scalars(select(StockBalance).where(StockBalance.branch == "K1"))
        }
    assert (document.parts, document.parts_received) == (2, 2)
    assert [x.line_no for x in document.lines] == list(range(1, 31))
    assert stock == books.stock_milli
    async with sessionmaker() as session:
        transfers = await list_transfers(
            session, branch=None, in_transit_only=False, limit=10, offset=0
        )
        discrepancies = await session.scalar(
            select(func.count()).select_from(StockTransferDiscrepancy)
        )
    by_ref = {t.transfer_ref: t for t in transfers.items}
    assert {ref: (t.status, t.discrepancies) for ref, t in by_ref.items()} == {
        "TK-1": ("received", []),
        out_ref: ("received", []),
    }
    assert [(x.sku, x.sent_milli, x.received_milli) for x in by_ref["TK-1"].lines] == [
        ("SALT", 3_000, 3_000),
        ("SUGAR", 2_000, 2_000),
    ]
    assert [(x.sku, x.sent_milli, x.received_milli) for x in by_ref[out_ref].lines] == [
        ("MILK", 5_000, 5_000)
    ]
    assert discrepancies == 0
    await engine.dispose()


async def test_crash_after_commit_with_a_transfer_out_and_in_in_the_batch(
    db_url: str, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """The crashed (committed, never acked) batch holds a transfer out and its in: the
    in is valued from the out in the same batch, and the redelivery changes nothing."""
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        for code in ("K1", "K2"):
            await add_branch(session, code=code, name=code)
    sender, receiver = BranchBooks("K1"), BranchBooks("K2")
    sender.document("goods_receipt", [("COFFEE", 10_000, 300)])
    sender.document("transfer_out", [("COFFEE", -4_000, None)], counterpart="K2", document_id="T1")
    receiver.document("transfer_in", [("COFFEE", 4_000, None)], counterpart="K1", transfer_ref="T1")
    receiver.open_shift()
    for _ in range(30):
        receiver.sale([("COFFEE", 100, 450)])
    await publish_books(nats_server.url, sender, receiver)
    env = ingest_env(db_url, nats_server.url, str(tmp_path), BACKROOM_INGEST_BATCH="10")
    log = (tmp_path / "worker.log").open("wb")
    total = len(sender.events) + len(receiver.events)
    try:
        await ingest_until_crash(env, "BACKROOM_FAULT_CRASH_AFTER_COMMIT", log)
        async with running_ingest(env, log):

            async def drained() -> bool:
                async with sessionmaker() as session:
                    n = await session.scalar(select(func.count()).select_from(IngestedEvent))
                return n == total

            await wait_until(drained, timeout=60)
            await asyncio.sleep(3)  # past the ack wait: the redelivery has come and gone
    finally:
        log.close()
    async with sessionmaker() as session:
        k1 = await session.get(StockBalance, ("K1", "COFFEE"))
        k2 = await session.get(StockBalance, ("K2", "COFFEE"))
        receipts = await session.scalar(select(func.count(Receipt.id)))
    assert k1 is not None
    assert k2 is not None
    assert receipts == 30
    # 4 left K1 at 3.00 (12.00); K2 received them at that and sold 3 at 3.00.
    assert (k1.quantity_milli, k1.value) == (6_000, 1_800)
    assert (k2.quantity_milli, k2.value, k2.avg_cost) == (1_000, 300, 300)
    await engine.dispose()


async def test_crash_after_commit_of_an_out_that_revalues_an_earlier_in(
    db_url: str, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """The receiver's in and sales reach central first (the sender was offline); the
    worker that then commits the sender's out, and with it the in's revaluation, dies
    before its ack. The redelivered out revalues nothing a second time."""
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        for code in ("K1", "K2"):
            await add_branch(session, code=code, name=code)
    sender, receiver = BranchBooks("K1"), BranchBooks("K2")
    sender.document("goods_receipt", [("COFFEE", 10_000, 300)])
    sender.document("transfer_out", [("COFFEE", -4_000, None)], counterpart="K2", document_id="T2")
    for _ in range(8):
        sender.document("write_off", [("COFFEE", -100, None)])
    receiver.document("transfer_in", [("COFFEE", 4_000, None)], counterpart="K1", transfer_ref="T2")
    receiver.open_shift()
    receiver.sale([("COFFEE", 1_000, 450)])
    env = ingest_env(db_url, nats_server.url, str(tmp_path), BACKROOM_INGEST_BATCH="5")
    log = (tmp_path / "worker.log").open("wb")

    async def holds(n: int) -> bool:
        async with sessionmaker() as session:
            return await session.scalar(select(func.count()).select_from(IngestedEvent)) == n

    try:
        await publish_books(nats_server.url, receiver)
        async with running_ingest(env, log):
            await wait_until(lambda: holds(len(receiver.events)), timeout=60)
        await publish_books(nats_server.url, sender)
        # The first batch (goods receipt, out, three write-offs) commits, then the crash.
        await ingest_until_crash(env, "BACKROOM_FAULT_CRASH_AFTER_COMMIT", log)
        async with running_ingest(env, log):
            await wait_until(lambda: holds(len(receiver.events) + len(sender.events)), timeout=60)
            await asyncio.sleep(3)  # past the ack wait: the redelivery has come and gone
    finally:
        log.close()
    async with sessionmaker() as session:
        k1 = await session.get(StockBalance, ("K1", "COFFEE"))
        k2 = await session.get(StockBalance, ("K2", "COFFEE"))
        revaluations = (
            await session.execute(
                select(StockMovement.doc_type, StockMovement.value)
                .where(StockMovement.branch == "K2", StockMovement.quantity_milli == 0)
                .order_by(StockMovement.id)
            )
        ).all()
    assert k1 is not None
    assert k2 is not None
    # K1: 10 at 3.00, 4 sent (12.00), 0.8 written off (2.40).
    assert (k1.quantity_milli, k1.value) == (5_200, 1_560)
    # K2 received 4 at 0 (no average yet) and sold one; revalued once: 3 at 3.00 on
    # hand, the one sold charged 3.00 more.
    assert [tuple(r) for r in revaluations] == [("transfer_in", 1_200), (COST_CORRECTION, -300)]
    assert (k2.quantity_milli, k2.value, k2.avg_cost) == (3_000, 900, 300)
    await engine.dispose()


async def test_crash_after_commit_with_late_fiscal_numbers_and_interventions(
    db_url: str, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """Late fiscal numbers and fiscal interventions in the batch committed and never
    acked: redelivered, none is applied or stored twice, none becomes a dead letter,
    and every receipt ends with its number."""
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await add_branch(session, code="K1", name="K1")
    books = BranchBooks("K1")
    books.document("goods_receipt", [("MILK", 100_000, 100)])
    books.open_shift()
    for n in range(6):
        receipt = books.sale([("MILK", 1_000, 199)], unfiscal=True)
        books.intervention("completed_unfiscal", document=f"sale {n}")
        books.late_fiscal_number(receipt, f"L{n}")
    books.close_shift()
    await publish_books(nats_server.url, books)
    env = ingest_env(db_url, nats_server.url, str(tmp_path), BACKROOM_INGEST_BATCH="7")
    log = (tmp_path / "worker.log").open("wb")
    try:
        # The first batch (goods receipt, shift, two sales with their intervention and
        # late number... ) commits, then the crash before the ack.
        await ingest_until_crash(env, "BACKROOM_FAULT_CRASH_AFTER_COMMIT", log)
        async with sessionmaker() as session:
            committed = await session.scalar(select(func.count()).select_from(LateFiscalNumberRow))
        assert committed is not None
        assert committed >= 1  # a late number in the batch committed, never acked
        async with running_ingest(env, log):

            async def drained() -> bool:
                async with sessionmaker() as session:
                    n = await session.scalar(select(func.count()).select_from(IngestedEvent))
                return n == len(books.events)

            await wait_until(drained, timeout=60)
            await asyncio.sleep(3)  # past the ack wait: the redelivery has come and gone
    finally:
        log.close()
    async with sessionmaker() as session:
        numbers = sorted(
            await session.scalars(select(Receipt.fiscal_number).where(Receipt.branch == "K1"))
        )
        late = (await session.scalars(select(LateFiscalNumberRow.status))).all()
        interventions = await session.scalar(
            select(func.count()).select_from(FiscalInterventionRow)
        )
        letters = await session.scalar(select(func.count()).select_from(DeadLetter))
        total = await session.scalar(select(func.sum(Receipt.total)))
    assert numbers == [f"L{n}" for n in range(6)]
    assert sorted(late) == ["applied"] * 6
    assert (interventions, letters) == (6, 0)
    assert total == books.sales_total
    await engine.dispose()
