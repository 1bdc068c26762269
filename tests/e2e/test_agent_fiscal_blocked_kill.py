"""A receipt left open on the fiscal printer after a refused payment blocks the till
until the manager finishes it (``python -m branch_agent fiscal finish-open``); the agent
process SIGKILLed as the printer closes that receipt loses and doubles nothing: after
the restart the sale is the receipt the printer closed, the sale behind it prints once,
and the manager's record is completed by the next run of the command."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from branch_agent.db import create_engine, create_sessionmaker
from branch_agent.models import FiscalIntervention, OutboxEvent, Sale
from devices.fiscal_datecs import CMD_CLOSE_RECEIPT
from devices.sim import SimulatorHandle
from tests.conftest import wait_until
from tests.e2e.test_agent_kill import (
    REPO,
    AgentProcess,
    fiscal_printer,
    free_port,
    wait_healthy,
    write_config,
)

__all__ = ["fiscal_printer"]  # the fixture, shared with test_agent_kill

T1 = {"Authorization": "Bearer t1"}
LINES = [
    {"barcode": "4006381333931", "quantity": "2"},
    {"sku": "APPLE-KG", "quantity": "0.754"},
]  # 4.63


def finish_open(config: Path) -> tuple[int, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "branch_agent", "--config", str(config), "fiscal",
         "finish-open", "T1", "--reason", "vouchers not set up on the printer"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        return proc.returncode, proc.stdout + proc.stderr


async def test_finish_open_with_the_agent_killed_as_the_receipt_closes(
    fiscal_printer: SimulatorHandle, tmp_path: Path
) -> None:
    sim = fiscal_printer.sim
    sim.paid_modes = {0, 1, 2}  # reprogrammed without vouchers; the agent was not told
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, "nats://127.0.0.1:9", port, fiscal_printer.url)
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        await wait_healthy(url)
        async with httpx.AsyncClient(base_url=url, headers=T1, timeout=30) as till:
            assert (await till.post("/api/v1/shifts", json={"cashier": "anna"})).is_success
            stuck = await till.post(
                "/api/v1/sales",
                json={
                    "sale_id": "s-stuck",
                    "lines": LINES,
                    "payments": [
                        {"type": "cash", "amount": 200},
                        {"type": "voucher", "amount": 263},
                    ],
                },
            )
            assert stuck.json()["status"] == "pending_fiscal", stuck.text
            after = await till.post(
                "/api/v1/sales",
                json={
                    "sale_id": "s-after",
                    "lines": LINES,
                    "payments": [{"type": "cash", "amount": 500}],
                },
            )
            assert after.json()["status"] == "pending_fiscal"

            async def blocked() -> bool:
                status = (await till.get("/health/status")).json()
                fiscal = next(d for d in status["devices"] if d["device"] == "fiscal")
                return bool(fiscal["state"] == "blocked")

            await wait_until(blocked, timeout=20)

            # The worst moment: the printer closes the receipt and the agent dies before
            # it hears back (or records what the printer did).
            killed = threading.Event()

            def kill_now(_sim: Any) -> None:
                agent.kill_from_thread()
                killed.set()

            sim.at_command(CMD_CLOSE_RECEIPT, kill_now)
            code, _out = await asyncio.to_thread(finish_open, config)
            assert killed.is_set()
            assert code != 0
            agent.reap()
            assert len(sim.receipts) == 1  # closed once, with the rest in cash
            assert sim.receipts[0].payments == [(0, Decimal("2.00")), (0, Decimal("2.63"))]

            agent.start()
            await wait_healthy(url)
            code, out = await asyncio.to_thread(finish_open, config)
            assert code == 0, out
            assert [(r["action"], r["cash_added"], r["document"]) for r in out] == [
                ("closed", 263, "sale s-stuck")
            ]

            async def printed() -> bool:
                sales = [
                    (await till.get(f"/api/v1/sales/{s}")).json() for s in ("s-stuck", "s-after")
                ]
                return all(s["status"] == "fiscalized" for s in sales)

            await wait_until(printed, timeout=20)
            assert not await blocked()
    finally:
        agent.stop()
    assert [r.amount for r in sim.receipts] == [Decimal("4.63"), Decimal("4.63")]
    engine = create_engine(tmp_path / "agent" / "agent.db")
    try:
        async with create_sessionmaker(engine)() as session:
            sales = {s.sale_id: s.fiscal_number for s in await session.scalars(select(Sale))}
            assert sales == {
                "s-stuck": str(sim.receipts[0].number),
                "s-after": str(sim.receipts[1].number),
            }
            kinds = [e.kind for e in await session.scalars(select(OutboxEvent))]
            assert kinds.count("receipt_recorded") == 2
            rows = (await session.scalars(select(FiscalIntervention))).all()
            assert [(r.action, r.receipt_number) for r in rows] == [("closed", 1)]
    finally:
        await engine.dispose()
