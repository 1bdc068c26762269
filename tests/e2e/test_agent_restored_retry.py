"""A till's retry of a sale after its agent database was restored from a backup taken
before the sale: the restored database does not hold it and records it again. Central
already holds it: the second record is a dead letter that says so in words (the sale,
both records, the restore, how to settle it), and discarding it settles its number at
once: the branch's sequence runs on, nothing is missing, no resend is asked, and every
sale is at central once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from branch_agent.backup import backup_database, restore_database
from central.embedded_nats import EmbeddedNats
from central.models import DeadLetter
from central.reports.service import sync_health
from central.services.dead_letters import discard_dead_letter, replay_dead_letter
from central.services.sync_state import get_branch_sync
from tests.conftest import register_branch, wait_until
from tests.e2e.test_skeleton import post_sale, receipts_at_central, sale

TOKEN = "B1-till-1"


async def test_a_sale_recorded_again_after_a_restore_is_named_and_settled_by_discard(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    await register_branch(central, "B1")
    store = tmp_path / "store"
    agent = await make_agent("B1", nats_server.url, data_dir=str(store))

    async def at_central(count: int) -> bool:
        return len(await receipts_at_central(central)) == count

    for n in range(1, 5):
        assert (await post_sale(agent, sale(f"s{n}"), TOKEN)).status_code == 201
    await wait_until(lambda: at_central(4))
    backup = tmp_path / "backup1.db"
    assert backup_database(store / "agent.db", backup)["last_event_seq"] == 4
    for n in (5, 6):
        assert (await post_sale(agent, sale(f"s{n}"), TOKEN)).status_code == 201
    await wait_until(lambda: at_central(6))
    await agent.stop()
    restore_database(backup, store / "agent.db", branch="B1")
    restored = await make_agent("B1", nats_server.url, data_dir=str(store))

    async def settled() -> bool:
        return bool((await restored.status()).numbering_settled)

    await wait_until(settled, timeout=30)
    # The till heard nothing back for s5 before the restore and sends it again: the
    # restored database does not know it (the limitation README's restore section names).
    assert (await post_sale(restored, sale("s5"), TOKEN)).status_code == 201
    assert (await post_sale(restored, sale("s7"), TOKEN)).status_code == 201

    async def lettered() -> bool:
        async with central.sessionmaker() as session:
            return bool((await session.scalars(select(DeadLetter))).all())

    await wait_until(lettered, timeout=30)
    await wait_until(lambda: at_central(7), timeout=30)
    async with central.sessionmaker() as session:
        (letter,) = (await session.scalars(select(DeadLetter))).all()
        sync = await get_branch_sync(session, "B1")
    # Before: "conflicts with a stored record: UNIQUE constraint failed: receipts.branch, ..."
    assert "UNIQUE" not in letter.reason
    assert letter.reason.startswith("sale T1/s5 of branch B1 is already recorded at central")
    assert "(event 5, receipt" in letter.reason
    assert "this event 7 records it again" in letter.reason
    assert "agent database was restored from a backup" in letter.reason
    assert "numbered again from 7" in letter.reason
    assert "dead-letters discard" in letter.reason
    assert letter.seq == 7
    # The letter holds the branch's run at 6 (s7, event 8, is stored).
    assert (sync.contiguous_seq, sync.max_seq, sync.open_dead_letters) == (6, 8, 1)
    again = await replay_dead_letter(central.sessionmaker, letter.id)
    assert again.status == "open"
    assert again.reason.startswith("sale T1/s5 of branch B1 is already recorded")

    async with central.sessionmaker() as session:
        await discard_dead_letter(session, letter.id)
    async with central.sessionmaker() as session:
        sync = await get_branch_sync(session, "B1")
        (row,) = (await sync_health(session)).rows
    # At once, not after minutes: the discarded number is settled.
    assert (sync.contiguous_seq, sync.max_seq, sync.missing, sync.open_dead_letters) == (
        8,
        8,
        0,
        0,
    )
    assert sync.resend_requested_from is None
    assert row.seq_lag == 0
    receipts = await receipts_at_central(central)
    assert sorted(sale_id for _, sale_id in receipts) == [f"s{n}" for n in range(1, 8)]
