"""Closing a shift: every fiscal receipt belongs to the shift whose Z report counts it.
The agent with real drivers against the device simulators over ptys, real SQLite."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from sqlalchemy import select

from branch_agent.models import CashMove, CustomerReturn, Sale
from devices.fiscal_datecs import CMD_REPORT
from tests.branch_agent.conftest import TILL, Store
from tests.branch_agent.test_sales_and_fiscal import basket


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
