"""Closing a shift: every fiscal receipt belongs to the shift whose Z report counts it.
The agent with real drivers against the device simulators over ptys, real SQLite."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from branch_agent.models import CashMove, CustomerReturn, Sale
from devices.fiscal_datecs import CMD_CASH_IN_OUT, CMD_REPORT, CMD_SALE
from tests.branch_agent.conftest import TILL, TILL2, Store
from tests.branch_agent.test_sales_and_fiscal import basket
from tests.branch_agent.test_storno_cash_z import power_cut


async def test_sales_returns_and_cash_moves_while_the_z_prints_are_refused(
    store: Store,
) -> None:
    sim = store.fiscal.sim
    await store.open_shift(cashier="anna")
    first = await store.sale(basket("zr0"))
    assert first.json()["status"] == "fiscalized"
    sim.slow_command(CMD_REPORT, 2.0)  # a real Z takes seconds
    close = asyncio.create_task(store.client.post("/api/v1/shifts/current/close", headers=TILL))
    await asyncio.sleep(0.5)
    refused = await store.client.post("/api/v1/sales", json=basket("zr1"), headers=TILL)
    assert refused.status_code == 409, refused.text
    assert refused.json()["errors"][0]["field"] == "shift_id"
    assert "being closed" in refused.json()["detail"]
    ret = await store.client.post(
        "/api/v1/returns",
        json={
            "return_id": "r1",
            "original_sale_id": "zr0",
            "lines": [{"line_no": 1, "quantity": "1"}],
        },
        headers=TILL,
    )
    assert ret.status_code == 409, ret.text
    assert ret.json()["errors"][0]["field"] == "shift_id"
    move = await store.client.post(
        "/api/v1/cash-moves",
        json={"move_id": "m1", "direction": "in", "amount": 100},
        headers=TILL,
    )
    assert move.status_code == 409, move.text
    closed = await close
    assert closed.status_code == 200, closed.text
    body = closed.json()
    assert body["matches_fiscal"] is True
    assert body["shift"]["receipts_count"] == 1
    # Nothing of the refused ones was recorded or printed.
    assert len(sim.receipts) == 1
    assert sim.storno_receipts == []
    assert sim.cash_moves == []
    async with store.agent.sessionmaker() as session:
        assert [s.sale_id for s in await session.scalars(select(Sale))] == ["zr0"]
        assert list(await session.scalars(select(CustomerReturn))) == []
        assert list(await session.scalars(select(CashMove))) == []
    # The till sells zr1 in the next shift, whose Z counts it and only it.
    await store.open_shift(cashier="anna")
    again = await store.client.post("/api/v1/sales", json=basket("zr1"), headers=TILL)
    assert again.status_code == 201, again.text
    assert again.json()["shift_id"] != body["shift"]["shift_id"]
    second = await store.client.post("/api/v1/shifts/current/close", headers=TILL)
    assert second.json()["matches_fiscal"] is True
    assert second.json()["z_turnover_by_vat_group"] == {
        group: int(total * 100)
        for group, total in zip("ABCDEFGH", sim.fiscal_memory[-1][1], strict=True)
        if total != Decimal("0.00")
    }
    assert second.json()["shift"]["receipts_count"] == 1


async def current_shift(store: Store) -> Any:
    return (await store.client.get("/api/v1/shifts/current", headers=TILL)).json()


async def test_the_opening_float_is_deposited_on_the_fiscal_printer(store: Store) -> None:
    sim = store.fiscal.sim
    opened = await store.open_shift(cashier="anna", opening_float=20000)
    assert opened["float_deposit"] == "done"
    assert sim.cash_moves == [(0, Decimal("200.00"))]
    # A cash-out within the float: the printer counts the float too.
    out = await store.client.post(
        "/api/v1/cash-moves",
        json={"move_id": "out-1", "direction": "out", "amount": 5000},
        headers=TILL,
    )
    assert out.status_code == 201, out.text
    await store.sale(basket("f-1"))  # 10.00 cash, 5.37 change
    shift = await current_shift(store)
    assert shift["expected_cash"] == 20000 - 5000 + 463
    assert sim.cash == Decimal(shift["expected_cash"]) / 100
    # The float is not a cash move of the shift: neither in its totals nor sent up.
    assert shift["cash_in"] == 0
    assert [e.body.amount for e in await store.events("cash_moved")] == [5000]
    # Opening it again is the same shift: no second deposit.
    assert (await store.open_shift(cashier="anna", opening_float=20000))["float_deposit"] == "done"
    assert sim.cash_moves == [(0, Decimal("200.00")), (1, Decimal("50.00"))]


async def test_a_float_the_printer_could_not_take_goes_before_the_next_print(
    store: Store,
) -> None:
    sim = store.fiscal.sim
    sim.paper_end = True
    opened = await store.client.post(
        "/api/v1/shifts", json={"cashier": "anna", "opening_float": 10000}, headers=TILL
    )
    assert opened.status_code == 201, opened.text
    assert opened.json()["float_deposit"] == "pending"
    assert sim.cash_moves == []
    sim.paper_end = False
    sale = await store.sale(basket("f-2"))
    assert sale.json()["status"] == "fiscalized"
    assert sim.cash_moves == [(0, Decimal("100.00"))]
    assert sim.executed.index(CMD_CASH_IN_OUT) < sim.executed.index(CMD_SALE)
    shift = await current_shift(store)
    assert shift["float_deposit"] == "done"
    assert sim.cash == Decimal(shift["expected_cash"]) / 100


async def test_a_float_deposit_whose_answer_was_lost_is_not_deposited_twice(
    store: Store,
) -> None:
    sim = store.fiscal.sim
    # 0x46 #1 reads the cash sum before; #2 is the deposit, executed, its answer lost
    sim.at_command(CMD_CASH_IN_OUT, power_cut, nth=2)
    opened = await store.client.post(
        "/api/v1/shifts", json={"cashier": "anna", "opening_float": 10000}, headers=TILL
    )
    assert opened.status_code == 201, opened.text
    assert opened.json()["float_deposit"] == "pending"
    assert sim.cash_moves == [(0, Decimal("100.00"))]
    sim.deaf_until = 0.0  # the printer is back
    x = await store.client.post("/api/v1/shifts/current/x-report", headers=TILL)
    assert x.status_code == 200, x.text
    assert x.json()["shift"]["float_deposit"] == "done"
    assert sim.cash_moves == [(0, Decimal("100.00"))]
    assert sim.cash == Decimal("100.00")


async def test_opening_another_cashiers_shift_while_one_is_open_is_a_conflict(
    store: Store,
) -> None:
    opened = await store.client.post(
        "/api/v1/shifts", json={"cashier": "anna", "opening_float": 5000}, headers=TILL
    )
    assert opened.status_code == 201, opened.text
    shift_id = opened.json()["shift_id"]
    for body, field in (
        ({"cashier": "bob", "opening_float": 777}, "cashier"),
        ({"cashier": "bob"}, "cashier"),
        ({"cashier": "anna", "opening_float": 777}, "opening_float"),
        ({"shift_id": shift_id, "opening_float": 0}, "opening_float"),
    ):
        refused = await store.client.post("/api/v1/shifts", json=body, headers=TILL)
        assert refused.status_code == 409, (body, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["errors"][0]["field"] == field
        assert f"shift {shift_id} is open at till T1 for anna" in refused.json()["detail"]
    # The same request again (a retry), or one naming nothing to differ: the open shift.
    for body in ({"cashier": "anna", "opening_float": 5000}, {}, {"shift_id": shift_id}):
        again = await store.client.post("/api/v1/shifts", json=body, headers=TILL)
        assert again.status_code == 200, (body, again.text)
        assert (again.json()["shift_id"], again.json()["cashier"]) == (shift_id, "anna")
        assert again.json()["opening_float"] == 5000
    assert [e.body.shift_id for e in await store.events("shift_opened")] == [shift_id]
    assert store.fiscal.sim.cash_moves == [(0, Decimal("50.00"))]


async def test_matches_fiscal_compares_the_z_storno_with_the_returns_too(store: Store) -> None:
    await store.open_shift(cashier="anna")
    sold = await store.sale(basket("m-1"))
    assert sold.json()["status"] == "fiscalized"
    # A storno of a T1 receipt: printed, counted in the Z's storno totals.
    storno = await store.client.post(
        "/api/v1/returns",
        json={
            "return_id": "m-r1",
            "original_sale_id": "m-1",
            "lines": [{"line_no": 1, "quantity": "1"}],
        },
        headers=TILL,
    )
    assert storno.json()["status"] == "fiscalized", storno.text
    closed = (await store.client.post("/api/v1/shifts/current/close", headers=TILL)).json()
    assert closed["z_storno_by_vat_group"] == {"B": storno.json()["total"]}
    assert closed["agent_storno_by_vat_group"] == closed["z_storno_by_vat_group"]
    assert closed["matches_fiscal"] is True

    # A receipt of T2 (no fiscal printer) returned at T1: recorded, no storno printed,
    # so T1's Z does not count it while its sales turnover still agrees.
    await store.sale(basket("m-2"), headers=TILL2)
    await store.open_shift(cashier="anna")
    await store.sale(basket("m-3"))
    unprinted = await store.client.post(
        "/api/v1/returns",
        json={
            "return_id": "m-r2",
            "original_sale_id": "m-2",
            "original_till": "T2",
            "lines": [{"line_no": 1, "quantity": "1"}],
        },
        headers=TILL,
    )
    assert unprinted.json()["status"] == "recorded", unprinted.text
    second = (await store.client.post("/api/v1/shifts/current/close", headers=TILL)).json()
    assert second["z_turnover_by_vat_group"] == second["agent_turnover_by_vat_group"]
    assert second["z_storno_by_vat_group"] == {}
    assert second["agent_storno_by_vat_group"] == {"B": unprinted.json()["total"]}
    assert second["matches_fiscal"] is False


async def test_a_return_without_storno_is_grouped_by_its_own_tills_sale(store: Store) -> None:
    """Sale ids are the till's: T2 (no printer) and T1 both have a sale "g-1", milk (VAT
    group B) at T2, coffee (A) at T1. T2's returned at T1 (no storno: its sale was not
    fiscal) counts in the agent's storno totals under B, its own sale's group."""
    await store.open_shift(cashier="anna")
    milk = {
        "sale_id": "g-1",
        "lines": [{"sku": "MILK-1L"}],
        "payments": [{"type": "cash", "amount": 500}],
    }
    coffee = {
        "sale_id": "g-1",
        "lines": [{"sku": "COFFEE-250"}],
        "payments": [{"type": "cash", "amount": 1000}],
    }
    assert (await store.sale(milk, headers=TILL2)).status_code == 201
    assert (await store.sale(coffee)).status_code == 201
    unprinted = await store.client.post(
        "/api/v1/returns",
        json={
            "return_id": "g-r1",
            "original_sale_id": "g-1",
            "original_till": "T2",
            "lines": [{"line_no": 1, "quantity": "1"}],
        },
        headers=TILL,
    )
    assert unprinted.json()["status"] == "recorded", unprinted.text
    closed = (await store.client.post("/api/v1/shifts/current/close", headers=TILL)).json()
    assert closed["agent_storno_by_vat_group"] == {"B": unprinted.json()["total"]}
