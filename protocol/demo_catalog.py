"""The demo catalog of ``make run``: one list that central and the demo agents share.

Central seeds its products, categories, demo format and chain prices from it
(``central.demo_seed``); a demo agent seeds its local fallback catalog from it
(``branch_agent.demo_catalog``) so its tills sell the same products at the same
prices before central's master data has arrived and after it has replaced the seed.
Pure data, no I/O: here because neither app may import the other.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["DEMO_CATEGORIES", "DEMO_PRODUCTS", "DemoProduct"]


class DemoProduct(NamedTuple):
    sku: str
    name: str
    unit: str
    weighed: bool
    vat_rate_bp: int
    # VAT group letter of the fiscal printer (A..H) for this rate.
    vat_group: str
    # Minor units (cents) per unit.
    price: int
    # A valid EAN-13; the weighed goods' is their label code with weight 0.
    barcode: str
    category: str

    @property
    def scale_plu(self) -> int | None:
        """Label scales print weight-embedded codes 2 0 PPPPP WWWWW C with this PLU."""
        return int(self.barcode[2:7]) if self.weighed else None


# code, name (every product's category is one of these)
DEMO_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("dairy", "Dairy"),
    ("bakery", "Bakery"),
    ("produce", "Fruit and vegetables"),
    ("drinks", "Drinks"),
)

DEMO_PRODUCTS: tuple[DemoProduct, ...] = (
    DemoProduct("MILK-1L", "Milk 1L", "pcs", False, 1000, "B", 119, "4006381333931", "dairy"),
    DemoProduct(
        "BREAD-500", "Rye bread 500g", "pcs", False, 1000, "B", 249, "4001686301265", "bakery"
    ),
    DemoProduct("APPLE-KG", "Apples", "kg", True, 1000, "B", 299, "2000101000006", "produce"),
    DemoProduct(
        "COFFEE-250", "Coffee beans 250g", "pcs", False, 2000, "A", 699, "8711000530085", "drinks"
    ),
    DemoProduct(
        "WATER-15", "Mineral water 1.5L", "pcs", False, 2000, "A", 89, "5449000000996", "drinks"
    ),
    DemoProduct("CHEESE-KG", "Gouda cheese", "kg", True, 1000, "B", 1290, "2000202000004", "dairy"),
)
