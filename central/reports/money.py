"""Exact arithmetic of the reports: integers in, integers or decimal text out.

VAT is derived from gross (VAT-inclusive) line totals, one line at a time:
``vat = line_total * rate / (10000 + rate)`` rounded half-up to the minor unit. The
same formula runs in Python (ingestion) and in SQL (rebuild, plain-SQL twins), on
integers only, so every path gives the same cents.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import ColumnElement, literal

__all__ = ["ratio_text", "rounded_div", "vat_of", "vat_sql"]


def rounded_div(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half-up (away from zero on ties)."""
    if denominator == 0:
        return 0
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    sign = -1 if numerator < 0 else 1
    return sign * ((2 * abs(numerator) + denominator) // (2 * denominator))


def vat_of(line_total: int, rate_bp: int) -> int:
    """The VAT inside a gross amount at ``rate_bp`` basis points, half-up."""
    return rounded_div(line_total * rate_bp, 10000 + rate_bp)


def vat_sql(line_total: Any, rate_bp: Any) -> ColumnElement[int]:
    """:func:`vat_of` as SQL on non-negative integers (integer division truncates)."""
    denominator = literal(10000) + rate_bp
    # ``//`` renders as integer division on both PostgreSQL and SQLite.
    expr: ColumnElement[int] = (literal(2) * line_total * rate_bp + denominator) // (
        literal(2) * denominator
    )
    return expr


def ratio_text(numerator: int, denominator: int, places: int = 2) -> str | None:
    """numerator / denominator as decimal text with ``places`` decimals, half-up."""
    if denominator == 0:
        return None
    value = Decimal(numerator) / Decimal(denominator)
    return str(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))
