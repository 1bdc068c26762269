"""Shelf labels to print at a branch after prices change: printable HTML.

One label per product of the branch's assortment whose price for that branch
changes in the window (by default: changed during the last day, or changing
within the next day, so the night shift can print tomorrow's labels). Each label
shows the name, the price that applies from the change, the unit price, the
promotion in force then (the till's price under it and its end), and the barcode as
an SVG (EAN-13 and EAN-8 drawn here; other codes as text).
"""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from central.errors import NotFoundError, ValidationFailed, check_aware
from central.models import Branch, PriceEntryRow, Product, ProductBarcode, Promotion
from central.services.assortment import branch_assortment
from central.services.masterdata_publisher import category_paths, promotion_record
from central.services.pricing import expected_prices_each
from protocol.masterdata import PromotionRecord
from protocol.pricing import branch_scopes, entry_moment
from protocol.promotions import PromoLine, evaluate_promotions
from protocol.units import format_minor

__all__ = ["ean_svg", "price_tag_items", "render_price_tags"]

_L = (
    "0001101",
    "0011001",
    "0010011",
    "0111101",
    "0100011",
    "0110001",
    "0101111",
    "0111011",
    "0110111",
    "0001011",
)
_G = tuple("".join("1" if b == "0" else "0" for b in code)[::-1] for code in _L)
_R = tuple("".join("1" if b == "0" else "0" for b in code) for code in _L)
_PARITY = (
    "LLLLLL",
    "LLGLGG",
    "LLGGLG",
    "LLGGGL",
    "LGLLGG",
    "LGGLLG",
    "LGGGLL",
    "LGLGLG",
    "LGLGGL",
    "LGGLGL",
)


def _ean_bits(code: str) -> str | None:
    if not code.isdigit():
        return None
    if len(code) == 13:
        parity = _PARITY[int(code[0])]
        left = "".join(
            (_L if p == "L" else _G)[int(d)] for p, d in zip(parity, code[1:7], strict=True)
        )
        right = "".join(_R[int(d)] for d in code[7:])
        return "101" + left + "01010" + right + "101"
    if len(code) == 8:
        left = "".join(_L[int(d)] for d in code[:4])
        right = "".join(_R[int(d)] for d in code[4:])
        return "101" + left + "01010" + right + "101"
    return None


def ean_svg(code: str, *, module: float = 1.5, height: float = 40.0) -> str:
    """An EAN-13/EAN-8 barcode as inline SVG with the digits under it; other codes as text."""
    bits = _ean_bits(code)
    if bits is None:
        return f'<div class="code">{html.escape(code)}</div>'
    quiet = 9 * module
    width = quiet * 2 + len(bits) * module
    bars = []
    x = quiet
    for bit in bits:
        if bit == "1":
            bars.append(f'<rect x="{x:.2f}" y="0" width="{module:.2f}" height="{height:.0f}"/>')
        x += module
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height + 12:.0f}" '
        f'viewBox="0 0 {width:.2f} {height + 12:.0f}" role="img" aria-label="{code}">'
        + "".join(bars)
        + f'<text x="{width / 2:.1f}" y="{height + 11:.0f}" font-size="10" '
        f'text-anchor="middle" font-family="monospace">{code}</text></svg>'
    )


async def price_tag_items(
    session: AsyncSession,
    branch_code: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, object]]:
    branch = await session.get(Branch, branch_code)
    if branch is None:
        raise NotFoundError(f"no branch {branch_code}", field="branch")
    now = datetime.now(UTC)
    since = since or now - timedelta(days=1)
    until = until or now + timedelta(days=1)
    check_aware(since, "since")
    check_aware(until, "until")
    if since > until:
        raise ValidationFailed(f"since {since} is after until {until}", field="since")
    zone = ZoneInfo(branch.timezone)
    scopes = {
        (s, sid or "")
        for s, sid in branch_scopes(branch.code, branch.format_code, branch.price_zone)
    }
    sold = set(await branch_assortment(session, branch_code))
    rows = await session.execute(
        select(
            PriceEntryRow.sku,
            PriceEntryRow.scope,
            PriceEntryRow.scope_id,
            PriceEntryRow.effective_at,
            PriceEntryRow.effective_local,
        ).where(
            PriceEntryRow.withdrawn.is_(False),
            # Local-time entries differ by up to a day between zones: filtered exactly below.
            PriceEntryRow.effective_at >= since - timedelta(days=1),
            PriceEntryRow.effective_at <= until,
        )
    )
    changed: dict[str, datetime] = {}
    for sku, scope, scope_id, effective_at, local in rows:
        if (scope, scope_id) not in scopes or sku not in sold:
            continue
        moment = entry_moment(effective_at, local, branch.timezone)
        if since <= moment <= until:
            changed[sku] = max(changed.get(sku, moment), moment)
    moments = {sku: max(moment, now) for sku, moment in changed.items()}
    prices = await expected_prices_each(session, branch, moments)
    # Products and barcodes read per 2,000 too: a new price list changes every tag.
    skus = sorted(prices)
    products: dict[str, Product] = {}
    barcodes: dict[str, str] = {}
    for start in range(0, len(skus), 2000):
        chunk = skus[start : start + 2000]
        products.update(
            (p.sku, p) for p in await session.scalars(select(Product).where(Product.sku.in_(chunk)))
        )
        # The first EAN-13 by code, else the first barcode of any kind.
        for sku, barcode, _ in sorted(
            await session.execute(
                select(ProductBarcode.sku, ProductBarcode.barcode, ProductBarcode.kind).where(
                    ProductBarcode.sku.in_(chunk)
                )
            ),
            key=lambda row: (row[0], row[2] != "ean13", row[1]),
        ):
            barcodes.setdefault(sku, barcode)
    promotions = await _branch_promotions(session, branch_code, min(moments.values(), default=now))
    paths = await category_paths(session) if promotions else {}
    items: list[dict[str, object]] = []
    for sku in skus:
        product = products.get(sku)
        if product is None or not product.active:
            continue
        # The moment the price on the tag took effect at this branch (a price already
        # in force: when it started, not when the tag is printed).
        at = prices[sku].effective_at
        items.append(
            {
                "sku": sku,
                "name": product.name,
                "price": prices[sku].price,
                "unit": product.unit,
                # The shelf shows the branch's wall clock (with its zone), not UTC.
                "valid_from": at.astimezone(zone),
                "barcode": barcodes.get(sku),
                **_promotion_on_tag(
                    promotions,
                    sku,
                    prices[sku].price,
                    paths.get(product.category_code or "", ()),
                    moments[sku],
                    zone,
                ),
            }
        )
    return items


