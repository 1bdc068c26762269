"""Up-stream events: the facts a branch records and sends to central.

Every event travels inside an :class:`EventEnvelope` that carries its identity
(UUIDv7 event id, branch code, gapless per-branch sequence number) and when it
happened (UTC plus the branch's UTC offset, so central can file it into the
branch's local day).

Money is in integer minor units (cents), quantities in integer thousandths of the
product's unit (grams for kg, millilitres for litres, 1000 per piece), VAT rates
in basis points (2000 = 20.00 %). No floats cross the wire.

Every text and integer field carries the limit of the central column that stores it
(:mod:`protocol.limits`): a message that breaks one is refused when it is decoded.

Evolution: Structs only ever gain fields with defaults; decoders ignore fields
they do not know, so an older central reads a newer agent's message.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from protocol.limits import (
    INT32_MAX,
    Code32,
    Code64,
    CurrencyCode,
    Int64,
    NonNegativeInt32,
    NonNegativeInt64,
    PositiveInt32,
    PositiveInt64,
    Text,
    Text64,
    Text200,
)

__all__ = [
    "SCHEMA_VERSION",
    "BranchEvent",
    "CashMoved",
    "CustomerReturnRecorded",
    "EventEnvelope",
    "FiscalInterventionRecorded",
    "LateFiscalNumber",
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
VatRate = Annotated[int, msgspec.Meta(ge=0, le=10000)]
BranchCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]
PaymentType = Literal["cash", "credit_card", "debit_card", "voucher", "other"]


class _Wire(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every wire Struct: immutable, keyword-only."""


class ReceiptLine(_Wire, frozen=True, kw_only=True):
    line_no: PositiveInt32
    sku: Code64
    name: Text200 = ""
    barcode: Code64 | None = None
    quantity_milli: PositiveInt64
    unit_price: NonNegativeInt64
    # Total discount on the line (promotion or manual), already subtracted from line_total.
    discount: NonNegativeInt64 = 0
    manual_discount: bool = False
    promotion_id: Code64 | None = None
    vat_rate_bp: VatRate
    line_total: NonNegativeInt64
    # Cost at the till is unknown; central values stock at moving average cost.


class Payment(_Wire, frozen=True, kw_only=True):
    type: PaymentType
    amount: PositiveInt64


class ReceiptRecorded(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="receipt_recorded"):
    """A fiscalized (or pending-fiscal) sale at a till."""

    till: Code32
    shift_id: Code64
    receipt_number: NonNegativeInt64
    sale_id: Code64
    cashier: Text64 = ""
    lines: tuple[ReceiptLine, ...]
    payments: tuple[Payment, ...]
    total: NonNegativeInt64
    # Change handed back in cash; payments minus change equals total.
    change: NonNegativeInt64 = 0
    currency: CurrencyCode = "EUR"
    fiscal_number: Code64 | None = None
    voided_lines: NonNegativeInt32 = 0
    price_version: NonNegativeInt64 = 0


class CustomerReturnRecorded(
    _Wire, frozen=True, kw_only=True, tag_field="kind", tag="customer_return_recorded"
):
    """Goods brought back by a customer, referencing the original sale, or, with
    ``without_receipt``, without one (a manager approved it: ``approved_by``).

    ``original_sale_id`` is None exactly when ``without_receipt`` is true. A central
    from before these fields refuses such an event at decoding (a dead letter, to be
    replayed once central is upgraded) instead of storing it as a return of sale "".
    """

    till: Code32
    shift_id: Code64
    return_number: NonNegativeInt64
    return_id: Code64
    # None: a return without the receipt (``without_receipt``); always set otherwise.
    original_sale_id: Code64 | None = None
    original_receipt_number: NonNegativeInt64 | None = None
    # The till of the original sale: a sale id is the till's, two tills may use the
    # same one. None from agents before it was sent: the branch's only sale of that id.
    original_till: Code32 | None = None
    cashier: Text64 = ""
    lines: tuple[ReceiptLine, ...]
    refunds: tuple[Payment, ...]
    total: NonNegativeInt64
    currency: CurrencyCode = "EUR"
    fiscal_number: Code64 | None = None
    # Stored as unbounded text.
    reason: Text = ""
    # No original receipt: lines at the till's price of the moment (or lower, typed by
    # the manager), no storno on the fiscal printer (it needs the original document).
    without_receipt: bool = False
    # The store manager who approved a return without receipt (who the till names).
    approved_by: Text64 = ""

    def __post_init__(self) -> None:
        if self.without_receipt:
            if self.original_sale_id is not None:
                raise ValueError("a return without receipt names no original_sale_id")
            if not self.approved_by.strip():
                raise ValueError("a return without receipt needs approved_by")
        elif self.original_sale_id is None:
            raise ValueError("a customer return needs its original_sale_id")


