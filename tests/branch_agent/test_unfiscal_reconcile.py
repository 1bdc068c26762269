"""complete-unfiscal and a printer that had printed the document after all: refused while
the printer answers (it is asked instead), and, when it could not be asked, the
document is compared with the printer as soon as it answers again, before anything else
is printed. Real drivers against the simulators over ptys, real SQLite."""

from __future__ import annotations

from typing import Any

from devices.fiscal_datecs import CMD_CLOSE_RECEIPT, CMD_PAYMENT, CMD_SALE
from protocol.events import CustomerReturnRecorded, ReceiptRecorded
from tests.branch_agent.conftest import MANAGER, TILL, Store
from tests.branch_agent.test_sales_and_fiscal import basket
from tests.branch_agent.test_storno_cash_z import post_return, return_body

UNFISCAL = "/api/v1/manager/sales/T1/{}/complete-unfiscal"
RETURN_UNFISCAL = "/api/v1/manager/returns/T1/{}/complete-unfiscal"


def printer_goes_silent(sim: Any) -> None:
    # the close is executed (the receipt is fiscalized), then no answer ever comes back
    sim.lose_answers(None, 100000)


async def status(store: Store) -> Any:
    return (await store.client.get("/health/status")).json()


async def test_a_sale_completed_unfiscal_that_the_printer_had_printed_gets_its_number(
    store: Store,
) -> None:
    sim = store.fiscal.sim
    sim.at_command(CMD_CLOSE_RECEIPT, printer_goes_silent)
    sold = await store.sale(basket("u3"))
    assert sold.status_code == 201, sold.text
    assert sold.json()["status"] == "pending_fiscal"
    (printed,) = sim.receipts  # fiscalized on the printer, unknown to the agent

    done = await store.client.post(
        UNFISCAL.format("u3"), json={"reason": "printer dead, replaced"}, headers=MANAGER
    )
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["fiscal_number"]) == ("completed_unfiscal", None)
    assert done.json()["unfiscal_check"] == "pending"
    (event,) = await store.events("receipt_recorded")
    assert isinstance(event.body, ReceiptRecorded)
    assert event.body.fiscal_number is None
    assert (await status(store))["unfiscal_to_check"] == 1

    # Still silent: the next sale waits, nothing is printed over the unknown state.
    later = await store.sale(basket("u4", cash=500))
    assert later.json()["status"] == "pending_fiscal"
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    assert len(sim.receipts) == 1

    sim.lose_answers(None, 0)  # the printer answers again
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    u3 = (await store.client.get("/api/v1/sales/u3", headers=TILL)).json()
    assert u3["status"] == "completed_unfiscal"
    assert u3["unfiscal_check"] == "printed"
    assert u3["fiscal_number"] == str(printed.number)
    u4 = (await store.client.get("/api/v1/sales/u4", headers=TILL)).json()
    assert u4["status"] == "fiscalized"
    assert u4["fiscal_number"] == str(printed.number + 1)
    assert len(sim.receipts) == 2  # nothing printed twice
    now = await status(store)
    assert now["unfiscal_to_check"] == 0
    assert now["unfiscal_printed"] == [f"T1 sale u3: fiscal number {printed.number}"]
    # A return of it is a storno of the receipt the printer had printed.
    returned = await post_return(store, return_body("r-u3", "u3", (1, "1")))
    assert returned.json()["status"] == "fiscalized", returned.text
    (storno,) = sim.storno_receipts
    assert storno.storno is not None
    assert storno.storno.document_number == printed.number


def drop_and_go_dead(sim: Any) -> str:
    sim.go_deaf(3600.0)  # the test brings it back by hand
    return "drop"  # this frame never reached the printer


