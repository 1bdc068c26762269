"""Up-stream events: the facts a branch records and sends to central.

Every event travels inside an :class:`EventEnvelope` that carries its identity
(UUIDv7 event id, branch code, gapless per-branch sequence number) and when it
happened (UTC plus the branch's UTC offset, so central can file it into the
branch's local day).

Money is in integer minor units (cents), quantities in integer thousandths of the
product's unit (grams for kg, millilitres for litres, 1000 per piece), VAT rates
in basis points (2000 = 20.00 %). No floats cross the wire.

Evolution: Structs only ever gain fields with defaults; decoders ignore fields
they do not know, so an older central reads a newer agent's message.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

__all__ = [
    "SCHEMA_VERSION",
    "BranchEvent",
    "CashMoved",
    "CustomerReturnRecorded",
    "EventEnvelope",
    "Payment",
    "PaymentType",
    "ReceiptLine",
    "ReceiptRecorded",
    "ShiftClosed",
    "ShiftOpened",
    "StockDocumentLine",
    "StockDocumentPosted",
    "StockDocumentType",
    "ZReportTotals",
    "event_kind",
]

SCHEMA_VERSION = 1

UtcDateTime = Annotated[datetime, msgspec.Meta(tz=True)]
MinorUnits = int
NonNegativeMinorUnits = Annotated[int, msgspec.Meta(ge=0)]
BranchCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]
PaymentType = Literal["cash", "credit_card", "debit_card", "voucher", "other"]


class _Wire(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every wire Struct: immutable, keyword-only."""


class ReceiptLine(_Wire, frozen=True, kw_only=True):
    line_no: Annotated[int, msgspec.Meta(ge=1)]
    sku: str
    name: str = ""
    barcode: str | None = None
    quantity_milli: Annotated[int, msgspec.Meta(gt=0)]
    unit_price: NonNegativeMinorUnits
    # Total discount on the line (promotion or manual), already subtracted from line_total.
    discount: NonNegativeMinorUnits = 0
    manual_discount: bool = False
    promotion_id: str | None = None
    vat_rate_bp: Annotated[int, msgspec.Meta(ge=0, le=10000)]
    line_total: NonNegativeMinorUnits
    # Cost at the till is unknown; central values stock at moving average cost.


class Payment(_Wire, frozen=True, kw_only=True):
    type: PaymentType
    amount: Annotated[int, msgspec.Meta(gt=0)]


class ReceiptRecorded(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="receipt_recorded"):
    """A fiscalized (or pending-fiscal) sale at a till."""

    till: str
    shift_id: str
    receipt_number: int
    sale_id: str
    cashier: str = ""
    lines: tuple[ReceiptLine, ...]
    payments: tuple[Payment, ...]
    total: NonNegativeMinorUnits
    # Change handed back in cash; payments minus change equals total.
    change: NonNegativeMinorUnits = 0
    currency: str = "EUR"
    fiscal_number: str | None = None
    voided_lines: int = 0
    price_version: int = 0


class CustomerReturnRecorded(
    _Wire, frozen=True, kw_only=True, tag_field="kind", tag="customer_return_recorded"
):
    """Goods brought back by a customer, referencing the original sale."""

    till: str
    shift_id: str
    return_number: int
    return_id: str
    original_sale_id: str
    original_receipt_number: int | None = None
    cashier: str = ""
    lines: tuple[ReceiptLine, ...]
    refunds: tuple[Payment, ...]
    total: NonNegativeMinorUnits
    currency: str = "EUR"
    fiscal_number: str | None = None
    reason: str = ""


class ShiftOpened(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="shift_opened"):
    till: str
    shift_id: str
    cashier: str = ""
    opening_float: NonNegativeMinorUnits = 0


class ZReportTotals(_Wire, frozen=True, kw_only=True):
    """What the fiscal printer itself counted for the shift."""

    report_number: int
    # Turnover per VAT group letter (A..H), minor units.
    turnover_by_vat_group: dict[str, int] = {}
    storno_by_vat_group: dict[str, int] = {}
    receipts_count: int | None = None


class ShiftClosed(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="shift_closed"):
    till: str
    shift_id: str
    cashier: str = ""
    receipts_count: int
    sales_total: NonNegativeMinorUnits
    returns_total: NonNegativeMinorUnits = 0
    payments_by_type: dict[str, int] = {}
    cash_in: NonNegativeMinorUnits = 0
    cash_out: NonNegativeMinorUnits = 0
    z_report: ZReportTotals | None = None


class CashMoved(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="cash_moved"):
    till: str
    shift_id: str
    direction: Literal["in", "out"]
    amount: Annotated[int, msgspec.Meta(gt=0)]
    reason: str = ""
    cashier: str = ""


StockDocumentType = Literal[
    "goods_receipt",
    "write_off",
    "transfer_out",
    "transfer_in",
    "supplier_return",
    "stocktake",
]


class StockDocumentLine(_Wire, frozen=True, kw_only=True):
    sku: str
    # Signed: the direction of the move in the branch's stock (+ in, - out).
    quantity_milli: int
    # Unit cost in minor units per whole unit; known for goods receipts and transfers.
    unit_cost: NonNegativeMinorUnits | None = None
    # Stocktake only: what the books said and what was counted.
    expected_milli: int | None = None
    counted_milli: int | None = None


class StockDocumentPosted(
    _Wire, frozen=True, kw_only=True, tag_field="kind", tag="stock_document_posted"
):
    document_id: str
    doc_type: StockDocumentType
    number: str = ""
    lines: tuple[StockDocumentLine, ...]
    supplier: str | None = None
    # Transfers: the other branch, and the transfer-out document an inbound one matches.
    counterpart_branch: str | None = None
    transfer_ref: str | None = None
    reason: str | None = None
    author: str = ""


BranchEvent = (
    ReceiptRecorded
    | CustomerReturnRecorded
    | ShiftOpened
    | ShiftClosed
    | CashMoved
    | StockDocumentPosted
)


class EventEnvelope(_Wire, frozen=True, kw_only=True):
    """Identity and time of one branch fact, around the fact itself."""

    event_id: uuid.UUID
    branch: BranchCode
    seq: Annotated[int, msgspec.Meta(ge=1)]
    occurred_at: UtcDateTime
    utc_offset_min: Annotated[int, msgspec.Meta(ge=-14 * 60, le=14 * 60)] = 0
    schema_version: int = SCHEMA_VERSION
    body: BranchEvent


def event_kind(event: BranchEvent) -> str:
    """The tag of an event, which is also the last token of its subject."""
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag
