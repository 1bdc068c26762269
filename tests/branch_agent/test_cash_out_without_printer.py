"""Cash out at a till without a fiscal printer: no printer counts its cash, so the
agent's own count (``expected_cash``) is the check, as the printer's is on a fiscal till.
T2 of the store fixture has no fiscal printer."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from branch_agent.models import CashMove
from tests.branch_agent.conftest import TILL2, Store
from tests.branch_agent.test_sales_and_fiscal import basket


async def cash_move(store: Store, move_id: str, direction: str, amount: int) -> Any:
    return await store.client.post(
        "/api/v1/cash-moves",
        json={"move_id": move_id, "direction": direction, "amount": amount, "reason": "x"},
        headers=TILL2,
    )


async def current(store: Store) -> Any:
    return (await store.client.get("/api/v1/shifts/current", headers=TILL2)).json()


async def test_a_cash_out_beyond_the_tills_count_is_refused_and_records_nothing(
    store: Store,
) -> None:
    await store.open_shift(TILL2, cashier="bob", opening_float=10000)
    refused = await cash_move(store, "CM3", "out", 999999)
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["errors"][0]["field"] == "amount"
    assert problem["detail"] == (
        "not enough cash in the drawer: 100.00 by the till's count, 9999.99 asked"
    )
    shift = await current(store)
    assert (shift["cash_out"], shift["expected_cash"]) == (0, 10000)
    async with store.agent.sessionmaker() as session:
        assert list(await session.scalars(select(CashMove))) == []
    assert await store.events("cash_moved") == []

    # The whole count may go; a cash sale adds to it, a cash-in too.
    whole = await cash_move(store, "CM4", "out", 10000)
    assert whole.status_code == 201, whole.text
    assert (await current(store))["expected_cash"] == 0
    assert (await cash_move(store, "CM5", "out", 1)).status_code == 409
    sold = await store.sale(basket("t2-cash"), headers=TILL2)  # 10.00 cash, 5.37 change
    assert sold.status_code == 201, sold.text
    assert (await current(store))["expected_cash"] == 463
    assert (await cash_move(store, "CM6", "out", 464)).status_code == 409
    assert (await cash_move(store, "CM7", "in", 1000)).status_code == 201
    taken = await cash_move(store, "CM8", "out", 1463)
    assert taken.status_code == 201, taken.text
    assert (await current(store))["expected_cash"] == 0

    # A retry of an accepted move gets the original, though the drawer is empty now.
    again = await cash_move(store, "CM4", "out", 10000)
    assert again.status_code == 200, again.text
    assert again.json() == whole.json()
    assert [e.body.amount for e in await store.events("cash_moved")] == [10000, 1000, 1463]


async def test_two_cash_outs_at_once_cannot_both_take_the_same_cash(store: Store) -> None:
    await store.open_shift(TILL2, cashier="bob", opening_float=10000)
    first, second = await asyncio.gather(
        cash_move(store, "A", "out", 6000), cash_move(store, "B", "out", 6000)
    )
    assert sorted((first.status_code, second.status_code)) == [201, 409], (
        first.text,
        second.text,
    )
    refused = first if first.status_code == 409 else second
    assert "40.00 by the till's count, 60.00 asked" in refused.json()["detail"]
    shift = await current(store)
    assert (shift["cash_out"], shift["expected_cash"]) == (6000, 4000)
    assert [e.body.amount for e in await store.events("cash_moved")] == [6000]
