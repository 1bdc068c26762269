"""SIGKILL of the agent process around a customer return without receipt: once after it
was recorded and before its event was published (the link to NATS down), and once in
the middle of the till's request (the till hears nothing and posts it again). After
restarts central holds each return exactly once, with who approved it, its cash refund,
and the goods back in stock at the branch's moving average; the fiscal printer printed
no storno, and paid each cash refund out once (0x46 cash out). Then SIGKILL at the
worst moments of the pay-out: as the printer executes it (paid out, not recorded as
printed) and as its frame is lost (intent recorded, nothing paid out). Real agent
process, real nats-server, central on a real database."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from branch_agent.db import create_engine, create_sessionmaker
from branch_agent.models import CustomerReturn as AgentReturn
from branch_agent.stock import balances
from central.embedded_nats import EmbeddedNats
from central.models import StockBalance
from central.models.documents import CustomerReturn
from central.models.shifts import CashMovement, Shift
from central.models.stock import StockMovement
from devices.fiscal_datecs import CMD_CASH_IN_OUT, CMD_OPEN_STORNO
from devices.sim import SimulatorHandle
from tests.conftest import register_branch, wait_until
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
APPROVED = {**TILL, "X-Manager-Token": "boss"}
MILK = "4006381333931"


def no_receipt(return_id: str, quantity: str) -> dict[str, Any]:
    return {
        "return_id": return_id,
        "without_receipt": True,
        "approved_by": "maria",
        "reason": "no receipt, unopened",
        "lines": [{"barcode": MILK, "quantity": quantity}],
    }


async def post_until_answered(url: str, body: dict[str, Any]) -> httpx.Response:
    """A till that heard nothing posts the same return again until it is answered."""
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(100):
            try:
                response = await client.post(f"{url}/api/v1/returns", json=body, headers=APPROVED)
            except httpx.HTTPError:
                await asyncio.sleep(0.2)
                continue
            if response.status_code < 500:
                return response
            await asyncio.sleep(0.2)
    raise AssertionError("the agent never answered")


async def test_sigkill_around_a_return_without_receipt_stores_it_once(
    central: Any,
    nats_server: EmbeddedNats,
    fiscal_printer: SimulatorHandle,  # noqa: F811
    tmp_path: Path,
) -> None:
    rng = random.Random(11)
    await register_branch(central, "B1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    agent = AgentProcess(
        write_config(tmp_path, nats_server.url, port, fiscal_printer.url), tmp_path / "agent.log"
    )
    agent.start()
    try:
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=10) as client:
            received = await client.post(
                f"{url}/api/v1/stock/documents",
                json={
                    "document_id": "GR-1",
                    "doc_type": "goods_receipt",
                    "supplier": "DAIRY",
                    "lines": [{"sku": "MILK-1L", "quantity": "24", "unit_cost": 70}],
                },
                headers={"Authorization": "Bearer boss"},
            )
            assert received.status_code == 201, received.text
            opened = await client.post(
                f"{url}/api/v1/shifts",
                json={"cashier": "anna", "opening_float": 5000},
                headers=TILL,
            )
            assert opened.status_code == 201, opened.text

        # 1. Recorded, then killed before its event could go: the link is down.
        nats_server.stop()
        first = await post_until_answered(url, no_receipt("nr-1", "2"))
        assert first.status_code == 201, first.text
        assert first.json()["status"] == "recorded"
        agent.kill()
        agent.start()
        await wait_healthy(url)

        # 2. Killed while the till's request is in flight: recorded or not, the retry
        # gets one return.
        async with httpx.AsyncClient(timeout=5) as client:
            request = asyncio.create_task(
                client.post(f"{url}/api/v1/returns", json=no_receipt("nr-2", "1"), headers=APPROVED)
            )
            await asyncio.sleep(rng.uniform(0.0, 0.03))
            agent.kill()
            await asyncio.gather(request, return_exceptions=True)
        agent.start()
        await wait_healthy(url)
        second = await post_until_answered(url, no_receipt("nr-2", "1"))
        assert second.status_code in (200, 201), second.text
        again = await post_until_answered(url, no_receipt("nr-1", "2"))
        assert again.status_code == 200, again.text
        # (the drawer is the first request's own; a retry never opens it)
        assert again.json() == first.json() | {"drawer": None}
        assert fiscal_printer.sim.storno_receipts == []
        assert CMD_OPEN_STORNO not in fiscal_printer.sim.executed
        # the float in, each refund out once: the printer's count is the drawer's
        assert fiscal_printer.sim.cash_moves == [
            (0, Decimal("50.00")),
            (1, Decimal("2.38")),
            (1, Decimal("1.19")),
        ]

        nats_server.start()
        events = await agent_events_once_sent(tmp_path / "agent" / "agent.db")
        engine = create_engine(tmp_path / "agent" / "agent.db")
        try:
            async with create_sessionmaker(engine)() as session:
                stock = {k: v for k, v in (await balances(session)).items() if v}
        finally:
            await engine.dispose()
        assert [e.kind for e in events].count("customer_return_recorded") == 2
        await wait_central_holds(central, len(events))
        async with central.sessionmaker() as session:
            returns = list(
                await session.scalars(select(CustomerReturn).where(CustomerReturn.branch == "B1"))
            )
            ledger = {
                m.doc_ref: (m.quantity_milli, m.value)
                for m in await session.scalars(
                    select(StockMovement).where(
                        StockMovement.branch == "B1", StockMovement.doc_type == "customer_return"
                    )
                )
            }
            central_stock = {
                b.sku: b.quantity_milli
                for b in await session.scalars(
                    select(StockBalance).where(StockBalance.branch == "B1")
                )
                if b.quantity_milli
            }
        assert sorted(
            (r.return_id, r.without_receipt, r.approved_by, r.original_sale_id, r.total, r.refunds)
            for r in returns
        ) == [
            ("nr-1", True, "maria", None, 238, [{"type": "cash", "amount": 238}]),
            ("nr-2", True, "maria", None, 119, [{"type": "cash", "amount": 119}]),
        ]
        # back into stock at the moving average of the goods received (0.70)
        assert ledger == {"nr-1": (2_000, 140), "nr-2": (1_000, 70)}
        assert central_stock == stock == {"MILK-1L": 27_000}
    finally:
        agent.stop()


async def payout_settled(database: Path, return_id: str) -> bool:
    engine = create_engine(database)
    try:
        async with create_sessionmaker(engine)() as session:
            status = await session.scalar(
                select(AgentReturn.payout_status).where(AgentReturn.return_id == return_id)
            )
    finally:
        await engine.dispose()
    return status != "pending"


async def test_sigkill_at_the_pay_out_pays_each_refund_out_once(
    central: Any,
    nats_server: EmbeddedNats,
    fiscal_printer: SimulatorHandle,  # noqa: F811
    tmp_path: Path,
) -> None:
    sim = fiscal_printer.sim
    await register_branch(central, "B1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    agent = AgentProcess(
        write_config(tmp_path, nats_server.url, port, fiscal_printer.url), tmp_path / "agent.log"
    )
    kill = KillAtFrame(agent)

    async def crash_during(body: dict[str, Any], hook: Any) -> None:
        # 0x46 frames of a pay-out: #1 reads the cash sum before, #2 is the pay-out.
        await kill.during(sim, (f"{url}/api/v1/returns", body, APPROVED), CMD_CASH_IN_OUT, hook, 2)

    agent.start()
    try:
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=10) as client:
            opened = await client.post(
                f"{url}/api/v1/shifts",
                json={"cashier": "anna", "opening_float": 5000},
                headers=TILL,
            )
            assert opened.status_code == 201, opened.text
        await crash_during(no_receipt("nr-k1", "2"), kill.as_executed)
        # The restarted agent settles nr-k1's pay-out in the background (its own 0x46
        # read): only then is the next request's pay-out the 2nd new 0x46 frame.
        await wait_until(lambda: payout_settled(tmp_path / "agent" / "agent.db", "nr-k1"))
        await crash_during(no_receipt("nr-k2", "1"), kill.and_drop)
        # The till heard nothing of either and posts each again.
        first = await post_until_answered(url, no_receipt("nr-k1", "2"))
        second = await post_until_answered(url, no_receipt("nr-k2", "1"))
        assert first.status_code == 200, first.text
        assert second.status_code == 200, second.text
        assert first.json()["payout"] == "printed", first.text
        assert second.json()["payout"] == "printed", second.text
        assert sim.cash_moves == [
            (0, Decimal("50.00")),
            (1, Decimal("2.38")),
            (1, Decimal("1.19")),
        ]
        async with httpx.AsyncClient(timeout=30) as client:
            closed = await client.post(
                f"{url}/api/v1/shifts/current/close", json={"counted_cash": 4643}, headers=TILL
            )
        assert closed.status_code == 200, closed.text
        shift = closed.json()["shift"]
        # printer, agent and drawer agree: 50.00 - 2.38 - 1.19
        assert shift["expected_cash"] == 4643
        assert shift["cash_difference"] == 0
        assert shift["cash_out"] == 0
        assert sim.cash == Decimal("46.43")
        assert closed.json()["matches_fiscal"] is True

        events = await agent_events_once_sent(tmp_path / "agent" / "agent.db")
        engine = create_engine(tmp_path / "agent" / "agent.db")
        try:
            async with create_sessionmaker(engine)() as session:
                payouts = {
                    r.return_id: r.payout_status for r in await session.scalars(select(AgentReturn))
                }
        finally:
            await engine.dispose()
        assert payouts == {"nr-k1": "printed", "nr-k2": "printed"}
        kinds = [e.kind for e in events]
        assert kinds.count("customer_return_recorded") == 2
        assert "cash_moved" not in kinds
        await wait_central_holds(central, len(events))
        async with central.sessionmaker() as session:
            returns = sorted(
                (r.return_id, r.refunds)
                for r in await session.scalars(
                    select(CustomerReturn).where(CustomerReturn.branch == "B1")
                )
            )
            moves = list(
                await session.scalars(select(CashMovement).where(CashMovement.branch == "B1"))
            )
            (central_shift,) = list(
                await session.scalars(select(Shift).where(Shift.branch == "B1"))
            )
        # central counts each refund once, as a refund: no cash movement beside it
        assert returns == [
            ("nr-k1", [{"type": "cash", "amount": 238}]),
            ("nr-k2", [{"type": "cash", "amount": 119}]),
        ]
        assert moves == []
        assert central_shift.cash_out == 0
        assert central_shift.expected_cash == central_shift.counted_cash == 4643
    finally:
        agent.stop()
