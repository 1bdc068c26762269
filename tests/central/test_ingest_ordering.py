"""Two workers holding consecutive batches of one branch: the later one waits for the
earlier one before its stock moves, so costs follow the branch's own order; an earlier
batch whose worker dies does not hold the later one up (PostgreSQL)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from asyncio import Task
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from central.db import create_sessionmaker
from central.ingest import registry
from central.ingest.handlers import EventContext, IngestBatch, register_batch_handler
from central.ingest.ordering import ticket_keys
from central.ingest.registry import EARLY_STAGE
from central.ingest.worker import IngestWorker, MessageIn
from central.models import Receipt, StockBalance, StockMovement
from central.services.stock import rebuild_balances
from protocol import StockDocumentPosted
from tests.central.chain_events import BranchBooks, message
from tests.conftest import PG_URL_ENV

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"needs {PG_URL_ENV}"),
]


@dataclasses.dataclass
class Gate:
    """Holds the goods receipt's batch inside its transaction, tickets taken, before
    its stock moves: the moment the later batch would overtake it."""

    reached: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    opened: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    gate = Gate()

    @register_batch_handler(StockDocumentPosted, stage=EARLY_STAGE)
    async def hold(
        session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
    ) -> None:
        gate.reached.set()
        await gate.opened.wait()

    yield gate
    registry._REGISTRY[:] = [r for r in registry._REGISTRY if r.handler is not hold]


def _delivered(envelope_message: MessageIn, stream_seq: int) -> list[MessageIn]:
    return [dataclasses.replace(envelope_message, stream_seq=stream_seq)]


async def _books_of(engine: AsyncEngine) -> tuple[int | None, bool | None, tuple[int, int]]:
    """The sale's cost on the ledger, its negative-stock flag, MILK's balance."""
    async with create_sessionmaker(engine)() as session:
        cost = await session.scalar(
            select(StockMovement.value).where(StockMovement.doc_type == "sale")
        )
        flagged = await session.scalar(select(Receipt.negative_stock))
        balance = (
            await session.execute(
                select(StockBalance.quantity_milli, StockBalance.value).where(
                    StockBalance.sku == "MILK"
                )
            )
        ).one()
    return cost, flagged, (balance[0], balance[1])


async def _race(engine: AsyncEngine, gate: Gate) -> tuple[Task[Any], Task[Any], MessageIn]:
    """Worker one takes B1's goods receipt (stream sequence 1) and stops at the gate;
    worker two then takes the sale that follows it (stream sequence 2)."""
    sessionmaker = create_sessionmaker(engine)
    books = BranchBooks("B1")
    receipt = message(books.document("goods_receipt", [("MILK", 10_000, 100)]))
    sale = message(books.sale([("MILK", 2_000, 150)]))
    first = asyncio.create_task(IngestWorker(sessionmaker).process(_delivered(receipt, 1)))
    await asyncio.wait_for(gate.reached.wait(), 10)
    second = asyncio.create_task(IngestWorker(sessionmaker).process(_delivered(sale, 2)))
    return first, second, receipt


async def test_the_later_batch_waits_and_the_sale_is_costed_in_the_branch_s_order(
    pg_engine: AsyncEngine, gate: Gate
) -> None:
    first, second, _ = await _race(pg_engine, gate)
    # Unordered, the sale would be stored now, at a cost of 0 and flagged negative.
    done, _ = await asyncio.wait({second}, timeout=1.0)
    assert not done, "the later batch did not wait for the earlier one"
    gate.opened.set()
    await asyncio.wait_for(first, 10)
    await asyncio.wait_for(second, 10)
    assert await _books_of(pg_engine) == (-200, False, (8_000, 800))


async def test_an_earlier_batch_whose_link_dies_does_not_hold_up_the_later_one(
    pg_engine: AsyncEngine, gate: Gate
) -> None:
    first, second, receipt = await _race(pg_engine, gate)
    done, _ = await asyncio.wait({second}, timeout=0.5)
    assert not done
    # The first worker's connection drops while it holds its ticket.
    (key,) = ticket_keys(1, ["B1"])
    async with pg_engine.connect() as watcher:
        killed = await watcher.scalar(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                " AND objsubid = 1 AND granted"
                " AND ((classid::bigint << 32) | objid::bigint) = :k"
            ),
            {"k": key},
        )
    assert killed
    await asyncio.wait_for(second, 10)
    gate.opened.set()
    with pytest.raises(DBAPIError):
        await asyncio.wait_for(first, 10)
    # The sale went first after all: stored, costed at the empty balance, flagged.
    assert await _books_of(pg_engine) == (0, True, (-2_000, 0))
    # JetStream redelivers the unacked goods receipt: stored once, nothing lost.
    sessionmaker = create_sessionmaker(pg_engine)
    stats = await IngestWorker(sessionmaker).process(_delivered(receipt, 1))
    assert stats.stored == 1
    async with sessionmaker() as session:
        # The sale, the receipt and its cost correction, each once.
        assert await session.scalar(select(func.count(StockMovement.id))) == 3
    # The sale before the goods took no cost; the receipt's cost correction charges the
    # 2 sold at its cost, so the 8 left are at it too.
    assert (await _books_of(pg_engine))[2] == (8_000, 800)
    async with sessionmaker() as session, session.begin():
        assert (await rebuild_balances(session, verify_only=True)).agree
