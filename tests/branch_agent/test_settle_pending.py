"""A manager's way out for fiscal cash work stuck on a printer that cannot answer for it:
a cash move, an opening float's deposit, a refund's pay-out or a Z report left
``pending`` when the printer died (or another one was put in its place) is settled as
printed or not printed, recorded once with a ``fiscal_intervention`` event; refused while
the printer can settle it itself. The agent in process, the fiscal printer a simulator
over a pty, real SQLite."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import select

from branch_agent.models import CashMove, CustomerReturn, Sale, Shift
from branch_agent.status import format_status, offline_status
from devices.fiscal_datecs import CMD_CASH_IN_OUT, CMD_REPORT
from protocol.events import CashMoved, FiscalInterventionRecorded, ReceiptRecorded, ShiftClosed
from tests.branch_agent.conftest import MANAGER, TILL, Store
from tests.branch_agent.test_return_without_receipt import MILK_PRICE, no_receipt, opened, post
from tests.branch_agent.test_sales_and_fiscal import basket
from tests.branch_agent.test_stock_documents import refused
from tests.branch_agent.test_storno_cash_z import cash_move, power_cut

SETTLE = "/api/v1/manager/tills/T1/fiscal/settle-pending"


def decision(intent: str, id_: str, outcome: str, reason: str = "printer dead") -> dict[str, str]:
    return {"intent": intent, "id": id_, "outcome": outcome, "reason": reason}


async def settle(store: Store, body: dict[str, Any], headers: dict[str, str] = MANAGER) -> Any:
    return await store.client.post(SETTLE, json=body, headers=headers)


async def interventions(store: Store) -> list[FiscalInterventionRecorded]:
    found = []
    for env in await store.events("fiscal_intervention"):
        assert isinstance(env.body, FiscalInterventionRecorded)
        found.append(env.body)
    return found


def swap_printer(sim: Any) -> None:
    """Another unit on the same port: its own identity, counters and cash count."""
    sim.serial_number = "DT999999"
    sim.fiscal_memory_number = "09999999"
    sim.receipt_number = sim.document_number = 700
    sim.last_receipt = None  # it has printed none of ours
    sim.cash = Decimal("0.00")


async def z_printed_as_the_printer_dies(store: Store) -> Any:
    """A shift with a sale whose close's Z printed as the printer lost power: its answer
    never came, the shift stays closing (the Z intent pending). The simulator."""
    await store.open_shift()
    sim = store.fiscal.sim
    await store.sale(basket("s-z"))
    sim.at_command(CMD_REPORT, power_cut, nth=1)
    first = await store.client.post("/api/v1/shifts/current/close", headers=TILL)
    assert first.status_code == 503, first.text
    return sim


async def test_a_cash_move_on_a_dead_printer_is_settled_printed_once(store: Store) -> None:
    await store.open_shift()
    sim = store.fiscal.sim
    await store.sale(basket("s-cash"))  # 4.63 cash in the drawer
    # 0x46 #1 reads the cash sum before; #2 is the cash out: executed, answer lost
    sim.at_command(CMD_CASH_IN_OUT, power_cut, nth=2)
    first = await cash_move(store, "out-1", "out", 300)
    assert first.status_code == 503, first.text
    sim.go_deaf(3600.0)  # ... and the printer never comes back
    # Only the manager decides; a reason is required; bad input changes nothing.
    assert (await settle(store, decision("cash_move", "out-1", "printed"), TILL)).status_code == 403
    refused(await settle(store, decision("cash_move", "out-1", "printed", "")), 422, "reason")
    refused(await settle(store, decision("cash", "out-1", "printed")), 422, "intent")
    refused(await settle(store, decision("cash_move", "out-1", "maybe")), 422, "outcome")
    refused(await settle(store, decision("cash_move", "nope", "printed")), 404, "id")
    async with store.agent.sessionmaker() as session:
        (row,) = (await session.scalars(select(CashMove))).all()
    assert row.status == "pending"
    assert await interventions(store) == []
    # status lists what waits (the running agent's and the database's read offline)
    listed = "T1 cash move out-1: 3.00 out"
    assert (await store.client.get("/health/status")).json()["cash_not_settled"] == [listed]
    offline = offline_status(store.agent.settings.database_path, "B1")
    assert f"not settled      {listed} (with the fiscal printer)" in format_status(offline)
    # The journal shows it printed: it is a cash move of the shift, counted once.
    done = await settle(store, decision("cash_move", "out-1", "printed", "journal shows it"))
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["action"], body["status"]) == ("cash_move_printed", "done")
    assert body["shift"]["cash_out"] == 300
    assert body["shift"]["expected_cash"] == 463 - 300
    (moved,) = await store.events("cash_moved")
    assert isinstance(moved.body, CashMoved)
    assert (moved.body.direction, moved.body.amount) == ("out", 300)
    (record,) = await interventions(store)
    assert (record.action, record.amount, record.document) == (
        "cash_move_printed",
        300,
        "cash move out-1",
    )
    assert (record.shift_id, record.reason) == (body["shift"]["shift_id"], "journal shows it")
    # A repeat (the answer lost) decides nothing again.
    again = await settle(store, decision("cash_move", "out-1", "printed"))
    refused(again, 409, "id")
    assert "not pending (done)" in again.json()["detail"]
    assert len(await store.events("cash_moved")) == 1
    assert len(await interventions(store)) == 1
    assert (await store.client.get("/health/status")).json()["cash_not_settled"] == []
    # Nothing else is stuck behind it: the till's printer work goes on once it is back.
    sim.go_deaf(0)
    sim.deaf_until = 0.0
    assert (await store.sale(basket("s-after"))).json()["status"] == "fiscalized"


async def test_refused_while_the_printer_answers_which_settles_it_itself(store: Store) -> None:
    await store.open_shift()
    sim = store.fiscal.sim
    await store.sale(basket("s-cash"))
    sim.at_command(CMD_CASH_IN_OUT, power_cut, nth=2)
    assert (await cash_move(store, "out-1", "out", 300)).status_code == 503
    sim.deaf_until = 0.0  # the printer is back: it tells what it did
    answer = await settle(store, decision("cash_move", "out-1", "not_printed"))
    refused(answer, 409, "id")
    assert "the printer settled it: done" in answer.json()["detail"]
    assert len(sim.cash_moves) == 1
    assert len(await store.events("cash_moved")) == 1  # the printer's word, not the manager's
    assert await interventions(store) == []


async def test_a_float_deposit_whose_printer_was_swapped_is_settled_by_the_manager(
    store: Store,
) -> None:
    sim = store.fiscal.sim
    # #1 reads the cash sum before the deposit, #2 the deposit: executed, answer lost
    sim.at_command(CMD_CASH_IN_OUT, power_cut, nth=2)
    shift = await store.open_shift(opening_float=5000)
    assert shift["float_deposit"] == "pending"
    # The dead printer is replaced by another unit: its counters explain nothing.
    sim.deaf_until = 0.0
    swap_printer(sim)
    stuck = await store.client.post("/api/v1/shifts/current/x-report", headers=TILL)
    assert stuck.status_code == 503, stuck.text  # nothing prints until it is explained
    assert (await store.client.get("/health/status")).json()["cash_not_settled"] == [
        f"T1 float of shift {shift['shift_id']}: 50.00"
    ]
    done = await settle(
        store, decision("float", shift["shift_id"], "printed", "old journal shows 50.00 in")
    )
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["action"], body["status"]) == ("float_printed", "done")
    # The float is the shift's either way: not a cash move, the drawer holds it.
    assert body["shift"]["float_deposit"] == "done"
    assert (body["shift"]["cash_in"], body["shift"]["expected_cash"]) == (0, 5000)
    assert await store.events("cash_moved") == []
    (record,) = await interventions(store)
    assert (record.action, record.amount) == ("float_printed", 5000)
    # The new printer prints again.
    assert (await store.sale(basket("s-new"))).json()["status"] == "fiscalized"


async def test_a_pay_out_on_a_dead_printer_is_settled_not_printed(store: Store) -> None:
    sim = store.fiscal.sim
    await opened(store, 5000)
    # #1 reads the cash sum before the pay-out, #2 is the pay-out: answer lost
    sim.at_command(CMD_CASH_IN_OUT, power_cut, nth=2)
    ret = (await post(store, no_receipt("nr-1"))).json()
    assert ret["payout"] == "pending", ret
    sim.go_deaf(3600.0)
    done = await settle(store, decision("payout", "nr-1", "not_printed", "printer gone"))
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["action"], body["status"]) == ("payout_not_printed", "failed")
    # The customer has the cash: the refund stays counted once, as a refund.
    assert (body["shift"]["cash_out"], body["shift"]["expected_cash"]) == (
        0,
        5000 - 2 * MILK_PRICE,
    )
    async with store.agent.sessionmaker() as session:
        row = await session.scalar(select(CustomerReturn))
    assert row is not None
    assert row.payout_status == "failed"
    assert "settled by a manager as not printed: printer gone" in (row.payout_error or "")
    (record,) = await interventions(store)
    assert (record.action, record.amount, record.document) == (
        "payout_not_printed",
        2 * MILK_PRICE,
        "the pay-out of return nr-1",
    )
    assert await store.events("cash_moved") == []


async def test_a_z_report_on_a_dead_printer_closes_the_shift_without_z(store: Store) -> None:
    sim = await z_printed_as_the_printer_dies(store)
    async with store.agent.sessionmaker() as session:
        (shift,) = (await session.scalars(select(Shift))).all()
    assert (await store.client.get("/health/status")).json()["cash_not_settled"] == [
        f"T1 Z report of shift {shift.shift_id}"
    ]
    # While the printer answers, the repeated close reads its fiscal memory instead.
    sim.deaf_until = 0.0
    answers = await settle(store, decision("z_report", shift.shift_id, "not_printed"))
    refused(answers, 409, "intent")
    assert "repeat the close" in answers.json()["detail"]
    sim.go_deaf(3600.0)
    done = await settle(store, decision("z_report", shift.shift_id, "printed", "Z 1 in journal"))
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["action"], body["status"]) == ("z_report_printed", "closed")
    assert body["shift"]["closed_at"] is not None
    (closed,) = await store.events("shift_closed")
    assert isinstance(closed.body, ShiftClosed)
    assert closed.body.z_report is None  # its figures are on the old printer's paper
    assert closed.body.receipts_count == 1
    (record,) = await interventions(store)
    assert (record.action, record.shift_id) == ("z_report_printed", shift.shift_id)
    refused(await settle(store, decision("z_report", shift.shift_id, "printed")), 409, "id")
    assert len(await store.events("shift_closed")) == 1
    # The till goes on: the next shift opens.
    assert (await store.open_shift())["closed_at"] is None


async def swapped_with_a_sale_held_back(store: Store) -> Any:
    """s-1 printed on the old printer; s-2 sent to it (hint stored) as it ran out of
    paper, then the printer swapped: s-2 is held back as printer_replaced."""
    await store.open_shift()
    sim = store.fiscal.sim
    assert (await store.sale(basket("s-1"))).json()["status"] == "fiscalized"
    sim.paper_end = True
    assert (await store.sale(basket("s-2"))).json()["status"] == "pending_fiscal"
    sim.go_deaf(3600.0)
    await store.agent.devices.probe_all()
    sim.go_deaf(0)
    sim.deaf_until = 0.0
    sim.paper_end = False
    swap_printer(sim)
    await store.agent.fiscal.process_all()
    s2 = (await store.client.get("/api/v1/sales/s-2", headers=TILL)).json()
    assert s2["fiscal_error"].startswith("printer_replaced")
    return sim


async def test_a_sale_pending_when_the_printer_was_swapped_is_not_printed_on_the_new_one(
    store: Store,
) -> None:
    """Its hint is the old printer's receipt number: the new printer's numbers say
    nothing of it (the driver took one of them for "ours, cancelled" and printed it
    again). It waits for the manager, who completes it without printer although the
    new printer answers; a person checks the old printer's journal."""
    sim = await swapped_with_a_sale_held_back(store)
    s2 = (await store.client.get("/api/v1/sales/s-2", headers=TILL)).json()
    assert s2["status"] == "pending_fiscal"
    assert s2["fiscal_error"].startswith("printer_replaced: printer replaced (serial DT999999")
    assert len(sim.receipts) == 1  # nothing printed on the new printer for it
    done = await store.client.post(
        "/api/v1/manager/sales/T1/s-2/complete-unfiscal",
        json={"reason": "old printer dead"},
        headers=MANAGER,
    )
    assert done.status_code == 200, done.text
    await store.agent.fiscal.process_all()
    s2 = (await store.client.get("/api/v1/sales/s-2", headers=TILL)).json()
    assert (s2["status"], s2["unfiscal_check"]) == ("completed_unfiscal", "unknown")
    # The new printer prints the till's next sale, with its own fiscal memory number.
    assert (await store.sale(basket("s-3"))).status_code == 201
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    async with store.agent.sessionmaker() as session:
        s3 = await session.scalar(select(Sale).where(Sale.sale_id == "s-3"))
    assert s3 is not None
    assert (s3.status, s3.fiscal_memory_number) == ("fiscalized", "09999999")