async def _complete_while_dead(store: Store, sale_id: str, cmd: int) -> None:
    store.fiscal.sim.at_command(cmd, drop_and_go_dead)
    assert (await store.sale(basket(sale_id))).json()["status"] == "pending_fiscal"
    done = await store.client.post(
        UNFISCAL.format(sale_id), json={"reason": "printer dead"}, headers=MANAGER
    )
    assert done.status_code == 200, done.text
    assert done.json()["unfiscal_check"] == "pending"
    store.fiscal.sim.go_deaf(0)


async def test_a_receipt_left_open_unpaid_is_cancelled_and_the_sale_stays_unfiscal(
    store: Store,
) -> None:
    sim = store.fiscal.sim
    await _complete_while_dead(store, "n1", CMD_PAYMENT)
    assert sim.open_receipt is not None
    assert sim.open_receipt.paid == 0
    assert (await store.sale(basket("n2", cash=500))).status_code == 201
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    n1 = (await store.client.get("/api/v1/sales/n1", headers=TILL)).json()
    assert (n1["unfiscal_check"], n1["fiscal_number"]) == ("not_printed", None)
    n2 = (await store.client.get("/api/v1/sales/n2", headers=TILL)).json()
    assert n2["status"] == "fiscalized"
    assert [str(r.number) for r in sim.receipts] == [n2["fiscal_number"]], (
        [hex(c) for c in sim.executed],
        sim.receipts,
        sim.cancelled,
    )
    assert len(sim.cancelled) == 1
    assert (await status(store))["unfiscal_printed"] == []


async def test_a_receipt_left_open_and_paid_is_closed_as_the_unfiscal_sale(store: Store) -> None:
    sim = store.fiscal.sim
    # The close never reached the printer: paid in full, it refuses to cancel it.
    await _complete_while_dead(store, "p1", CMD_CLOSE_RECEIPT)
    assert sim.open_receipt is not None
    assert sim.receipts == []
    assert (await store.sale(basket("p2", cash=500))).status_code == 201
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    p1 = (await store.client.get("/api/v1/sales/p1", headers=TILL)).json()
    assert p1["unfiscal_check"] == "printed"
    p2 = (await store.client.get("/api/v1/sales/p2", headers=TILL)).json()
    assert [str(r.number) for r in sim.receipts] == [p1["fiscal_number"], p2["fiscal_number"]]
    assert sim.cancelled == []


async def test_complete_unfiscal_is_refused_while_the_printer_answers_and_it_reconciles(
    store: Store,
) -> None:
    sim = store.fiscal.sim
    sim.at_command(CMD_CLOSE_RECEIPT, printer_goes_silent)
    assert (await store.sale(basket("a1"))).json()["status"] == "pending_fiscal"
    (printed,) = sim.receipts
    sim.lose_answers(None, 0)  # it answers again before the manager acts
    refused = await store.client.post(
        UNFISCAL.format("a1"), json={"reason": "printer dead"}, headers=MANAGER
    )
    assert refused.status_code == 409, refused.text
    assert "answers" in refused.json()["detail"]
    assert f"fiscal number {printed.number}" in refused.json()["detail"]
    a1 = (await store.client.get("/api/v1/sales/a1", headers=TILL)).json()
    assert (a1["status"], a1["fiscal_number"]) == ("fiscalized", str(printed.number))
    (event,) = await store.events("receipt_recorded")
    assert event.body.fiscal_number == str(printed.number)  # type: ignore[union-attr]
    assert len(sim.receipts) == 1


async def test_complete_unfiscal_is_refused_for_a_printer_out_of_paper(store: Store) -> None:
    sim = store.fiscal.sim

    def paper_runs_out(s: Any) -> None:
        s.paper_end = True

    sim.at_command(CMD_SALE, paper_runs_out, nth=2)
    assert (await store.sale(basket("pe1"))).json()["status"] == "pending_fiscal"
    refused = await store.client.post(
        UNFISCAL.format("pe1"), json={"reason": "no paper"}, headers=MANAGER
    )
    assert refused.status_code == 409, refused.text
    assert "paper_end" in refused.json()["detail"]
    pe1 = (await store.client.get("/api/v1/sales/pe1", headers=TILL)).json()
    assert pe1["status"] == "pending_fiscal"
    assert await store.events("receipt_recorded") == []
    sim.paper_end = False
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    pe1 = (await store.client.get("/api/v1/sales/pe1", headers=TILL)).json()
    assert pe1["status"] == "fiscalized"
    assert [str(r.number) for r in sim.receipts] == [pe1["fiscal_number"]]


