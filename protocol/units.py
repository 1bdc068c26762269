"""Exact money and quantities: integer minor units and integer thousandths.

Conversions to and from decimal text are explicit; rounding is half-up (the
commercial rule), never binary floating point.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Annotated

import msgspec

__all__ = [
    "QUANTITY_HINT",
    "MinorUnits",
    "format_milli",
    "format_minor",
    "line_amount",
    "parse_milli",
    "parse_minor",
    "percent_of",
]

# Money in a body: integer minor units. A web API refusing a float (1.29) appends the
# hint to msgspec's "Expected `int`, got `float`" (protocol.problems.validation_errors).
MinorUnits = Annotated[
    int,
    msgspec.Meta(
        description="integer minor units (cents): 1.29 is 129",
        extra={"hint": "money is in integer minor units (cents): 1.29 is 129"},
    ),
]

# Appended to msgspec's "Expected `str` matching regex ..." for a quantity in a body:
# the regex alone does not tell a cashier's app what to send.
QUANTITY_HINT = 'a quantity is decimal text with a dot and up to 3 decimals, e.g. "2" or "0.754"'


def format_milli(quantity_milli: int) -> str:
    """1234 -> "1.234" (thousandths of the unit as decimal text)."""
    return str((Decimal(quantity_milli) / 1000).quantize(Decimal("0.001")))


def format_minor(amount: int) -> str:
    """199 -> "1.99"."""
    return str((Decimal(amount) / 100).quantize(Decimal("0.01")))


def _parse(text: str, places: int) -> int:
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"not a number: {text!r}") from exc
    if not value.is_finite():
        raise ValueError(f"not a finite number: {text!r}")
    scaled = value * (10**places)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{text!r} has more than {places} decimal places")
    return int(scaled)


def parse_minor(text: str) -> int:
    """ "1.99" -> 199; more than two decimals is an error, not a silent rounding."""
    return _parse(text, 2)


def parse_milli(text: str) -> int:
    """ "1.234" -> 1234."""
    return _parse(text, 3)


def line_amount(unit_price: int, quantity_milli: int) -> int:
    """Price of a quantity: unit price x quantity / 1000, rounded half-up to a minor unit."""
    exact = Decimal(unit_price) * Decimal(quantity_milli) / 1000
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def percent_of(amount: int, basis_points: int) -> int:
    """``basis_points``/100 percent of an amount, rounded half-up (1000 bp = 10 %)."""
    exact = Decimal(amount) * Decimal(basis_points) / 10000
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