async def test_a_close_repeated_on_a_swapped_printer_does_not_take_its_z_for_the_shifts(
    store: Store,
) -> None:
    """The Z printed as the old printer died (its answer lost); the replacement has Z
    reports of its own, numbered above the one read before the intent: the repeated
    close used to take the new printer's last Z for this shift's. Now it says the printer
    was replaced, and the manager decides although the new printer answers."""
    sim = await z_printed_as_the_printer_dies(store)
    assert sim.reports == [("Z", 1)]
    sim.deaf_until = 0.0
    swap_printer(sim)
    sim.z_number = 40
    zeros = [Decimal("0.00")] * 8
    sim.fiscal_memory = [(40, zeros, zeros, "01-11-26")]
    again = await store.client.post("/api/v1/shifts/current/close", headers=TILL)
    assert again.status_code == 503, again.text
    detail = again.json()["detail"]
    assert "printer_replaced" in detail
    assert "fiscal/settle-pending" in detail
    assert await store.events("shift_closed") == []
    async with store.agent.sessionmaker() as session:
        (shift,) = (await session.scalars(select(Shift))).all()
    assert (shift.z_status, shift.z_printer) == ("pending", "DT123456")
    done = await settle(store, decision("z_report", shift.shift_id, "printed", "Z 1 on paper"))
    assert done.status_code == 200, done.text
    (closed,) = await store.events("shift_closed")
    assert isinstance(closed.body, ShiftClosed)
    assert closed.body.z_report is None
    assert sim.reports == [("Z", 1)]  # nothing printed on the new printer for it


