"""A cash refund without receipt at a till with a fiscal printer is paid out there (cash
out, Datecs 0x46 type 1), exactly once, so the printer's cash count (what a cash-out is
checked against) follows the drawer. It is no cash move of the shift: the shift's
expected cash counts the refund once, and no ``cash_moved`` event goes to central. The
agent in process, the fiscal printer a simulator over a pty, real SQLite."""

from __future__ import annotations

from decimal import Decimal

from branch_agent.status import format_status, offline_status
from devices.fiscal_datecs import CMD_CASH_IN_OUT
from tests.branch_agent.conftest import TILL, TILL2, Store
from tests.branch_agent.test_return_without_receipt import (
    MILK,
    MILK_PRICE,
    no_receipt,
    opened,
    post,
    returns_recorded,
)
from tests.branch_agent.test_stock_documents import refused

REFUND = 2 * MILK_PRICE  # two milks, the default lines of no_receipt()


async def test_a_cash_refund_without_receipt_is_paid_out_on_the_printer_once(
    store: Store,
) -> None:
    sim = store.fiscal.sim
    await opened(store, 5000)  # the float goes onto the printer: 50.00
    assert sim.cash == Decimal("50.00")
    first = await post(store, no_receipt("nr-1"))
    assert first.status_code == 201, first.text
    ret = first.json()
    assert ret["payout"] == "printed", ret
    assert ret["payout_error"] is None
    assert ret["status"] == "recorded"  # still no storno
    assert ret["drawer"] == "opened"  # the customer's cash comes out of the drawer
    assert sim.cash_moves == [(0, Decimal("50.00")), (1, Decimal("2.38"))]
    assert sim.cash == Decimal("47.62")
    # a retry is answered with the original, nothing paid out again
    again = await post(store, no_receipt("nr-1"))
    assert again.status_code == 200, again.text
    assert again.json() == ret | {"drawer": None}  # the drawer was the first request's
    assert len(sim.cash_moves) == 2
    # the shift counts the refund once, as a refund, not as a cash move
    shift = (await store.client.get("/api/v1/shifts/current", headers=TILL)).json()
    assert shift["cash_out"] == 0
    assert shift["expected_cash"] == 5000 - REFUND
    assert await store.events("cash_moved") == []
    (event,) = await returns_recorded(store)
    assert event.refunds[0].amount == REFUND
    # printer, agent and drawer agree: the whole drawer can be taken out, not a cent more
    refused(
        await store.client.post(
            "/api/v1/cash-moves",
            json={"move_id": "m-1", "direction": "out", "amount": 5000 - REFUND + 1},
            headers=TILL,
        ),
        409,
        "amount",
    )
    taken = await store.client.post(
        "/api/v1/cash-moves",
        json={"move_id": "m-2", "direction": "out", "amount": 5000 - REFUND},
        headers=TILL,
    )
    assert taken.status_code == 201, taken.text
    assert sim.cash == 0


async def test_the_z_report_is_unaffected_by_the_pay_out(store: Store) -> None:
    sim = store.fiscal.sim
    await opened(store, 1000)
    sale = await store.sale(
        {
            "sale_id": "s-1",
            "lines": [{"barcode": MILK, "quantity": "1"}],
            "payments": [{"type": "cash", "amount": 200}],
        }
    )
    assert sale.json()["status"] == "fiscalized", sale.text
    paid = await post(store, no_receipt("nr-z"))
    assert paid.json()["payout"] == "printed", paid.text
    closed = await store.client.post("/api/v1/shifts/current/close", headers=TILL)
    assert closed.status_code == 200, closed.text
    body = closed.json()
    # 0x45 carries turnover and storno per VAT group, no cash: the pay-out is in neither
    assert body["z_turnover_by_vat_group"] == {"B": MILK_PRICE}
    assert body["z_storno_by_vat_group"] == {}
    assert body["matches_fiscal"] is True, body
    assert body["shift"]["expected_cash"] == 1000 + MILK_PRICE - REFUND
    assert sim.cash == Decimal("10.00") + Decimal("1.19") - Decimal("2.38")


