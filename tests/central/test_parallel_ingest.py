"""Two ingest worker processes on one durable consumer, a real nats-server, 5 branches:
duplicates, out-of-order delivery and one malformed message. Central's books equal the
branches' exactly, with one dead letter."""

from __future__ import annotations

import asyncio
import random
import sys
from asyncio.subprocess import DEVNULL
from pathlib import Path

from sqlalchemy import func, select

from central.db import create_engine, create_sessionmaker
from central.embedded_nats import EmbeddedNats
from central.models import (
    BranchStatus,
    BranchSyncState,
    CashMovement,
    CustomerReturn,
    DeadLetter,
    IngestedEvent,
    Receipt,
    ReceiptLineRow,
    StockBalance,
    SummaryBacklog,
)
from central.services.branches import add_branch
from central.services.stock import rebuild_balances
from protocol import BranchHeartbeat, encode, up_subject
from tests.central.chain_events import BranchBooks, ingest_env, outbox_items, publish_raw
from tests.central.summaries import assert_kept_equals_rebuilt
from tests.conftest import wait_until

BRANCHES = [f"P{n}" for n in range(1, 6)]


def branch_day(books: BranchBooks, rng: random.Random, other: str) -> None:
    books.document("goods_receipt", [("MILK", 40_000, 100), ("BREAD", 20_000, 80)])
    books.open_shift()
    for _ in range(25):
        books.sale([("MILK", rng.choice((1_000, 2_000)), 199), ("BREAD", 1_000, 129)])
    first_sale = books.events[2]
    books.customer_return("MILK", 1_000, 199, original=first_sale.body.sale_id)  # type: ignore[union-attr]
    # and one without receipt, approved by the manager: summaries and rebuild alike
    books.customer_return("BREAD", 1_000, 129, original=None)
    books.cash("out", 2_000)
    books.document("transfer_out", [("BREAD", -2_000, None)], counterpart=other)
    books.document("write_off", [("MILK", -500, None)])
    books.close_shift()


async def test_two_workers_store_every_branch_event_exactly_once(
    db_url: str, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        for code in BRANCHES:
            await add_branch(session, code=code, name=code)
    rng = random.Random(1)
    books = {code: BranchBooks(code) for code in BRANCHES}
    for i, code in enumerate(BRANCHES):
        branch_day(books[code], rng, BRANCHES[(i + 1) % len(BRANCHES)])
    items = outbox_items(*books.values())
    # Duplicates past JetStream's dedup (another msg id, e.g. after the window) ...
    duplicates = rng.sample(items, 20)
    items += [(s, p, f"{m}-again") for s, p, m in duplicates]
    # ... everything out of order, one malformed message and a heartbeat per branch.
    rng.shuffle(items)
    items.insert(37, ("up.P3.receipt_recorded", b"\xc1 not an event", "malformed-1"))
    from datetime import UTC, datetime

    items += [
        (
            up_subject(code, "heartbeat"),
            encode(BranchHeartbeat(branch=code, sent_at=datetime.now(UTC), last_recorded_seq=9)),
            f"hb-{code}",
        )
        for code in BRANCHES
    ]
    await publish_raw(nats_server.url, items)

    env = ingest_env(db_url, nats_server.url, str(tmp_path), BACKROOM_INGEST_BATCH="16")
    logs = [(tmp_path / f"worker-{n}.log").open("wb") for n in range(2)]
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "central", "ingest", env=env, stdout=DEVNULL, stderr=log
        )
        for log in logs
    ]
    total_events = sum(len(b.events) for b in books.values())
    try:

        async def all_in() -> bool:
            async with sessionmaker() as session:
                stored = await session.scalar(select(func.count()).select_from(IngestedEvent))
                letters = await session.scalar(select(func.count(DeadLetter.id)))
                beats = await session.scalar(select(func.count()).select_from(BranchStatus))
                # PostgreSQL: the workers' appliers have added every summary row.
                waiting = await session.scalar(select(func.count()).select_from(SummaryBacklog))
            return (stored, letters, beats, waiting) == (total_events, 1, len(BRANCHES), 0)

        await wait_until(all_in, timeout=90)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            await asyncio.wait_for(w.wait(), 20)
        for log in logs:
            log.close()
    for n in range(2):
        log = (tmp_path / f"worker-{n}.log").read_text()
        assert "Traceback" not in log, log

    async with sessionmaker() as session:
        for code, b in books.items():
            sales = await session.scalar(
                select(func.coalesce(func.sum(Receipt.total), 0)).where(Receipt.branch == code)
            )
            count = await session.scalar(
                select(func.count(Receipt.id)).where(Receipt.branch == code)
            )
            returns = await session.scalar(
                select(func.coalesce(func.sum(CustomerReturn.total), 0)).where(
                    CustomerReturn.branch == code
                )
            )
            cash = await session.scalar(
                select(func.coalesce(func.sum(CashMovement.amount), 0)).where(
                    CashMovement.branch == code
                )
            )
            sold = dict(
                (
                    await session.execute(
                        select(ReceiptLineRow.sku, func.sum(ReceiptLineRow.quantity_milli))
                        .join(Receipt, Receipt.id == ReceiptLineRow.receipt_id)
                        .where(Receipt.branch == code)
                        .group_by(ReceiptLineRow.sku)
                    )
                ).all()
            )
            stock = {
                s.sku: s.quantity_milli
                for s in await session.scalars(
                    select(StockBalance).where(StockBalance.branch == code)
                )
            }
            state = await session.get(BranchSyncState, code)
            assert (sales, count, returns, cash) == (
                b.sales_total,
                b.receipts,
                b.returns_total,
                2_000,
            )
            assert sold == b.sold_milli
            assert stock == b.stock_milli
            assert state is not None
            assert (state.contiguous_seq, state.max_seq) == (len(b.events),) * 2
        letter = await session.scalar(select(DeadLetter))
        assert letter is not None
        assert letter.raw == b"\xc1 not an event"
        assert "malformed event" in letter.reason
    async with sessionmaker() as session, session.begin():
        assert (await rebuild_balances(session, verify_only=True)).agree
    # Every report summary, kept by two workers (and their appliers), once.
    await assert_kept_equals_rebuilt(sessionmaker)
    await engine.dispose()