async def test_complete_unfiscal_goes_ahead_for_a_printer_that_cannot_print_again(
    store: Store,
) -> None:
    """Fiscal memory full: the printer answers but refuses every fiscal document until a
    technician comes. The manager's complete-unfiscal is not refused then (the sales
    would never reach central), and nothing was printed."""
    sim = store.fiscal.sim
    sim.set_fault("fiscal_memory_full")
    assert (await store.sale(basket("fm1"))).json()["status"] == "pending_fiscal"
    fm1 = (await store.client.get("/api/v1/sales/fm1", headers=TILL)).json()
    assert fm1["fiscal_error"].startswith("fiscal_memory"), fm1
    done = await store.client.post(
        UNFISCAL.format("fm1"), json={"reason": "fiscal memory full"}, headers=MANAGER
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed_unfiscal"
    (event,) = await store.events("receipt_recorded")
    assert event.body.fiscal_number is None  # type: ignore[union-attr]
    assert sim.receipts == []


async def test_a_storno_completed_unfiscal_that_the_printer_had_printed_gets_its_number(
    store: Store,
) -> None:
    sim = store.fiscal.sim
    assert (await store.sale(basket("s-1"))).json()["status"] == "fiscalized"
    sim.at_command(CMD_CLOSE_RECEIPT, printer_goes_silent)
    created = await post_return(store, return_body("r-1", "s-1", (1, "1")))
    assert created.json()["status"] == "pending_fiscal"
    (storno,) = sim.storno_receipts
    done = await store.client.post(
        RETURN_UNFISCAL.format("r-1"), json={"reason": "printer dead"}, headers=MANAGER
    )
    assert done.status_code == 200, done.text
    (event,) = await store.events("customer_return_recorded")
    assert isinstance(event.body, CustomerReturnRecorded)
    assert event.body.fiscal_number is None
    sim.lose_answers(None, 0)
    assert (await store.sale(basket("s-2", cash=500))).status_code == 201
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    pending = await store.client.get("/api/v1/manager/returns/pending", headers=MANAGER)
    assert pending.json() == []
    now = await status(store)
    assert now["unfiscal_printed"] == [f"T1 return r-1: fiscal number {storno.number}"]
    s2 = (await store.client.get("/api/v1/sales/s-2", headers=TILL)).json()
    assert s2["fiscal_number"] == str(storno.number + 1)
    assert len(sim.storno_receipts) == 1
    assert len(sim.receipts) == 2


async def test_complete_unfiscal_without_a_reason_names_reason_and_changes_nothing(
    store: Store,
) -> None:
    # the printer is dead (deaf, not stopped: a stopped pty's path may be reused by another
    # process's simulator, which the driver would then reopen and print on)
    store.fiscal.sim.go_deaf(3600.0)
    assert (await store.sale(basket("nb"))).json()["status"] == "pending_fiscal"
    for url in (UNFISCAL.format("nb"), RETURN_UNFISCAL.format("nb")):
        for body in ({}, {"content": b""}, {"json": {}}):
            response = await store.client.post(url, headers=MANAGER, **body)
            assert response.status_code == 422, response.text
            problem = response.json()
            assert problem["errors"][0]["field"] == "reason", problem
            assert "reason" in problem["errors"][0]["message"]
            assert "'data'" not in response.text
    nb = (await store.client.get("/api/v1/sales/nb", headers=TILL)).json()
    assert nb["status"] == "pending_fiscal"
    assert await store.events("receipt_recorded") == []
