"""Promotions on a basket: one implementation for central and the agents' tills.

Rules (exact, deterministic):

- A promotion is in force at ``at`` when ``starts_at <= at < ends_at`` (an open
  end is unbounded) and it is not withdrawn.
- It applies to a product listed in ``skus``, or whose category path contains
  one of its ``categories`` (a category promotion reaches the whole subtree).
- Lines of the same SKU are taken together (a till may scan one item per line).
  Each SKU gets at most one promotion: the one giving the customer the largest
  discount; on a tie the smallest ``promotion_id`` wins.
- ``percent``: ``percent_bp`` of each line's gross, half-up to the cent.
- ``amount``: ``amount`` off per unit (per piece, or per kg/litre for weighed
  goods, half-up).
- Whatever the record says, a line's discount is never more than the line's gross
  and never negative.
- ``n_for_m``: of every ``n`` whole pieces the customer pays ``m``; the free
  pieces are the cheapest ones (lowest unit price first, then line order).
  Fractional quantities never count toward N-for-M.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from protocol.masterdata import PromotionRecord
from protocol.units import line_amount, percent_of

__all__ = ["PromoLine", "PromoResult", "evaluate_promotions", "promotion_in_force"]


@dataclass(frozen=True, slots=True)
class PromoLine:
    sku: str
    quantity_milli: int
    unit_price: int
    gross: int
    category_path: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PromoResult:
    amount: int = 0
    promotion_id: str | None = None


def promotion_in_force(promotion: PromotionRecord, at: datetime) -> bool:
    if promotion.deleted:
        return False
    if promotion.starts_at is not None and at < promotion.starts_at:
        return False
    return not (promotion.ends_at is not None and at >= promotion.ends_at)


def _applies(promotion: PromotionRecord, line: PromoLine) -> bool:
    if line.sku in promotion.skus:
        return True
    return any(code in promotion.categories for code in line.category_path)


def _bounded(discount: int, gross: int) -> int:
    """A line's discount is between nothing and the whole line: never more than its
    price (an amount off above it, from a record central would refuse now), never a
    surcharge (a negative amount or percentage from a malformed record)."""
    return max(0, min(gross, discount))


def _discounts(
    promotion: PromotionRecord, lines: Sequence[PromoLine], indexes: list[int]
) -> dict[int, int]:
    out: dict[int, int] = {}
    if promotion.type == "percent":
        for i in indexes:
            out[i] = _bounded(percent_of(lines[i].gross, promotion.percent_bp), lines[i].gross)
    elif promotion.type == "amount":
        for i in indexes:
            off = line_amount(promotion.amount, lines[i].quantity_milli)
            out[i] = _bounded(off, lines[i].gross)
    elif promotion.type == "n_for_m" and promotion.n > promotion.m >= 1:
        pieces = {
            i: lines[i].quantity_milli // 1000
            for i in indexes
            if lines[i].quantity_milli % 1000 == 0
        }
        free = (sum(pieces.values()) // promotion.n) * (promotion.n - promotion.m)
        for i in sorted(pieces, key=lambda i: (lines[i].unit_price, i)):
            if free <= 0:
                break
            units = min(free, pieces[i])
            out[i] = _bounded(units * lines[i].unit_price, lines[i].gross)
            free -= units
    return out


def evaluate_promotions(
    promotions: Sequence[PromotionRecord], lines: Sequence[PromoLine], at: datetime
) -> list[PromoResult]:
    """The discount of every line (one result per line, in line order)."""
    active = sorted(
        (p for p in promotions if promotion_in_force(p, at)), key=lambda p: p.promotion_id
    )
    results = [PromoResult() for _ in lines]
    by_sku: dict[str, list[int]] = {}
    for index, line in enumerate(lines):
        by_sku.setdefault(line.sku, []).append(index)
    for indexes in by_sku.values():
        best: tuple[int, dict[int, int], str] | None = None
        for promotion in active:
            if not _applies(promotion, lines[indexes[0]]):
                continue
            discounts = _discounts(promotion, lines, indexes)
            total = sum(discounts.values())
            # Sorted by id: a later promotion replaces the best only when strictly better.
            if total > 0 and (best is None or total > best[0]):
                best = (total, discounts, promotion.promotion_id)
        if best is not None:
            for i, amount in best[1].items():
                if amount:
                    results[i] = PromoResult(amount=amount, promotion_id=best[2])
    return results
