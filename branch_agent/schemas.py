"""Bodies of the till API (msgspec Structs; money in integer minor units).

What goes up to central in an event carries the limit of the wire field it ends in
(:mod:`protocol.limits`): a value central would refuse is a 422 naming the field here,
and nothing is recorded.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from protocol.events import PaymentType
from protocol.limits import (
    FISCAL_AMOUNT_MAX,
    NO_NUL,
    CashMoveAmount,
    Code32,
    Code64,
    CountedCash,
    NonNegativeInt32,
    NonNegativeInt64,
    OpeningFloat,
    PositiveInt32,
    RecordId,
    RecordIdOrEmpty,
    TenderAmount,
    Text64,
)
from protocol.units import QUANTITY_HINT

__all__ = [
    "CashMoveIn",
    "CashMoveOut",
    "FiscalInterventionOut",
    "PaymentIn",
    "ProductOut",
    "ReasonText",
    "ReturnIn",
    "ReturnLineIn",
    "ReturnOut",
    "SaleIn",
    "SaleLineIn",
    "SaleLineOut",
    "SaleOut",
    "SettleIn",
    "SettleOut",
    "ShiftCloseIn",
    "ShiftCloseOut",
    "ShiftOpenIn",
    "ShiftOut",
    "WeightOut",
    "XReportOut",
]

QuantityText = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^-?\d{1,6}(\.\d{1,3})?$",
        extra={"hint": QUANTITY_HINT},
    ),
]
# Why a return, cash move or write-off happened, as a person typed it. Central keeps it
# whole; the bound keeps every event well inside one NATS message.
ReasonText = Annotated[str, msgspec.Meta(max_length=1000, pattern=NO_NUL)]


# Request bodies refuse unknown fields (422 naming it): a misspelt optional field
# ("refund_typ") would otherwise be dropped and its default used.
class SaleLineIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sku: Code64 | None = None
    barcode: Code64 | None = None
    # Decimal text in the product's unit: "2" pieces, "0.754" kg. Omitted: 1 piece, or
    # the weight a weight-embedded barcode carries (a weighed item needs one or the other).
    quantity: QuantityText | None = None
    manual_discount: NonNegativeInt64 = 0


class PaymentIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: PaymentType
    # at most 9,999,999.99: what a fiscal printer takes in a payment
    amount: TenderAmount


class SaleIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # The till's own id of this sale: posting it again returns the original receipt.
    sale_id: RecordId
    # Empty: the till's open shift; another id (closed, another till's) is refused.
    shift_id: Code64 = ""
    # Empty: the open shift's cashier.
    cashier: Text64 = ""
    lines: Annotated[list[SaleLineIn], msgspec.Meta(min_length=1, max_length=500)]
    payments: Annotated[list[PaymentIn], msgspec.Meta(min_length=1, max_length=10)]
    # What the till displayed; a mismatch means the till's prices are stale: refused.
    expected_total: int | None = None
    # Lines the cashier scanned and voided before payment (central's loss prevention).
    voided_lines: NonNegativeInt32 = 0


class SaleLineOut(msgspec.Struct, kw_only=True):
    line_no: int
    sku: str
    name: str
    quantity: str
    unit_price: int
    discount: int
    vat_rate_bp: int
    line_total: int
    promotion_id: str | None = None


class FiscalInterventionOut(msgspec.Struct, kw_only=True):
    """A receipt a manager had finished on a till's fiscal printer (amounts in cents)."""

    till: str
    receipt_number: int
    # cancelled (nothing was paid) | closed (fiscalized, the rest paid in cash)
    action: str
    amount: int
    paid_before: int
    cash_added: int
    # the till's sale or return it was printed for ("sale s-1"), "" if none
    document: str
    reason: str


class SaleOut(msgspec.Struct, kw_only=True):
    sale_id: str
    till: str
    shift_id: str
    receipt_number: int
    # recorded (no fiscal printer), fiscalized, pending_fiscal (the printer could not
    # finish it yet: it is safe and will be completed once), completed_unfiscal.
    status: Literal["recorded", "pending_fiscal", "fiscalized", "completed_unfiscal"] | str
    fiscal_number: str | None
    total: int
    change: int
    lines: list[SaleLineOut]
    payments: list[PaymentIn]
    event_seq: int | None
    fiscal_error: str | None = None
    # completed_unfiscal only: pending (to compare with the printer when it answers),
    # not_printed, printed (it was printed after all: fiscal_number), unknown.
    unfiscal_check: str | None = None
    # The cash drawer, for this request only (a repeat does not open it again):
    # "opened" (the receipt printer took the kick), "not_opened" (it could not:
    # drawer_error says why; open the drawer with its key), None (no cash moved, or
    # the till has no receipt printer).
    drawer: Literal["opened", "not_opened"] | None = None
    drawer_error: str | None = None


class ReturnLineIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # The line number on the original receipt (a return against a receipt only).
    line_no: PositiveInt32 | None = None
    # Required on a receipt's line. Without receipt, as on a sale line: none is one
    # piece, or the weight of the scanned label (a weighed product needs one or the other).
    quantity: QuantityText | None = None
    # A return without receipt names the product (as a sale line does) and may carry
    # the price the manager typed, in cents: at most the till's price now.
    sku: Annotated[Code64, msgspec.Meta(min_length=1)] | None = None
    barcode: Annotated[Code64, msgspec.Meta(min_length=1)] | None = None
    unit_price: Annotated[int, msgspec.Meta(ge=0, le=FISCAL_AMOUNT_MAX)] | None = None


class ReturnIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    return_id: RecordId
    # Required unless without_receipt (then refused).
    original_sale_id: Annotated[Code64, msgspec.Meta(min_length=1)] | None = None
    # No receipt: lines by product at the till's price now (or lower), a manager's
    # approval (the X-Manager-Token header and approved_by), a reason, no storno.
    without_receipt: bool = False
    approved_by: Text64 = ""
    # The till the original sale was made at (sale ids are unique per till). Omitted:
    # this till's sale, else the one other till's with that id (several: refused).
    original_till: Code32 | None = None
    # As in a sale: empty is the till's open shift, another id is refused.
    shift_id: Code64 = ""
    # Empty: the open shift's cashier.
    cashier: Text64 = ""
    lines: Annotated[list[ReturnLineIn], msgspec.Meta(min_length=1, max_length=500)]
    # Default: cash if the customer paid any cash, else the original payment type.
    refund_type: PaymentType | None = None
    reason: ReasonText = ""


class ReturnOut(msgspec.Struct, kw_only=True):
    return_id: str
    till: str
    # None: a return without receipt.
    original_sale_id: str | None
    # The till of the original sale.
    original_till: str | None = None
    return_number: int
    total: int
    lines: list[SaleLineOut]
    refunds: list[PaymentIn]
    # recorded (no storno printed), pending_fiscal (safe; the storno receipt is printed
    # once the printer is back), fiscalized (fiscal_number: the storno's), completed_unfiscal.
    status: str = "recorded"
    fiscal_number: str | None = None
    fiscal_error: str | None = None
    # as a sale's
    unfiscal_check: str | None = None
    without_receipt: bool = False
    approved_by: str = ""
    # As a sale's: opened for a refund in cash.
    drawer: Literal["opened", "not_opened"] | None = None
    drawer_error: str | None = None
    # A cash refund without receipt at a till with a fiscal printer is paid out there
    # (cash out, 0x46): pending (sent, or its outcome not known yet), printed, or failed
    # (not on the printer: ``payout_error`` says why and what to do; the same return
    # posted again pays it out). None: no pay-out on a printer (another refund type, a
    # till without printer, a return against a receipt, whose storno pays it).
    payout: str | None = None
    payout_error: str | None = None


class ProductOut(msgspec.Struct, kw_only=True):
    sku: str
    name: str
    unit: str
    weighed: bool
    price: int
    vat_rate_bp: int
    category: str | None
    # From a weight-embedded code: the weight it carries, and that weight's price.
    quantity: str | None = None
    amount: int | None = None
    promotion_id: str | None = None
    # The promotion's discount on one unit (or on the embedded quantity).
    promotion_discount: int = 0


class WeightOut(msgspec.Struct, kw_only=True):
    quantity: str
    quantity_milli: int
    net: bool


class ShiftOpenIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Empty: the agent names it "<till>-<n>" (n past every shift central knows of; with a
    # random tag, "<till>-<n>-k7qz2", when opened before central answered this run).
    shift_id: RecordIdOrEmpty = ""
    cashier: Text64 = ""
    # Left out: 0 for a new shift, and not compared with an open one's.
    opening_float: OpeningFloat | None = None


class ShiftOut(msgspec.Struct, kw_only=True):
    shift_id: str
    till: str
    cashier: str
    opening_float: int
    opened_at: str
    closed_at: str | None
    receipts_count: int
    sales_total: int
    returns_total: int
    payments_by_type: dict[str, int]
    cash_in: int
    cash_out: int
    # Cash that should be in the drawer: float + cash taken - change - refunds +/- moves.
    expected_cash: int
    # The opening float's deposit on the fiscal printer: "done", "pending" (the printer
    # was away: it goes before the till's next print), None (no float or no printer).
    float_deposit: str | None = None
    # A close under way, or one that failed: the Z report's intent is recorded, so the
    # till sells nothing (no returns, no cash moves) until the close is repeated and done.
    closing: bool = False
    # What the last close that failed said (the printer's condition, what to do), until a
    # close succeeds; None when no close failed.
    close_error: str | None = None
    # What the cashier counted in the drawer at the close (None: not counted), and
    # counted - expected_cash: over (positive) or short (negative); None when not counted.
    counted_cash: int | None = None
    cash_difference: int | None = None


class ShiftCloseIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Cents the cashier counted in the drawer; left out (or no body): not counted.
    counted_cash: CountedCash | None = None


class XReportOut(msgspec.Struct, kw_only=True):
    shift: ShiftOut
    # What the fiscal printer counted (None on a till without one).
    fiscal_turnover_by_vat_group: dict[str, int] | None = None
    fiscal_report_number: int | None = None


class ShiftCloseOut(msgspec.Struct, kw_only=True):
    """A close's answer, also GET /api/v1/shifts/{id} (an open shift: no Z figures yet)."""

    shift: ShiftOut
    z_report_number: int | None
    z_turnover_by_vat_group: dict[str, int]
    z_storno_by_vat_group: dict[str, int]
    # The agent's own turnover and returns per VAT group beside the printer's turnover
    # and storno totals, and whether they all agree.
    agent_turnover_by_vat_group: dict[str, int]
    agent_storno_by_vat_group: dict[str, int]
    matches_fiscal: bool | None


class CashMoveIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    move_id: RecordId
    direction: Literal["in", "out"]
    # At most 10,000,000.00: a shift's moves add up without overflowing 64 bits.
    amount: CashMoveAmount
    reason: ReasonText = ""
    # Empty: the open shift's cashier.
    cashier: Text64 = ""


class CashMoveOut(msgspec.Struct, kw_only=True):
    move_id: str
    till: str
    shift_id: str
    direction: str
    amount: int
    reason: str
    # As a sale's: the drawer opens for every cash move.
    drawer: Literal["opened", "not_opened"] | None = None
    drawer_error: str | None = None


class SettleIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A manager's decision on fiscal cash work left pending on a printer that is gone:
    what was sent (a cash move, an opening float's deposit, a refund's pay-out, a Z
    report) and what the old printer's journal shows (``printed``) or that it did not
    print it, or cannot be read any more (``not_printed``)."""

    intent: Literal["cash_move", "float", "payout", "z_report"]
    # move_id (cash_move), shift_id (float, z_report), return_id (payout)
    id: Annotated[Code64, msgspec.Meta(min_length=1)]
    outcome: Literal["printed", "not_printed"]
    # Why (kept with the fiscal intervention head office sees).
    reason: Annotated[str, msgspec.Meta(min_length=3, max_length=150, pattern=NO_NUL)]
    # z_report only: what the cashier counted in the drawer (cents), for a shift closed
    # by this decision; None keeps the count of a close that failed (or none).
    counted_cash: NonNegativeInt64 | None = None


class RecordedAgainSettleIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The store manager settles a sale (return) recorded again after a restore: who,
    and what was done (the second charge refunded, with which return; or none)."""

    settled_by: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_NUL)]
    note: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL)]


class SettleOut(msgspec.Struct, kw_only=True):
    till: str
    intent: str
    id: str
    outcome: str
    # The fiscal intervention recorded (and sent up): cash_move_printed, float_not_printed...
    action: str
    # What the intent is now: cash move done | failed; float done | not_deposited;
    # payout printed | failed; z_report closed (the shift closed without Z figures).
    status: str
    # The intent's shift as it stands now (its cash figures, float, closing).
    shift: ShiftOut