async def test_other_refunds_and_tills_without_printer_pay_nothing_out(store: Store) -> None:
    sim = store.fiscal.sim
    await opened(store, 5000)
    voucher = await post(store, no_receipt("nr-v", refund_type="voucher"))
    assert voucher.status_code == 201, voucher.text
    assert voucher.json()["payout"] is None
    await opened(store, 5000, TILL2)
    approval2 = {**TILL2, "X-Manager-Token": "manager-secret"}
    cash = await post(store, no_receipt("nr-t2"), approval2)
    assert cash.status_code == 201, cash.text
    assert cash.json()["payout"] is None
    assert sim.cash_moves == [(0, Decimal("50.00"))]


async def test_a_refund_above_the_printers_cash_count_is_refused(store: Store) -> None:
    sim = store.fiscal.sim
    await opened(store, 5000)
    # The printer counts less than the shift's records (e.g. it lost count): it would
    # refuse the pay-out, as it refuses a cash-out above its count.
    with sim.lock:
        sim.cash = Decimal("2.00")
    answer = await post(store, no_receipt("nr-1"))
    detail = refused(answer, 409, "refund_type")
    assert "2.00 by the fiscal printer's count" in detail, detail
    assert await returns_recorded(store) == []
    assert sim.cash_moves == [(0, Decimal("50.00"))]


async def test_a_pay_out_the_printer_refuses_is_failed_and_paid_by_the_tills_repeat(
    store: Store,
) -> None:
    sim = store.fiscal.sim
    await opened(store, 5000)
    sim.set_fault("paper_end")
    first = await post(store, no_receipt("nr-1"))
    # the refund happened: the return is recorded, its pay-out is not on the printer
    assert first.status_code == 201, first.text
    ret = first.json()
    assert ret["payout"] == "failed", ret
    assert "load paper" in ret["payout_error"]
    assert "same return" in ret["payout_error"]
    assert sim.cash == Decimal("50.00")
    assert len(await returns_recorded(store)) == 1
    shift = (await store.client.get("/api/v1/shifts/current", headers=TILL)).json()
    assert shift["expected_cash"] == 5000 - REFUND
    # the technician's status lists it until it is paid out
    status = (await store.client.get("/health/status")).json()
    (listed,) = status["payouts_not_printed"]
    assert listed.startswith("T1 return nr-1: 2.38 failed: not paid out"), listed
    # ... and so does the page read from the database of an agent not running
    offline = offline_status(store.agent.settings.database_path, "B1")
    assert offline.payouts_not_printed == [listed]
    assert f"not paid out     {listed}" in format_status(offline).splitlines()
    sim.set_fault("paper_end", on=False)
    again = await post(store, no_receipt("nr-1"))
    assert again.status_code == 200, again.text
    assert again.json()["payout"] == "printed", again.text
    assert again.json()["payout_error"] is None
    assert (await store.client.get("/health/status")).json()["payouts_not_printed"] == []
    assert sim.cash_moves == [(0, Decimal("50.00")), (1, Decimal("2.38"))]
    # once printed, a repeat prints nothing
    assert (await post(store, no_receipt("nr-1"))).json()["payout"] == "printed"
    assert sim.executed.count(CMD_CASH_IN_OUT) >= 1
    assert len(sim.cash_moves) == 2
    assert len(await returns_recorded(store)) == 1


async def test_a_printer_that_does_not_answer_leaves_the_pay_out_failed(store: Store) -> None:
    sim = store.fiscal.sim
    await opened(store, 5000)
    sim.go_deaf(3.5)
    first = await post(store, no_receipt("nr-1"))
    assert first.status_code == 201, first.text
    assert first.json()["payout"] == "failed", first.text
    assert "no_answer" in first.json()["payout_error"] or "link" in first.json()["payout_error"]
    assert sim.cash_moves == [(0, Decimal("50.00"))]


async def test_a_pay_out_whose_frame_or_answer_is_lost_is_paid_out_once(store: Store) -> None:
    sim = store.fiscal.sim
    await opened(store, 5000)
    # 0x46 frames of a pay-out: #1 reads the cash sum before, #2 is the pay-out
    sim.at_command(CMD_CASH_IN_OUT, lambda _sim: "drop", nth=2)
    first = await post(store, no_receipt("nr-1"))
    assert first.json()["payout"] == "printed", first.text
    sim.lose_answers(CMD_CASH_IN_OUT, count=2)
    second = await post(store, no_receipt("nr-2", {"barcode": MILK, "quantity": "1"}))
    assert second.json()["payout"] == "printed", second.text
    assert sim.cash_moves == [
        (0, Decimal("50.00")),
        (1, Decimal("2.38")),
        (1, Decimal("1.19")),
    ]
