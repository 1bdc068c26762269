"""A receipt left open on the fiscal printer with money paid (a later payment of it
refused) blocks the till: ``status`` says so and why, and the manager's
finish-open-receipt ends it exactly once (also with the link dropped as it closes),
after which the till's queue prints in order."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from branch_agent.models import FiscalIntervention
from devices.fiscal_datecs import CMD_CLOSE_RECEIPT
from tests.branch_agent.conftest import MANAGER, TILL, Store
from tests.branch_agent.test_sales_and_fiscal import basket

FINISH = "/api/v1/manager/tills/T1/fiscal/finish-open-receipt"


async def _fiscal_state(store: Store) -> dict[str, Any]:
    status = (await store.client.get("/health/status")).json()
    state: dict[str, Any] = next(d for d in status["devices"] if d["device"] == "fiscal")
    return state


async def _sale(store: Store, sale_id: str) -> dict[str, Any]:
    response = await store.client.get(f"/api/v1/sales/{sale_id}", headers=TILL)
    result: dict[str, Any] = response.json()
    return result


async def _stuck(store: Store) -> None:
    """The printer was set up without vouchers and the agent was not told: the cash is
    taken, the voucher refused, the receipt stays open with 2.00 paid."""
    store.fiscal.sim.paid_modes = {0, 1, 2}
    body = basket("s-stuck") | {
        "payments": [{"type": "cash", "amount": 200}, {"type": "voucher", "amount": 263}]
    }
    response = await store.sale(body)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "pending_fiscal"
    assert store.fiscal.sim.open_receipt is not None
    assert store.fiscal.sim.open_receipt.paid == Decimal("2.00")
    state = await _fiscal_state(store)
    assert state["state"] == "blocked", state
    assert "receipt 1 is open on the printer with 2.00 of 4.63 paid" in state["detail"]
    # everything behind it waits; the X report cannot print
    assert (await store.sale(basket("s-after"))).json()["status"] == "pending_fiscal"
    x = await store.client.post("/api/v1/shifts/current/x-report", headers=TILL)
    assert x.status_code == 503


async def test_a_receipt_left_open_after_a_refused_payment_is_finished_by_the_manager(
    store: Store,
) -> None:
    await _stuck(store)
    assert (
        await store.client.post(FINISH, json={"reason": "no vouchers"}, headers=TILL)
    ).status_code == 403
    done = await store.client.post(FINISH, json={"reason": "voucher not set up"}, headers=MANAGER)
    assert done.status_code == 200, done.text
    assert done.json() == [
        {
            "till": "T1",
            "receipt_number": 1,
            "action": "closed",
            "amount": 463,
            "paid_before": 200,
            "cash_added": 263,
            "document": "sale s-stuck",
            "reason": "voucher not set up",
        }
    ]
    journal = store.fiscal.sim.receipts
    assert [r.payments for r in journal] == [
        [(0, Decimal("2.00")), (0, Decimal("2.63"))],
        [(0, Decimal("10.00"))],
    ]
    # the stuck sale is the receipt the printer closed; the one behind it printed after
    assert (await _sale(store, "s-stuck"))["fiscal_number"] == str(journal[0].number)
    assert (await _sale(store, "s-after"))["fiscal_number"] == str(journal[1].number)
    events = await store.events("receipt_recorded")
    assert [e.body.sale_id for e in events] == ["s-stuck", "s-after"]  # type: ignore[union-attr]
    assert (await _fiscal_state(store))["state"] == "ok"
    # nothing open: nothing done, nothing recorded
    again = await store.client.post(FINISH, json={"reason": "again"}, headers=MANAGER)
    assert again.json() == []
    x = await store.client.post("/api/v1/shifts/current/x-report", headers=TILL)
    assert x.status_code == 200, x.text


async def test_complete_unfiscal_is_refused_while_the_printer_holds_the_receipt(
    store: Store,
) -> None:
    """The printer answers (it holds the receipt open): completing the sale without it
    is a 409, nothing recorded; finishing the receipt fiscalizes the sale."""
    await _stuck(store)
    url = "/api/v1/manager/sales/T1/s-stuck/complete-unfiscal"
    refused = await store.client.post(url, json={"reason": "stuck"}, headers=MANAGER)
    assert refused.status_code == 409, refused.text
    assert (await _sale(store, "s-stuck"))["status"] == "pending_fiscal"
    assert (await _fiscal_state(store))["state"] == "blocked"
    done = await store.client.post(FINISH, json={"reason": "stuck receipt"}, headers=MANAGER)
    assert done.json()[0]["action"] == "closed"
    assert done.json()[0]["document"] == "sale s-stuck"  # recorded for the back office
    assert (await _sale(store, "s-stuck"))["fiscal_number"] == str(
        store.fiscal.sim.receipts[0].number
    )
    assert (await _sale(store, "s-after"))["status"] == "fiscalized"
    close = await store.client.post("/api/v1/shifts/current/close", headers=TILL)
    assert close.status_code == 200, close.text


async def test_the_link_dropped_while_finishing_closes_the_receipt_once(store: Store) -> None:
    await _stuck(store)

    def deaf_after_close(sim: Any) -> None:
        # the close is executed, then its answer and the printer are gone for longer
        # than the driver's resends and status reads wait (a shorter gap it rides out)
        sim.go_deaf(5.0)

    store.fiscal.sim.at_command(CMD_CLOSE_RECEIPT, deaf_after_close)
    lost = await store.client.post(FINISH, json={"reason": "voucher"}, headers=MANAGER)
    assert lost.status_code == 503, lost.text
    assert len(store.fiscal.sim.receipts) == 1  # closed on the printer, not yet known
    async with store.agent.sessionmaker() as session:
        (row,) = (await session.scalars(select(FiscalIntervention))).all()
        assert row.action == "pending"  # recorded before the printer was touched
    await asyncio.sleep(max(0.0, store.fiscal.sim.deaf_until - time.monotonic()) + 0.1)
    done = await store.client.post(FINISH, json={"reason": "voucher"}, headers=MANAGER)
    assert done.status_code == 200, done.text
    assert [(r["action"], r["cash_added"]) for r in done.json()] == [("closed", 263)]
    assert len(store.fiscal.sim.receipts) == 2  # the stuck one once, then s-after
    assert (await _sale(store, "s-stuck"))["fiscal_number"] == str(
        store.fiscal.sim.receipts[0].number
    )
    assert len(await store.events("receipt_recorded")) == 2
