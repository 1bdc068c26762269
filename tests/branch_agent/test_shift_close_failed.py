"""A close whose Z report does not print (paper out at the Z), and a close answered
again: the till is told what is wrong and how to finish, sees the close under way,
and a close repeated after it succeeded gets the same answer, never a second Z.
The agent with real drivers against the device simulators over ptys."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from branch_agent.models import Shift
from devices.fiscal_datecs import CMD_REPORT
from tests.branch_agent.conftest import TILL, TILL2, Store
from tests.branch_agent.test_sales_and_fiscal import basket

CLOSE = "/api/v1/shifts/current/close"
HOW = "POST /api/v1/shifts/current/close"


async def fiscal_state(store: Store) -> str:
    status = (await store.client.get("/health/status")).json()
    device = next(d for d in status["devices"] if d["till"] == "T1" and d["device"] == "fiscal")
    return str(device["state"])


async def current(store: Store, headers: dict[str, str] = TILL) -> Any:
    return await store.client.get("/api/v1/shifts/current", headers=headers)


async def test_paper_out_at_the_z_says_so_and_the_repeated_close_prints_one_z(
    store: Store,
) -> None:
    sim = store.fiscal.sim
    opened = await store.open_shift(cashier="anna", opening_float=5000)
    shift_id = opened["shift_id"]
    sold = await store.sale(basket("z-paper-1"))
    assert sold.json()["status"] == "fiscalized"

    sim.paper_end = True
    failed = await store.client.post(CLOSE, headers=TILL)
    assert failed.status_code == 503, failed.text
    assert failed.headers["content-type"].startswith("application/problem+json")
    detail = failed.json()["detail"]
    # the printer's condition, as a sale's fiscal_error names it, and what to do
    assert "paper_end: paper end" in detail
    assert f"load paper and repeat the close: {HOW}" in detail
    assert sim.reports == []
    # The printer's state says why, though fiscal memory answered after the refusal.
    assert await fiscal_state(store) == "paper_end"
    # The open shift shows the close under way and why it stopped.
    shown = (await current(store)).json()
    assert shown["shift_id"] == shift_id
    assert shown["closing"] is True
    assert shown["close_error"] == detail
    assert shown["closed_at"] is None

    # What the closing shift refuses says how to finish the close.
    refused_sale = await store.client.post("/api/v1/sales", json=basket("z-paper-2"), headers=TILL)
    assert refused_sale.status_code == 409, refused_sale.text
    assert refused_sale.json()["errors"][0]["field"] == "shift_id"
    for text in ("being closed", HOW, "paper_end: paper end"):
        assert text in refused_sale.json()["detail"]
    for body in ({"cashier": "bob"}, {"cashier": "anna", "opening_float": 5000}, {}):
        refused_open = await store.client.post("/api/v1/shifts", json=body, headers=TILL)
        assert refused_open.status_code == 409, (body, refused_open.text)
        assert refused_open.json()["errors"][0]["field"] == "shift"
        assert HOW in refused_open.json()["detail"]
        assert "then open the next shift" in refused_open.json()["detail"]
    refused_move = await store.client.post(
        "/api/v1/cash-moves",
        json={"move_id": "z-m1", "direction": "in", "amount": 100},
        headers=TILL,
    )
    assert refused_move.status_code == 409, refused_move.text
    assert HOW in refused_move.json()["detail"]

    # Still no paper: the same answer, still one intent and no Z.
    assert (await store.client.post(CLOSE, headers=TILL)).status_code == 503
    assert sim.reports == []

    sim.paper_end = False
    closed = await store.client.post(CLOSE, headers=TILL)
    assert closed.status_code == 200, closed.text
    body = closed.json()
    assert sim.reports == [("Z", 1)]
    assert body["z_report_number"] == 1
    assert body["matches_fiscal"] is True
    assert body["z_turnover_by_vat_group"] == {
        group: int(total * 100)
        for group, total in zip("ABCDEFGH", sim.fiscal_memory[-1][1], strict=True)
        if total != Decimal("0.00")
    }
    shift = body["shift"]
    assert shift["shift_id"] == shift_id
    assert shift["closed_at"] is not None
    assert (shift["closing"], shift["close_error"]) == (False, None)
    assert shift["receipts_count"] == 1
    assert shift["sales_total"] == sold.json()["total"]
    assert shift["cash_in"] == shift["cash_out"] == 0
    assert shift["expected_cash"] == 5000 + 463
    assert sim.cash == Decimal(shift["expected_cash"]) / 100
    assert await fiscal_state(store) == "ok"

    # Repeated (its answer lost): the same answer, no second Z, no second closing event.
    again = await store.client.post(CLOSE, headers=TILL)
    assert again.status_code == 200, again.text
    assert again.json() == body
    assert sim.reports == [("Z", 1)]
    closings = await store.events("shift_closed")
    assert [e.body.shift_id for e in closings] == [shift_id]  # type: ignore[union-attr]
    # Read back by id, as the close answered it.
    read = await store.client.get(f"/api/v1/shifts/{shift_id}", headers=TILL)
    assert read.status_code == 200, read.text
    assert read.json() == body

    # The next shift opens and sells.
    assert (await store.open_shift(cashier="anna"))["shift_id"] != shift_id
    later = await store.client.post("/api/v1/sales", json=basket("z-paper-2"), headers=TILL)
    assert later.status_code == 201, later.text


async def test_a_shift_is_read_by_id_at_its_own_till_only(store: Store) -> None:
    opened = await store.open_shift(cashier="anna")
    await store.sale(basket("r-1"))
    read = await store.client.get(f"/api/v1/shifts/{opened['shift_id']}", headers=TILL)
    assert read.status_code == 200, read.text
    body = read.json()
    # open: the agent's totals, no Z figures yet
    assert body["shift"] == (await current(store)).json()
    assert body["shift"]["receipts_count"] == 1
    assert body["z_report_number"] is None
    assert body["matches_fiscal"] is None
    assert body["z_turnover_by_vat_group"] == {}
    assert body["agent_turnover_by_vat_group"] == {"B": 463}
    for headers, shift_id in ((TILL2, opened["shift_id"]), (TILL, "T1-999")):
        missing = await store.client.get(f"/api/v1/shifts/{shift_id}", headers=headers)
        assert missing.status_code == 404, missing.text
        assert missing.headers["content-type"].startswith("application/problem+json")
    assert (await store.client.get(f"/api/v1/shifts/{opened['shift_id']}")).status_code == 401


async def test_a_shift_closed_before_its_answer_was_kept_is_read_from_its_records(
    store: Store,
) -> None:
    """Closed by an agent before a1903 (no stored answer): made again from the records."""
    opened = await store.open_shift(cashier="anna")
    await store.sale(basket("old-1"))
    closed = (await store.client.post(CLOSE, headers=TILL)).json()
    async with store.agent.sessionmaker() as session, session.begin():
        row = await session.get(Shift, opened["shift_id"])
        assert row is not None
        row.close_answer = None
    read = await store.client.get(f"/api/v1/shifts/{opened['shift_id']}", headers=TILL)
    assert read.json() == closed
    assert (await store.client.post(CLOSE, headers=TILL)).json() == closed


async def test_two_closes_at_once_print_one_z_and_answer_alike(store: Store) -> None:
    sim = store.fiscal.sim
    await store.open_shift(cashier="anna")
    await store.sale(basket("c-1"))
    sim.slow_command(CMD_REPORT, 1.0)
    closes = asyncio.gather(
        store.client.post(CLOSE, headers=TILL), store.client.post(CLOSE, headers=TILL)
    )
    await asyncio.sleep(0.5)
    # the Z is printing: the shift shows its close under way (nothing failed)
    under_way = (await current(store)).json()
    assert (under_way["closing"], under_way["close_error"]) == (True, None)
    first, second = await closes
    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    assert first.json() == second.json()
    assert sim.reports == [("Z", 1)]
    assert len(await store.events("shift_closed")) == 1


async def test_a_till_without_printer_gets_its_close_again_and_404_before_any_shift(
    store: Store,
) -> None:
    never = await store.client.post(CLOSE, headers=TILL2)
    assert never.status_code == 404, never.text
    await store.open_shift(TILL2, cashier="bob", opening_float=1000)
    await store.sale(basket("u-1"), headers=TILL2)
    closed = await store.client.post(CLOSE, headers=TILL2)
    assert closed.status_code == 200, closed.text
    assert closed.json()["z_report_number"] is None
    assert closed.json()["matches_fiscal"] is None
    again = await store.client.post(CLOSE, headers=TILL2)
    assert again.status_code == 200, again.text
    assert again.json() == closed.json()
    assert len(await store.events("shift_closed")) == 1
