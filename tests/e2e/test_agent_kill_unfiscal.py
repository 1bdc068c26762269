"""SIGKILL of the agent process as the printer closes a receipt whose answers are then
lost for good: after a restart the sale is pending, the manager completes it unfiscal
while the printer is silent, and when the printer answers again the agent finds the
receipt it had printed and records its number; nothing printed twice, one event.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from branch_agent.db import create_engine, create_sessionmaker
from branch_agent.models import OutboxEvent
from central.embedded_nats import EmbeddedNats
from central.models import DeadLetter, LateFiscalNumberRow, Receipt
from central.services.receipts import ReceiptQuery, list_receipts
from central.services.shifts import list_shifts
from devices.fiscal_datecs import CMD_CLOSE_RECEIPT
from devices.sim import SimulatorHandle
from protocol.codec import decode_envelope
from protocol.events import ReceiptRecorded
from tests.conftest import register_branch, wait_until
from tests.e2e.test_agent_kill import (
    AgentProcess,
    fiscal_printer,  # noqa: F401
    free_port,
    wait_healthy,
    write_config,
)

T1 = {"Authorization": "Bearer t1"}
BOSS = {"Authorization": "Bearer boss"}


async def _killed_as_k1_closes(sim: Any, agent: AgentProcess, url: str) -> Any:
    """With the agent started: opens a shift and rings up sale k1; the printer executes
    the close and the agent dies before any answer comes back. Started again and
    healthy; returns the receipt the printer printed."""
    killed = threading.Event()

    def kill_as_closed(s: Any) -> None:
        # the close is executed (fiscalized), the agent dies, no answer ever comes back
        s.lose_answers(None, 10**6)
        agent.kill_from_thread()
        killed.set()

    await wait_healthy(url)
    async with httpx.AsyncClient(timeout=60) as client:
        assert (await client.post(f"{url}/api/v1/shifts", json={}, headers=T1)).is_success
        sim.at_command(CMD_CLOSE_RECEIPT, kill_as_closed)
        sale = {
            "sale_id": "k1",
            "lines": [{"sku": "COFFEE-250", "quantity": "1"}],
            "payments": [{"type": "cash", "amount": 1000}],
        }
        with contextlib.suppress(httpx.HTTPError):  # the agent died under the request
            await client.post(f"{url}/api/v1/sales", json=sale, headers=T1)
    assert killed.is_set()
    (printed,) = sim.receipts
    agent.reap()
    agent.start()
    await wait_healthy(url)
    return printed


async def test_sigkill_as_the_receipt_closes_then_unfiscal_then_the_number_is_found(
    fiscal_printer: SimulatorHandle,  # noqa: F811
    tmp_path: Path,
) -> None:
    sim = fiscal_printer.sim
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, "nats://127.0.0.1:9", port, fiscal_printer.url)
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        printed = await _killed_as_k1_closes(sim, agent, url)
        async with httpx.AsyncClient(timeout=60) as client:
            k1 = (await client.get(f"{url}/api/v1/sales/k1", headers=T1)).json()
            assert k1["status"] == "pending_fiscal"
            done = await client.post(
                f"{url}/api/v1/manager/sales/T1/k1/complete-unfiscal",
                json={"reason": "printer dead"},
                headers=BOSS,
            )
            assert done.status_code == 200, done.text
            assert done.json()["unfiscal_check"] == "pending"

            sim.lose_answers(None, 0)  # the printer answers again: the retry loop checks

            async def found() -> bool:
                got = (await client.get(f"{url}/api/v1/sales/k1", headers=T1)).json()
                return bool(got["unfiscal_check"] == "printed")

            await wait_until(found, timeout=30, interval=0.2)
            k1 = (await client.get(f"{url}/api/v1/sales/k1", headers=T1)).json()
            assert (k1["status"], k1["fiscal_number"]) == (
                "completed_unfiscal",
                str(printed.number),
            )
            status = (await client.get(f"{url}/health/status")).json()
            assert status["unfiscal_printed"] == [f"T1 sale k1: fiscal number {printed.number}"]
        assert len(sim.receipts) == 1  # nothing printed twice
    finally:
        agent.stop()

    engine = create_engine(tmp_path / "agent" / "agent.db")
    try:
        async with create_sessionmaker(engine)() as session:
            events = [
                decode_envelope(p)
                for p in await session.scalars(
                    select(OutboxEvent.payload).where(OutboxEvent.kind == "receipt_recorded")
                )
            ]
    finally:
        await engine.dispose()
    (event,) = events
    assert isinstance(event.body, ReceiptRecorded)
    assert (event.body.sale_id, event.body.fiscal_number) == ("k1", None)


async def test_the_number_found_late_reaches_central_once_across_kills(
    central: Any,
    nats_server: EmbeddedNats,
    fiscal_printer: SimulatorHandle,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The same story with central and NATS: the agent is SIGKILLed as the receipt
    closes, and again right after it records the number it found (the event committed,
    perhaps not yet sent). Central ends with the receipt under that number (found by
    it), the manager's complete-unfiscal listed on the shift, each exactly once."""
    await register_branch(central, "B1")
    sim = fiscal_printer.sim
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, nats_server.url, port, fiscal_printer.url)
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        printed = await _killed_as_k1_closes(sim, agent, url)
        async with httpx.AsyncClient(timeout=60) as client:
            done = await client.post(
                f"{url}/api/v1/manager/sales/T1/k1/complete-unfiscal",
                json={"reason": "printer dead"},
                headers=BOSS,
            )
            assert done.status_code == 200, done.text
            sim.lose_answers(None, 0)

            async def found() -> bool:
                got = (await client.get(f"{url}/api/v1/sales/k1", headers=T1)).json()
                return bool(got["unfiscal_check"] == "printed")

            await wait_until(found, timeout=30, interval=0.05)
        agent.kill()  # right after the number and its event were committed
        agent.start()
        await wait_healthy(url)

        async def at_central() -> bool:
            async with central.sessionmaker() as session:
                n = await session.scalar(select(func.count()).select_from(LateFiscalNumberRow))
            return n == 1

        await wait_until(at_central, timeout=60)
    finally:
        agent.stop()
    async with central.sessionmaker() as session:
        page = await list_receipts(
            session, ReceiptQuery(fiscal_number=str(printed.number), limit=10, offset=0)
        )
        shifts = await list_shifts(
            session, branch="B1", till="T1", date_from=None, date_to=None, limit=10, offset=0
        )
        receipts = await session.scalar(select(func.count(Receipt.id)))
        letters = await session.scalar(select(func.count()).select_from(DeadLetter))
    assert [(r.sale_id, r.fiscal_number) for r in page.items] == [("k1", str(printed.number))]
    assert page.items[0].fiscalized_at is not None
    assert (receipts, letters) == (1, 0)
    (shift,) = shifts.items
    assert shift.unfiscal_receipts == 0
    assert [(i.action, i.document, i.reason) for i in shift.fiscal_interventions] == [
        ("completed_unfiscal", "sale k1", "printer dead")
    ]
    assert len(sim.receipts) == 1
