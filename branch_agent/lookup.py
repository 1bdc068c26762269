"""Scanned codes to products: plain barcodes and weight-embedded label-scale codes.

A weight-embedded EAN-13 (prefix 20..29, layout configured per chain) carries the
product's scale PLU and the weight. The catalog lists such a product under its code
with the weight digits and the check digit zeroed ("2000101000000"), so the lookup
stays one indexed barcode query; the scale PLU is the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from sqlalchemy.ext.asyncio import AsyncSession

from branch_agent.catalog import CatalogItem, find_product, sku_for_scale_plu
from devices.errors import DeviceError
from devices.scanner import WeightLayout, decode_weight_embedded, validate_ean

__all__ = [
    "BadCode",
    "ScannedItem",
    "check_digit_wrong",
    "normalized_embedded_code",
    "resolve_code",
    "weight_layout",
]


class BadCode(ValueError):
    """A code that cannot be taken as data (bad check digit)."""


def check_digit_wrong(code: str) -> str:
    """The refusal of an EAN-13, EAN-8 or UPC-A code whose check digit is wrong."""
    return f"barcode {code!r}: check digit wrong: rescan"


@dataclass(frozen=True, slots=True)
class ScannedItem:
    item: CatalogItem
    # Grams (thousandths of a kg) carried by a weight-embedded code, else None.
    embedded_milli: int | None = None


@lru_cache(maxsize=8)
def weight_layout(pattern: str) -> WeightLayout:
    return WeightLayout(pattern)


def normalized_embedded_code(code: str, layout: WeightLayout) -> str:
    """The code with its weight/price digits and check digit set to 0."""
    return "".join("0" if p in "WVC" else c for p, c in zip(layout.pattern, code, strict=True))


async def resolve_code(
    session: AsyncSession, code: str, *, layout: WeightLayout, at: datetime
) -> ScannedItem | None:
    item = await find_product(session, barcode=code, at=at)
    if item is not None:
        # (a numeric code head office declared internal is sold as it is listed)
        return ScannedItem(item)
    if code.isascii() and code.isdigit() and len(code) in (8, 12, 13) and not validate_ean(code):
        # A misread, not a product the store lacks: the cashier scans it again.
        raise BadCode(check_digit_wrong(code))
    try:
        embedded = decode_weight_embedded(code, layout)
    except DeviceError as exc:
        raise BadCode(check_digit_wrong(code)) from exc
    if embedded is None or embedded.grams is None:
        return None
    item = await find_product(session, barcode=normalized_embedded_code(code, layout), at=at)
    if item is None:
        sku = await sku_for_scale_plu(session, int(embedded.plu))
        if sku is not None:
            item = await find_product(session, sku=sku, at=at)
    if item is None or not item.weighed:
        return None
    return ScannedItem(item, embedded.grams)
