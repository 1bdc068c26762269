"""SIGKILL of a real Tokyo agent while it applies a chain repricing approved after
Tokyo's local moment (Berlin's and New York's still ahead): after the restart its
replica holds each of the document's prices once, and its tills sell at them from the
approval on (never before it: the agent resolves the entries with the same
``entry_moment`` floor as central), exactly as central expects for the branch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from branch_agent.catalog import find_products, local_timezone, set_local_timezone
from branch_agent.db import create_engine, create_sessionmaker
from central.embedded_nats import EmbeddedNats
from central.models import Branch, PriceEntryRow, RepricingDocument
from central.services.pricing import (
    RepricingDocumentIn,
    RepricingLineIn,
    approve_repricing,
    create_repricing,
    expected_prices,
)
from tests.conftest import register_branch, wait_until
from tests.e2e.test_agent_kill import AgentProcess
from tests.e2e.test_masterdata_kill import (
    _Replica,
    _until_partly_applied,
    agent_toml,
    bulk_catalog,
    replica_caught_up,
    sqlite_central,  # noqa: F401 (fixture)
)

SKUS = [f"K{i:05d}" for i in range(4000)]


@pytest.mark.slow
async def test_sigkill_while_applying_a_late_approved_local_repricing(
    sqlite_central: Any,  # noqa: F811
    nats_server: EmbeddedNats,
    tmp_path: Path,
) -> None:
    central = sqlite_central
    await bulk_catalog(central, SKUS)
    # B1 (the agent) in Tokyo; branches without agents in Berlin and New York.
    await register_branch(central, "B1", format_code="mini", timezone="Asia/Tokyo")
    await register_branch(central, "B2", format_code="mini", timezone="Europe/Berlin")
    await register_branch(central, "B3", format_code="mini", timezone="America/New_York")
    config = agent_toml(tmp_path, nats_server.url)
    config.write_text(config.read_text() + 'timezone = "Asia/Tokyo"\n')
    replica = _Replica(tmp_path / "agent" / "agent.db")
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        caught_up = replica_caught_up(central, replica)
        await wait_until(caught_up, timeout=60, interval=0.05)
        async with central.sessionmaker() as s:
            draft = await create_repricing(
                s,
                RepricingDocumentIn(
                    effective_local=(datetime.now(UTC) + timedelta(days=2))
                    .replace(tzinfo=None, microsecond=0)
                    .isoformat(),
                    lines=[
                        RepricingLineIn(sku=sku, new_price=200 + i) for i, sku in enumerate(SKUS)
                    ],
                ),
            )
            await s.commit()
        # The draft waited: one hour from now on Berlin's wall clock is past in Tokyo.
        wall = (
            (datetime.now(UTC) + timedelta(hours=1))
            .astimezone(ZoneInfo("Europe/Berlin"))
            .replace(tzinfo=None, microsecond=0)
        )
        tokyo = wall.replace(tzinfo=ZoneInfo("Asia/Tokyo")).astimezone(UTC)
        async with central.sessionmaker() as s:
            await s.execute(
                update(RepricingDocument)
                .where(RepricingDocument.id == draft.id)
                .values(effective_local=wall.isoformat(), effective_at=tokyo)
            )
            await s.commit()
        async with central.sessionmaker() as s:
            doc = await approve_repricing(s, draft.id)
            await s.commit()
        assert doc.approved_at is not None
        async with central.sessionmaker() as s:
            version = max((await s.scalars(select(PriceEntryRow.version))).all())
        # The worst moment: some of the document's price buckets applied, not all.
        assert await _until_partly_applied(replica, version)
        agent.kill()
        agent.start()
        await wait_until(caught_up, timeout=90, interval=0.05)
    finally:
        agent.stop()
    rows = replica.prices()
    async with central.sessionmaker() as s:
        entries = sorted(
            (e.sku, e.price, e.version)
            for e in await s.scalars(select(PriceEntryRow).where(PriceEntryRow.scope == "all"))
        )
    # Nothing lost, nothing doubled.
    assert sorted((sku, price, v) for _, sku, price, v in rows) == entries
    assert len(entries) == 2 * len(SKUS)
    # The tills: the old price just before the approval, the document's from it on,
    # as central expects for B1 at both moments.
    engine = create_engine(tmp_path / "agent" / "agent.db")
    # The agent process's time zone, for its catalog read here.
    before = local_timezone()
    set_local_timezone("Asia/Tokyo")
    try:
        sessions = create_sessionmaker(engine)
        async with central.sessionmaker() as s:
            branch = await s.get(Branch, "B1")
            assert branch is not None
            for at, base in (
                (doc.approved_at - timedelta(microseconds=1), 100),
                (doc.approved_at, 200),
            ):
                want = await expected_prices(s, branch, SKUS, at)
                async with sessions() as a:
                    sold = await find_products(a, SKUS, at=at)
                for i, sku in enumerate(SKUS):
                    price = base if base == 100 else base + i
                    assert (sold[sku].price, want[sku].price) == (price, price), sku
    finally:
        set_local_timezone(before)
        await engine.dispose()
