"""A till's retry of a sale the restore lost, taken unchecked: the agent database was
restored from a backup with the store's link down, the restore hold expired, and the
till's retry of s5 was recorded and printed a second time. When the link comes back
and the agent takes central's answer with the list of what the restore lost, it flags
s5 (its database, ``status``, the manager's route, the log); central holds s5 once and
dead-letters the second record naming the case. The agent process dies while it flags
(``BACKROOM_FAULT_CRASH_WHILE_FLAGGING``: the flag written, not committed with the
answer) and is SIGKILLed right after the flag was committed: after each restart the
flag is there exactly once. The manager
refunds the second charge with a return against the sale: its storno is printed, and
central records the return."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from bench.chaos.proxy import LinkProxy
from branch_agent.backup import RESTORED_UNANSWERED, backup_database, restore_database
from branch_agent.numbering import CRASH_EXIT_CODE, CRASH_WHILE_FLAGGING
from central.embedded_nats import EmbeddedNats
from central.ingest.conflicts import RECORDED_AGAIN
from central.models import CustomerReturn, DeadLetter, Receipt
from central.services.dead_letters import discard_dead_letter
from central.services.shifts import ShiftOut, list_shifts
from central.services.sync_state import get_branch_sync
from devices.sim import SimulatorHandle
from tests.conftest import register_branch, wait_until
from tests.e2e import test_agent_kill as kill
from tests.e2e.test_agent_cli import cli
from tests.e2e.test_agent_kill import fiscal_printer
from tests.e2e.test_agent_restored_retry import caught_up
from tests.e2e.test_agent_restored_retry_kill import kept_records, sale_body

__all__ = ["fiscal_printer"]  # the fixture of test_agent_kill, used by name

T1 = {"Authorization": "Bearer t1"}
MANAGER = {"Authorization": "Bearer boss"}


def _rows(database: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of the agent database, read-only ([] while it cannot be read)."""
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=0.2)) as db:
            return list(db.execute(sql).fetchall())
    except sqlite3.Error:
        return []


def _flags(database: Path) -> list[tuple[Any, ...]]:
    return _rows(
        database,
        "SELECT kind, till, record_id, again_number, again_fiscal_number, again_at"
        " FROM restored_records WHERE again_at IS NOT NULL",
    )


async def _sale_ids(central: Any) -> list[str]:
    async with central.sessionmaker() as session:
        return sorted(await session.scalars(select(Receipt.sale_id)))


async def _shift(central: Any) -> ShiftOut:
    async with central.sessionmaker() as session:
        (shift,) = (
            await list_shifts(
                session, branch="B1", till="T1", date_from=None, date_to=None, limit=10, offset=0
            )
        ).items
    return shift


async def _returns_at_central(central: Any, count: int) -> bool:
    async with central.sessionmaker() as session:
        return len((await session.scalars(select(CustomerReturn))).all()) == count


