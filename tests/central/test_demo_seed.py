"""``central.demo_seed``: it creates only what is missing, leaves what head office has
changed since alone, and takes nothing when any of it is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from central.db import create_engine, create_sessionmaker
from central.demo_seed import DEMO_FORMAT, seed_demo
from central.errors import ConflictError
from central.models import Branch, Category, FormatProduct, PriceEntryRow, Product, StoreFormat
from central.services.assortment import AssortmentChange, change_format_products
from central.services.branches import add_branch
from central.services.catalog import BarcodeIn, ProductIn, ProductPatch, create_product
from central.services.catalog import update_product as patch_product
from central.services.pricing import PriceChangeIn, set_price
from protocol.demo_catalog import DEMO_PRODUCTS


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


def _session(engine: AsyncEngine) -> AsyncSession:
    return create_sessionmaker(engine)()


async def _chain_price(engine: AsyncEngine, sku: str) -> int:
    async with _session(engine) as s:
        price = await s.scalar(
            select(PriceEntryRow.price)
            .where(PriceEntryRow.sku == sku, PriceEntryRow.scope == "all")
            .order_by(PriceEntryRow.version.desc())
            .limit(1)
        )
    assert price is not None
    return price


async def test_a_second_run_keeps_head_office_changes(db: AsyncEngine) -> None:
    async with _session(db) as s, s.begin():
        await add_branch(s, code="B001", name="Downtown")
    async with _session(db) as s:
        first = await seed_demo(s, branches=["B001", "B002"])
    assert first.changed
    assert first.branches == ["B001"]  # B002 is not registered: left to `branches add`
    assert first.branches_left == {"B002": "not registered: branches add B002 --format demo"}
    # Head office renames a product, takes one out of the format, changes a price.
    async with _session(db) as s:
        await patch_product(s, "MILK-1L", ProductPatch(name="Whole milk 1L"))
    async with _session(db) as s:
        await change_format_products(s, DEMO_FORMAT, AssortmentChange(remove=["BREAD-500"]))
    async with _session(db) as s:
        await set_price(s, PriceChangeIn(sku="COFFEE-250", price=749))

    async with _session(db) as s:
        again = await seed_demo(s, branches=["B001", "B002"])
    assert not again.changed
    assert again.branches == []
    assert list(again.branches_left) == ["B002"]  # B001 is in format demo already
    async with _session(db) as s:
        milk = await s.get(Product, "MILK-1L")
        assert milk is not None
        assert milk.name == "Whole milk 1L"
        listed = set(
            (
                await s.scalars(
                    select(FormatProduct.sku).where(FormatProduct.format_code == DEMO_FORMAT)
                )
            ).all()
        )
        branch = await s.get(Branch, "B001")
        assert branch is not None
        assert branch.format_code == DEMO_FORMAT
    assert listed == {p.sku for p in DEMO_PRODUCTS} - {"BREAD-500"}
    assert await _chain_price(db, "COFFEE-250") == 749
    assert await _chain_price(db, "WATER-15") == 89


async def test_a_refused_product_leaves_nothing_behind(db: AsyncEngine) -> None:
    # Head office already sells another product under the demo milk's barcode.
    async with _session(db) as s:
        await create_product(
            s,
            ProductIn(
                sku="OAT-1L",
                name="Oat drink",
                barcodes=[BarcodeIn(code="4006381333931")],
                vat_rate_bp=1000,
                # The demo printers' 10 % group (the seed sets the chain's groups).
                vat_group="B",
            ),
        )
    async with _session(db) as s:
        with pytest.raises(ConflictError) as refused:
            await seed_demo(s)
    assert refused.value.field == "barcodes[0].code"
    async with _session(db) as s:
        assert await s.scalar(select(func.count()).select_from(Product)) == 1
        assert await s.scalar(select(func.count()).select_from(Category)) == 0
        assert await s.get(StoreFormat, DEMO_FORMAT) is None