async def _branch_promotions(
    session: AsyncSession, branch_code: str, since: datetime
) -> list[PromotionRecord]:
    """The branch's promotions (its own and the chain's) not over by ``since``."""
    rows = await session.scalars(
        select(Promotion).where(Promotion.active, Promotion.ends_at > since)
    )
    return [promotion_record(p) for p in rows if not p.branches or branch_code in p.branches]


def _promotion_on_tag(
    promotions: list[PromotionRecord],
    sku: str,
    price: int,
    category_path: tuple[str, ...],
    at: datetime,
    zone: ZoneInfo,
) -> dict[str, object]:
    """The till's price of one unit (a piece, a kg or a litre) under the promotion in
    force at ``at`` (the tills' own rules, ``protocol.promotions``), and its end."""
    line = PromoLine(sku, 1000, price, price, category_path)
    (result,) = evaluate_promotions(promotions, [line], at)
    if not result.amount:
        return {"promo_price": None, "promo_until": None}
    (promo,) = [p for p in promotions if p.promotion_id == result.promotion_id]
    assert promo.ends_at is not None
    return {"promo_price": price - result.amount, "promo_until": promo.ends_at.astimezone(zone)}


_CSS = """
body{font-family:sans-serif;margin:8mm}
.tags{display:flex;flex-wrap:wrap;gap:4mm}
.tag{border:1px solid #000;width:62mm;height:38mm;padding:2mm;box-sizing:border-box;
     page-break-inside:avoid;display:flex;flex-direction:column;justify-content:space-between}
.name{font-size:11pt;font-weight:bold;overflow:hidden;max-height:10mm}
.price{font-size:22pt;font-weight:bold;text-align:right}
.unit{font-size:8pt}
.code{font-family:monospace;font-size:9pt}
.promo{font-size:11pt;font-weight:bold;color:#b00}
@media print{body{margin:0}}
"""

_UNIT_LABEL = {"kg": "per kg", "g": "per g", "l": "per litre", "ml": "per ml", "m": "per metre"}


def _promotion_html(item: dict[str, object]) -> str:
    promo_price, until = item["promo_price"], item["promo_until"]
    if promo_price is None:
        return ""
    assert isinstance(until, datetime)
    return (
        f'<div class="promo">promotion: {format_minor(int(str(promo_price)))}'
        f" until {until:%Y-%m-%d %H:%M %Z}</div>"
    )


async def render_price_tags(
    session: AsyncSession,
    branch_code: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> str:
    items = await price_tag_items(session, branch_code, since, until)
    tags = []
    for item in items:
        price = format_minor(int(str(item["price"])))
        unit = str(item["unit"])
        unit_text = f"{price} {_UNIT_LABEL[unit]}" if unit in _UNIT_LABEL else f"{price} per piece"
        valid_from = item["valid_from"]
        assert isinstance(valid_from, datetime)
        tags.append(
            '<div class="tag">'
            f'<div class="name">{html.escape(str(item["name"]))}</div>'
            f'<div class="price">{price}</div>'
            f'<div class="unit">unit price: {html.escape(unit_text)} · SKU {html.escape(str(item["sku"]))}'
            f" · from {valid_from:%Y-%m-%d %H:%M %Z}</div>"
            + _promotion_html(item)
            + (ean_svg(str(item["barcode"])) if item["barcode"] else "")
            + "</div>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Price tags {html.escape(branch_code)}</title><style>{_CSS}</style></head>"
        f"<body><h1>Price tags for {html.escape(branch_code)} ({len(items)})</h1>"
        f'<div class="tags">{"".join(tags)}</div></body></html>'
    )