async def test_a_retry_taken_unchecked_after_a_restore_is_flagged_once_through_sigkills(
    central: Any, nats_server: EmbeddedNats, fiscal_printer: SimulatorHandle, tmp_path: Path
) -> None:
    await register_branch(central, "B1")
    port = kill.free_port()
    url = f"http://127.0.0.1:{port}"
    database = tmp_path / "agent" / "agent.db"
    link = LinkProxy(nats_server.port)
    await link.start()
    config = kill.write_config(tmp_path, link.url, port, fiscal_printer.url)
    config.write_text(
        config.read_text().replace("[[agent.tills]]", "restore_hold_s = 1.0\n\n[[agent.tills]]", 1)
    )
    agent = kill.AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        await kill.wait_healthy(url)
        async with httpx.AsyncClient(base_url=url, headers=T1, timeout=20) as till:
            opened = await till.post("/api/v1/shifts", json={"cashier": "anna"})
            assert opened.status_code == 201, opened.text
            for n in range(1, 5):
                assert (
                    await till.post("/api/v1/sales", json=sale_body(f"s{n}"))
                ).status_code == 201

            async def at_central(ids: list[str]) -> bool:
                return await _sale_ids(central) == ids

            await wait_until(lambda: at_central([f"s{n}" for n in range(1, 5)]), timeout=30)
            backup_database(database, tmp_path / "backup.db")
            s5 = (await till.post("/api/v1/sales", json=sale_body("s5"))).json()
            assert (await till.post("/api/v1/sales", json=sale_body("s6"))).status_code == 201
            await wait_until(lambda: at_central([f"s{n}" for n in range(1, 7)]), timeout=30)
            assert len(fiscal_printer.sim.receipts) == 6
            agent.stop()
            restore_database(tmp_path / "backup.db", database, branch="B1")

            # The restored agent starts with the link down: the hold expires, the till's
            # retry of s5 (its answer was lost before the restore) is recorded and
            # printed again; s7 is a new sale.
            await link.cut("reset")
            agent.start()
            await kill.wait_healthy(url)
            retried = await till.post("/api/v1/sales", json=sale_body("s5"))
            assert retried.status_code == 201, retried.text
            second = retried.json()
            assert second["fiscal_number"] != s5["fiscal_number"]
            assert (await till.post("/api/v1/sales", json=sale_body("s7"))).status_code == 201
            assert len(fiscal_printer.sim.receipts) == 8
            unchecked = (await till.get("/health/status")).json()
            assert (unchecked["restore_hold"], unchecked["recorded_again"]) == ("expired", [])

            # The link comes back: the agent dies while it flags (the flag written, not
            # committed, with the answer) ...
            agent.stop()
            os.environ[CRASH_WHILE_FLAGGING] = "1"
            try:
                agent.start()
            finally:
                del os.environ[CRASH_WHILE_FLAGGING]
            await link.restore()
            assert agent.proc is not None
            assert await asyncio.to_thread(agent.proc.wait, 30) == CRASH_EXIT_CODE
            agent.reap()
            assert (kept_records(database), _flags(database)) == (2, [])  # s5, s6
            assert _rows(database, f"SELECT 1 FROM counters WHERE name = '{RESTORED_UNANSWERED}'")
            # Started again: it asks central again, keeps the same list, flags s5 with the
            # answer, and is SIGKILLed right after that commit.
            agent.start()

            async def flagged() -> bool:
                return bool(_flags(database))

            await wait_until(flagged, timeout=30, interval=0.005)
            agent.kill()
            (flag,) = _flags(database)
            assert flag[:5] == (
                "sale",
                "T1",
                "s5",
                second["receipt_number"],
                second["fiscal_number"],
            )

            agent.start()
            await kill.wait_healthy(url)
            assert _flags(database) == [flag]  # once, as found
            status = (await till.get("/health/status")).json()
            assert status["restore_hold"] == ""
            assert status["restored_records"] == 2
            (line,) = status["recorded_again"]
            assert line.startswith(
                f"T1 sale s5: recorded again as receipt {second['receipt_number']}"
            )
            assert f"fiscal number {second['fiscal_number']}; central holds receipt" in line
            assert f"fiscal number {s5['fiscal_number']}" in line
            assert "charged twice" in line
            listed = (
                await till.get("/api/v1/manager/sales/recorded-again", headers=MANAGER)
            ).json()
            assert [
                (r["record_id"], r["fiscal_number"], r["again_fiscal_number"]) for r in listed
            ] == [("s5", s5["fiscal_number"], second["fiscal_number"])]
            assert (listed[0]["total"], listed[0]["again_total"]) == (s5["total"], second["total"])
            page = cli(config, "status")
            assert (
                f"RECORDED AGAIN   T1 sale s5: recorded again as receipt {second['receipt_number']}"
                in page.stdout
            )
            assert json.loads(cli(config, "status", "--json").stdout)["recorded_again"] == [line]
            # The retry of the second record now gets it back (the agent holds it).
            repeat = await till.post("/api/v1/sales", json=sale_body("s5"))
            assert repeat.status_code == 200, repeat.text
            # The manager refunds the second charge: a return against s5 (the agent's
            # s5 is the second record), its storno against the second fiscal receipt.
            refund = await till.post(
                "/api/v1/returns",
                json={
                    "return_id": "refund-s5",
                    "original_sale_id": "s5",
                    "lines": [{"line_no": 1, "quantity": "2"}],
                    "reason": "charged twice after the restore",
                },
            )
            assert refund.status_code == 201, refund.text
            assert refund.json()["total"] == second["total"]
            closed = await till.post("/api/v1/shifts/current/close", json={})
            assert closed.status_code == 200, closed.text
        assert len(fiscal_printer.sim.receipts) == 8
        assert len(fiscal_printer.sim.storno_receipts) == 1

        # Central holds s5 once (the original) and the second record as a dead letter
        # that names the case; every other sale once.
        await wait_until(lambda: at_central([*(f"s{n}" for n in range(1, 8))]), timeout=30)

        async def lettered() -> bool:
            async with central.sessionmaker() as session:
                return bool((await session.scalars(select(DeadLetter))).all())

        await wait_until(lettered, timeout=30)
        async with central.sessionmaker() as session:
            (letter,) = (await session.scalars(select(DeadLetter))).all()
            fiscal = await session.scalar(
                select(Receipt.fiscal_number).where(Receipt.sale_id == "s5")
            )
            sync = await get_branch_sync(session, "B1")
        assert letter.reason.startswith(
            f"{RECORDED_AGAIN}: the customer may have been charged twice. sale T1/s5 of branch B1"
        )
        assert f"fiscal number {second['fiscal_number']}" in letter.reason
        assert fiscal == s5["fiscal_number"]
        assert (sync.open_dead_letters, sync.recorded_again_open) == (1, 1)
        await wait_until(lambda: _returns_at_central(central, 1), timeout=30)

        # The shift's Z report counts the second receipt, central does not: z_matches is
        # false, the Z's turnover above central's sales by exactly that receipt (how the
        # accountant finds it); the refund is a storno on both sides.
        async def shift_closed() -> bool:
            return (await _shift(central)).z_matches is not None

        await wait_until(shift_closed, timeout=30)
        shift = await _shift(central)
        assert shift.z_matches is False
        assert shift.z_turnover_total is not None
        assert shift.recorded.sales_total is not None
        assert shift.z_turnover_total - shift.recorded.sales_total == second["total"]
        assert sum(shift.z_storno_by_vat_group.values()) == shift.recorded.returns_total
        # In the log as an error: when found (unless killed right after that commit) and
        # again at each start while it stands.
        log = (tmp_path / "agent.log").read_text()
        said = [
            line
            for line in log.splitlines()
            if "ERROR" in line and "T1 sale s5: recorded again" in line
        ]
        assert said
        assert agent.kills == 2
    finally:
        agent.stop()
        await link.close()

    # Settled at central: the letter discarded, the branch's numbers all accounted for.
    async with central.sessionmaker() as session, session.begin():
        await discard_dead_letter(session, letter.id)
    await wait_until(lambda: caught_up(central), timeout=30)
