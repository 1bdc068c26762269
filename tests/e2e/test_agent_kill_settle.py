"""SIGKILL of the agent around a store manager's decision on fiscal cash work stuck on a
dead printer (POST /api/v1/manager/tills/T1/fiscal/settle-pending): a cash-out the
printer executed as the agent died, then the printer died too; the manager's decision
killed in flight (before it is recorded), then killed right after it was recorded (its
events committed, not yet sent: NATS down), and repeated. Then the Z report does not
print and the manager closes the shift without it. Central ends with one cash movement,
the shift's cash figures counting it once, and each intervention once. Real agent
process, real nats-server, central on a real database."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from branch_agent.db import create_engine, create_sessionmaker
from branch_agent.models import CashMove, OutboxEvent
from central.embedded_nats import EmbeddedNats
from central.models import FiscalInterventionRow
from central.models.shifts import CashMovement, Shift
from devices.fiscal_datecs import CMD_CASH_IN_OUT, CMD_REPORT
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


def power_cut(sim: Any) -> None:
    sim.power_loss(3600.0)  # executes the command, then never answers again


BOSS = {"Authorization": "Bearer boss"}
SETTLE = "/api/v1/manager/tills/T1/fiscal/settle-pending"
PRINTED = {
    "intent": "cash_move",
    "id": "out-1",
    "outcome": "printed",
    "reason": "journal: 10.00 out",
}


async def agent_state(database: Path) -> tuple[str, list[str]]:
    """The cash move's status and the kinds of the outbox's events (read beside the
    running agent: SQLite in WAL mode)."""
    engine = create_engine(database)
    try:
        async with create_sessionmaker(engine)() as session:
            move = await session.scalar(select(CashMove).where(CashMove.move_id == "out-1"))
            kinds = [e.kind for e in await session.scalars(select(OutboxEvent))]
    finally:
        await engine.dispose()
    assert move is not None
    return move.status, kinds


async def test_sigkill_around_the_managers_settle_counts_the_cash_move_once(
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
            sale = {
                "sale_id": "cash-sale",
                "lines": [{"sku": "COFFEE-250", "quantity": "3"}],
                "payments": [{"type": "cash", "amount": 5000}],
            }
            sold = await client.post(f"{url}/api/v1/sales", json=sale, headers=TILL)
            assert sold.json()["status"] == "fiscalized", sold.text
            # 0x46 #1 reads the cash sum before, #2 is the cash-out: executed as the
            # agent dies; then the printer dies too, before the agent is back.
            sim.at_command(CMD_CASH_IN_OUT, kill.as_executed, nth=2)
            out = {"move_id": "out-1", "direction": "out", "amount": 1000}
            with contextlib.suppress(httpx.HTTPError):
                await client.post(f"{url}/api/v1/cash-moves", json=out, headers=TILL)
        assert kill.killed.is_set()
        agent.reap()
        assert sim.cash_moves == [(1, Decimal("10.00"))]
        sim.go_deaf(3600.0)
        agent.start()
        await wait_healthy(url)
        assert (await agent_state(database))[0] == "pending"

        # The manager's decision, killed in flight: the agent is still asking the dead
        # printer (each question waits for its timeout), nothing is recorded yet.
        async with httpx.AsyncClient(timeout=30) as client:
            request = asyncio.create_task(client.post(f"{url}{SETTLE}", json=PRINTED, headers=BOSS))
            await asyncio.sleep(0.3)
            agent.kill()
            with contextlib.suppress(httpx.HTTPError):
                await request
        status, kinds = await agent_state(database)
        assert status == "pending"
        assert "fiscal_intervention" not in kinds
        assert "cash_moved" not in kinds

        # Again, with the link to NATS down: recorded, then killed before anything is sent.
        nats_server.stop()
        agent.start()
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            done = await client.post(f"{url}{SETTLE}", json=PRINTED, headers=BOSS)
        assert done.status_code == 200, done.text
        agent.kill()
        assert done.json()["shift"]["cash_out"] == 1000
        nats_server.start()
        agent.start()
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            # The manager heard nothing and decides again: nothing is pending any more.
            again = await client.post(f"{url}{SETTLE}", json=PRINTED, headers=BOSS)
            assert again.status_code == 409, again.text
            # The printer answers once more, long enough to take the Z report, and dies
            # as it prints it: the answer is lost, the shift stays closing.
            sim.deaf_until = 0.0
            sim.at_command(CMD_REPORT, power_cut, nth=1)
            closing = await client.post(
                f"{url}/api/v1/shifts/current/close", json={"counted_cash": 1097}, headers=TILL
            )
            assert closing.status_code == 503, closing.text
            shift_id = done.json()["shift"]["shift_id"]
            z = {
                "intent": "z_report",
                "id": shift_id,
                "outcome": "printed",
                "reason": "Z 1 on paper",
            }
            closed = await client.post(f"{url}{SETTLE}", json=z, headers=BOSS)
            assert closed.status_code == 200, closed.text
        shift = closed.json()["shift"]
        assert (shift["cash_out"], shift["expected_cash"]) == (1000, 2097 - 1000)
        assert (shift["counted_cash"], shift["cash_difference"]) == (1097, 0)

        events = await agent_events_once_sent(database)
        kinds = [e.kind for e in events]
        assert kinds.count("cash_moved") == 1
        assert kinds.count("fiscal_intervention") == 2
        assert kinds.count("shift_closed") == 1
        await wait_central_holds(central, len(events))
        async with central.sessionmaker() as session:
            moves = list(
                await session.scalars(select(CashMovement).where(CashMovement.branch == "B1"))
            )
            (central_shift,) = list(
                await session.scalars(select(Shift).where(Shift.branch == "B1"))
            )
            interventions = [
                (row.action, row.amount, row.document, row.shift_id)
                for row in await session.scalars(
                    select(FiscalInterventionRow).order_by(FiscalInterventionRow.seq)
                )
            ]
    finally:
        agent.stop()
    assert [(m.direction, m.amount) for m in moves] == [("out", 1000)]
    assert central_shift.cash_out == 1000
    assert central_shift.expected_cash == central_shift.counted_cash == 1097
    assert interventions == [
        ("cash_move_printed", 1000, "cash move out-1", shift_id),
        ("z_report_printed", 0, f"the Z report of shift {shift_id}", shift_id),
    ]
    assert sim.cash_moves == [(1, Decimal("10.00"))]  # nothing sent again
    assert sim.reports == [("Z", 1)]
