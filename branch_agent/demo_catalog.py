"""A small demo catalog for ``make run`` on an empty agent (replaced by central's catalog)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from branch_agent.models import Product, ProductBarcode

__all__ = ["DEMO_PRODUCTS", "seed_demo_catalog"]

# sku, name, unit, weighed, vat bp, vat group, price, barcode (every one a valid EAN-13:
# the weighed goods' are their label code with weight 0; labels are found by scale PLU)
DEMO_PRODUCTS: tuple[tuple[str, str, str, bool, int, str, int, str], ...] = (
    ("MILK-1L", "Milk 1L", "pcs", False, 1000, "B", 119, "4006381333931"),
    ("BREAD-500", "Rye bread 500g", "pcs", False, 1000, "B", 249, "4001686301265"),
    ("APPLE-KG", "Apples", "kg", True, 1000, "B", 299, "2000101000006"),
    ("COFFEE-250", "Coffee beans 250g", "pcs", False, 2000, "A", 699, "8711000530085"),
    ("WATER-15", "Mineral water 1.5L", "pcs", False, 2000, "A", 89, "5449000000996"),
    ("CHEESE-KG", "Gouda cheese", "kg", True, 1000, "B", 1290, "2000202000004"),
)


async def seed_demo_catalog(session: AsyncSession) -> int:
    if await session.scalar(select(func.count()).select_from(Product)):
        return 0
    for sku, name, unit, weighed, vat, group, price, barcode in DEMO_PRODUCTS:
        session.add(
            Product(
                sku=sku,
                name=name,
                unit=unit,
                weighed=weighed,
                # Label scales print weight-embedded codes 2 0 PPPPP WWWWW C with this PLU.
                scale_plu=int(barcode[2:7]) if weighed else None,
                vat_rate_bp=vat,
                vat_group=group,
                price=price,
                active=True,
            )
        )
        session.add(ProductBarcode(barcode=barcode, sku=sku))
    return len(DEMO_PRODUCTS)