class ShiftOpened(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="shift_opened"):
    till: Code32
    shift_id: Code64
    cashier: Text64 = ""
    opening_float: NonNegativeInt64 = 0


class ZReportTotals(_Wire, frozen=True, kw_only=True):
    """What the fiscal printer itself counted for the shift."""

    report_number: NonNegativeInt32
    # Turnover per VAT group letter (A..H), minor units (stored as JSON).
    turnover_by_vat_group: dict[str, int] = {}
    storno_by_vat_group: dict[str, int] = {}
    receipts_count: NonNegativeInt32 | None = None


class ShiftClosed(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="shift_closed"):
    till: Code32
    shift_id: Code64
    cashier: Text64 = ""
    receipts_count: NonNegativeInt32
    sales_total: NonNegativeInt64
    returns_total: NonNegativeInt64 = 0
    # Stored as JSON.
    payments_by_type: dict[str, int] = {}
    cash_in: NonNegativeInt64 = 0
    cash_out: NonNegativeInt64 = 0
    z_report: ZReportTotals | None = None
    # What the cashier counted in the drawer at the close, and what the till's records
    # say should be there (opening float + cash net of change - cash refunds + cash in -
    # cash out): central shows counted - expected as the shift's cash over/short. None:
    # not counted (or an agent from before counted cash sent neither).
    counted_cash: NonNegativeInt64 | None = None
    expected_cash: Int64 | None = None
    # A close without Z figures at a till with a fiscal printer, decided by a manager:
    # whether a Z report was printed (True: the old printer printed it, its figures were
    # never read; False: none was). None: the close carries the Z's figures, the till has
    # no fiscal printer, or an agent from before sent neither.
    z_printed: bool | None = None


class CashMoved(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="cash_moved"):
    till: Code32
    shift_id: Code64
    direction: Literal["in", "out"]
    amount: PositiveInt64
    # Stored as unbounded text.
    reason: Text = ""
    cashier: Text64 = ""


StockDocumentType = Literal[
    "goods_receipt",
    "write_off",
    "transfer_out",
    "transfer_in",
    "supplier_return",
    "stocktake",
]


class StockDocumentLine(_Wire, frozen=True, kw_only=True):
    sku: Code64
    # Signed: the direction of the move in the branch's stock (+ in, - out).
    quantity_milli: Int64
    # Unit cost in minor units per whole unit; known for goods receipts and transfers.
    unit_cost: NonNegativeInt64 | None = None
    # Stocktake only: what the books said and what was counted.
    expected_milli: Int64 | None = None
    counted_milli: Int64 | None = None


