"""SIGKILL of a restored agent right after it kept the sales and returns central listed
for it, while the till retries them: after the restart the retries are refused, the
fiscal printer printed each sale and storno once, and central holds each once with no
dead letter. (Killed before it took central's answer, it asks again and keeps the same
list again; killed after, the list is in its database already.)"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from branch_agent.backup import backup_database, restore_database
from branch_agent.status import offline_status
from central.embedded_nats import EmbeddedNats
from central.models import CustomerReturn, DeadLetter, Receipt
from devices.sim import SimulatorHandle
from tests.conftest import register_branch, wait_until
from tests.e2e import test_agent_kill as kill
from tests.e2e.test_agent_kill import fiscal_printer
from tests.e2e.test_agent_restored_retry import caught_up

__all__ = ["fiscal_printer"]  # the fixture of test_agent_kill, used by name

T1 = {"Authorization": "Bearer t1"}


def sale_body(sale_id: str) -> dict[str, Any]:
    return {
        "sale_id": sale_id,
        "cashier": "anna",
        "lines": [{"barcode": "4006381333931", "quantity": "2"}],
        "payments": [{"type": "cash", "amount": 1000}],
    }


RETURN = {
    "return_id": "r1",
    "original_sale_id": "s2",
    "lines": [{"line_no": 1, "quantity": "1"}],
    "reason": "damaged",
}


def kept_records(database: Path) -> int:
    """How many records of central's list the agent database holds (0: none yet)."""
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=0.2)) as db:
            return int(db.execute("SELECT count(*) FROM restored_records").fetchone()[0])
    except sqlite3.Error:
        return 0


async def _central_counts(central: Any) -> tuple[int, int, int]:
    async with central.sessionmaker() as session:
        sales = await session.scalar(select(func.count()).select_from(Receipt))
        returns = await session.scalar(select(func.count()).select_from(CustomerReturn))
        letters = await session.scalar(select(func.count()).select_from(DeadLetter))
    return int(sales or 0), int(returns or 0), int(letters or 0)


async def test_sigkill_after_keeping_centrals_list_doubles_and_loses_nothing(
    central: Any, nats_server: EmbeddedNats, fiscal_printer: SimulatorHandle, tmp_path: Path
) -> None:
    await register_branch(central, "B1")
    port = kill.free_port()
    url = f"http://127.0.0.1:{port}"
    database = tmp_path / "agent" / "agent.db"
    agent = kill.AgentProcess(
        kill.write_config(tmp_path, nats_server.url, port, fiscal_printer.url),
        tmp_path / "agent.log",
    )
    agent.start()
    try:
        await kill.wait_healthy(url)
        async with httpx.AsyncClient(base_url=url, headers=T1, timeout=20) as till:
            assert (await till.post("/api/v1/shifts", json={"cashier": "anna"})).status_code in (
                200,
                201,
            )
            for n in range(1, 5):
                assert (
                    await till.post("/api/v1/sales", json=sale_body(f"s{n}"))
                ).status_code == 201
            await wait_until(lambda: _is(central, (4, 0, 0)), timeout=30)
            backup_database(database, tmp_path / "backup.db")
            s5 = (await till.post("/api/v1/sales", json=sale_body("s5"))).json()
            assert (await till.post("/api/v1/sales", json=sale_body("s6"))).status_code == 201
            returned = await till.post("/api/v1/returns", json=RETURN)
            assert returned.status_code == 201, returned.text
            await wait_until(lambda: _is(central, (6, 1, 0)), timeout=30)
            assert (len(fiscal_printer.sim.receipts), len(fiscal_printer.sim.storno_receipts)) == (
                6,
                1,
            )
            agent.stop()
            restore_database(tmp_path / "backup.db", database, branch="B1")
            # The status of the stopped agent: its next start holds sales for the list.
            offline = offline_status(database, "B1")
            assert (offline.restore_hold, offline.restored_records) == ("holding", 0)

            # The restored agent starts, asks central, keeps its list: killed at once, with
            # the till's retry of s5 in flight.
            agent.start()

            async def kept() -> bool:
                return kept_records(database) == 3

            await wait_until(kept, timeout=30, interval=0.005)
            retry = asyncio.create_task(till.post("/api/v1/sales", json=sale_body("s5")))
            agent.kill()
            try:
                answered = await retry
                assert answered.status_code == 409, answered.text
            except httpx.HTTPError:
                pass  # killed before it answered: the till retries
            agent.start()
            await kill.wait_healthy(url)
            again = await till.post("/api/v1/sales", json=sale_body("s5"))
            assert again.status_code == 409, again.text
            assert again.json()["errors"][0]["field"] == "sale_id"
            refused = await till.post("/api/v1/returns", json=RETURN)
            assert refused.status_code == 409, refused.text
            assert refused.json()["errors"][0]["field"] == "return_id"
            s7 = await till.post("/api/v1/sales", json=sale_body("s7"))
            assert s7.status_code == 201, s7.text
            assert s7.json()["receipt_number"] == s5["receipt_number"] + 2
            status = (await till.get("/health/status")).json()
            assert (status["restore_hold"], status["restored_records"]) == ("", 3)
        assert (len(fiscal_printer.sim.receipts), len(fiscal_printer.sim.storno_receipts)) == (7, 1)
        await wait_until(lambda: _is(central, (7, 1, 0)), timeout=30)

        await wait_until(lambda: caught_up(central), timeout=30)
        async with central.sessionmaker() as session:
            ids = sorted(await session.scalars(select(Receipt.sale_id)))
        assert ids == [f"s{n}" for n in range(1, 8)]
    finally:
        agent.stop()


async def _is(central: Any, counts: tuple[int, int, int]) -> bool:
    return await _central_counts(central) == counts
