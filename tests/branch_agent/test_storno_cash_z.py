"""Returns as storno receipts, vouchers, and record-first cash moves and Z reports: the
agent with real drivers against the device simulators over ptys, real SQLite."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from sqlalchemy import select

from branch_agent.models import CashMove, Sale, Shift
from branch_agent.settings import TillConfig
from devices.fiscal_datecs import CMD_CASH_IN_OUT, CMD_REPORT, CMD_SALE
from protocol.events import CashMoved, CustomerReturnRecorded, ShiftClosed
from tests.branch_agent.conftest import MANAGER, TILL, Store
from tests.branch_agent.test_sales_and_fiscal import basket


def return_body(return_id: str, original: str, *lines: tuple[int, str]) -> dict[str, Any]:
    return {
        "return_id": return_id,
        "original_sale_id": original,
        "lines": [{"line_no": n, "quantity": q} for n, q in lines],
        "reason": "damaged",
    }


async def post_return(store: Store, body: dict[str, Any]) -> Any:
    await store.open_shift()  # a return goes into the till's open shift, as a sale
    return await store.client.post("/api/v1/returns", json=body, headers=TILL)


def paper_runs_out(sim: Any) -> None:
    sim.paper_end = True


def power_cut(sim: Any) -> None:
    # the command is executed, then the printer goes deaf: its answer never comes
    sim.power_loss(30.0)  # the test brings it back by hand


async def test_a_return_is_printed_once_as_a_storno_of_the_original(store: Store) -> None:
    sale = (await store.sale(basket("s-1"))).json()
    assert sale["status"] == "fiscalized"
    created = await post_return(store, return_body("r-1", "s-1", (1, "1"), (2, "0.754")))
    assert created.status_code == 201, created.text
    ret = created.json()
    assert ret["status"] == "fiscalized"
    sim = store.fiscal.sim
    (storno,) = sim.storno_receipts
    assert ret["fiscal_number"] == str(storno.number)
    assert storno.amount == Decimal(ret["total"]) / 100
    assert [line.name for line in storno.lines] == [line["name"] for line in sale["lines"]]
    # It names the original: its number, the local time it was fiscalized, the printer.
    assert storno.storno is not None
    assert storno.storno.reason == 1  # refund
    assert storno.storno.document_number == int(sale["fiscal_number"])
    assert storno.storno.fiscal_memory_number == sim.fiscal_memory_number
    async with store.agent.sessionmaker() as session:
        original = await session.scalar(select(Sale).where(Sale.sale_id == "s-1"))
    assert original is not None
    assert original.fiscalized_at is not None
    local = original.fiscalized_at.astimezone(ZoneInfo("Europe/Berlin"))
    assert storno.storno.document_time.removesuffix(" DST") == local.strftime("%d-%m-%y %H:%M:%S")
    assert sim.storno_totals != [Decimal("0.00")] * 8
    (event,) = await store.events("customer_return_recorded")
    assert isinstance(event.body, CustomerReturnRecorded)
    assert event.body.fiscal_number == ret["fiscal_number"]
    # The till did not hear back and posts again: the same return, nothing printed.
    again = await post_return(store, return_body("r-1", "s-1", (1, "1"), (2, "0.754")))
    assert again.status_code == 200
    assert again.json()["fiscal_number"] == ret["fiscal_number"]
    assert len(sim.storno_receipts) == 1
    assert len(await store.events("customer_return_recorded")) == 1
    assert len(sim.receipts) == 1


async def test_paper_out_mid_storno_leaves_the_return_pending_then_prints_it_once(
    store: Store,
) -> None:
    await store.sale(basket("s-2"))
    sim = store.fiscal.sim
    sim.at_command(CMD_SALE, paper_runs_out, nth=2)  # the storno's second line
    response = await post_return(store, return_body("r-2", "s-2", (1, "2"), (2, "0.754")))
    assert response.status_code == 201
    ret = response.json()
    assert ret["status"] == "pending_fiscal"
    assert "paper_end" in ret["fiscal_error"]
    assert sim.storno_receipts == []
    assert sim.open_receipt is not None
    assert sim.open_receipt.storno is not None
    assert await store.events("customer_return_recorded") == []
    # A sale after it queues behind it: documents of a till go out in order.
    assert (await store.sale(basket("s-3"))).json()["status"] == "pending_fiscal"
    refused = await store.client.post("/api/v1/shifts/current/close", headers=TILL)
    assert refused.status_code in (404, 409)

    sim.paper_end = False
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    assert len(sim.storno_receipts) == 1
    assert sim.storno_receipts[0].amount == Decimal("4.63")
    assert sim.cancelled == []
    assert [r.amount for r in sim.receipts] == [Decimal("4.63"), Decimal("4.63")]
    again = await post_return(store, return_body("r-2", "s-2", (1, "2"), (2, "0.754")))
    assert again.json()["status"] == "fiscalized"
    assert again.json()["fiscal_number"] == str(sim.storno_receipts[0].number)
    await store.agent.fiscal.process_all()
    assert len(sim.storno_receipts) == 1
    assert len(await store.events("customer_return_recorded")) == 1
    # The storno went out before the later sale, as recorded.
    assert sim.storno_receipts[0].number < sim.receipts[1].number


async def test_a_return_of_an_unfiscalized_sale_prints_no_storno(store: Store) -> None:
    t2 = {"Authorization": "Bearer till-2-secret"}
    assert (await store.sale(basket("t2-1"), headers=t2)).json()["status"] == "recorded"
    body = return_body("r-3", "t2-1", (1, "1")) | {"original_till": "T2"}
    ret = (await post_return(store, body)).json()
    assert ret["status"] == "recorded"
    assert store.fiscal.sim.storno_receipts == []
    assert len(await store.events("customer_return_recorded")) == 1


async def test_a_sale_paid_partly_by_voucher_is_fiscalized_with_an_other_paid_mode(
    store: Store,
) -> None:
    body = basket("v-1") | {
        "payments": [{"type": "voucher", "amount": 300}, {"type": "cash", "amount": 500}]
    }
    sale = (await store.sale(body)).json()
    assert sale["status"] == "fiscalized", sale
    assert sale["change"] == 337
    (receipt,) = store.fiscal.sim.receipts
    assert receipt.payments == [(3, Decimal("3.00")), (0, Decimal("5.00"))]
    assert store.fiscal.sim.cash == Decimal("1.63")  # the voucher is no cash in the drawer
    # A voucher cannot be overpaid (change is cash only).
    over = basket("v-2") | {"payments": [{"type": "voucher", "amount": 500}]}
    assert (await store.sale(over)).status_code == 422
    # Per till: another PaidMode in 3..5, and nothing outside it.
    till = msgspec.convert({"id": "T9", "voucher_paid_mode": 5}, TillConfig)
    assert till.fiscal_payment_type("voucher") == "other_5"
    assert till.fiscal_payment_type("other") is None
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"id": "T9", "voucher_paid_mode": 2}, TillConfig)


async def cash_move(store: Store, move_id: str, direction: str, amount: int) -> Any:
    return await store.client.post(
        "/api/v1/cash-moves",
        json={"move_id": move_id, "direction": direction, "amount": amount},
        headers=TILL,
    )


async def test_a_cash_move_whose_answer_is_lost_is_settled_not_printed_again(
    store: Store,
) -> None:
    await store.client.post("/api/v1/shifts", json={"opening_float": 0}, headers=TILL)
    sim = store.fiscal.sim
    # 0x46 #1 reads the cash sum before; #2 is the cash out itself
    sim.at_command(CMD_CASH_IN_OUT, power_cut, nth=2)
    await store.sale(basket("s-cash"))  # 10.00 cash, 5.37 change: 4.63 in the drawer
    first = await cash_move(store, "out-1", "out", 300)
    assert first.status_code == 503, first.text
    assert sim.cash_moves == [(1, Decimal("3.00"))]  # printed; the agent could not know
    async with store.agent.sessionmaker() as session:
        (row,) = (await session.scalars(select(CashMove))).all()
    assert row.status == "pending"
    assert await store.events("cash_moved") == []
    sim.deaf_until = 0.0  # the printer is back
    again = await cash_move(store, "out-1", "out", 300)
    assert again.status_code == 200, again.text
    assert sim.cash_moves == [(1, Decimal("3.00"))]
    (event,) = await store.events("cash_moved")
    assert isinstance(event.body, CashMoved)
    assert event.body.amount == 300
    shift = (await store.client.get("/api/v1/shifts/current", headers=TILL)).json()
    assert shift["cash_out"] == 300
    # More than the drawer holds (the printer would refuse it): said so, not "device
    # unavailable", and nothing recorded or sent to the printer.
    refused = await cash_move(store, "out-2", "out", 100_000)
    assert refused.status_code == 409, refused.text
    assert refused.json()["errors"][0]["field"] == "amount"
    assert "not enough cash in the drawer: 1.63" in refused.json()["detail"]
    async with store.agent.sessionmaker() as session:
        failed = await session.scalar(select(CashMove).where(CashMove.move_id == "out-2"))
    assert failed is None
    assert len(sim.cash_moves) == 1
    assert (await store.client.get("/api/v1/shifts/current", headers=TILL)).json()[
        "cash_out"
    ] == 300


async def test_a_z_report_whose_answer_is_lost_is_read_back_not_printed_twice(
    store: Store,
) -> None:
    await store.client.post("/api/v1/shifts", json={}, headers=TILL)
    await store.sale(basket("s-z"))
    sim = store.fiscal.sim
    sim.at_command(CMD_REPORT, power_cut, nth=1)
    first = await store.client.post("/api/v1/shifts/current/close", headers=TILL)
    assert first.status_code == 503, first.text
    assert sim.reports == [("Z", 1)]
    async with store.agent.sessionmaker() as session:
        (shift,) = (await session.scalars(select(Shift))).all()
    assert (shift.z_status, shift.closed_at) == ("pending", None)
    sim.deaf_until = 0.0
    closed = await store.client.post("/api/v1/shifts/current/close", headers=TILL)
    assert closed.status_code == 200, closed.text
    body = closed.json()
    assert sim.reports == [("Z", 1)]  # one Z, not a second (zero) one
    assert body["z_report_number"] == 1
    assert body["z_turnover_by_vat_group"] == body["agent_turnover_by_vat_group"]
    assert body["matches_fiscal"] is True
    (event,) = await store.events("shift_closed")
    assert isinstance(event.body, ShiftClosed)
    assert event.body.z_report is not None
    assert event.body.z_report.report_number == 1
    again = await store.client.post("/api/v1/shifts/current/close", headers=TILL)
    assert (again.status_code, again.json()) == (200, body)
    assert sim.reports == [("Z", 1)]
    assert len(await store.events("shift_closed")) == 1


async def test_a_manager_completes_a_stuck_return_without_its_printer(store: Store) -> None:
    await store.sale(basket("s-9"))
    store.fiscal.sim.paper_end = True
    ret = (await post_return(store, return_body("r-9", "s-9", (1, "1")))).json()
    assert ret["status"] == "pending_fiscal"
    status = (await store.client.get("/health/status")).json()
    assert status["pending_fiscal_returns"] == 1
    pending = await store.client.get("/api/v1/manager/returns/pending", headers=MANAGER)
    assert [r["return_id"] for r in pending.json()] == ["r-9"]
    # A till cannot decide this; an unknown return is a 404.
    url = "/api/v1/manager/returns/T1/r-9/complete-unfiscal"
    body = {"reason": "printer replaced"}
    assert (await store.client.post(url, json=body, headers=TILL)).status_code == 403
    missing = "/api/v1/manager/returns/T1/nope/complete-unfiscal"
    assert (await store.client.post(missing, json=body, headers=MANAGER)).status_code == 404
    # While the printer answers (out of paper) it is refused: the return waits for it.
    refused = await store.client.post(url, json=body, headers=MANAGER)
    assert refused.status_code == 409, refused.text
    store.fiscal.sim.go_deaf(3600.0)  # the printer is taken away
    done = await store.client.post(url, json=body, headers=MANAGER)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed_unfiscal"
    # Goes up once, without a storno number; never printed later.
    (event,) = await store.events("customer_return_recorded")
    assert isinstance(event.body, CustomerReturnRecorded)
    assert event.body.fiscal_number is None
    store.fiscal.sim.go_deaf(0)
    store.fiscal.sim.paper_end = False
    await store.agent.fiscal.process_all()
    assert store.fiscal.sim.storno_receipts == []
    # compared with the printer once back: not printed
    assert (await store.client.get("/health/status")).json()["unfiscal_to_check"] == 0
    again = await store.client.post(url, json=body, headers=MANAGER)
    assert again.status_code == 409
    assert (await store.client.get("/health/status")).json()["pending_fiscal_returns"] == 0
