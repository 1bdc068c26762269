"""Central's database restored from a backup (disaster recovery): the sales and
master-data changes after the backup are gone from it, while the branches and the
streams hold them.

- The branches' events central lost come back: the heartbeat shows the gap (nothing
  was sold since), central asks for a resend, and the resend is stored although
  JetStream saw those events within its duplicate window. Nothing is doubled.
- Master data: central's versions went back, below what the branches applied, so
  their version guard would skip later changes (stale prices at the tills). Central
  sees its version behind the stream's, jumps past it and sends every branch a
  snapshot: the tills have central's state again, and later changes arrive.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from branch_agent.backup import backup_database, restore_database
from branch_agent.catalog import BasketLine, find_product, promotion_discounts
from central.embedded_nats import EmbeddedNats
from central.models import AuditEntry, Branch, DeadLetter, IngestedEvent
from central.reports.service import sync_health
from central.services.masterdata_publisher import current_version
from central.services.pricing import branch_sync_status, expected_prices
from central.services.sync_state import get_branch_sync
from tests.conftest import (
    central_settings,
    pg_admin_execute,
    register_branch,
    running_central,
    wait_until,
)
from tests.e2e.test_masterdata_snapshot import (
    SKUS,
    _assert_exactly_central,
    _offline_changes,
    _price,
    _setup,
    _synced,
    till_price,
)
from tests.e2e.test_skeleton import post_sale, receipts_at_central, sale

TOKEN = "B1-till-1"


def _sale(sale_id: str) -> dict[str, Any]:
    return {
        "sale_id": sale_id,
        "shift_id": "S1",
        "cashier": "anna",
        "lines": [{"sku": "SKU001", "quantity": "1"}],
        "payments": [{"type": "cash", "amount": 1000}],
    }


async def _pg(url: str, sql: str) -> None:
    await pg_admin_execute(
        make_url(url).set(database="postgres").render_as_string(hide_password=False), sql
    )


async def backup_of(db_url: str, tmp_path: Path) -> Callable[[], Awaitable[None]]:
    """Back up central's (stopped) database; returns what restores it."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        live, copy = Path(str(url.database)), tmp_path / "central-backup.db"
        with sqlite3.connect(live) as source, sqlite3.connect(copy) as target:
            source.backup(target)

        async def restore_sqlite() -> None:
            for stale in live.parent.glob(live.name + "-*"):
                stale.unlink()  # its WAL and shared memory belong to the lost database
            shutil.copyfile(copy, live)

        return restore_sqlite
    name, copy_name = url.database, f"{url.database}_backup"
    await _pg(db_url, f'CREATE DATABASE "{copy_name}" TEMPLATE "{name}"')

    async def restore_pg() -> None:
        await _pg(db_url, f'DROP DATABASE "{name}" WITH (FORCE)')
        await _pg(db_url, f'CREATE DATABASE "{name}" TEMPLATE "{copy_name}"')
        await _pg(db_url, f'DROP DATABASE "{copy_name}"')

    return restore_pg


async def _tills_have_centrals_state(central: Any, agent: Any) -> None:
    now = datetime.now(UTC)
    async with central.sessionmaker() as s:
        branch = await s.get(Branch, "B1")
        assert branch is not None
        expected = await expected_prices(s, branch, SKUS, now)
    async with agent.sessionmaker() as s:
        for sku in SKUS:
            item = await find_product(s, sku=sku, at=now)
            assert (item.price if item else None) == expected[sku].price, sku
        lines = [
            BasketLine(sku=sku, category=None, quantity_milli=1000, unit_price=100, gross=100)
            for sku in ("SKU010", "SKU011")
        ]
        discounts = await promotion_discounts(s, lines, at=now)
    # Both promotions run again: the withdrawal of GONE was lost with the database.
    assert [(d.amount, d.promotion_id) for d in discounts] == [(50, "KEEP"), (50, "GONE")]