NEW_PRINTER = "/api/v1/manager/sales/T1/{}/print-on-new-printer"


async def test_a_sale_held_back_at_a_swap_is_printed_on_the_new_printer_by_the_manager(
    store: Store,
) -> None:
    """The old printer's journal shows s-2 was not printed: the manager has it printed on
    the new printer, once, with the new printer's number; the decision goes up once."""
    sim = await swapped_with_a_sale_held_back(store)
    url = NEW_PRINTER.format("s-2")
    assert (
        await store.client.post(url, json={"reason": "not in journal"}, headers=TILL)
    ).status_code == 403
    refused(await store.client.post(url, json={"reason": ""}, headers=MANAGER), 422, "reason")
    missing = await store.client.post(
        NEW_PRINTER.format("nope"), json={"reason": "not in journal"}, headers=MANAGER
    )
    assert missing.status_code == 404, missing.text
    assert len(sim.receipts) == 1
    assert await interventions(store) == []
    done = await store.client.post(url, json={"reason": "not in old journal"}, headers=MANAGER)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "fiscalized"
    assert len(sim.receipts) == 2  # printed once, on the new printer
    async with store.agent.sessionmaker() as session:
        s2 = await session.scalar(select(Sale).where(Sale.sale_id == "s-2"))
    assert s2 is not None
    assert (s2.fiscal_number, s2.fiscal_memory_number) == ("701", "09999999")
    assert (s2.hint_printer, s2.fiscal_hint) == ("DT999999", 700)  # read from the new one
    recorded = [e.body for e in await store.events("receipt_recorded")]
    assert [(r.sale_id, r.fiscal_number) for r in recorded if isinstance(r, ReceiptRecorded)] == [
        ("s-1", "1"),
        ("s-2", "701"),
    ]  # s-2 once, with the new printer's number
    (decided,) = await interventions(store)
    assert (decided.action, decided.document, decided.reason) == (
        "printed_on_new_printer",
        "sale s-2",
        "not in old journal",
    )
    assert (decided.amount, decided.shift_id) == (s2.total, s2.shift_id)
    # A repeat (the answer lost) changes nothing.
    again = await store.client.post(url, json={"reason": "not in old journal"}, headers=MANAGER)
    refused(again, 409, "sale_id")
    assert len(sim.receipts) == 2
    assert len(await interventions(store)) == 1


