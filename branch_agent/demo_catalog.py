"""A small demo catalog for ``make run`` on an empty agent (replaced by central's catalog).

The products are ``protocol.demo_catalog.DEMO_PRODUCTS``, the list central seeds its
own catalog and chain prices from in ``make run``: once central's master data has
arrived the tills look products up there instead (``branch_agent.catalog``), and
they find the same SKUs, barcodes, scale PLUs and prices.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from branch_agent.models import Product, ProductBarcode
from protocol.demo_catalog import DEMO_PRODUCTS

__all__ = ["DEMO_PRODUCTS", "seed_demo_catalog"]


async def seed_demo_catalog(session: AsyncSession) -> int:
    if await session.scalar(select(func.count()).select_from(Product)):
        return 0
    for p in DEMO_PRODUCTS:
        session.add(
            Product(
                sku=p.sku,
                name=p.name,
                unit=p.unit,
                weighed=p.weighed,
                scale_plu=p.scale_plu,
                vat_rate_bp=p.vat_rate_bp,
                vat_group=p.vat_group,
                price=p.price,
                category=p.category,
                active=True,
            )
        )
        session.add(ProductBarcode(barcode=p.barcode, sku=p.sku))
    return len(DEMO_PRODUCTS)
