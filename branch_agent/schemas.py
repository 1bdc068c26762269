"""Bodies of the till API (msgspec Structs; money in integer minor units)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from protocol.events import PaymentType

__all__ = ["PaymentIn", "SaleIn", "SaleLineIn", "SaleOut"]


class SaleLineIn(msgspec.Struct, frozen=True, kw_only=True):
    sku: str | None = None
    barcode: str | None = None
    # Decimal text in the product's unit: "2" pieces, "0.754" kg.
    quantity: Annotated[str, msgspec.Meta(pattern=r"^-?\d{1,6}(\.\d{1,3})?$")] = "1"
    manual_discount: Annotated[int, msgspec.Meta(ge=0)] = 0


class PaymentIn(msgspec.Struct, frozen=True, kw_only=True):
    type: PaymentType
    amount: Annotated[int, msgspec.Meta(gt=0)]


class SaleIn(msgspec.Struct, frozen=True, kw_only=True):
    # The till's own id of this sale: posting it again returns the original receipt.
    sale_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    shift_id: str = ""
    cashier: str = ""
    lines: Annotated[list[SaleLineIn], msgspec.Meta(min_length=1, max_length=500)]
    payments: Annotated[list[PaymentIn], msgspec.Meta(min_length=1, max_length=10)]
    # What the till displayed; a mismatch means the till's prices are stale: refused.
    expected_total: int | None = None


class SaleLineOut(msgspec.Struct, kw_only=True):
    line_no: int
    sku: str
    name: str
    quantity: str
    unit_price: int
    discount: int
    vat_rate_bp: int
    line_total: int


class SaleOut(msgspec.Struct, kw_only=True):
    sale_id: str
    till: str
    shift_id: str
    receipt_number: int
    status: Literal["recorded", "pending_fiscal", "fiscalized"] | str
    fiscal_number: str | None
    total: int
    change: int
    lines: list[SaleLineOut]
    payments: list[PaymentIn]
    event_seq: int | None