async def test_print_on_new_printer_is_refused_while_the_hints_printer_answers(
    store: Store,
) -> None:
    """Not swapped, only out of paper: the printer the hint was read from answers, so
    the agent reconciles the sale itself; the manager's decision is refused."""
    await store.open_shift()
    sim = store.fiscal.sim
    sim.paper_end = True
    assert (await store.sale(basket("s-1"))).json()["status"] == "pending_fiscal"
    answer = await store.client.post(
        NEW_PRINTER.format("s-1"), json={"reason": "not in journal"}, headers=MANAGER
    )
    refused(answer, 409, "sale_id")
    assert "agent prints or reconciles it itself" in answer.json()["detail"]
    assert sim.receipts == []
    assert await interventions(store) == []


async def test_a_swapped_printer_whose_numbers_match_by_chance_never_settles_a_cash_move(
    store: Store,
) -> None:
    """The cash-out was sent to the old printer (answer lost) and the old printer
    taken away; the new unit happens to stand one document further on with the cash
    sum 3.00 lower, which used to read as "printed". The intent keeps the serial it was
    read from (a1910): another printer never settles it; the manager does."""
    await store.open_shift()
    sim = store.fiscal.sim
    await store.sale(basket("s-cash"))
    sim.at_command(CMD_CASH_IN_OUT, power_cut, nth=2)
    assert (await cash_move(store, "out-1", "out", 300)).status_code == 503
    async with store.agent.sessionmaker() as session:
        (row,) = (await session.scalars(select(CashMove))).all()
    assert (row.status, row.printer_serial) == ("pending", "DT123456")
    assert row.printer_document_before is not None
    assert row.printer_cash_before is not None
    sim.deaf_until = 0.0
    swap_printer(sim)
    sim.document_number = row.printer_document_before + 1
    sim.cash = Decimal(row.printer_cash_before - 300) / 100
    await store.agent.fiscal.process_all()
    async with store.agent.sessionmaker() as session:
        (row,) = (await session.scalars(select(CashMove))).all()
    assert row.status == "pending"  # not taken for printed on the new printer
    assert await store.events("cash_moved") == []
    done = await settle(store, decision("cash_move", "out-1", "not_printed", "old journal: no"))
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["shift"]["cash_out"]) == ("failed", 0)
    assert await store.events("cash_moved") == []
    (record,) = await interventions(store)
    assert record.action == "cash_move_not_printed"


