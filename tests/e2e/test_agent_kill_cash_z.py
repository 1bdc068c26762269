"""SIGKILL of the agent process at the worst points of a cash move and a Z report: as
the printer executes the command (printed, never recorded as done), and as the command
is lost on the wire (intent recorded, nothing printed). After a restart and a retry
with the same id, the printer's journal holds exactly one cash document and one Z
report, and the agent's records and events agree with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from branch_agent.db import create_engine, create_sessionmaker
from branch_agent.models import CashMove, OutboxEvent, Shift
from central.embedded_nats import EmbeddedNats
from central.models import IngestedEvent, ShiftIdConflict
from central.models import Shift as CentralShift
from devices.fiscal_datecs import CMD_CASH_IN_OUT, CMD_REPORT
from devices.sim import SimulatorHandle
from protocol.codec import decode_envelope
from protocol.events import ShiftClosed
from tests.conftest import register_branch, wait_until
from tests.e2e.test_agent_kill import (
    AgentProcess,
    KillAtFrame,
    fiscal_printer,  # noqa: F401
    free_port,
    wait_healthy,
    write_config,
)

T1 = {"Authorization": "Bearer t1"}
# What the cashier counts in the drawer: the float and the sale's cash are 113.98, short 9.98.
COUNTED = 10400


async def post_until_answered(client: httpx.AsyncClient, url: str, body: Any) -> httpx.Response:
    for _ in range(100):
        try:
            return await client.post(url, json=body, headers=T1)
        except httpx.HTTPError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"no answer from {url}")


async def test_sigkill_around_cash_moves_and_the_z_report_prints_each_once(
    fiscal_printer: SimulatorHandle,  # noqa: F811
    tmp_path: Path,
) -> None:
    sim = fiscal_printer.sim
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # No NATS: the store trades offline; what matters here is the printer and the records.
    config = write_config(tmp_path, "nats://127.0.0.1:9", port, fiscal_printer.url)
    agent = AgentProcess(config, tmp_path / "agent.log")
    kill = KillAtFrame(agent)
    kill_as_printed, kill_and_lose_the_frame = kill.as_executed, kill.and_drop

    async def crash_during(path: str, body: Any, cmd: int, hook: Any, nth: int) -> None:
        await kill.during(sim, (f"{url}{path}", body, T1), cmd, hook, nth)

    agent.start()
    try:
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            opened = await client.post(f"{url}/api/v1/shifts", json={}, headers=T1)
            assert opened.status_code == 201, opened.text
            sale = {
                "sale_id": "cash-sale",
                "lines": [{"sku": "COFFEE-250", "quantity": "3"}],
                "payments": [{"type": "cash", "amount": 5000}],
            }
            assert (await client.post(f"{url}/api/v1/sales", json=sale, headers=T1)).json()[
                "status"
            ] == "fiscalized"
        # 0x46 frames of a move: #1 reads the cash sum before, #2 is the move itself.
        out = {"move_id": "out-1", "direction": "out", "amount": 1000}
        await crash_during("/api/v1/cash-moves", out, CMD_CASH_IN_OUT, kill_as_printed, 2)
        into = {"move_id": "in-1", "direction": "in", "amount": 2500}
        await crash_during("/api/v1/cash-moves", into, CMD_CASH_IN_OUT, kill_and_lose_the_frame, 2)
        async with httpx.AsyncClient(timeout=30) as client:
            # The tills post the same moves again.
            again_out = await post_until_answered(client, f"{url}/api/v1/cash-moves", out)
            again_in = await post_until_answered(client, f"{url}/api/v1/cash-moves", into)
            assert again_out.status_code in (200, 201), again_out.text
            assert again_in.status_code in (200, 201), again_in.text
        assert sim.cash_moves == [(1, Decimal("10.00")), (0, Decimal("25.00"))]

        # The Z report: killed as the printer closes the day.
        await crash_during("/api/v1/shifts/current/close", {}, CMD_REPORT, kill_as_printed, 1)
        async with httpx.AsyncClient(timeout=30) as client:
            closed = await post_until_answered(client, f"{url}/api/v1/shifts/current/close", {})
        assert closed.status_code == 200, closed.text
        assert sim.reports == [("Z", 1)]
        z = closed.json()
        assert z["z_report_number"] == 1
        assert z["z_turnover_by_vat_group"] == {"A": 2097}
        assert z["matches_fiscal"] is True
        assert z["shift"]["cash_in"] == 2500
        assert z["shift"]["cash_out"] == 1000
    finally:
        agent.stop()

    engine = create_engine(tmp_path / "agent" / "agent.db")
    sessionmaker = create_sessionmaker(engine)
    try:
        async with sessionmaker() as session:
            moves = {m.move_id: m.status for m in await session.scalars(select(CashMove))}
            shifts = list(await session.scalars(select(Shift)))
            events = [
                decode_envelope(e.payload)
                for e in await session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq))
            ]
    finally:
        await engine.dispose()
    assert moves == {"out-1": "done", "in-1": "done"}
    (shift,) = shifts
    assert shift.closed_at is not None
    assert shift.z_status == "done"
    kinds = [type(e.body).__name__ for e in events]
    assert kinds.count("CashMoved") == 2
    assert kinds.count("ShiftClosed") == 1
    (closing,) = [e.body for e in events if isinstance(e.body, ShiftClosed)]
    assert closing.z_report is not None
    assert closing.z_report.report_number == 1
    assert closing.z_report.turnover_by_vat_group == {"A": 2097}
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_a_shift_killed_mid_close_still_refuses_sales_after_the_restart(
    fiscal_printer: SimulatorHandle,  # noqa: F811
    tmp_path: Path,
) -> None:
    sim = fiscal_printer.sim
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, "nats://127.0.0.1:9", port, fiscal_printer.url)
    agent = AgentProcess(config, tmp_path / "agent.log")
    killed = threading.Event()

    def kill_and_lose_the_frame(_sim: Any) -> str:
        agent.kill_from_thread()
        killed.set()
        return "drop"

    def sale(sale_id: str) -> dict[str, Any]:
        return {
            "sale_id": sale_id,
            "lines": [{"sku": "COFFEE-250", "quantity": "1"}],
            "payments": [{"type": "cash", "amount": 1000}],
        }

    agent.start()
    try:
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.post(f"{url}/api/v1/shifts", json={}, headers=T1)).is_success
            first = await client.post(f"{url}/api/v1/sales", json=sale("zk0"), headers=T1)
            assert first.json()["status"] == "fiscalized"
            # Killed as the Z frame goes out, and the frame is lost: the intent is
            # recorded, nothing printed.
            sim.at_command(CMD_REPORT, kill_and_lose_the_frame, nth=1)
            try:
                await client.post(f"{url}/api/v1/shifts/current/close", json={}, headers=T1)
            except httpx.HTTPError:
                pass
        assert killed.is_set()
        agent.reap()
        agent.start()
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            refused = await client.post(f"{url}/api/v1/sales", json=sale("zk1"), headers=T1)
            assert refused.status_code == 409, refused.text
            assert refused.json()["errors"][0]["field"] == "shift_id"
            closed = await client.post(f"{url}/api/v1/shifts/current/close", json={}, headers=T1)
            assert closed.status_code == 200, closed.text
            assert closed.json()["matches_fiscal"] is True
            assert closed.json()["shift"]["receipts_count"] == 1
            assert (await client.post(f"{url}/api/v1/shifts", json={}, headers=T1)).is_success
            later = await client.post(f"{url}/api/v1/sales", json=sale("zk1"), headers=T1)
            assert later.status_code == 201, later.text
            assert later.json()["shift_id"] != closed.json()["shift"]["shift_id"]
    finally:
        agent.stop()
    assert sim.reports == [("Z", 1)]
    assert len(sim.receipts) == 2
    (z_number, turnover, _storno, _date) = sim.fiscal_memory[0]
    assert z_number == 1
    assert sum(turnover) == Decimal(first.json()["total"]) / 100


async def test_sigkill_around_the_opening_float_deposits_it_once(
    fiscal_printer: SimulatorHandle,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Killed as the printer takes the float (printed, not recorded as done), then as its
    frame is lost (recorded pending, nothing printed): one deposit each, made or
    recognised by the restarted agent's background retry."""
    sim = fiscal_printer.sim
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, "nats://127.0.0.1:9", port, fiscal_printer.url)
    agent = AgentProcess(config, tmp_path / "agent.log")
    killed = threading.Event()

    def kill_as_printed(_sim: Any) -> None:
        agent.kill_from_thread()
        killed.set()

    def kill_and_lose_the_frame(_sim: Any) -> str:
        agent.kill_from_thread()
        killed.set()
        return "drop"

    async def open_killed(float_: int, hook: Any) -> Any:
        killed.clear()
        # 0x46 frames of an opening: #1 reads the cash sum before, #2 is the deposit
        sim.at_command(CMD_CASH_IN_OUT, hook, nth=2)
        async with httpx.AsyncClient(timeout=30) as client:
            try:
                await client.post(
                    f"{url}/api/v1/shifts", json={"opening_float": float_}, headers=T1
                )
            except httpx.HTTPError:
                pass
        assert killed.is_set()
        agent.reap()
        agent.start()
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(100):  # the background retry settles it
                shift = (await client.get(f"{url}/api/v1/shifts/current", headers=T1)).json()
                if shift["float_deposit"] == "done":
                    return shift
                await asyncio.sleep(0.1)
        raise AssertionError(f"float still {shift['float_deposit']}")

    agent.start()
    try:
        await wait_healthy(url)
        first = await open_killed(20000, kill_as_printed)
        assert sim.cash_moves == [(0, Decimal("200.00"))]
        assert sim.cash == Decimal(first["expected_cash"]) / 100
        async with httpx.AsyncClient(timeout=30) as client:
            closed = await client.post(f"{url}/api/v1/shifts/current/close", json={}, headers=T1)
            assert closed.status_code == 200, closed.text
        second = await open_killed(15000, kill_and_lose_the_frame)
        assert sim.cash_moves == [(0, Decimal("200.00")), (0, Decimal("150.00"))]
        assert second["expected_cash"] == 15000
    finally:
        agent.stop()
    # the second float on top of what the first shift left in the drawer
    assert sim.cash == Decimal("350.00")


