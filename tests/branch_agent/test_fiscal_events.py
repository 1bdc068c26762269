"""What the agent learns late about its fiscal printers goes up to central, in the
transaction that records it: the fiscal number of a document completed unfiscal that
the printer had printed after all (``late_fiscal_number``, once, naming the document's
own event), and every manager's intervention on a printer (``fiscal_intervention``:
finish-open-receipt, complete-unfiscal). Real drivers against the simulators, real
SQLite."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from branch_agent.models import Shift
from devices.fiscal_datecs import CMD_CLOSE_RECEIPT
from protocol.events import FiscalInterventionRecorded, LateFiscalNumber, ReceiptRecorded
from tests.branch_agent.conftest import MANAGER, TILL, Store
from tests.branch_agent.test_fiscal_blocked import FINISH, _stuck
from tests.branch_agent.test_sales_and_fiscal import basket
from tests.branch_agent.test_unfiscal_reconcile import UNFISCAL, printer_goes_silent


async def test_a_number_found_after_complete_unfiscal_goes_up_once(store: Store) -> None:
    sim = store.fiscal.sim
    sim.at_command(CMD_CLOSE_RECEIPT, printer_goes_silent)
    assert (await store.sale(basket("u3"))).json()["status"] == "pending_fiscal"
    (printed,) = sim.receipts
    done = await store.client.post(
        UNFISCAL.format("u3"), json={"reason": "printer dead"}, headers=MANAGER
    )
    assert done.status_code == 200, done.text
    (receipt,) = await store.events("receipt_recorded")
    assert isinstance(receipt.body, ReceiptRecorded)
    assert receipt.body.fiscal_number is None
    (unfiscal,) = await store.events("fiscal_intervention")
    assert isinstance(unfiscal.body, FiscalInterventionRecorded)
    assert (unfiscal.body.action, unfiscal.body.document, unfiscal.body.reason) == (
        "completed_unfiscal",
        "sale u3",
        "printer dead",
    )
    assert (unfiscal.body.shift_id, unfiscal.body.amount) == (
        receipt.body.shift_id,
        receipt.body.total,
    )
    assert await store.events("late_fiscal_number") == []

    sim.lose_answers(None, 0)  # the printer answers again
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)  # checked once only
    (late,) = await store.events("late_fiscal_number")
    assert isinstance(late.body, LateFiscalNumber)
    assert (late.body.document, late.body.till, late.body.document_id) == ("sale", "T1", "u3")
    assert late.body.fiscal_number == str(printed.number)
    # It names the receipt's own event: central knows whether that is still to come.
    assert (late.body.document_event_id, late.body.document_seq) == (receipt.event_id, receipt.seq)
    assert late.body.fiscalized_at == receipt.occurred_at
    assert late.seq > receipt.seq


async def test_a_storno_number_found_late_goes_up_as_a_return(store: Store) -> None:
    from tests.branch_agent.test_storno_cash_z import post_return, return_body
    from tests.branch_agent.test_unfiscal_reconcile import RETURN_UNFISCAL

    sim = store.fiscal.sim
    assert (await store.sale(basket("s-1"))).json()["status"] == "fiscalized"
    sim.at_command(CMD_CLOSE_RECEIPT, printer_goes_silent)
    returned = await post_return(store, return_body("r-1", "s-1", (1, "1")))
    assert returned.json()["status"] == "pending_fiscal", returned.text
    (storno,) = sim.storno_receipts
    done = await store.client.post(
        RETURN_UNFISCAL.format("r-1"), json={"reason": "printer dead"}, headers=MANAGER
    )
    assert done.status_code == 200, done.text
    sim.lose_answers(None, 0)
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    (late,) = await store.events("late_fiscal_number")
    assert isinstance(late.body, LateFiscalNumber)
    assert (late.body.document, late.body.document_id, late.body.fiscal_number) == (
        "return",
        "r-1",
        str(storno.number),
    )
    interventions = await store.events("fiscal_intervention")
    assert [e.body.document for e in interventions] == ["return r-1"]  # type: ignore[union-attr]


async def test_a_finished_open_receipt_goes_up_once(store: Store) -> None:
    await _stuck(store)
    done = await store.client.post(FINISH, json={"reason": "voucher not set up"}, headers=MANAGER)
    assert done.status_code == 200, done.text
    again = await store.client.post(FINISH, json={"reason": "again"}, headers=MANAGER)
    assert again.json() == []
    (event,) = await store.events("fiscal_intervention")
    body = event.body
    assert isinstance(body, FiscalInterventionRecorded)
    assert (body.action, body.receipt_number, body.amount, body.paid_before, body.cash_added) == (
        "closed",
        1,
        463,
        200,
        263,
    )
    assert (body.document, body.reason, body.till) == ("sale s-stuck", "voucher not set up", "T1")
    (receipt, _after) = await store.events("receipt_recorded")
    assert body.shift_id == receipt.body.shift_id  # type: ignore[union-attr]


async def test_an_intervention_settled_after_a_lost_link_goes_up_once(store: Store) -> None:
    await _stuck(store)

    def deaf_after_close(sim: Any) -> None:
        sim.go_deaf(5.0)

    store.fiscal.sim.at_command(CMD_CLOSE_RECEIPT, deaf_after_close)
    lost = await store.client.post(FINISH, json={"reason": "voucher"}, headers=MANAGER)
    assert lost.status_code == 503, lost.text
    # pending: nothing sent up yet (its outcome is not known)
    assert await store.events("fiscal_intervention") == []
    await asyncio.sleep(max(0.0, store.fiscal.sim.deaf_until - time.monotonic()) + 0.1)
    done = await store.client.post(FINISH, json={"reason": "voucher"}, headers=MANAGER)
    assert done.status_code == 200, done.text
    (event,) = await store.events("fiscal_intervention")
    assert (event.body.action, event.body.cash_added) == ("closed", 263)  # type: ignore[union-attr]


async def test_an_intervention_settled_after_its_shift_closed_is_filed_under_that_shift(
    store: Store,
) -> None:
    """Left pending by a lost answer, settled only once the till had moved on to another
    shift: it goes up under the shift it happened in, not the one open at settling."""
    await _stuck(store)
    stuck_shift = (await store.client.get("/api/v1/shifts/current", headers=TILL)).json()[
        "shift_id"
    ]

    def deaf_after_close(sim: Any) -> None:
        sim.go_deaf(5.0)

    store.fiscal.sim.at_command(CMD_CLOSE_RECEIPT, deaf_after_close)
    lost = await store.client.post(FINISH, json={"reason": "voucher"}, headers=MANAGER)
    assert lost.status_code == 503, lost.text
    # Meanwhile the shift was closed and the next one opened (written as the close and
    # the open would: the close itself waits for the printer, deaf here).
    async with store.agent.sessionmaker() as session, session.begin():
        shift = await session.get(Shift, stuck_shift)
        assert shift is not None
        shift.closed_at = datetime.now(UTC)
        session.add(Shift(shift_id="next-shift", till="T1", opened_at=datetime.now(UTC)))
    await asyncio.sleep(max(0.0, store.fiscal.sim.deaf_until - time.monotonic()) + 0.1)
    done = await store.client.post(FINISH, json={"reason": "voucher"}, headers=MANAGER)
    assert done.status_code == 200, done.text
    (event,) = await store.events("fiscal_intervention")
    assert event.body.shift_id == stuck_shift  # type: ignore[union-attr]


async def test_a_swapped_printer_is_not_asked_about_the_old_ones_receipt(store: Store) -> None:
    """The hint was read from one printer; the till got another (a new serial number)
    before the check: its numbers say nothing of the document, so nothing is taken from
    them (no number, no event, nothing cancelled), a person checks the old journal."""
    sim = store.fiscal.sim
    sim.at_command(CMD_CLOSE_RECEIPT, printer_goes_silent)
    assert (await store.sale(basket("w1"))).json()["status"] == "pending_fiscal"
    done = await store.client.post(
        UNFISCAL.format("w1"), json={"reason": "printer replaced"}, headers=MANAGER
    )
    assert done.json()["unfiscal_check"] == "pending"
    sim.serial_number = "DT999999"  # the replacement (same simulator, other identity)
    sim.lose_answers(None, 0)
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    w1 = (await store.client.get("/api/v1/sales/w1", headers=TILL)).json()
    assert (w1["status"], w1["unfiscal_check"], w1["fiscal_number"]) == (
        "completed_unfiscal",
        "unknown",
        None,
    )
    assert (
        "printer was replaced (serial DT999999, the hint was read from DT123456)"
        in (w1["fiscal_error"])
    )
    assert await store.events("late_fiscal_number") == []
    assert sim.cancelled == []
    status = (await store.client.get("/health/status")).json()
    assert status["unfiscal_unknown"] != []
    assert status["unfiscal_to_check"] == 0
    # The new printer prints the till's next sale as usual.
    assert (await store.sale(basket("w2", cash=500))).status_code == 201
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    w2 = (await store.client.get("/api/v1/sales/w2", headers=TILL)).json()
    assert w2["status"] == "fiscalized", w2