async def test_a_shift_whose_printer_died_before_its_close_is_closed_without_z(
    store: Store,
) -> None:
    """No close was started (no Z intent): the manager closes the shift without Z, with
    the drawer's count, once the printer is found gone; the closing says no Z was
    printed, and the next shift opens."""
    shift = await store.open_shift()
    sim = store.fiscal.sim
    assert (await store.sale(basket("s-1"))).json()["status"] == "fiscalized"
    sim.paper_end = True
    assert (await store.sale(basket("s-2"))).json()["status"] == "pending_fiscal"
    sid = shift["shift_id"]
    body = {**decision("z_report", sid, "not_printed", "printer dead"), "counted_cash": 926}
    # A sale of the shift still waits for the printer: completed first.
    detail = refused(await settle(store, body), 409, "id")
    assert "complete-unfiscal or print-on-new-printer" in detail
    sim.go_deaf(3600.0)
    done = await store.client.post(
        "/api/v1/manager/sales/T1/s-2/complete-unfiscal",
        json={"reason": "printer dead"},
        headers=MANAGER,
    )
    assert done.status_code == 200, done.text
    closing = await store.client.post(
        "/api/v1/shifts/current/close", json={"counted_cash": 926}, headers=TILL
    )
    assert closing.status_code == 503, closing.text  # no Z intent: nothing was sent
    # No Z was sent, so none can have been printed; counted_cash is for a Z decision.
    refused(await settle(store, {**body, "outcome": "printed"}), 409, "outcome")
    refused(
        await settle(store, {**decision("float", sid, "printed"), "counted_cash": 1}),
        422,
        "counted_cash",
    )
    # While the printer answers (out of paper) the close is the way: it prints the Z.
    sim.deaf_until = 0.0
    refused(await settle(store, body), 409, "intent")
    sim.go_deaf(3600.0)
    assert await store.events("shift_closed") == []
    closed = await settle(store, body)
    assert closed.status_code == 200, closed.text
    answer = closed.json()
    assert (answer["action"], answer["status"]) == ("closed_without_z", "closed")
    assert (answer["shift"]["counted_cash"], answer["shift"]["cash_difference"]) == (926, 0)
    (event,) = await store.events("shift_closed")
    assert isinstance(event.body, ShiftClosed)
    assert (event.body.z_report, event.body.z_printed, event.body.counted_cash) == (
        None,
        False,
        926,
    )
    (record,) = [r for r in await interventions(store) if r.action == "closed_without_z"]
    assert (record.shift_id, record.reason, record.amount) == (sid, "printer dead", 0)
    # A repeat (the answer lost) closes nothing again.
    refused(await settle(store, body), 409, "id")
    assert len(await store.events("shift_closed")) == 1
    assert sim.reports == []
    assert (await store.open_shift())["closed_at"] is None


