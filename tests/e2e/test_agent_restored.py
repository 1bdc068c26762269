"""A store's agent database restored from a backup: it would number its new sales with
numbers central already holds from after the backup (each a dead letter, the sale
lost). It asks central at its start; its new events continue after central's, the
numbers of the lost days that never reached central are counted, nothing is doubled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.chaos.proxy import LinkProxy
from branch_agent.backup import backup_database, restore_database
from central.embedded_nats import EmbeddedNats
from central.reports.service import sync_health
from central.services.sync_state import get_branch_sync
from tests.conftest import register_branch, wait_until
from tests.e2e.test_agent_replaced import _outbox_seqs, receipts_and_dead_letters, sell_unsent
from tests.e2e.test_skeleton import post_sale, receipts_at_central, sale

TOKEN = "B1-till-1"


async def test_a_database_restored_from_a_backup_sells_on_after_centrals_numbers(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    await register_branch(central, "B1")
    store = tmp_path / "store"
    agent = await make_agent("B1", nats_server.url, data_dir=str(store))

    async def at_central(count: int) -> bool:
        return len(await receipts_at_central(central)) == count

    for n in range(3):
        assert (await post_sale(agent, sale(f"before-{n}"), TOKEN)).status_code == 201
    await wait_until(lambda: at_central(3))
    # The nightly backup, taken while the agent runs.
    backup = tmp_path / "backup.db"
    assert backup_database(store / "agent.db", backup)["last_event_seq"] == 3
    # The next day: three sales reach central, a fourth is recorded but not sent (its
    # link stuck) before the disk fails; the heartbeat told central about it.
    for n in range(3):
        assert (await post_sale(agent, sale(f"after-{n}"), TOKEN)).status_code == 201
    await wait_until(lambda: at_central(6))

    await sell_unsent(central, agent, ["lost"], recorded=7)
    await agent.stop()
    # The technician restores the backup; the store sells at once, its link still down.
    restore_database(backup, store / "agent.db", branch="B1")
    link = LinkProxy(nats_server.port)
    await link.start()
    try:
        await link.cut("reset")
        # Its first sale waits the restore hold for central's answer, then goes on.
        restored = await make_agent("B1", link.url, data_dir=str(store), restore_hold_s=1.0)
        for n in range(2):
            assert (await post_sale(restored, sale(f"restored-{n}"), TOKEN)).status_code == 201
        # Numbered after the backup's 3 for now; not sent while central has not answered.
        assert await _outbox_seqs(restored) == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
        waiting = await restored.status()
        assert waiting.numbering_settled is False
        await link.restore()
        await wait_until(lambda: at_central(8), timeout=30)
        # Moved after central's 7 where they waited, row and payload alike.
        assert await _outbox_seqs(restored) == [(1, 1), (2, 2), (3, 3), (8, 8), (9, 9)]
        assert (await restored.status()).numbering_settled is True

        async def caught_up() -> bool:
            async with central.sessionmaker() as session:
                sync = await get_branch_sync(session, "B1")
            return sync.contiguous_seq == 9 and sync.last_recorded_seq == 9

        await wait_until(caught_up)
    finally:
        await link.close()
    receipts = await receipts_at_central(central)
    assert sorted(sale_id for _, sale_id in receipts) == sorted(
        [f"before-{n}" for n in range(3)]
        + [f"after-{n}" for n in range(3)]
        + [f"restored-{n}" for n in range(2)]
    )
    seqs, letters = await receipts_and_dead_letters(central)
    assert letters == 0
    assert seqs == [1, 2, 3, 4, 5, 6, 8, 9]
    async with central.sessionmaker() as session:
        sync = await get_branch_sync(session, "B1")
        (row,) = (await sync_health(session)).rows
    assert (sync.restarted_at_seq, sync.restart_reason) == (8, "restored_database")
    assert (sync.lost_from_seq, sync.lost_to_seq, sync.lost_events) == (7, 7, 1)
    assert (row.agent_restart_reason, row.lost_events) == ("restored_database", 1)
