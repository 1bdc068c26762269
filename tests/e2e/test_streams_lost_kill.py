"""SIGKILL of a real agent process in the middle of the snapshot that follows the down
stream coming back numbered below its position (the NATS store restored from an older
copy): after restarts its replica is exactly central's (nothing lost, no stale key left,
each price row once) and its position is the stream's numbers again."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from branch_agent.db import create_engine, create_sessionmaker
from central.embedded_nats import EmbeddedNats
from central.services.assortment import (
    AssortmentChange,
    change_format_products,
)
from central.services.catalog import archive_product
from central.services.masterdata_publisher import published_version
from central.services.pricing import PriceChangeIn, set_price, set_prices_bulk
from protocol.subjects import DOWN_STREAM
from tests.conftest import register_branch, wait_until
from tests.e2e.test_agent_kill import AgentProcess
from tests.e2e.test_masterdata_kill import _Replica, agent_toml, bulk_catalog, sqlite_central
from tests.e2e.test_streams_lost import assert_tills_sell_as_central, restore_store

__all__ = ["sqlite_central"]  # the fixture, used by name

SKUS = [f"K{i:05d}" for i in range(2000)]


async def _published(central: Any) -> int:
    async with central.sessionmaker() as s:
        return await published_version(s)


def _state(replica: _Replica, name: str) -> int:
    rows = replica._read(f"SELECT value FROM md_state WHERE name = '{name}'")
    return int(rows[0][0]) if rows else 0


async def _until_mid_snapshot(replica: _Replica) -> bool:
    """True once part of a snapshot is committed and its end is not; False if it was
    all applied before a poll saw it (the kill then comes after it)."""
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        if _state(replica, "snapshot_completed"):
            return False
        if _state(replica, "snapshot_current") and _state(replica, "snapshot_next_part") > 2:
            return True
        await asyncio.sleep(0.002)
    raise AssertionError("the agent did not start applying a snapshot")


@pytest.mark.slow
async def test_sigkill_mid_snapshot_after_the_stream_came_back_below_the_position(
    sqlite_central: Any, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    central = sqlite_central
    await bulk_catalog(central, SKUS)
    await register_branch(central, "B1", format_code="mini")
    target = await _published(central)

    async def published() -> bool:
        return await _published(central) >= target

    await wait_until(published, timeout=60)
    # The older copy of the store: its down stream numbers below what the branch gets.
    backup = tmp_path / "jetstream-backup"
    nats_server.stop()
    shutil.copytree(nats_server.store_dir / "jetstream", backup)
    nats_server.start()

    config = agent_toml(tmp_path, nats_server.url)
    replica = _Replica(tmp_path / "agent" / "agent.db")
    agent = AgentProcess(config, tmp_path / "agent.log")

    async def caught_up() -> bool:
        target = await _published(central)
        return target > 0 and replica.applied_version() >= target

    agent.start()
    try:
        async with central.sessionmaker() as s:
            await set_prices_bulk(s, [(sku, 200 + i) for i, sku in enumerate(SKUS)])
            await s.commit()
        await wait_until(caught_up, timeout=90, interval=0.05)
        position = _state(replica, "last_stream_seq")

        # Offline while changes reach the stream; then the store goes back to the copy.
        agent.kill()
        async with central.sessionmaker() as s:
            await set_price(s, PriceChangeIn(sku="K00005", price=905))
            await archive_product(s, "K00009")
            await change_format_products(s, "mini", AssortmentChange(remove=["K00010"]))
            await s.commit()
        target = await _published(central)
        await wait_until(published, timeout=60)
        await restore_store(central, nats_server, backup, below=position)
        agent.start()
        # The worst moment: part of the snapshot committed, its end not.
        mid = await _until_mid_snapshot(replica)
        agent.kill()
        agent.start()
        await wait_until(caught_up, timeout=120, interval=0.05)
        assert mid, "the snapshot was applied before a poll saw it half done"
        assert _state(replica, "snapshot_completed") > 0
        info = await central.js.stream_info(DOWN_STREAM)
        assert _state(replica, "last_stream_seq") <= info.state.last_seq

        engine = create_engine(tmp_path / "agent" / "agent.db")
        try:
            sessionmaker = create_sessionmaker(engine)
            listed = await assert_tills_sell_as_central(central, sessionmaker, SKUS)
        finally:
            await engine.dispose()
        assert "K00009" not in listed
        skus = {row[0] for row in replica._read("SELECT sku FROM md_products")}
        assert skus == listed
        # Each price row once, and the buckets list exactly the rows (no doubles).
        rows = replica.prices()
        assert len(rows) == len({(sku, price, version) for _, sku, price, version in rows})
    finally:
        agent.stop()
