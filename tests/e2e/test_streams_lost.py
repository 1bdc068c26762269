"""The NATS server loses its JetStream store (a wiped data directory, a bad disk): the
streams and consumers central owns are gone. Central sees it, says so on /health
while it cannot set them up again, and creates them again; the branches' sales,
kept in their outboxes until a publish is acknowledged, then reach central."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
from sqlalchemy import select

from branch_agent.catalog import find_product
from central.embedded_nats import EmbeddedNats
from central.models import Branch, FormatProduct, Product
from central.runtime import CentralRuntime
from central.services.assortment import AssortmentChange, change_format_products
from central.services.catalog import ProductIn, archive_product, create_product
from central.services.health import health_of
from central.services.masterdata_publisher import current_version, published_version
from central.services.pricing import expected_prices
from central.services.promotions import PromotionIn, create_promotion, withdraw_promotion
from protocol.subjects import DOWN_STREAM, UP_STREAM, down_consumer_name
from tests.conftest import central_settings, register_branch, wait_until
from tests.e2e.test_masterdata_snapshot import SKUS
from tests.e2e.test_masterdata_snapshot import _price as md_price
from tests.e2e.test_masterdata_snapshot import _setup as md_setup
from tests.e2e.test_masterdata_snapshot import _synced as md_synced
from tests.e2e.test_skeleton import post_sale, receipts_at_central, sale

TOKEN = "B1-till-1"


async def test_streams_lost_by_the_nats_server_are_created_again(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    await register_branch(central, "B1")
    agent = await make_agent("B1", nats_server.url)
    assert (await post_sale(agent, sale("before"), TOKEN)).status_code == 201

    async def at_central(count: int) -> bool:
        return len(await receipts_at_central(central)) == count

    await wait_until(lambda: at_central(1))
    assert (await health_of(central)).jetstream == "ready"

    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()

    async def recreated() -> bool:
        names = {info.config.name for info in await js.streams_info()}
        return {UP_STREAM, DOWN_STREAM} <= names

    try:
        for stream in (UP_STREAM, DOWN_STREAM):
            await js.delete_stream(stream)
        await wait_until(recreated, timeout=30)
    finally:
        await nc.close()
    assert (await health_of(central)).status == "ok"
    # A sale after the loss reaches central through the new streams and consumers.
    assert (await post_sale(agent, sale("after"), TOKEN)).status_code == 201
    await wait_until(lambda: at_central(2), timeout=30)


async def test_health_is_degraded_while_the_streams_cannot_be_set_up(
    db_url: str, nats_server: EmbeddedNats
) -> None:
    """Three replicas asked of a single server: set-up fails for as long as that lasts."""
    runtime = CentralRuntime(central_settings(db_url, nats_server.url, up_stream_replicas=3))
    await runtime.start(ingest_workers=0)
    try:

        async def failing() -> bool:
            return runtime.jetstream.startswith("error")

        await wait_until(failing, timeout=20)
        health = await health_of(runtime)
        assert (health.status, health.nats) == ("degraded", "connected")
        assert "replicas" in health.jetstream.lower() or "cluster" in health.jetstream.lower()
    finally:
        await runtime.stop()


async def assert_tills_sell_as_central(
    central: Any, sessionmaker: Any, skus: Sequence[str]
) -> set[str]:
    """Each of ``skus`` sells at central's price for B1 in the agent database of
    ``sessionmaker`` (none: not sold); returns the active products of B1's format."""
    now = datetime.now(UTC)
    async with central.sessionmaker() as s:
        branch = await s.get(Branch, "B1")
        assert branch is not None
        listed = set(
            (
                await s.scalars(
                    select(FormatProduct.sku)
                    .join(Product, Product.sku == FormatProduct.sku)
                    .where(FormatProduct.format_code == "mini", Product.active)
                )
            ).all()
        )
        expected = await expected_prices(s, branch, sorted(listed), now)
    async with sessionmaker() as s:
        for sku in skus:
            item = await find_product(s, sku=sku, at=now)
            want = expected[sku].price if sku in listed and sku in expected else None
            assert (item.price if item else None) == want, sku
    return listed


async def _assert_replica_is_centrals(central: Any, agent: Any) -> None:
    skus = sorted(set(SKUS) | {"SKU030"})
    listed = await assert_tills_sell_as_central(central, agent.sessionmaker, skus)
    async with agent.engine.connect() as conn:
        held = {r[0] for r in await conn.exec_driver_sql("SELECT sku FROM md_products")}
        promos = {
            r[0] for r in await conn.exec_driver_sql("SELECT promotion_id FROM md_promotions")
        }
    assert held == listed
    assert promos == {"KEEP"}


async def _all_published(central: Any) -> None:
    async with central.sessionmaker() as s:
        target = await current_version(s)

    async def published() -> bool:
        async with central.sessionmaker() as s:
            return await published_version(s) >= target

    await wait_until(published, timeout=30)


async def restore_store(central: Any, nats_server: EmbeddedNats, copy: Path, *, below: int) -> None:
    """Restart the server on ``copy`` of its JetStream store; wait until central sees its
    down stream again, numbered below ``below``."""
    nats_server.stop()
    shutil.rmtree(nats_server.store_dir / "jetstream")
    shutil.copytree(copy, nats_server.store_dir / "jetstream")
    nats_server.start()

    async def restored() -> bool:
        try:
            info = await central.js.stream_info(DOWN_STREAM)
        except Exception:
            return False
        return bool(info.state.last_seq < below)

    await wait_until(restored, timeout=30)


