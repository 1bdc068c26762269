"""A branch whose down-stream position is unusable gets a snapshot, with no manual step."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nats.js.api import StreamConfig
from sqlalchemy import select

from branch_agent.catalog import BasketLine, find_product, promotion_discounts
from central.embedded_nats import EmbeddedNats
from central.models import Branch, Product
from central.services.assortment import (
    AssortmentChange,
    FormatIn,
    change_format_products,
    create_format,
)
from central.services.catalog import ProductIn, archive_product, create_product
from central.services.masterdata_publisher import current_version, published_version
from central.services.pricing import PriceChangeIn, expected_prices, set_price
from central.services.promotions import PromotionIn, create_promotion, withdraw_promotion
from protocol.subjects import DOWN_STREAM, down_consumer_name
from tests.conftest import register_branch, wait_until

SKUS = [f"SKU{i:03d}" for i in range(30)]


async def _setup(central: Any) -> None:
    async with central.sessionmaker() as s:
        await create_format(s, FormatIn(code="mini", name="mini"))
        await s.commit()
    await register_branch(central, "B1", format_code="mini")
    for sku in SKUS:
        async with central.sessionmaker() as s:
            await create_product(s, ProductIn(sku=sku, name=f"Product {sku}", vat_rate_bp=2000))
            await s.commit()
    async with central.sessionmaker() as s:
        await change_format_products(s, "mini", AssortmentChange(add=SKUS))
        await s.commit()
    for i, sku in enumerate(SKUS):
        await _price(central, sku, 100 + i)
    now = datetime.now(UTC)
    async with central.sessionmaker() as s:
        for promotion_id, sku in (("KEEP", "SKU010"), ("GONE", "SKU011")):
            await create_promotion(
                s,
                PromotionIn(
                    promotion_id=promotion_id,
                    type="percent",
                    percent_bp=5000,
                    skus=[sku],
                    starts_at=now,
                    ends_at=now + timedelta(days=1),
                ),
            )
        await s.commit()


async def _price(central: Any, sku: str, price: int) -> None:
    async with central.sessionmaker() as s:
        await set_price(s, PriceChangeIn(sku=sku, price=price))
        await s.commit()


async def _offline_changes(central: Any) -> None:
    """Prices, an archival and a withdrawn promotion the branch does not see."""
    for i, sku in enumerate(SKUS[:20]):
        await _price(central, sku, 500 + i)
    async with central.sessionmaker() as s:
        await archive_product(s, "SKU029")
        await withdraw_promotion(s, "GONE")
        await s.commit()


async def _published(central: Any) -> int:
    async with central.sessionmaker() as s:
        return await published_version(s)


async def till_price(agent: Any, sku: str) -> int | None:
    """What the agent's tills sell ``sku`` at now (None: not sold)."""
    async with agent.sessionmaker() as s:
        item = await find_product(s, sku=sku, at=datetime.now(UTC))
    return item.price if item is not None else None


async def _synced(central: Any, agent: Any) -> int:
    """Wait until central published everything committed and the agent applied it."""
    async with central.sessionmaker() as s:
        target = await current_version(s)

    async def done() -> bool:
        return await _published(central) >= target

    await wait_until(done, timeout=30)

    async def applied() -> bool:
        return bool(agent.masterdata.applied_version >= target)

    await wait_until(applied, timeout=60)
    return target


async def _assert_exactly_central(central: Any, agent: Any) -> None:
    now = datetime.now(UTC)
    async with central.sessionmaker() as s:
        branch = await s.get(Branch, "B1")
        assert branch is not None
        expected = await expected_prices(s, branch, SKUS, now)
        active = set((await s.scalars(select(Product.sku).where(Product.active))).all())
    async with agent.sessionmaker() as s:
        for sku in SKUS:
            item = await find_product(s, sku=sku, at=now)
            want = expected[sku].price if sku in active else None
            assert (item.price if item else None) == want, sku
        lines = [
            BasketLine(sku=sku, category=None, quantity_milli=1000, unit_price=100, gross=100)
            for sku in ("SKU010", "SKU011")
        ]
        discounts = await promotion_discounts(s, lines, at=now)
    # KEEP still applies; GONE was withdrawn while the branch could not see it.
    assert [(d.amount, d.promotion_id) for d in discounts] == [(50, "KEEP"), (0, None)]
    # No row of a key central no longer has (the archived product's bucket was refreshed).
    async with agent.engine.connect() as conn:
        skus = {r[0] for r in await conn.exec_driver_sql("SELECT sku FROM md_products")}
        promos = {
            r[0] for r in await conn.exec_driver_sql("SELECT promotion_id FROM md_promotions")
        }
    assert skus == active & set(SKUS)
    assert promos == {"KEEP"}


def _delete_database(agent_dir: Path) -> None:
    for path in agent_dir.glob("agent.db*"):
        path.unlink()


async def test_agent_whose_database_was_deleted_comes_back_to_centrals_state(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    await _setup(central)
    agent = await make_agent("B1", nats_server.url, demo_catalog=False)
    await _synced(central, agent)
    assert agent.masterdata.stats.snapshots_completed == 0  # a new branch replays the stream
    await agent.stop()
    _delete_database(Path(agent.settings.data_dir))
    await _offline_changes(central)

    # The same branch on an empty database: no operator step.
    again = await make_agent("B1", nats_server.url, demo_catalog=False)
    await _synced(central, again)
    assert again.masterdata.stats.snapshots_completed == 1
    await _assert_exactly_central(central, again)
    assert central.snapshots.snapshots == 1

    # And it goes on from the live position: a change after the snapshot arrives.
    await _price(central, "SKU000", 777)
    await _synced(central, again)
    async with again.sessionmaker() as s:
        item = await find_product(s, sku="SKU000", at=datetime.now(UTC))
    assert item is not None
    assert item.price == 777
    # Its snapshot was dropped from the stream once applied.
    info = await central.js.stream_info(DOWN_STREAM, subjects_filter="down.branch.B1.snapshot.>")
    assert not info.state.subjects


async def _set_max_age(central: Any, seconds: float) -> None:
    config: StreamConfig = (await central.js.stream_info(DOWN_STREAM)).config
    config.max_age = seconds
    config.duplicate_window = min(config.duplicate_window or seconds, seconds)
    await central.js.update_stream(config)


async def test_agent_offline_while_history_aged_out_catches_up_exactly(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    await _setup(central)
    agent = await make_agent("B1", nats_server.url, demo_catalog=False)
    await _synced(central, agent)
    await agent.stop()

    # A stream that drops messages by age; the branch is offline while its changes
    # are published and aged out.
    await _set_max_age(central, 2.0)
    await _offline_changes(central)
    target = await _published(central)

    async def published() -> bool:
        return await _published(central) >= target

    await wait_until(published, timeout=30)
    await asyncio.sleep(3.0)
    info = await central.js.stream_info(DOWN_STREAM)
    assert info.state.messages == 0  # every change the branch missed is gone
    # Still a lossy stream, with room for the snapshot to be read.
    await _set_max_age(central, 120.0)

    again = await make_agent("B1", nats_server.url, demo_catalog=False)
    await _synced(central, again)
    assert again.masterdata.stats.snapshots_completed == 1
    await _assert_exactly_central(central, again)


async def test_deleted_consumer_is_recreated_and_the_branch_goes_on(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    await _setup(central)
    agent = await make_agent("B1", nats_server.url, demo_catalog=False)
    await _synced(central, agent)
    await central.js.delete_consumer(DOWN_STREAM, down_consumer_name("B1"))
    await _offline_changes(central)
    await _price(central, "SKU001", 4321)

    async def repriced() -> bool:
        return await till_price(agent, "SKU001") == 4321

    await wait_until(repriced, timeout=30)
    await central.js.consumer_info(DOWN_STREAM, down_consumer_name("B1"))
    await _synced(central, agent)
    await _assert_exactly_central(central, agent)
