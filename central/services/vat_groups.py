"""The chain's VAT groups: which rate each fiscal-printer tax group carries.

A sale line is fiscalized under its product's VAT group (the printer's tax code 1..8
for A..H) at the rate programmed into the printer for that group, while the receipt
and central's books use the product's ``vat_rate_bp``: a product whose group does not
carry its rate makes the fiscal record and the books disagree. With the groups set,
a product must name a group of its rate (or none: it is derived from the rate).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from central.errors import ValidationFailed
from central.models import Product, VatGroup
from central.services.audit import record_change

__all__ = [
    "VAT_GROUPS",
    "VatGroupsIn",
    "VatGroupsOut",
    "get_vat_groups",
    "load_vat_groups",
    "resolve_vat_group",
    "set_vat_groups",
]

# The fiscal printers' tax groups (tax codes 1..8).
VAT_GROUPS = "ABCDEFGH"
VatRateBp = Annotated[int, msgspec.Meta(ge=0, le=10000)]


class VatGroupsIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Group letter (A..H) -> rate in basis points (2000 = 20 %); {}: not checked.
    groups: dict[str, VatRateBp]


class VatGroupsOut(msgspec.Struct, kw_only=True):
    groups: dict[str, int]


async def load_vat_groups(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(select(VatGroup.code, VatGroup.rate_bp).order_by(VatGroup.code))
    return {code: rate for code, rate in rows}


async def get_vat_groups(session: AsyncSession) -> VatGroupsOut:
    return VatGroupsOut(groups=await load_vat_groups(session))


def resolve_vat_group(groups: Mapping[str, int], rate_bp: int, group: str | None) -> str:
    """The product's VAT group: ``group`` checked against the chain's groups, or, when
    not given, the first group (A..H) carrying ``rate_bp``. No groups set: ``group``,
    or "A" as before (nothing to check against)."""
    if group is not None and (len(group) != 1 or group not in VAT_GROUPS):
        raise ValidationFailed("VAT group is one letter A..H", field="vat_group")
    if not groups:
        return group or "A"
    if group is None:
        for code in sorted(groups):
            if groups[code] == rate_bp:
                return code
        raise ValidationFailed(
            f"no VAT group carries {rate_bp} bp (the chain's groups: {_listed(groups)}): "
            "give the product one of these rates, or add the group",
            field="vat_rate_bp",
        )
    if group not in groups:
        raise ValidationFailed(
            f"VAT group {group} is not one of the chain's groups ({_listed(groups)})",
            field="vat_group",
        )
    if groups[group] != rate_bp:
        raise ValidationFailed(
            f"VAT group {group} carries {groups[group]} bp at the fiscal printers, not "
            f"{rate_bp} bp: the printer would fiscalize the product at another VAT than the "
            "receipt and the books (leave vat_group out to derive it from the rate)",
            field="vat_group",
        )
    return group


def _listed(groups: Mapping[str, int]) -> str:
    return ", ".join(f"{code}={rate}" for code, rate in sorted(groups.items())) or "none"


async def set_vat_groups(session: AsyncSession, data: VatGroupsIn) -> VatGroupsOut:
    """Replace the chain's VAT groups. Refused, changing nothing, when an active
    product would then sit in a group that does not carry its rate: move those first."""
    for code in data.groups:
        if len(code) != 1 or code not in VAT_GROUPS:
            raise ValidationFailed("VAT group is one letter A..H", field=f"groups.{code}")
    from central.services.catalog import unit_of_work  # imports this

    async with unit_of_work(session):
        before = await get_vat_groups(session)
        if data.groups:
            rows = await session.execute(
                select(Product.sku, Product.vat_group, Product.vat_rate_bp)
                .where(Product.active)
                .order_by(Product.sku)
            )
            for sku, group, rate in rows:
                if data.groups.get(group) != rate:
                    raise ValidationFailed(
                        f"product {sku} is in VAT group {group} at {rate} bp: the groups "
                        "must carry the rates of the products in them (change the "
                        "product's vat_rate_bp or vat_group first)",
                        field=f"groups.{group}",
                    )
        await session.execute(delete(VatGroup))
        now = datetime.now(UTC)
        session.add_all(
            VatGroup(code=code, rate_bp=rate, updated_at=now)
            for code, rate in sorted(data.groups.items())
        )
        await session.flush()
        after = VatGroupsOut(groups=dict(sorted(data.groups.items())))
        await record_change(
            session, action="vat_groups.set", target="vat_groups", before=before, after=after
        )
        return after