async def _offline_changes(central: Any, *withdrawn: str) -> None:
    """Changes that reach the stream while the branch is offline, published."""
    await md_price(central, "SKU005", 905)
    async with central.sessionmaker() as s:
        for promotion_id in withdrawn:
            await withdraw_promotion(s, promotion_id)
        await archive_product(s, "SKU029")
        await s.commit()
    await _all_published(central)


async def _converges_after_changes(central: Any, agent: Any) -> None:
    """Changes after the loss (a price, a new product in the branch's assortment)
    reach the branch, which ends with exactly central's master data after one snapshot,
    and a later change reaches its till."""
    await md_price(central, "SKU007", 907)
    async with central.sessionmaker() as s:
        await create_product(s, ProductIn(sku="SKU030", name="Product SKU030", vat_rate_bp=2000))
        await s.commit()
    async with central.sessionmaker() as s:
        await change_format_products(s, "mini", AssortmentChange(add=["SKU030"]))
        await s.commit()
    await md_price(central, "SKU030", 130)
    await md_synced(central, agent)
    await _assert_replica_is_centrals(central, agent)
    assert agent.masterdata.stats.snapshots_completed == 1
    await md_price(central, "SKU000", 777)
    await md_synced(central, agent)
    async with agent.sessionmaker() as s:
        item = await find_product(s, sku="SKU000", at=datetime.now(UTC))
    assert item is not None
    assert item.price == 777


async def test_branch_master_data_converges_after_the_nats_store_is_wiped(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    """The branch missed changes the lost stream held, and others were made while the
    server was down: after the wipe it ends with exactly central's master data, and
    changes made afterwards reach its tills, with no manual step."""
    await md_setup(central)
    agent = await make_agent("B1", nats_server.url, demo_catalog=False)
    await md_synced(central, agent)
    position = agent.masterdata.snapshot.last_stream_seq
    assert position > 0

    # The branch is offline while changes reach the stream; it never gets them there.
    await agent.stop()
    await _offline_changes(central, "GONE")

    # The NATS server loses its JetStream store; changes are made while it is down.
    nats_server.stop()
    shutil.rmtree(nats_server.store_dir / "jetstream")
    await md_price(central, "SKU006", 906)
    async with central.sessionmaker() as s:
        await change_format_products(s, "mini", AssortmentChange(remove=["SKU028"]))
        await s.commit()
    nats_server.start()

    async def recreated() -> bool:
        try:
            await central.js.stream_info(DOWN_STREAM)
            await central.js.consumer_info(DOWN_STREAM, down_consumer_name("B1"))
        except Exception:
            return False
        return True

    await wait_until(recreated, timeout=30)
    again = await make_agent("B1", nats_server.url, demo_catalog=False)
    await _converges_after_changes(central, again)
    # The new stream numbers above everything the branch had seen.
    info = await central.js.stream_info(DOWN_STREAM)
    assert info.state.first_seq > position


async def test_branch_converges_when_the_stream_comes_back_numbered_below_its_position(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    """Central cannot number it above the branch: the NATS store is restored from an
    older copy, its down stream exists again with lower numbers than the branch has
    applied (central sees no stream missing). The branch still ends with exactly
    central's master data, its position follows the stream's numbers again, and later
    changes reach its tills."""
    await md_setup(central)
    await _all_published(central)
    backup = tmp_path / "jetstream-backup"
    nats_server.stop()
    shutil.copytree(nats_server.store_dir / "jetstream", backup)
    nats_server.start()
    old_last = 0

    async def stream_back() -> bool:
        nonlocal old_last
        try:
            old_last = (await central.js.stream_info(DOWN_STREAM)).state.last_seq
        except Exception:
            return False
        return True

    await wait_until(stream_back, timeout=30)
    agent = await make_agent("B1", nats_server.url, demo_catalog=False)
    for i, sku in enumerate(SKUS):
        await md_price(central, sku, 300 + i)
    # Applied at numbers the restored stream will give again (to its snapshot).
    now = datetime.now(UTC)
    async with central.sessionmaker() as s:
        await create_promotion(
            s,
            PromotionIn(
                promotion_id="LATE",
                type="percent",
                percent_bp=1000,
                skus=["SKU012"],
                starts_at=now,
                ends_at=now + timedelta(days=1),
            ),
        )
        await s.commit()
    await md_synced(central, agent)
    position = agent.masterdata.snapshot.last_stream_seq
    assert position > old_last + 40

    # Offline while changes reach the stream; then the store goes back to the copy.
    await agent.stop()
    await _offline_changes(central, "GONE", "LATE")
    await restore_store(central, nats_server, backup, below=position)
    again = await make_agent("B1", nats_server.url, demo_catalog=False)
    await _converges_after_changes(central, again)
    # The position is the stream's own numbers again.
    info = await central.js.stream_info(DOWN_STREAM)
    assert again.masterdata.snapshot.last_stream_seq <= info.state.last_seq
