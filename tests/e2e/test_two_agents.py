"""Two agent databases of one branch running at once (an old server put back while its
replacement runs): central numbers one of them; the other records its sales but sends
nothing, shown as a conflict, until the first has stopped; then its sales follow the
first's numbers. The same for a copy of the running database on a second server (a
cloned disk). Nothing collides, nothing is lost."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from branch_agent.backup import backup_database
from branch_agent.catalog import find_product
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


async def test_the_new_server_reads_master_data_only_once_the_old_one_has_stopped(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, central_client: Any, tmp_path: Path
) -> None:
    """Both servers of a branch pull the branch's one durable down-stream consumer: read
    by both, a price change reaches one of them and a snapshot for the new, empty
    database is split between them (it never ends at the new one). The new one reads
    nothing while central numbers the old one; then it asks for a whole snapshot."""
    client = central_client

    async def ok(response: Any, status: int = 201) -> None:
        assert response.status_code == status, response.text

    await ok(await client.post("/api/v1/formats", json={"code": "mini", "name": "mini"}))
    for n in range(40):
        sku = f"SKU-{n}"
        await ok(
            await client.post("/api/v1/products", json={"sku": sku, "name": sku, "vat_rate_bp": 0})
        )
        await ok(await client.post("/api/v1/prices", json={"sku": sku, "price": 100 + n}))
    await ok(
        await client.post(
            "/api/v1/formats/mini/products", json={"add": [f"SKU-{n}" for n in range(40)]}
        ),
        status=200,
    )
    await ok(await client.post("/api/v1/branches", json={"code": "B1", "format_code": "mini"}))
    first = await make_agent(
        "B1", nats_server.url, data_dir=str(tmp_path / "first"), demo_catalog=False
    )

    async def price(agent: Any, sku: str) -> int | None:
        async with agent.sessionmaker() as s:
            item = await find_product(s, sku=sku, at=datetime.now(UTC))
        return item.price if item else None

    async def sells(agent: Any, sku: str, expected: int) -> bool:
        return await price(agent, sku) == expected

    await wait_until(lambda: sells(first, "SKU-39", 139), timeout=30)

    async def heartbeat_of_first() -> bool:
        async with central.sessionmaker() as session:
            status = await session.get(BranchStatus, "B1")
        return status is not None and status.agent_instance == first.numbering.instance

    await wait_until(heartbeat_of_first)
    second = await make_agent(
        "B1", nats_server.url, data_dir=str(tmp_path / "second"), demo_catalog=False
    )
    await wait_until(lambda: _refused(second))
    # Changed while both run: every one reaches the old server, which still sells.
    for n in range(5):
        await ok(await client.post("/api/v1/prices", json={"sku": f"SKU-{n}", "price": 500 + n}))
    for n in range(5):
        await wait_until(lambda n=n: sells(first, f"SKU-{n}", 500 + n), timeout=30)
    assert second.masterdata.applied_version == 0
    assert second.downstream.held
    # Nor is a snapshot made for it meanwhile (the old server would read it).
    assert second.masterdata.snapshot.pending == 0

    await first.stop()

    async def first_stopped() -> bool:
        async with central.sessionmaker() as session:
            status = await session.get(BranchStatus, "B1")
        return status is not None and status.agent_stopped

    await wait_until(first_stopped)
    second.masterdata.requester.poke()
    # The new one reads now: a whole snapshot, every price as head office set it (after
    # up to the consumer's ack wait, 30 s: what the old server fetched and did not ack
    # when it stopped is handed out again first).
    for n in (0, 4, 39):
        await wait_until(
            lambda n=n: sells(second, f"SKU-{n}", 500 + n if n < 5 else 139), timeout=60
        )
    assert not second.downstream.held

    async def up_to_date() -> bool:
        rows = (await client.get("/api/v1/prices/branches")).json()
        return any(r["branch"] == "B1" and r["up_to_date"] for r in rows)

    await wait_until(up_to_date, timeout=30)


async def _refused(agent: Any) -> bool:
    return "is running" in agent.numbering.refused
