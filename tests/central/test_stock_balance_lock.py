"""post_movements creates a batch's missing balances and locks them all; two transactions
over the same keys, new or not, wait for each other, never deadlock or lose an update."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from central.db import create_sessionmaker
from central.ingest.stock import Movement, post_movements
from central.models import StockBalance, StockMovement
from tests.conftest import PG_URL_ENV

AT = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
DAY = date(2026, 11, 2)


def _move(sku: str, quantity_milli: int, unit_cost: int | None = None) -> Movement:
    return Movement(
        "B1",
        sku,
        quantity_milli,
        unit_cost,
        "goods_receipt" if quantity_milli > 0 else "sale",
        f"doc-{uuid.uuid4().hex[:8]}",
        uuid.uuid4(),
        1,
        AT,
        DAY,
    )


async def _balances(engine: AsyncEngine) -> dict[str, tuple[int, int, int]]:
    async with create_sessionmaker(engine)() as session:
        rows = await session.execute(
            select(
                StockBalance.sku,
                StockBalance.quantity_milli,
                StockBalance.value,
                StockBalance.movements,
            ).where(StockBalance.branch == "B1")
        )
        return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def _post(engine: AsyncEngine, movements: list[Movement], hold_s: float = 0.0) -> None:
    async with create_sessionmaker(engine)() as session, session.begin():
        await post_movements(session, movements)
        # Keep the locks a while before committing: the other transaction must wait.
        await asyncio.sleep(hold_s)


async def test_existing_and_new_balances_in_one_batch(engine: AsyncEngine) -> None:
    await _post(engine, [_move("A", 10_000, 150), _move("B", 4_000, 200)])
    # A and B exist now, C and D do not.
    await _post(engine, [_move("A", -2_000), _move("C", 5_000, 100), _move("D", -1_000)])
    # All exist now.
    await _post(engine, [_move("A", -1_000), _move("B", -1_000), _move("C", -5_000)])
    assert await _balances(engine) == {
        "A": (7_000, 1_050, 3),
        "B": (3_000, 600, 2),
        "C": (0, 0, 2),
        "D": (-1_000, 0, 1),
    }
    async with create_sessionmaker(engine)() as session:
        ledger = (await session.execute(select(StockMovement.sku))).scalars().all()
    assert sorted(ledger) == ["A", "A", "A", "B", "B", "C", "C", "D"]


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"needs {PG_URL_ENV}")
@pytest.mark.parametrize("first_has_new", [False, True])
async def test_two_transactions_over_the_same_keys_wait_for_each_other(
    pg_engine: AsyncEngine, first_has_new: bool
) -> None:
    # K2 exists; K1 and K3 are new to whichever transaction meets them first.
    await _post(pg_engine, [_move("K2", 50_000, 100)])
    first = [_move("K2", -1_000), _move("K3", 2_000, 100)]
    if first_has_new:
        first.append(_move("K1", 3_000, 100))
    second = [_move("K1", 1_000, 100), _move("K2", -2_000), _move("K3", 1_000, 100)]
    holding = asyncio.create_task(_post(pg_engine, first, hold_s=0.5))
    await asyncio.sleep(0.2)
    # Waits on the first one's locks, then sees its rows; no deadlock, no lost update.
    await _post(pg_engine, second)
    await holding
    balances = await _balances(pg_engine)
    assert balances["K2"] == (47_000, 4_700, 3)
    assert balances["K3"] == (3_000, 300, 2)
    assert balances["K1"] == ((4_000, 400, 2) if first_has_new else (1_000, 100, 1))
