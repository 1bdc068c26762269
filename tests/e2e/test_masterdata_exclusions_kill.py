"""SIGKILL of a real agent process while it applies the buckets a bulk of assortment
exceptions republished (a format mate's exclusions move products from the format's
buckets to the branch's own, the branch's own exclusions take them away), and a
branch registered into the format after them: after restarts the replica holds
exactly the branch's assortment, each product once (nothing lost, nothing doubled)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from central.embedded_nats import EmbeddedNats
from central.models import MasterDataOutbox
from central.services.assortment import (
    AssortmentExceptionIn,
    branch_assortment,
    set_exceptions,
)
from central.services.masterdata_publisher import marked_version
from tests.conftest import register_branch, wait_until
from tests.e2e.test_agent_kill import AgentProcess
from tests.e2e.test_masterdata_kill import _Replica, agent_toml, bulk_catalog

SKUS = [f"X{i:05d}" for i in range(3000)]


class _Products(_Replica):
    def skus(self) -> list[tuple[str, int]]:
        """(sku, rows) of the replica's products, by SKU."""
        return [
            (str(sku), int(n))
            for sku, n in self._read(
                "SELECT sku, count(*) FROM md_products GROUP BY sku ORDER BY sku"
            )
        ]

    def applied_at_least(self, version: int) -> int:
        rows = self._read(
            f"SELECT count(*) FROM md_applied_keys WHERE version >= {version} "
            "AND subject LIKE 'down.%.product.%'"
        )
        return int(rows[0][0]) if rows else 0


async def _exclude(central: Any, branch: str, skus: list[str]) -> tuple[int, int]:
    """Exclude ``skus`` at ``branch`` in one request; returns (version, product keys B1
    receives of it)."""
    async with central.sessionmaker() as s:
        await set_exceptions(
            s, branch, [AssortmentExceptionIn(sku=sku, include=False) for sku in skus]
        )
    async with central.sessionmaker() as s:
        version = int(await s.scalar(select(func.max(MasterDataOutbox.version))) or 0)
        keys = await s.scalar(
            select(func.count())
            .select_from(MasterDataOutbox)
            .where(
                MasterDataOutbox.version == version,
                (MasterDataOutbox.scope == "format") | (MasterDataOutbox.scope_id == "B1"),
            )
        )
    return version, int(keys or 0)


async def _until_partly_applied(replica: _Products, version: int, keys: int) -> bool:
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        done = replica.applied_at_least(version)
        if 0 < done < keys:
            return True
        if done >= keys:
            return False
        await asyncio.sleep(0.002)
    raise AssertionError(f"the agent did not start applying version {version}")


@pytest.mark.slow
async def test_sigkill_while_applying_bulk_exclusions_loses_and_doubles_nothing(
    central: Any, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    rng = random.Random(7)
    await bulk_catalog(central, SKUS)
    await register_branch(central, "B2", format_code="mini")
    # Excluded at a mate before B1 exists: B1 gets them only at its own scope.
    await _exclude(central, "B2", SKUS[:300])
    await register_branch(central, "B1", format_code="mini")
    replica = _Products(tmp_path / "agent" / "agent.db")
    agent = AgentProcess(agent_toml(tmp_path, nats_server.url), tmp_path / "agent.log")
    agent.start()
    try:

        async def caught_up() -> bool:
            async with central.sessionmaker() as s:
                target = await marked_version(s)
            return target > 0 and replica.applied_version() >= target

        await wait_until(caught_up, timeout=60, interval=0.05)
        assert replica.skus() == [(sku, 1) for sku in SKUS]
        partial_kills = 0
        # The mate excludes most of the rest (format buckets lose them, B1's gain them),
        # then B1 excludes some of its own.
        for round_, (branch, skus) in enumerate(
            (("B2", SKUS[300:2500]), ("B1", SKUS[100:1200])), start=1
        ):
            version, keys = await _exclude(central, branch, skus)
            if round_ == 2:
                await asyncio.sleep(rng.uniform(0.05, 0.4))
            else:
                partial_kills += await _until_partly_applied(replica, version, keys)
            agent.kill()
            agent.start()
        assert partial_kills >= 1
        await wait_until(caught_up, timeout=90, interval=0.05)
        async with central.sessionmaker() as s:
            expected = await branch_assortment(s, "B1")
        assert len(expected) == len(SKUS) - 1100
        assert replica.skus() == [(sku, 1) for sku in expected]
    finally:
        agent.stop()