async def test_central_restored_from_a_backup_gets_its_sales_back_and_the_tills_its_prices(
    db_url: str, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    settings = central_settings(db_url, nats_server.url)

    async def at_central(central: Any, count: int) -> bool:
        return len(await receipts_at_central(central)) == count

    async with running_central(settings) as central:
        await _setup(central)
        agent = await make_agent("B1", nats_server.url, demo_catalog=False)
        await _synced(central, agent)
        for n in range(2):
            assert (await post_sale(agent, _sale(f"s-{n}"), TOKEN)).status_code == 201
        await wait_until(lambda: at_central(central, 2))
    restore = await backup_of(db_url, tmp_path)

    # After the backup: three sales and master-data changes reach central and the till.
    async with running_central(settings) as central:
        for n in range(2, 5):
            assert (await post_sale(agent, _sale(f"s-{n}"), TOKEN)).status_code == 201
        await wait_until(lambda: at_central(central, 5))
        await _offline_changes(central)
        lost_version = await _synced(central, agent)
    await restore()

    async with running_central(settings) as central:
        assert len(await receipts_at_central(central)) == 2
        async with central.sessionmaker() as s:
            assert await current_version(s) < lost_version

        # Master data: central catches up with the stream and snapshots the branch.
        async def caught_up() -> bool:
            return bool(central.publisher.restored_from == lost_version)

        await wait_until(caught_up, timeout=30)
        await _synced(central, agent)
        assert agent.masterdata.stats.snapshots_completed == 1
        await _tills_have_centrals_state(central, agent)
        # A change now reaches the till (its version above what the till held).
        await _price(central, "SKU000", 777)
        await _synced(central, agent)
        async with agent.sessionmaker() as s:
            item = await find_product(s, sku="SKU000", at=datetime.now(UTC))
        assert item is not None
        assert item.price == 777

        # Sales: the heartbeat shows the gap at the tail (nothing sold since); the
        # resend brings the lost three. Then the store sells on.
        await wait_until(lambda: at_central(central, 5), timeout=60)
        assert (await post_sale(agent, _sale("s-5"), TOKEN)).status_code == 201
        await wait_until(lambda: at_central(central, 6), timeout=30)
        async with central.sessionmaker() as s:
            seqs = list(
                await s.scalars(
                    select(IngestedEvent.seq)
                    .where(IngestedEvent.kind == "receipt_recorded")
                    .order_by(IngestedEvent.seq)
                )
            )
            letters = await s.scalar(select(func.count()).select_from(DeadLetter))
            audited = await s.scalar(
                select(func.count()).where(AuditEntry.action == "masterdata.database_behind_stream")
            )
        assert sorted(sale_id for _, sale_id in await receipts_at_central(central)) == [
            f"s-{n}" for n in range(6)
        ]
        assert (len(seqs), len(set(seqs)), letters, audited) == (6, 6, 0, 1)


async def test_a_store_restored_from_its_backup_then_central_from_its_own(
    db_url: str, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    """Both went back: the store's database continued after central's numbers,
    skipping those it gave after its backup (3..5, central held them); then central's
    database went back to before them. The store cannot resend 3..5: central gives
    them up once, as lost, instead of asking every ``resend_retry_s`` (each answer
    re-sending the store's whole tail after them), and gets the store's later sale."""
    settings = central_settings(db_url, nats_server.url, resend_gap_after_s=0.3, resend_retry_s=0.5)
    store = tmp_path / "store"
    store_backup = tmp_path / "store-backup.db"

    async def at_central(central: Any, count: int) -> bool:
        return len(await receipts_at_central(central)) == count

    async with running_central(settings) as central:
        await register_branch(central, "B1")
        agent = await make_agent("B1", nats_server.url, data_dir=str(store))
        for n in range(2):
            assert (await post_sale(agent, sale(f"before-{n}"), TOKEN)).status_code == 201
        await wait_until(lambda: at_central(central, 2))
    restore_central = await backup_of(db_url, tmp_path)
    assert backup_database(store / "agent.db", store_backup)["last_event_seq"] == 2

    async with running_central(settings) as central:
        for n in range(3):
            assert (await post_sale(agent, sale(f"after-{n}"), TOKEN)).status_code == 201
        await wait_until(lambda: at_central(central, 5))
        await agent.stop()
        restore_database(store_backup, store / "agent.db", branch="B1")
        restored = await make_agent("B1", nats_server.url, data_dir=str(store))
        assert (await post_sale(restored, sale("restored-0"), TOKEN)).status_code == 201
        await wait_until(lambda: at_central(central, 6), timeout=30)
        assert restored.numbering.skipped == ((3, 5),)
    await restore_central()

    async with running_central(settings) as central:
        assert len(await receipts_at_central(central)) == 2

        async def settled() -> bool:
            async with central.sessionmaker() as session:
                sync = await get_branch_sync(session, "B1")
            return sync.contiguous_seq == 6

        # The store's sale after its restore (6) comes back by a resend; 3..5 do not.
        await wait_until(settled, timeout=30)
        await wait_until(lambda: at_central(central, 3), timeout=30)
        resends = restored.resends
        await asyncio.sleep(2.0)  # four retry periods: no more requests
        assert restored.resends == resends <= 2
        async with central.sessionmaker() as session:
            sync = await get_branch_sync(session, "B1")
            (row,) = (await sync_health(session)).rows
            letters = await session.scalar(select(func.count()).select_from(DeadLetter))
        assert (sync.lost_from_seq, sync.lost_to_seq, row.lost_events) == (3, 5, 3)
        assert letters == 0
        assert sorted(sale_id for _, sale_id in await receipts_at_central(central)) == [
            "before-0",
            "before-1",
            "restored-0",
        ]


async def _stale_copy(db_url: str, tmp_path: Path) -> str:
    """A copy of central's (stopped) database under another name: its URL."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        copy = tmp_path / "central-stale-copy.db"
        with sqlite3.connect(str(url.database)) as source, sqlite3.connect(copy) as target:
            source.backup(target)
        return url.set(database=str(copy)).render_as_string(hide_password=False)
    copy_name = f"{url.database}_stale"
    await _pg(db_url, f'CREATE DATABASE "{copy_name}" TEMPLATE "{url.database}"')
    return url.set(database=copy_name).render_as_string(hide_password=False)


async def test_a_process_on_a_stale_copy_does_not_hide_productions_later_prices(
    db_url: str, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    """A central process started on a stale copy of the database with production's NATS
    settings publishes the copy's state (versions above the stream's) into production's
    stream. Production's next price change must still reach the till: its publisher
    finds the stream's version mark above its counter before publishing, moves past it
    and snapshots the branches, instead of publishing a version the till already holds
    (its version guard would skip it, and central would report the branch up to date)."""
    settings = central_settings(db_url, nats_server.url)
    async with running_central(settings) as central:
        await _setup(central)
        agent = await make_agent("B1", nats_server.url, demo_catalog=False)
        await _synced(central, agent)
    stale_url = await _stale_copy(db_url, tmp_path)
    try:
        async with running_central(settings) as central:
            await _offline_changes(central)  # production moves on after the copy
            await _synced(central, agent)

            # The stale copy's process, beside production: behind the stream, it jumps
            # past it and sends the branch the copy's (old) state.
            stale_settings = central_settings(stale_url, nats_server.url)
            async with running_central(stale_settings) as stale:
                await wait_until(lambda: _restored(stale), timeout=30)
                stale_version = await _synced(stale, agent)
            assert await till_price(agent, "SKU000") == 100  # the copy's; production's: 500
            async with central.sessionmaker() as s:
                assert await current_version(s) < stale_version

            # The branch's heartbeat says it applied a version above production's
            # counter: not reported up to date.
            async def up_to_date(expected: bool) -> bool:
                async with central.sessionmaker() as s:
                    rows = await branch_sync_status(s)
                return [(r.applied_version == stale_version, r.up_to_date) for r in rows] == [
                    (not expected, expected)
                ]

            await wait_until(lambda: up_to_date(False), timeout=30)
            # Production's next price change reaches the till (versions above the
            # stale process's), with a snapshot that replaces the copy's state.
            await _price(central, "SKU000", 333)

            async def sells_at_333() -> bool:
                return await till_price(agent, "SKU000") == 333

            await wait_until(sells_at_333, timeout=30)
            assert await _synced(central, agent) > stale_version
            await _assert_exactly_central(central, agent)
            await wait_until(lambda: up_to_date(True), timeout=30)
            assert central.publisher.restored_from == stale_version
            async with central.sessionmaker() as s:
                audited = await s.scalar(
                    select(func.count()).where(
                        AuditEntry.action == "masterdata.database_behind_stream"
                    )
                )
            assert audited == 1
    finally:
        if make_url(db_url).get_backend_name() != "sqlite":
            await _pg(db_url, f'DROP DATABASE "{make_url(stale_url).database}" WITH (FORCE)')


async def _restored(central: Any) -> bool:
    return bool(central.publisher.restored_from)
