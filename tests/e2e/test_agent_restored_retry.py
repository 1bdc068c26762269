"""A till's retry of a sale after its agent database was restored from a backup taken
before the sale: central lists what it holds past the restored database's numbers when
it answers the numbering question, so the retry is answered with a 409 naming
``sale_id`` (the original's receipt number, shift, total and fiscal number), nothing
recorded, nothing printed a second time; the receipt numbers of the shift open in the
backup go on past central's (a retry sent at once waits for central's answer, the
restore hold); central holds every sale once, with no dead letter, and
the branch's sequence runs on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from branch_agent.backup import backup_database, restore_database
from branch_agent.settings import DeviceConfig, TillConfig
from central.embedded_nats import EmbeddedNats
from central.models import DeadLetter
from central.services.sync_state import get_branch_sync
from devices.sim import start_simulator_pty
from tests.conftest import register_branch, wait_until
from tests.e2e.test_skeleton import post_sale, receipts_at_central, sale

TOKEN = "B1-till-1"


async def test_a_retry_after_a_restore_is_not_recorded_or_printed_again(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    await register_branch(central, "B1")
    fiscal = start_simulator_pty("fiscal")
    try:
        tills = (
            TillConfig(
                id="T1",
                token=TOKEN,
                fiscal_printer=DeviceConfig(port=fiscal.url, protocol="datecs-x"),
            ),
        )
        store = tmp_path / "store"
        agent = await make_agent("B1", nats_server.url, data_dir=str(store), tills=tills)

        async def at_central(count: int) -> bool:
            return len(await receipts_at_central(central)) == count

        for n in range(1, 5):
            assert (await post_sale(agent, sale(f"s{n}"), TOKEN)).status_code == 201
        await wait_until(lambda: at_central(4))
        backup = tmp_path / "backup1.db"
        assert backup_database(store / "agent.db", backup)["last_event_seq"] > 0
        s5 = (await post_sale(agent, sale("s5"), TOKEN)).json()
        assert (await post_sale(agent, sale("s6"), TOKEN)).status_code == 201
        await wait_until(lambda: at_central(6))
        assert len(fiscal.sim.receipts) == 6
        await agent.stop()
        restore_database(backup, store / "agent.db", branch="B1")
        restored = await make_agent("B1", nats_server.url, data_dir=str(store), tills=tills)

        # The till heard nothing back for s5 before the restore and sends it again at
        # once: it waits for central's answer (the restore hold), then is refused.
        again = await post_sale(restored, sale("s5"), TOKEN)
        assert (await restored.status()).numbering_settled
        assert again.status_code == 409, again.text
        problem = again.json()
        assert problem["errors"][0]["field"] == "sale_id"
        assert f"number {s5['receipt_number']} of shift {s5['shift_id']}" in problem["detail"]
        assert f"fiscal number {s5['fiscal_number']}" in problem["detail"]
        assert len(fiscal.sim.receipts) == 6  # not printed again
        s7 = await post_sale(restored, sale("s7"), TOKEN)
        assert s7.status_code == 201, s7.text
        # The shift open in the backup numbers on past central's receipts.
        assert s7.json()["receipt_number"] == s5["receipt_number"] + 2
        assert len(fiscal.sim.receipts) == 7
        await wait_until(lambda: at_central(7), timeout=30)

        await wait_until(lambda: caught_up(central), timeout=30)
        async with central.sessionmaker() as session:
            assert (await session.scalars(select(DeadLetter))).all() == []
        receipts = await receipts_at_central(central)
        assert sorted(sale_id for _, sale_id in receipts) == [f"s{n}" for n in range(1, 8)]
    finally:
        fiscal.stop()


async def caught_up(central: Any) -> bool:
    """Central holds every number of B1 up to its highest: nothing missing."""
    async with central.sessionmaker() as session:
        sync = await get_branch_sync(session, "B1")
    return sync.contiguous_seq == sync.max_seq and sync.missing == 0
