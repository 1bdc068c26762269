"""Two agent databases of one branch running at once (an old server put back while its
replacement runs): central numbers one of them; the other records its sales but sends
nothing, shown as a conflict, until the first has stopped; then its sales follow the
first's numbers. The same for a copy of the running database on a second server (a
cloned disk). Nothing collides, nothing is lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from branch_agent.backup import backup_database
from central.embedded_nats import EmbeddedNats
from central.models import BranchStatus
from central.reports.service import sync_health
from central.services.sync_state import get_branch_sync
from tests.conftest import register_branch, wait_until
from tests.e2e.test_agent_replaced import _outbox_seqs, receipts_and_dead_letters
from tests.e2e.test_skeleton import post_sale, receipts_at_central, sale

TOKEN = "B1-till-1"


async def test_a_second_agent_database_waits_until_the_first_has_stopped(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    await register_branch(central, "B1")
    first = await make_agent("B1", nats_server.url, data_dir=str(tmp_path / "first"))

    async def at_central(count: int) -> bool:
        return len(await receipts_at_central(central)) == count

    async def heartbeat_of(instance: str, *, stopped: bool = False) -> bool:
        async with central.sessionmaker() as session:
            status = await session.get(BranchStatus, "B1")
        return (
            status is not None
            and status.agent_instance == instance
            and status.agent_stopped is stopped
        )

    for n in range(2):
        assert (await post_sale(first, sale(f"first-{n}"), TOKEN)).status_code == 201
    await wait_until(lambda: at_central(2))
    await wait_until(lambda: heartbeat_of(first.numbering.instance))

    second = await make_agent("B1", nats_server.url, data_dir=str(tmp_path / "second"))
    for n in range(2):
        assert (await post_sale(second, sale(f"second-{n}"), TOKEN)).status_code == 201

    async def refused() -> bool:
        return "is running" in second.numbering.refused

    await wait_until(refused)
    waiting = await second.status()
    assert (waiting.numbering_settled, waiting.outbox_backlog) == (False, 2)
    assert first.numbering.instance in waiting.numbering_refused
    async with central.sessionmaker() as session:
        (row,) = (await sync_health(session)).rows
        sync = await get_branch_sync(session, "B1")
    assert row.agent_conflict_at is not None
    assert sync.refused_instance == second.numbering.instance
    # The first keeps selling and syncing meanwhile.
    assert (await post_sale(first, sale("first-2"), TOKEN)).status_code == 201
    await wait_until(lambda: at_central(3))

    # The first is stopped: its last heartbeat says so, and the second goes on after it.
    await first.stop()
    await wait_until(lambda: heartbeat_of(first.numbering.instance, stopped=True))
    second.masterdata.requester.poke()
    await wait_until(lambda: at_central(5), timeout=30)
    assert await _outbox_seqs(second) == [(4, 4), (5, 5)]
    seqs, letters = await receipts_and_dead_letters(central)
    assert letters == 0
    async with central.sessionmaker() as session:
        (row,) = (await sync_health(session)).rows
        sync = await get_branch_sync(session, "B1")
    assert seqs == [1, 2, 3, 4, 5]
    assert (row.agent_conflict_at, sync.refused_instance, sync.lost_events) == (None, None, 0)
    assert sorted(sale_id for _, sale_id in await receipts_at_central(central)) == sorted(
        [f"first-{n}" for n in range(3)] + [f"second-{n}" for n in range(2)]
    )


async def test_a_copy_of_the_running_database_on_a_second_server_waits_for_the_first(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    """The store server's disk cloned onto a second server while the first runs: both
    databases have the same id, only their servers differ."""
    await register_branch(central, "B1")
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first = await make_agent("B1", nats_server.url, data_dir=str(first_dir), server_id="srv-a")

    async def at_central(count: int) -> bool:
        return len(await receipts_at_central(central)) == count

    async def heartbeat_from(server: str, *, stopped: bool = False) -> bool:
        async with central.sessionmaker() as session:
            status = await session.get(BranchStatus, "B1")
        return (
            status is not None and status.agent_server == server and status.agent_stopped is stopped
        )

    for n in range(2):
        assert (await post_sale(first, sale(f"first-{n}"), TOKEN)).status_code == 201
    await wait_until(lambda: at_central(2))
    await wait_until(lambda: heartbeat_from("srv-a"))

    second_dir.mkdir()
    backup_database(first.settings.database_path, second_dir / "agent.db")
    second = await make_agent("B1", nats_server.url, data_dir=str(second_dir), server_id="srv-b")
    assert second.numbering.instance == first.numbering.instance
    for n in range(2):
        assert (await post_sale(second, sale(f"second-{n}"), TOKEN)).status_code == 201

    async def refused(agent: Any, running_on: str) -> bool:
        return f"running on another server ({running_on})" in agent.numbering.refused

    await wait_until(lambda: refused(second, "srv-a"))
    waiting = await second.status()
    assert (waiting.numbering_settled, waiting.outbox_backlog) == (False, 2)
    async with central.sessionmaker() as session:
        (row,) = (await sync_health(session)).rows
        sync = await get_branch_sync(session, "B1")
    assert row.agent_conflict_at is not None
    assert (sync.refused_instance, sync.refused_server) == (first.numbering.instance, "srv-b")
    assert (sync.agent_instance, sync.agent_server) == (first.numbering.instance, "srv-a")
    assert (await post_sale(first, sale("first-2"), TOKEN)).status_code == 201
    await wait_until(lambda: at_central(3))

    # The first server is shut down: the copy goes on after its numbers.
    await first.stop()
    await wait_until(lambda: heartbeat_from("srv-a", stopped=True))
    second.masterdata.requester.poke()
    await wait_until(lambda: at_central(5), timeout=30)
    await wait_until(lambda: heartbeat_from("srv-b"))
    assert (await _outbox_seqs(second))[-2:] == [(4, 4), (5, 5)]

    # Put back by mistake, the first server now waits for the second in its turn.
    first = await make_agent("B1", nats_server.url, data_dir=str(first_dir), server_id="srv-a")
    assert (await post_sale(first, sale("first-3"), TOKEN)).status_code == 201
    await wait_until(lambda: refused(first, "srv-b"))
    assert (await post_sale(second, sale("second-2"), TOKEN)).status_code == 201
    await wait_until(lambda: at_central(6))

    await second.stop()
    await wait_until(lambda: heartbeat_from("srv-b", stopped=True))
    first.masterdata.requester.poke()
    await wait_until(lambda: at_central(7), timeout=30)
    seqs, letters = await receipts_and_dead_letters(central)
    async with central.sessionmaker() as session:
        (row,) = (await sync_health(session)).rows
        sync = await get_branch_sync(session, "B1")
    assert (seqs, letters) == ([1, 2, 3, 4, 5, 6, 7], 0)
    assert (row.agent_conflict_at, sync.refused_instance, sync.lost_events) == (None, None, 0)
    assert sorted(sale_id for _, sale_id in await receipts_at_central(central)) == sorted(
        [f"first-{n}" for n in range(4)] + [f"second-{n}" for n in range(3)]
    )
