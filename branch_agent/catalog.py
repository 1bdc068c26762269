"""The agent's view of its catalog: what a till may sell and at which price now.

Sales pricing and the till's product lookup go through these functions only, so
the way master data is stored and resolved can change behind them.
"""

from __future__ import annotations

from datetime import datetime

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from branch_agent.models import Product, ProductBarcode

__all__ = [
    "BasketLine",
    "CatalogItem",
    "LineDiscount",
    "find_product",
    "promotion_discounts",
    "search_products",
]


class CatalogItem(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    name: str
    unit: str
    weighed: bool
    scale_plu: int | None
    vat_rate_bp: int
    vat_group: str
    category: str | None
    # The effective price at the moment asked for, in minor units per unit.
    price: int
    # The master-data version this price came from (0: local demo data).
    price_version: int = 0


def _item(product: Product) -> CatalogItem:
    return CatalogItem(
        sku=product.sku,
        name=product.name,
        unit=product.unit,
        weighed=product.weighed,
        scale_plu=product.scale_plu,
        vat_rate_bp=product.vat_rate_bp,
        vat_group=product.vat_group,
        category=product.category,
        price=product.price,
    )


async def find_product(
    session: AsyncSession, *, sku: str | None = None, barcode: str | None = None, at: datetime
) -> CatalogItem | None:
    """The sellable product with this SKU or barcode, priced at ``at``; None if not sold here."""
    if barcode:
        sku = await session.scalar(
            select(ProductBarcode.sku).where(ProductBarcode.barcode == barcode)
        )
    if not sku:
        return None
    product = await session.get(Product, sku)
    if product is None or not product.active:
        return None
    return _item(product)


async def search_products(
    session: AsyncSession, text: str, *, at: datetime, limit: int = 20
) -> list[CatalogItem]:
    pattern = f"%{text}%"
    rows = await session.scalars(
        select(Product)
        .where(Product.active, (Product.name.ilike(pattern)) | (Product.sku.ilike(pattern)))
        .order_by(Product.name)
        .limit(limit)
    )
    return [_item(p) for p in rows]


class BasketLine(msgspec.Struct, frozen=True, kw_only=True):
    """A priced line before promotions, as the sale service sees it."""

    sku: str
    category: str | None
    quantity_milli: int
    unit_price: int
    gross: int


class LineDiscount(msgspec.Struct, frozen=True, kw_only=True):
    amount: int = 0
    promotion_id: str | None = None


async def promotion_discounts(
    session: AsyncSession, lines: list[BasketLine], *, at: datetime
) -> list[LineDiscount]:
    """Discount per line from the promotions in force at ``at`` (one entry per line).

    The master-data part of the agent replaces the body with the promotions it has
    applied from central, evaluated by the rules shared with central in ``protocol``.
    """
    return [LineDiscount() for _ in lines]