async def test_paper_out_at_the_z_then_killed_as_the_repeated_z_prints_gives_one_z(
    central: Any,
    nats_server: EmbeddedNats,
    fiscal_printer: SimulatorHandle,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The paper runs out at the Z: the close says so and how to finish, the printer's
    state and the shift show it; the cashier's count goes with it. Paper loaded, the close
    is repeated and the agent is SIGKILLed as the printer prints that Z. After the restart
    the till repeats the close without the count (the Z is read back from fiscal memory,
    the count kept from the first attempt), and the agent is SIGKILLed again as it answers
    (its closing event in flight to NATS), then the close once more as if that answer had
    been lost too: one Z, the shift closed once with the right totals and count, the same
    answer; central holds the closing exactly once, with the count."""
    sim = fiscal_printer.sim
    await register_branch(central, "B1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, nats_server.url, port, fiscal_printer.url)
    agent = AgentProcess(config, tmp_path / "agent.log")
    killed = threading.Event()
    close = f"{url}/api/v1/shifts/current/close"

    def kill_as_printed(_sim: Any) -> None:
        agent.kill_from_thread()
        killed.set()

    agent.start()
    try:
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            opened = await client.post(
                f"{url}/api/v1/shifts", json={"opening_float": 10000}, headers=T1
            )
            assert opened.status_code == 201, opened.text
            shift_id = opened.json()["shift_id"]
            sale = {
                "sale_id": "zp-1",
                "lines": [{"sku": "COFFEE-250", "quantity": "2"}],
                "payments": [{"type": "cash", "amount": 2000}],
            }
            sold = await client.post(f"{url}/api/v1/sales", json=sale, headers=T1)
            assert sold.json()["status"] == "fiscalized", sold.text

            sim.paper_end = True
            failed = await client.post(close, json={"counted_cash": COUNTED}, headers=T1)
            assert failed.status_code == 503, failed.text
            assert "paper_end: paper end" in failed.json()["detail"]
            assert "load paper and repeat the close" in failed.json()["detail"]
            status = (await client.get(f"{url}/health/status")).json()
            (fiscal,) = [d for d in status["devices"] if d["device"] == "fiscal"]
            assert fiscal["state"] == "paper_end"
            shown = (await client.get(f"{url}/api/v1/shifts/current", headers=T1)).json()
            assert shown["closing"] is True
            assert shown["close_error"] == failed.json()["detail"]
            assert shown["counted_cash"] == COUNTED
            assert sim.reports == []

            sim.paper_end = False
            sim.at_command(CMD_REPORT, kill_as_printed, nth=1)
            with contextlib.suppress(httpx.HTTPError):
                await client.post(close, json={"counted_cash": COUNTED}, headers=T1)
        assert killed.is_set()
        agent.reap()
        agent.start()
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            closed = await post_until_answered(client, close, {})
            assert closed.status_code == 200, closed.text
        # killed as it answered: the closing event may be on its way to NATS
        agent.kill()
        agent.start()
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            # its answer lost too: asked again, the same answer (the same count too)
            again = await client.post(close, json={"counted_cash": COUNTED}, headers=T1)
            assert again.status_code == 200, again.text
            assert again.json() == closed.json()
            recount = await client.post(close, json={"counted_cash": COUNTED + 1}, headers=T1)
            assert recount.status_code == 409, recount.text
            assert recount.json()["errors"][0]["field"] == "counted_cash"
            read = await client.get(f"{url}/api/v1/shifts/{shift_id}", headers=T1)
            assert read.json() == closed.json()
    finally:
        agent.stop()
    assert sim.reports == [("Z", 1)]
    z = closed.json()
    assert z["z_report_number"] == 1
    assert z["matches_fiscal"] is True
    assert z["z_turnover_by_vat_group"] == {"A": sold.json()["total"]}
    assert z["shift"]["shift_id"] == shift_id
    assert z["shift"]["receipts_count"] == 1
    assert z["shift"]["expected_cash"] == 10000 + sold.json()["total"]
    assert z["shift"]["counted_cash"] == COUNTED
    assert z["shift"]["cash_difference"] == COUNTED - z["shift"]["expected_cash"] == -998
    assert (z["shift"]["closing"], z["shift"]["close_error"]) == (False, None)

    engine = create_engine(tmp_path / "agent" / "agent.db")
    sessionmaker = create_sessionmaker(engine)
    try:
        async with sessionmaker() as session:
            (shift,) = list(await session.scalars(select(Shift)))
            events = [
                decode_envelope(e.payload)
                for e in await session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq))
            ]
    finally:
        await engine.dispose()
    assert shift.closed_at is not None
    assert (shift.z_status, shift.z_error) == ("done", None)
    closings = [e.body for e in events if isinstance(e.body, ShiftClosed)]
    assert len(closings) == 1
    assert closings[0].z_report is not None
    assert closings[0].z_report.report_number == 1
    assert closings[0].counted_cash == COUNTED

    # Central: every event once, the closing once, with the count.
    async def central_has_all() -> bool:
        async with central.sessionmaker() as session:
            seqs = (
                await session.scalars(select(IngestedEvent.seq).where(IngestedEvent.branch == "B1"))
            ).all()
        return sorted(seqs) == [e.seq for e in events]

    await wait_until(central_has_all, timeout=60)
    async with central.sessionmaker() as session:
        kinds = (
            await session.scalars(select(IngestedEvent.kind).where(IngestedEvent.branch == "B1"))
        ).all()
        at_central = await session.get(CentralShift, ("B1", shift_id))
        conflicts = (await session.scalars(select(ShiftIdConflict))).all()
    assert kinds.count("shift_closed") == 1
    assert conflicts == []
    assert at_central is not None
    assert (at_central.counted_cash, at_central.expected_cash) == (
        COUNTED,
        z["shift"]["expected_cash"],
    )
    assert at_central.cash_difference == z["shift"]["cash_difference"]