async def test_a_storno_held_back_at_a_swap_is_printed_on_the_new_printer(store: Store) -> None:
    """As for a sale: the return's storno, sent to the old printer as it ran out of
    paper, is printed on the new one by the manager's decision, once, naming the
    original receipt of the old printer (its fiscal memory number)."""
    await store.open_shift()
    sim = store.fiscal.sim
    assert (await store.sale(basket("s-1"))).json()["status"] == "fiscalized"
    old_fm = sim.fiscal_memory_number
    sim.paper_end = True
    body = {
        "return_id": "r-1",
        "original_sale_id": "s-1",
        "lines": [{"line_no": 1, "quantity": "1"}],
        "reason": "damaged",
    }
    created = await store.client.post("/api/v1/returns", json=body, headers=TILL)
    assert created.json()["status"] == "pending_fiscal", created.text
    sim.go_deaf(3600.0)
    await store.agent.devices.probe_all()
    sim.go_deaf(0)
    sim.deaf_until = 0.0
    sim.paper_end = False
    swap_printer(sim)
    await store.agent.fiscal.process_all()
    assert sim.storno_receipts == []
    url = "/api/v1/manager/returns/T1/r-1/print-on-new-printer"
    done = await store.client.post(url, json={"reason": "not in old journal"}, headers=MANAGER)
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["fiscal_number"]) == ("fiscalized", "701")
    (storno,) = sim.storno_receipts
    assert storno.storno is not None
    assert storno.storno.fiscal_memory_number == old_fm
    (decided,) = await interventions(store)
    assert (decided.action, decided.document) == ("printed_on_new_printer", "return r-1")
    refused(
        await store.client.post(url, json={"reason": "again"}, headers=MANAGER), 409, "return_id"
    )
    assert len(sim.storno_receipts) == 1
    assert len(await store.events("customer_return_recorded")) == 1
