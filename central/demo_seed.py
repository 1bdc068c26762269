"""``python -m central seed-demo``: head office's part of the ``make run`` demo.

Central gets the demo catalog the demo agents start with (``protocol.demo_catalog``,
the one list both sides read): its categories, its products with their barcodes,
scale PLUs and VAT, the chain's VAT groups (when none are set: A 20 %, B 10 %, as
the demo fiscal printers have them), a store format ``demo`` whose assortment is those products, and
their prices at chain scope. The demo branches are registered in that format
(``branches add --format demo``; a branch registered before without a format is moved
into it here), so the publisher sends each demo agent the whole catalog with its
prices and every later change head office makes.

Everything goes through the head-office services (validated, versioned, published and
audited like a change made through the API), in one transaction. It is idempotent: it
creates only what is missing, and a demo product that already exists is left exactly
as head office has it (its price, name and format membership may have been changed
on purpose since): a second run changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from central.models import Branch, FormatProduct, Product, StoreFormat
from central.services.assortment import AssortmentChange, FormatIn, change_format_products
from central.services.assortment import create_format as create_store_format
from central.services.branches import BranchPatch, update_branch
from central.services.catalog import (
    BarcodeIn,
    CategoryIn,
    ProductIn,
    create_category,
    create_product,
    list_categories,
)
from central.services.pricing import PriceChangeIn, set_price
from central.services.vat_groups import VatGroupsIn, load_vat_groups, set_vat_groups
from protocol.demo_catalog import DEMO_CATEGORIES, DEMO_PRODUCTS

__all__ = ["DEMO_FORMAT", "DEMO_FORMAT_NAME", "DEMO_VAT_GROUPS", "DemoSeedReport", "seed_demo"]

DEMO_FORMAT = "demo"
DEMO_FORMAT_NAME = "Demo store"
# The rates the demo fiscal printers are programmed with, per VAT group.
DEMO_VAT_GROUPS = {"A": 2000, "B": 1000}


class DemoSeedReport(msgspec.Struct, kw_only=True):
    """What one run created (all empty: nothing was missing, nothing changed)."""

    categories: list[str] = msgspec.field(default_factory=list)
    products: list[str] = msgspec.field(default_factory=list)
    format_created: bool = False
    assortment_added: list[str] = msgspec.field(default_factory=list)
    # SKUs given their chain price.
    prices: list[str] = msgspec.field(default_factory=list)
    # Branches moved into the demo format.
    branches: list[str] = msgspec.field(default_factory=list)
    # Branches asked for and not moved, with why: a typo, or a branch in another format,
    # was passed over without a word.
    branches_left: dict[str, str] = msgspec.field(default_factory=dict)
    # The chain's VAT groups set to the demo printers' (none were set).
    vat_groups: dict[str, int] = msgspec.field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(
            self.categories
            or self.products
            or self.format_created
            or self.assortment_added
            or self.prices
            or self.branches
            or self.vat_groups
        )


async def seed_demo(session: AsyncSession, *, branches: Sequence[str] = ()) -> DemoSeedReport:
    """Seed what is missing of the demo catalog; ``branches`` already registered without
    a format are moved into the demo format (those not registered are left to
    ``branches add --format demo``). One transaction: all of it or nothing."""
    report = DemoSeedReport()
    async with session.begin():
        if not await load_vat_groups(session):
            await set_vat_groups(session, VatGroupsIn(groups=DEMO_VAT_GROUPS))
            report.vat_groups = dict(DEMO_VAT_GROUPS)
        known = {c.code for c in await list_categories(session)}
        for code, name in DEMO_CATEGORIES:
            if code not in known:
                await create_category(session, CategoryIn(code=code, name=name))
                report.categories.append(code)
        for p in DEMO_PRODUCTS:
            if await session.get(Product, p.sku) is not None:
                continue
            await create_product(
                session,
                ProductIn(
                    sku=p.sku,
                    name=p.name,
                    unit=p.unit,
                    weighed=p.weighed,
                    scale_plu=p.scale_plu,
                    barcodes=[BarcodeIn(code=p.barcode)],
                    category=p.category,
                    vat_rate_bp=p.vat_rate_bp,
                    vat_group=p.vat_group,
                ),
            )
            report.products.append(p.sku)
        if await session.get(StoreFormat, DEMO_FORMAT) is None:
            await create_store_format(session, FormatIn(code=DEMO_FORMAT, name=DEMO_FORMAT_NAME))
            report.format_created = True
        # The format's assortment: the products made now, or all of them with a new
        # format; a product head office took out of it since stays out.
        listed = set(
            (
                await session.scalars(
                    select(FormatProduct.sku).where(FormatProduct.format_code == DEMO_FORMAT)
                )
            ).all()
        )
        active = set(
            (
                await session.scalars(
                    select(Product.sku).where(
                        Product.sku.in_([p.sku for p in DEMO_PRODUCTS]), Product.active
                    )
                )
            ).all()
        )
        candidates = active if report.format_created else set(report.products)
        report.assortment_added = [
            p.sku for p in DEMO_PRODUCTS if p.sku in candidates and p.sku not in listed
        ]
        if report.assortment_added:
            await change_format_products(
                session, DEMO_FORMAT, AssortmentChange(add=report.assortment_added)
            )
        for p in DEMO_PRODUCTS:
            if p.sku in report.products:
                await set_price(session, PriceChangeIn(sku=p.sku, price=p.price, scope="all"))
                report.prices.append(p.sku)
        for code in branches:
            branch = await session.get(Branch, code)
            if branch is not None and branch.active and branch.format_code is None:
                # A new scope: a snapshot of the branch is queued with the change.
                await update_branch(session, code, BranchPatch(format_code=DEMO_FORMAT))
                report.branches.append(code)
            elif branch is None:
                report.branches_left[code] = (
                    f"not registered: branches add {code} --format {DEMO_FORMAT}"
                )
            elif not branch.active:
                report.branches_left[code] = "revoked"
            elif branch.format_code != DEMO_FORMAT:
                report.branches_left[code] = f"in format {branch.format_code!r}, kept"
    return report
