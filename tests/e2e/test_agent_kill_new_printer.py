"""SIGKILL of the agent around a store manager's decision to print, on the new printer,
a sale held back when the till's printer was swapped (POST
/api/v1/manager/sales/T1/s-2/print-on-new-printer): the old printer's journal shows it
was not printed. The agent dies as the new printer closes the receipt (printed, never
recorded as printed); at its next start it reconciles with the hint it read from the
new printer. The new printer prints the sale once, central holds the sale once with the
new printer's fiscal number and the manager's intervention once. Then the new printer
dies before the shift's close was started: the manager closes the shift without Z with
NATS down, the agent is killed right after, the decision repeated (409): central holds
the shift closed once, without Z, ``z_printed`` false, and that intervention once. Real agent process,
real nats-server, central on a real database, the printer a simulator over a pty."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from branch_agent.db import create_engine, create_sessionmaker
from branch_agent.models import CashMove, Sale
from central.embedded_nats import EmbeddedNats
from central.models import FiscalInterventionRow, Receipt
from central.models.shifts import CashMovement, Shift
from devices.fiscal_datecs import CMD_CASH_IN_OUT, CMD_CLOSE_RECEIPT
from devices.sim import SimulatorHandle
from tests.conftest import register_branch
from tests.e2e.test_agent_kill import (
    AgentProcess,
    KillAtFrame,
    agent_events_once_sent,
    fiscal_printer,  # noqa: F401 (fixture)
    free_port,
    wait_central_holds,
    wait_healthy,
    write_config,
)

TILL = {"Authorization": "Bearer t1"}
BOSS = {"Authorization": "Bearer boss"}
DECIDE = "/api/v1/manager/sales/T1/s-2/print-on-new-printer"
SETTLE = "/api/v1/manager/tills/T1/fiscal/settle-pending"
REASON = {"reason": "old printer's journal ends at receipt 1"}


def sale(sale_id: str) -> dict[str, Any]:
    return {
        "sale_id": sale_id,
        "lines": [{"sku": "COFFEE-250", "quantity": "1"}],
        "payments": [{"type": "cash", "amount": 5000}],
    }


async def agent_sale(database: Path, sale_id: str) -> Sale:
    engine = create_engine(database)
    try:
        async with create_sessionmaker(engine)() as session:
            row = await session.scalar(select(Sale).where(Sale.sale_id == sale_id))
    finally:
        await engine.dispose()
    assert row is not None
    return row


async def start_agent(
    central: Any, nats_server: EmbeddedNats, printer: SimulatorHandle, tmp_path: Path
) -> tuple[AgentProcess, KillAtFrame, str, Path]:
    """Branch B1 registered, its agent process started on the printer: the agent, its
    kill hooks, its URL and its database."""
    await register_branch(central, "B1")
    port = free_port()
    agent = AgentProcess(
        write_config(tmp_path, nats_server.url, port, printer.url), tmp_path / "agent.log"
    )
    agent.start()
    return agent, KillAtFrame(agent), f"http://127.0.0.1:{port}", tmp_path / "agent" / "agent.db"


async def agent_move(database: Path) -> CashMove:
    engine = create_engine(database)
    try:
        async with create_sessionmaker(engine)() as session:
            row = await session.scalar(select(CashMove).where(CashMove.move_id == "out-1"))
    finally:
        await engine.dispose()
    assert row is not None
    return row


async def test_sigkill_as_the_new_printer_prints_the_managers_sale_prints_it_once(
    central: Any,
    nats_server: EmbeddedNats,
    fiscal_printer: SimulatorHandle,  # noqa: F811
    tmp_path: Path,
) -> None:
    sim = fiscal_printer.sim
    agent, kill, url, database = await start_agent(central, nats_server, fiscal_printer, tmp_path)
    try:
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.post(f"{url}/api/v1/shifts", json={}, headers=TILL)).is_success
            first = await client.post(f"{url}/api/v1/sales", json=sale("s-1"), headers=TILL)
            assert first.json()["status"] == "fiscalized", first.text
            # s-2 reaches the old printer (its hint read from it), which is out of paper.
            sim.paper_end = True
            stuck = await client.post(f"{url}/api/v1/sales", json=sale("s-2"), headers=TILL)
            assert stuck.json()["status"] == "pending_fiscal", stuck.text
        # The swap, with the agent stopped (step 1 of the procedure): another unit on the
        # same port, with its own identity, counters and cash count.
        agent.stop()
        sim.paper_end = False
        sim.serial_number = "DT999999"
        sim.fiscal_memory_number = "09999999"
        sim.receipt_number = sim.document_number = 700
        sim.last_receipt = None
        sim.cash = Decimal("0.00")
        agent.start()
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            await client.post(f"{url}/api/v1/sales/fiscalize", headers=TILL)
            held = (await client.get(f"{url}/api/v1/sales/s-2", headers=TILL)).json()
            assert held["status"] == "pending_fiscal"
            assert held["fiscal_error"].startswith("printer_replaced")
            assert len(sim.receipts) == 1
            # The manager's decision: the agent dies as the new printer closes s-2's
            # receipt (the decision and the new hint are recorded, the number is not).
            sim.at_command(CMD_CLOSE_RECEIPT, kill.as_executed, nth=1)
            with contextlib.suppress(httpx.HTTPError):
                await client.post(f"{url}{DECIDE}", json=REASON, headers=BOSS)
        assert kill.killed.is_set()
        agent.reap()
        assert len(sim.receipts) == 2
        row = await agent_sale(database, "s-2")
        assert (row.status, row.hint_printer, row.fiscal_hint) == (
            "pending_fiscal",
            "DT999999",
            700,
        )
        agent.start()
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            await client.post(f"{url}/api/v1/sales/fiscalize", headers=TILL)
            s2 = (await client.get(f"{url}/api/v1/sales/s-2", headers=TILL)).json()
            assert (s2["status"], s2["fiscal_number"]) == ("fiscalized", "701"), s2
            # The manager heard nothing and decides again: nothing is pending any more.
            again = await client.post(f"{url}{DECIDE}", json=REASON, headers=BOSS)
            assert again.status_code == 409, again.text
            shift_id = s2["shift_id"]
        # The new printer dies before the shift's close was started: the manager closes
        # it without Z, with the link to NATS down; the agent is killed right after.
        sim.go_deaf(3600.0)
        nats_server.stop()
        without_z = {
            "intent": "z_report",
            "id": shift_id,
            "outcome": "not_printed",
            "reason": "printer dead before the close",
            "counted_cash": 10000,
        }
        async with httpx.AsyncClient(timeout=30) as client:
            closed = await client.post(f"{url}{SETTLE}", json=without_z, headers=BOSS)
        assert closed.status_code == 200, closed.text
        agent.kill()
        nats_server.start()
        agent.start()
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            again = await client.post(f"{url}{SETTLE}", json=without_z, headers=BOSS)
            assert again.status_code == 409, again.text
        events = await agent_events_once_sent(database)
        kinds = [e.kind for e in events]
        assert kinds.count("receipt_recorded") == 2
        assert kinds.count("fiscal_intervention") == 2
        assert kinds.count("shift_closed") == 1
        await wait_central_holds(central, len(events))
        async with central.sessionmaker() as session:
            receipts = sorted(
                (r.sale_id, r.fiscal_number)
                for r in await session.scalars(select(Receipt).where(Receipt.branch == "B1"))
            )
            interventions = [
                (row.action, row.document, row.reason)
                for row in await session.scalars(
                    select(FiscalInterventionRow).order_by(FiscalInterventionRow.seq)
                )
            ]
            (shift,) = list(await session.scalars(select(Shift).where(Shift.branch == "B1")))
    finally:
        agent.stop()
    assert len(sim.receipts) == 2  # s-1 on the old printer, s-2 once on the new one
    assert receipts == [("s-1", "1"), ("s-2", "701")]
    assert interventions == [
        ("printed_on_new_printer", "sale s-2", REASON["reason"]),
        ("closed_without_z", f"the Z report of shift {shift_id}", without_z["reason"]),
    ]
    assert (shift.z_report_number, shift.z_printed, shift.counted_cash) == (None, False, 10000)
    assert shift.closed_at is not None
    assert sim.reports == []


async def test_sigkill_at_a_cash_out_then_a_swap_whose_numbers_match_settles_nothing(
    central: Any,
    nats_server: EmbeddedNats,
    fiscal_printer: SimulatorHandle,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The agent dies as the old printer executes a cash-out; the printer is swapped for
    one that stands, by chance, one document on and 10.00 lower: the restarted agent
    does not take that for the cash-out (the intent names the old printer's serial); the
    manager decides, once. Central holds no cash movement, the intervention once."""
    sim = fiscal_printer.sim
    agent, kill, url, database = await start_agent(central, nats_server, fiscal_printer, tmp_path)
    try:
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.post(f"{url}/api/v1/shifts", json={}, headers=TILL)).is_success
            three = {**sale("s-1"), "lines": [{"sku": "COFFEE-250", "quantity": "3"}]}
            sold = await client.post(f"{url}/api/v1/sales", json=three, headers=TILL)
            assert sold.json()["status"] == "fiscalized", sold.text
            # 0x46 #1 reads the cash sum before, #2 is the cash-out: executed as the
            # agent dies.
            sim.at_command(CMD_CASH_IN_OUT, kill.as_executed, nth=2)
            out = {"move_id": "out-1", "direction": "out", "amount": 1000}
            with contextlib.suppress(httpx.HTTPError):
                await client.post(f"{url}/api/v1/cash-moves", json=out, headers=TILL)
        assert kill.killed.is_set()
        agent.reap()
        move = await agent_move(database)
        assert (move.status, move.printer_serial) == ("pending", sim.serial_number)
        assert move.printer_document_before is not None
        assert move.printer_cash_before is not None
        # Swapped, with the agent stopped, for a unit whose numbers match by chance.
        sim.serial_number = "DT999999"
        sim.fiscal_memory_number = "09999999"
        sim.receipt_number = 700
        sim.last_receipt = None
        sim.document_number = move.printer_document_before + 1
        sim.cash = Decimal(move.printer_cash_before - 1000) / 100
        agent.start()
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            await client.post(f"{url}/api/v1/sales/fiscalize", headers=TILL)
            assert (await agent_move(database)).status == "pending"
            decided = await client.post(
                f"{url}{SETTLE}",
                json={
                    "intent": "cash_move",
                    "id": "out-1",
                    "outcome": "not_printed",
                    "reason": "old journal shows no cash-out",
                },
                headers=BOSS,
            )
            assert decided.status_code == 200, decided.text
            assert decided.json()["status"] == "failed"
        events = await agent_events_once_sent(database)
        kinds = [e.kind for e in events]
        assert "cash_moved" not in kinds
        assert kinds.count("fiscal_intervention") == 1
        await wait_central_holds(central, len(events))
        async with central.sessionmaker() as session:
            moves = list(
                await session.scalars(select(CashMovement).where(CashMovement.branch == "B1"))
            )
            actions = [row.action for row in await session.scalars(select(FiscalInterventionRow))]
    finally:
        agent.stop()
    assert moves == []
    assert actions == ["cash_move_not_printed"]
    assert len(sim.cash_moves) == 1  # the old printer's, nothing sent to the new one
