"""SIGKILL of a real agent process while it applies bulk price changes: after restarts
its price replica is exactly central's (nothing lost, nothing doubled) as soon as it
reports the published version (messages handed to the killed process are applied
before later ones: stream order)."""

from __future__ import annotations

import asyncio
import io
import json
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from central.embedded_nats import EmbeddedNats
from central.models.catalog import PriceEntryRow
from central.services.assortment import (
    AssortmentChange,
    FormatIn,
    change_format_products,
    create_format,
)
from central.services.catalog_import import import_products
from central.services.masterdata_publisher import published_version
from central.services.pricing import set_prices_bulk
from tests.conftest import central_settings, register_branch, running_central, wait_until
from tests.e2e.test_agent_kill import AgentProcess, free_port

SKUS = [f"K{i:05d}" for i in range(4000)]


@pytest.fixture
async def sqlite_central(tmp_path: Path, nats_server: EmbeddedNats) -> AsyncIterator[Any]:
    """Central on SQLite only: what is tested is the agent's replica (and the test waits
    out the consumer's ack_wait, ~30 s, once per kill that left messages unacked)."""
    from central.db import upgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'central.db'}"
    await upgrade(url)
    async with running_central(central_settings(url, nats_server.url)) as runtime:
        yield runtime


async def bulk_catalog(central: Any, skus: list[str]) -> None:
    """The format "mini" listing ``skus`` (imported), each priced 100 chain-wide."""
    async with central.sessionmaker() as s:
        await create_format(s, FormatIn(code="mini", name="Minimarket"))
        await s.commit()
    csv_text = "sku,name,vat_rate_bp\n" + "".join(f"{s},Product {s},2000\n" for s in skus)
    async with central.sessionmaker() as s:
        await import_products(s, io.StringIO(csv_text), dry_run=False)
    async with central.sessionmaker() as s:
        await change_format_products(s, "mini", AssortmentChange(add=skus))
        await set_prices_bulk(s, [(sku, 100) for sku in skus])
        await s.commit()


def agent_toml(tmp_path: Path, nats_url: str) -> Path:
    """The configuration of branch B1's agent process, data in ``tmp_path / "agent"``."""
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[agent]
branch = "B1"
data_dir = "{tmp_path / "agent"}"
nats_url = "{nats_url}"
http_port = {free_port()}
heartbeat_interval_s = 0.5
"""
    )
    return config


class _Replica:
    """The agent's SQLite file, read-only from the test."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self, sql: str) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []  # not migrated yet
        finally:
            db.close()

    def applied_version(self) -> int:
        rows = self._read("SELECT value FROM md_state WHERE name = 'applied_version'")
        return int(rows[0][0]) if rows else 0

    def keys_at(self, version: int) -> int:
        rows = self._read(
            f"SELECT count(*) FROM md_applied_keys WHERE version = {version} "
            "AND subject LIKE 'down.all.price.%'"
        )
        return int(rows[0][0]) if rows else 0

    def prices(self) -> list[tuple[Any, ...]]:
        """(id, sku, price, version) of md_prices, after checking that md_price_buckets
        lists exactly these rows."""
        rows = self._read("SELECT id, sku, price, version FROM md_prices ORDER BY id")
        listed = sorted(
            (row_id, values[0], values[1], values[4])
            for (value,) in self._read("SELECT rows FROM md_price_buckets")
            for row_id, values in zip(
                json.loads(value)["ids"], json.loads(value)["rows"], strict=True
            )
        )
        assert listed == rows
        return rows


async def _until_partly_applied(replica: _Replica, version: int) -> bool:
    """True once part of ``version``'s price buckets is committed; False if it was all
    applied before a poll saw a part (the kill then comes after it)."""
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        done = replica.keys_at(version)
        if 0 < done < 256:
            return True
        if done == 256:
            return False
        await asyncio.sleep(0.002)
    raise AssertionError(f"the agent did not start applying version {version}")


async def _published(central: Any) -> int:
    async with central.sessionmaker() as s:
        return await published_version(s)


def replica_caught_up(central: Any, replica: _Replica) -> Callable[[], Awaitable[bool]]:
    """A check for wait_until: the agent applied every version central published."""

    async def check() -> bool:
        target = await _published(central)
        return target > 0 and replica.applied_version() >= target

    return check


@pytest.mark.slow
async def test_sigkill_while_applying_bulk_prices_loses_and_doubles_nothing(
    sqlite_central: Any, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    central = sqlite_central
    rng = random.Random(11)
    await bulk_catalog(central, SKUS)
    await register_branch(central, "B1", format_code="mini")
    config = agent_toml(tmp_path, nats_server.url)
    replica = _Replica(tmp_path / "agent" / "agent.db")
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        caught_up = replica_caught_up(central, replica)
        await wait_until(caught_up, timeout=60, interval=0.05)
        partial_kills = 0
        partial = False
        for round_ in range(1, 4):
            async with central.sessionmaker() as s:
                await set_prices_bulk(
                    s, [(sku, 100 + round_ * 10_000 + i) for i, sku in enumerate(SKUS)]
                )
                await s.commit()
            async with central.sessionmaker() as s:
                version = max((await s.scalars(select(PriceEntryRow.version))).all(), default=0)
            if round_ == 2:
                # At a random moment while the bulk is published and applied.
                await asyncio.sleep(rng.uniform(0.05, 0.5))
            else:
                # Wait until some of the bulk's buckets are committed but not all (the
                # acks of the last run may be lost too): the worst moment for a bulk.
                partial = await _until_partly_applied(replica, version)
                partial_kills += partial
            agent.kill()
            last_kill_ms = int(time.time() * 1000)
            agent.start()
        assert partial_kills >= 1
        await wait_until(caught_up, timeout=90, interval=0.05)
        async with central.sessionmaker() as s:
            expected = sorted(
                (row.sku, row.price, row.version)
                for row in (
                    await s.scalars(
                        select(PriceEntryRow).where(
                            PriceEntryRow.scope == "all", PriceEntryRow.withdrawn.is_(False)
                        )
                    )
                )
            )
        rows = replica.prices()
        # Every entry central publishes (all four rounds are within the two days kept),
        # each exactly once.
        assert sorted((sku, price, version) for _, sku, price, version in rows) == expected
        assert len(expected) == 4 * len(SKUS)
        assert replica.applied_version() == await _published(central)
        # The moment of the last apply (status's last sync) is committed with the
        # applies: a kill half-way through the last round, and it is after the kill.
        (applied_at_ms,) = replica._read("SELECT value FROM md_state WHERE name = 'applied_at_ms'")[
            0
        ]
        # (A kill after the whole round leaves nothing to apply after it.)
        assert applied_at_ms >= last_kill_ms if partial else applied_at_ms > 0
    finally:
        agent.stop()
