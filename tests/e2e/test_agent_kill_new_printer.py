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
from branch_agent.models import Sale
from central.embedded_nats import EmbeddedNats
from central.models import FiscalInterventionRow, Receipt
from central.models.shifts import Shift
from devices.fiscal_datecs import CMD_CLOSE_RECEIPT
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


async def test_sigkill_as_the_new_printer_prints_the_managers_sale_prints_it_once(
    central: Any,
    nats_server: EmbeddedNats,
    fiscal_printer: SimulatorHandle,  # noqa: F811
    tmp_path: Path,
) -> None:
    sim = fiscal_printer.sim
    await register_branch(central, "B1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    database = tmp_path / "agent" / "agent.db"
    agent = AgentProcess(
        write_config(tmp_path, nats_server.url, port, fiscal_printer.url), tmp_path / "agent.log"
    )
    kill = KillAtFrame(agent)
    agent.start()
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
