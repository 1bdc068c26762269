"""Master data from head office to the branch agents, through a real nats-server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError
from sqlalchemy import select

from branch_agent.catalog import BasketLine, find_product, promotion_discounts
from central.embedded_nats import EmbeddedNats
from central.models import Branch, BranchStatus, Product
from central.services.assortment import (
    AssortmentChange,
    AssortmentExceptionIn,
    FormatIn,
    change_format_products,
    create_format,
    set_exception,
)
from central.services.catalog import ProductIn, archive_product, create_product
from central.services.masterdata_publisher import published_version
from central.services.pricing import PriceChangeIn, expected_prices, set_price, set_prices_bulk
from central.services.promotions import PromotionIn, create_promotion, withdraw_promotion
from central.sync.jetstream import connect
from protocol.masterdata import (
    PriceBucket,
    ProductBucket,
    PromotionRecord,
    decode_masterdata,
)
from protocol.subjects import DOWN_STREAM, down_consumer_name
from tests.conftest import register_branch, wait_until


async def _catalog(central: Any, skus: list[str], fmt: str = "mini") -> None:
    async with central.sessionmaker() as s:
        await create_format(s, FormatIn(code=fmt, name=fmt))
        await s.commit()
    for sku in skus:
        async with central.sessionmaker() as s:
            await create_product(s, ProductIn(sku=sku, name=f"Product {sku}", vat_rate_bp=2000))
            await s.commit()
    async with central.sessionmaker() as s:
        await change_format_products(s, fmt, AssortmentChange(add=skus))
        await s.commit()


async def _price(central: Any, sku: str, price: int, **kw: Any) -> None:
    async with central.sessionmaker() as s:
        await set_price(s, PriceChangeIn(sku=sku, price=price, **kw))
        await s.commit()


async def _till_price(agent: Any, sku: str, at: datetime | None = None) -> int | None:
    async with agent.sessionmaker() as s:
        item = await find_product(s, sku=sku, at=at or datetime.now(UTC))
    return item.price if item else None


async def _published(central: Any) -> int:
    async with central.sessionmaker() as s:
        return await published_version(s)


async def test_price_change_reaches_two_agents_at_its_moment(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    await _catalog(central, ["MILK", "BREAD"])
    await register_branch(central, "B1", format_code="mini", timezone="Europe/Berlin")
    await register_branch(central, "B2", format_code="mini", timezone="America/New_York")
    await _price(central, "MILK", 100)
    agents = [
        await make_agent(code, nats_server.url, demo_catalog=False, timezone=tz)
        for code, tz in (("B1", "Europe/Berlin"), ("B2", "America/New_York"))
    ]

    async def all_at(price: int, at: datetime | None = None) -> bool:
        return all([await _till_price(a, "MILK", at) == price for a in agents])

    await wait_until(lambda: all_at(100), timeout=30)
    # BREAD is listed but has no price: not sellable.
    assert await _till_price(agents[0], "BREAD") is None

    moment = datetime.now(UTC) + timedelta(seconds=3)
    await _price(central, "MILK", 150, effective_at=moment)
    # Both agents hold the scheduled price ahead of its moment...
    await wait_until(lambda: all_at(150, moment + timedelta(milliseconds=1)), timeout=30)
    # ...keep selling at the old price before it...
    if datetime.now(UTC) < moment - timedelta(milliseconds=200):
        assert await all_at(100)
    assert await all_at(100, moment - timedelta(milliseconds=1))
    # ...and at the new one after it, without any further message.
    await asyncio.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()) + 0.05)
    assert await all_at(150)

    # Each branch reports the version it applied; central sees them up to date.
    target = await _published(central)

    async def reported() -> bool:
        async with central.sessionmaker() as s:
            rows = (await s.scalars(select(BranchStatus))).all()
        return len(rows) == 2 and all(r.applied_version >= target for r in rows)

    await wait_until(reported, timeout=30)


async def test_offline_agent_catches_up_to_central_exactly(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    skus = [f"SKU{i:03d}" for i in range(40)]
    await _catalog(central, skus)
    await register_branch(central, "B1", format_code="mini")
    for i, sku in enumerate(skus):
        await _price(central, sku, 100 + i)
    agent = await make_agent("B1", nats_server.url, demo_catalog=False)
    first = await _published(central)
    await wait_until(lambda: _applied(agent, first), timeout=30)
    await agent.stop()

    # 1,000 changes while the branch is offline: prices, archivals, promotions.
    changes = 0
    for round_ in range(24):
        # One change record (and version) per product, 40 per transaction.
        async with central.sessionmaker() as s:
            changes += await set_prices_bulk(
                s, [(sku, 200 + round_ * 50 + i) for i, sku in enumerate(skus)]
            )
            await s.commit()
    async with central.sessionmaker() as s:
        await archive_product(s, "SKU000")
        await archive_product(s, "SKU001")
        await s.commit()
    now = datetime.now(UTC)
    async with central.sessionmaker() as s:
        await create_promotion(
            s,
            PromotionIn(
                promotion_id="P1",
                type="n_for_m",
                n=3,
                m=2,
                skus=["SKU010"],
                starts_at=now,
                ends_at=now + timedelta(days=1),
            ),
        )
        await create_promotion(
            s,
            PromotionIn(
                promotion_id="P2",
                type="percent",
                percent_bp=5000,
                skus=["SKU011"],
                starts_at=now,
                ends_at=now + timedelta(days=1),
            ),
        )
        await s.commit()
    async with central.sessionmaker() as s:
        await withdraw_promotion(s, "P2")
        await s.commit()
    changes += 5
    while changes < 1000:
        await _price(central, "SKU020", 999 + changes)
        changes += 1
    target = await _published(central)
    await wait_until(lambda: _published_is(central, target), timeout=30)

    agent = await make_agent("B1", nats_server.url, demo_catalog=False)
    await wait_until(lambda: _applied(agent, target), timeout=60)

    async with central.sessionmaker() as s:
        branch = await s.get(Branch, "B1")
        assert branch is not None
        expected = await expected_prices(s, branch, skus, datetime.now(UTC))
        active = set((await s.scalars(select(Product.sku).where(Product.active))).all())
    for sku in skus:
        want = expected[sku].price if sku in active else None
        assert await _till_price(agent, sku) == want, sku
    async with agent.sessionmaker() as s:
        lines = [
            BasketLine(sku=sku, category=None, quantity_milli=3000, unit_price=10, gross=30)
            for sku in ("SKU010", "SKU011")
        ]
        discounts = await promotion_discounts(s, lines, at=datetime.now(UTC))
    assert [(d.amount, d.promotion_id) for d in discounts] == [(10, "P1"), (0, None)]


async def _applied(agent: Any, version: int) -> bool:
    return bool(agent.masterdata.applied_version >= version)


async def _published_is(central: Any, version: int) -> bool:
    return await _published(central) >= version


async def _drain(js: Any, branch: str) -> list[tuple[str, Any]]:
    sub = await js.pull_subscribe_bind(down_consumer_name(branch), stream=DOWN_STREAM)
    out: list[tuple[str, Any]] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(500, timeout=1.0)
            except (NatsTimeoutError, TimeoutError):
                return out
            for m in msgs:
                out.append((m.subject, decode_masterdata(m.data)))
                await m.ack()
    finally:
        await sub.unsubscribe()


async def test_a_branch_never_receives_products_outside_its_assortment(
    central: Any, nats_server: EmbeddedNats
) -> None:
    # B1, B2: minimarkets; B3: a hypermarket. B2 excludes MINI-2, B3 adds MINI-3.
    await _catalog(central, ["MINI-1", "MINI-2", "MINI-3"], fmt="mini")
    await _catalog(central, ["HYPER-1"], fmt="hyper")
    await register_branch(central, "B1", format_code="mini")
    await register_branch(central, "B2", format_code="mini")
    await register_branch(central, "B3", format_code="hyper")
    async with central.sessionmaker() as s:
        await set_exception(s, "B2", AssortmentExceptionIn(sku="MINI-2", include=False))
        await set_exception(s, "B3", AssortmentExceptionIn(sku="MINI-3", include=True))
        await s.commit()
    for sku in ("MINI-1", "MINI-2", "MINI-3", "HYPER-1"):
        await _price(central, sku, 100)
    target = await _published(central)
    await wait_until(lambda: _published_is(central, target), timeout=30)

    async def consumers_exist() -> bool:
        try:
            for b in ("B1", "B2", "B3"):
                await central.js.consumer_info(DOWN_STREAM, down_consumer_name(b))
        except Exception:
            return False
        return True

    await wait_until(consumers_exist, timeout=30)
    nc = await connect(nats_server.url, name="probe")
    try:
        js = nc.jetstream()
        received: dict[str, set[str]] = {}
        for branch in ("B1", "B2", "B3"):
            messages = await _drain(js, branch)
            assert messages, branch
            received[branch] = {
                p.sku for _, m in messages if isinstance(m, ProductBucket) for p in m.products
            }
            # Every message on the branch's consumer is of its own scopes.
            for subject, m in messages:
                assert subject.split(".")[1] in ("all", "format", "branch"), subject
                if isinstance(m, PriceBucket | PromotionRecord):
                    continue
    finally:
        await nc.close()
    assert received["B1"] == {"MINI-1", "MINI-2", "MINI-3"}
    assert received["B2"] == {"MINI-1", "MINI-3"}
    assert received["B3"] == {"HYPER-1", "MINI-3"}