class StockDocumentPosted(
    _Wire, frozen=True, kw_only=True, tag_field="kind", tag="stock_document_posted"
):
    document_id: Code64
    doc_type: StockDocumentType
    number: Code64 = ""
    lines: tuple[StockDocumentLine, ...]
    supplier: Text200 | None = None
    # Transfers: the other branch, and the transfer-out document an inbound one matches.
    counterpart_branch: Code32 | None = None
    transfer_ref: Code64 | None = None
    # Stored as unbounded text (a write-off's reason is grouped by its first 64 characters).
    reason: Text | None = None
    author: Text64 = ""
    # A document of more lines than one message may carry (a whole store's stocktake)
    # travels as ``parts`` events, each with the header and up to
    # STOCK_DOCUMENT_PART_LINES of the lines; ``first_line_no`` is the document's
    # number of this part's first line.
    part: PositiveInt32 = 1
    parts: PositiveInt32 = 1
    first_line_no: PositiveInt32 = 1

    def __post_init__(self) -> None:
        if self.part > self.parts:
            raise ValueError(f"part {self.part} of {self.parts}: beyond the document's parts")
        # Each line's number is stored as a 32-bit integer.
        if self.first_line_no + len(self.lines) - 1 > INT32_MAX:
            raise ValueError(f"lines from {self.first_line_no}: line numbers beyond {INT32_MAX}")


class LateFiscalNumber(
    _Wire, frozen=True, kw_only=True, tag_field="kind", tag="late_fiscal_number"
):
    """A sale (or return) sent up without a fiscal number, completed unfiscal by a
    manager, that the till's fiscal printer had printed after all: the number the agent
    found when the printer answered again. Central sets it on its receipt once."""

    # sale: ``document_id`` is the till's sale id; return: its return id (storno).
    document: Literal["sale", "return"] = "sale"
    till: Code32
    document_id: Code64
    # The event that carried the document up, and its sequence number: an event that
    # arrives before its document is kept until the document does (None: not known).
    document_event_id: uuid.UUID | None = None
    document_seq: PositiveInt64 | None = None
    fiscal_number: Code64
    # When it was printed (when it was sent to the printer, not when this was found).
    fiscalized_at: UtcDateTime
    fiscal_memory_number: Code32 | None = None


class FiscalInterventionRecorded(
    _Wire, frozen=True, kw_only=True, tag_field="kind", tag="fiscal_intervention"
):
    """A manager's intervention on a till's fiscal printer, for head office: a receipt
    left open finished (``cancelled``: nothing was paid; ``closed``: the rest paid in
    cash and fiscalized), a document completed without the printer
    (``completed_unfiscal``), a document held back when the printer was swapped printed
    on the new one (``printed_on_new_printer``), or fiscal cash work left pending on a printer that is gone,
    settled by the manager (``<intent>_<outcome>``: ``cash_move_printed``,
    ``float_not_printed``, ``payout_printed``, ``z_report_not_printed``...)."""

    till: Code32
    # The till's shift open at the time (None: none was open).
    shift_id: Code64 | None = None
    # A Code32 rather than a Literal: a newer agent's new action still reaches central.
    action: Code32
    # The printer's receipt number (None for completed_unfiscal: none was printed).
    receipt_number: NonNegativeInt64 | None = None
    amount: NonNegativeInt64 = 0
    paid_before: NonNegativeInt64 = 0
    cash_added: NonNegativeInt64 = 0
    # The till's document: "sale <id>", "return <id>", or "" when not the agent's.
    document: Text200 = ""
    reason: Text200 = ""


BranchEvent = (
    ReceiptRecorded
    | CustomerReturnRecorded
    | ShiftOpened
    | ShiftClosed
    | CashMoved
    | StockDocumentPosted
    | LateFiscalNumber
    | FiscalInterventionRecorded
)


class EventEnvelope(_Wire, frozen=True, kw_only=True):
    """Identity and time of one branch fact, around the fact itself."""

    event_id: uuid.UUID
    branch: BranchCode
    seq: PositiveInt64
    occurred_at: UtcDateTime
    utc_offset_min: Annotated[int, msgspec.Meta(ge=-14 * 60, le=14 * 60)] = 0
    schema_version: NonNegativeInt32 = SCHEMA_VERSION
    body: BranchEvent


def event_kind(event: BranchEvent) -> str:
    """The tag of an event, which is also the last token of its subject."""
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag
