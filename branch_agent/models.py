"""The agent's local SQLite schema: catalog replica, sales, outbox, counters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "AgentBase",
    "CashMove",
    "Counter",
    "CustomerReturn",
    "OutboxEvent",
    "Product",
    "ProductBarcode",
    "RestoredRecord",
    "Sale",
    "Shift",
    "StockBalance",
    "StockDocument",
    "StockMove",
    "StocktakeCount",
    "UTCDateTime",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """SQLite keeps no zone: store UTC, hand back aware UTC."""

    impl = DateTime()
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where UTC is required")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class AgentBase(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime}


class Counter(AgentBase):
    """Gapless counters (event sequence, receipt numbers), bumped inside the writing transaction."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Product(AgentBase):
    __tablename__ = "products"

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    unit: Mapped[str] = mapped_column(String(16), default="pcs")
    weighed: Mapped[bool] = mapped_column(default=False)
    scale_plu: Mapped[int | None] = mapped_column(Integer, default=None)
    vat_rate_bp: Mapped[int] = mapped_column(Integer)
    # VAT group letter of the fiscal printer (A..H) for this rate.
    vat_group: Mapped[str] = mapped_column(String(1), default="A")
    price: Mapped[int] = mapped_column(BigInteger)
    category: Mapped[str | None] = mapped_column(String(64), default=None)
    active: Mapped[bool] = mapped_column(default=True)


class ProductBarcode(AgentBase):
    __tablename__ = "product_barcodes"

    barcode: Mapped[str] = mapped_column(String(64), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), index=True)


class Sale(AgentBase):
    """A sale as the till posted it and the agent priced it; the till's sale id is its identity."""

    __tablename__ = "sales"
    __table_args__ = (UniqueConstraint("till", "sale_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    till: Mapped[str] = mapped_column(String(32))
    sale_id: Mapped[str] = mapped_column(String(64))
    shift_id: Mapped[str] = mapped_column(String(64))
    receipt_number: Mapped[int] = mapped_column(BigInteger)
    cashier: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    total: Mapped[int] = mapped_column(BigInteger)
    change: Mapped[int] = mapped_column(BigInteger, default=0)
    # recorded (no fiscal printer) | pending_fiscal -> fiscalized | completed_unfiscal
    # (a manager closed it without the printer, which is gone for good).
    status: Mapped[str] = mapped_column(String(16), default="recorded")
    fiscal_number: Mapped[str | None] = mapped_column(String(64), default=None)
    # The priced receipt (protocol ReceiptRecorded, as JSON) returned to a retrying till.
    receipt: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The manual discount the till sent per line (None: none on any line), so a retry
    # is told from other content under the same sale id (the receipt holds only their
    # sum with the promotions'). None on sales recorded before it was kept (a1803).
    manual_discounts: Mapped[list[int] | None] = mapped_column(JSON, default=None)
    event_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    # The exact job for the fiscal printer, so every retry sends the identical receipt.
    print_job: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # The printer's last receipt number before this sale was first sent to it (the
    # idempotence hint: a retry reconciles against it instead of printing again).
    fiscal_hint: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The serial number of the printer the hint was read from (a1806): the unfiscal
    # check compares it with the printer's now. None: not told, or hint taken before.
    hint_printer: Mapped[str | None] = mapped_column(String(32), default=None)
    fiscal_error: Mapped[str | None] = mapped_column(String(200), default=None)
    fiscal_attempts: Mapped[int] = mapped_column(Integer, default=0)
    fiscalized_at: Mapped[datetime | None] = mapped_column(default=None)
    # The fiscal memory number of the printer that fiscalized it: a storno receipt for a
    # return names the original document by number, time and this.
    fiscal_memory_number: Mapped[str | None] = mapped_column(String(16), default=None)
    # Completed unfiscal after the printer may have started it (``fiscal_hint`` set):
    # pending (to compare with the printer when it answers again) -> not_printed |
    # printed (it had printed it after all: fiscal_number set, status kept) | unknown
    # (the printer's state does not tell: a person checks the journal). NULL: no check.
    unfiscal_check: Mapped[str | None] = mapped_column(String(16), default=None)


class OutboxEvent(AgentBase):
    """Events waiting for (or kept after) their JetStream ack; seq is the branch sequence."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unsent", "sent_at", "seq"),)

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    subject: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(default=0)


class CustomerReturn(AgentBase):
    """Goods a customer brought back, against a receipt of this branch."""

    __tablename__ = "customer_returns"
    __table_args__ = (UniqueConstraint("till", "return_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    till: Mapped[str] = mapped_column(String(32))
    return_id: Mapped[str] = mapped_column(String(64))
    original_sale_id: Mapped[str] = mapped_column(String(64), index=True)
    # The till of the original sale: sale ids are the till's, two tills may share one.
    # None only for returns recorded before it was kept whose sale is gone (a1803).
    original_till: Mapped[str | None] = mapped_column(String(32), default=None)
    shift_id: Mapped[str] = mapped_column(String(64))
    return_number: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # protocol CustomerReturnRecorded as JSON
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    # recorded (no storno printed: a till without fiscal printer, or an original that
    # was never fiscalized) | pending_fiscal -> fiscalized (storno receipt printed) |
    # completed_unfiscal. The outbox event is written with the final state, like a sale's.
    status: Mapped[str] = mapped_column(String(16), default="recorded")
    fiscal_number: Mapped[str | None] = mapped_column(String(64), default=None)
    # The storno job for the fiscal printer (lines, refunds, the original's reference).
    print_job: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    fiscal_hint: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # As a sale's: the serial number of the printer the hint was read from.
    hint_printer: Mapped[str | None] = mapped_column(String(32), default=None)
    fiscal_error: Mapped[str | None] = mapped_column(String(200), default=None)
    fiscal_attempts: Mapped[int] = mapped_column(Integer, default=0)
    fiscalized_at: Mapped[datetime | None] = mapped_column(default=None)
    event_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    # As a sale's: the storno of a return completed unfiscal may have been printed.
    unfiscal_check: Mapped[str | None] = mapped_column(String(16), default=None)
    # A cash refund without receipt at a till with a fiscal printer is paid out there
    # (0x46 cash out), so the printer's cash count follows the drawer (a1907): pending
    # (committed with the printer's last document number and cash sum read just before
    # it is sent) -> printed | failed (known not printed: the till posts the same return
    # again to pay it out). NULL: no pay-out (another refund type, no printer, a storno).
    payout_status: Mapped[str | None] = mapped_column(String(16), default=None)
    payout_document_before: Mapped[int | None] = mapped_column(BigInteger, default=None)
    payout_cash_before: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The serial number of the printer they were read from (a1910): another printer's
    # document number and cash sum say nothing of this pay-out. NULL: not told, before.
    payout_printer: Mapped[str | None] = mapped_column(String(32), default=None)
    payout_error: Mapped[str | None] = mapped_column(String(300), default=None)


class Shift(AgentBase):
    """A till session: opened by a cashier, closed with the fiscal printer's Z report."""

    __tablename__ = "shifts"

    shift_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    till: Mapped[str] = mapped_column(String(32), index=True)
    cashier: Mapped[str] = mapped_column(String(64), default="")
    opening_float: Mapped[int] = mapped_column(BigInteger, default=0)
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)
    # protocol ShiftClosed as JSON once closed (agent totals beside the Z report's).
    closing: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # The Z report's intent, committed before it is printed: "pending" with the number of
    # the last Z report in the printer's fiscal memory read just before; a retry compares
    # it with the printer's instead of printing a second (zero) Z report.
    z_status: Mapped[str | None] = mapped_column(String(16), default=None)
    z_before_number: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The serial number of the printer that number was read from (a1908): another
    # printer's fiscal memory says nothing of this shift's Z. NULL: not told, or before.
    z_printer: Mapped[str | None] = mapped_column(String(32), default=None)
    # Why the last close failed (the printer's condition and what to do), shown with the
    # open shift until a close succeeds; NULL once closed or never failed.
    z_error: Mapped[str | None] = mapped_column(String(500), default=None)
    # The close's answer (ShiftCloseOut as JSON), given again to a close repeated after
    # it succeeded and by GET /api/v1/shifts/{id}. NULL: open, or closed before a1903.
    close_answer: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # What the cashier counted in the drawer (cents), taken with the close; kept from a
    # close that failed so a repeat that leaves it out keeps it. NULL: not counted.
    counted_cash: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The opening float's deposit (cash in, 0x46) on the fiscal printer, recorded with the
    # shift: "pending" until printed, "done" after; the printer's document number and
    # cash sum are read just before it is sent, so a retry after a crash or a lost answer
    # compares instead of depositing twice. NULL: no float, or no fiscal printer.
    float_status: Mapped[str | None] = mapped_column(String(16), default=None)
    float_document_before: Mapped[int | None] = mapped_column(BigInteger, default=None)
    float_cash_before: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The serial number of the printer they were read from (a1910), as ``z_printer``.
    float_printer: Mapped[str | None] = mapped_column(String(32), default=None)


class CashMove(AgentBase):
    __tablename__ = "cash_moves"
    __table_args__ = (UniqueConstraint("till", "move_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    till: Mapped[str] = mapped_column(String(32))
    move_id: Mapped[str] = mapped_column(String(64))
    shift_id: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(200), default="")
    cashier: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # On a till with a fiscal printer the move is an intent first: pending (committed
    # with the printer's last document number and cash sum read just before printing)
    # -> done (printed, event written) | failed (known not printed; the same move_id
    # may be posted again). Without a printer it is done at once.
    status: Mapped[str] = mapped_column(String(16), default="done")
    printer_document_before: Mapped[int | None] = mapped_column(BigInteger, default=None)
    printer_cash_before: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The serial number of the printer they were read from (a1910): a swapped printer's
    # numbers matching by chance never settle the move. NULL: not told, or before a1910.
    printer_serial: Mapped[str | None] = mapped_column(String(32), default=None)
    fiscal_error: Mapped[str | None] = mapped_column(String(200), default=None)


class FiscalIntervention(AgentBase):
    """A receipt a manager had finished on a till's fiscal printer because it was left
    open and nothing else could print (a payment refused after another was taken):
    what the printer did, for the journal and the back office."""

    __tablename__ = "fiscal_interventions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    till: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    receipt_number: Mapped[int] = mapped_column(BigInteger)
    # cancelled (nothing was paid) | closed (fiscalized: the rest paid in cash)
    action: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    paid_before: Mapped[int] = mapped_column(BigInteger)
    cash_added: Mapped[int] = mapped_column(BigInteger)
    # The till's sale or return the receipt was printed for ("" when not ours).
    document: Mapped[str] = mapped_column(String(80), default="")
    reason: Mapped[str] = mapped_column(String(200), default="")


class StockDocument(AgentBase):
    """A store stock document; posted ones are immutable and went up as events."""

    __tablename__ = "stock_documents"

    document_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    doc_type: Mapped[str] = mapped_column(String(32))
    number: Mapped[str] = mapped_column(String(32))
    # draft (stocktake being counted) | posted
    status: Mapped[str] = mapped_column(String(16), default="posted")
    supplier: Mapped[str | None] = mapped_column(String(64), default=None)
    counterpart_branch: Mapped[str | None] = mapped_column(String(32), default=None)
    # Indexed: a transfer in looks for an earlier receipt of the same transfer.
    transfer_ref: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    reason: Mapped[str | None] = mapped_column(String(200), default=None)
    author: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Indexed: a document posted without an id is compared with those of the last minutes.
    posted_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    # Posted without an id of the caller's: the agent made ``document_id`` up (a uuid).
    # False for documents posted before agent migration a1902.
    auto_id: Mapped[bool] = mapped_column(default=False)
    # protocol StockDocumentLine list as JSON, once posted
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class StocktakeCount(AgentBase):
    """One count of one product on one count sheet of a stocktake (sheets add up).

    ``book_milli`` is the product's stock on the books when the sheet was recorded
    (read in the transaction that recorded it): posting compares the count with the
    book of the product's first sheet, not with the stock at posting. Rows are
    recorded in ``id`` order (a sheet sent again gets new rows, after the others).
    Counts recorded before migration a1802 have no ``recorded_at``, and the book at
    the upgrade as ``book_milli`` (drafts only; NULL on posted stocktakes).
    """

    __tablename__ = "stocktake_counts"
    __table_args__ = (UniqueConstraint("document_id", "sheet", "sku"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    document_id: Mapped[str] = mapped_column(String(64), index=True)
    sheet: Mapped[str] = mapped_column(String(32))
    sku: Mapped[str] = mapped_column(String(64))
    counted_milli: Mapped[int] = mapped_column(BigInteger)
    book_milli: Mapped[int | None] = mapped_column(BigInteger, default=None)
    recorded_at: Mapped[datetime | None] = mapped_column(default=None)


class StockMove(AgentBase):
    """The append-only stock ledger: every change of stock on hand, signed."""

    __tablename__ = "stock_ledger"
    __table_args__ = (Index("ix_stock_ledger_sku_id", "sku", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sku: Mapped[str] = mapped_column(String(64))
    quantity_milli: Mapped[int] = mapped_column(BigInteger)
    unit_cost: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # sale, customer_return, or a stock document type
    source: Mapped[str] = mapped_column(String(32))
    source_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StockBalance(AgentBase):
    """Stock on hand per product: a projection of the ledger, rebuildable from it."""

    __tablename__ = "stock_balances"

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    quantity_milli: Mapped[int] = mapped_column(BigInteger, default=0)


# The master-data replica tables share this metadata (migrations and their checks see them).
import branch_agent.masterdata_models  # noqa: E402, F401


class RestoredRecord(AgentBase):
    """A sale or customer return central holds that this database lost by going back in
    time (restored from a backup): a till's retry of it is refused, never recorded or
    printed again (``branch_agent.restored``)."""

    __tablename__ = "restored_records"

    # "sale" (record_id: the till's sale_id) or "return" (its return_id).
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    till: Mapped[str] = mapped_column(String(32), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Central's event number of it, its receipt (or return) number, shift and total.
    seq: Mapped[int] = mapped_column(BigInteger)
    number: Mapped[int] = mapped_column(BigInteger)
    shift_id: Mapped[str] = mapped_column(String(64))
    total: Mapped[int] = mapped_column(BigInteger)
    fiscal_number: Mapped[str | None] = mapped_column(String(64), default=None)
    # Recorded here again before central's list came (a till's retry taken unchecked:
    # the restore hold expired with the link down): when the agent found it, and the
    # second record's receipt (return) number, shift, total, fiscal number and event
    # number. Set once, in the transaction that takes central's answer.
    again_at: Mapped[datetime | None] = mapped_column(default=None)
    again_number: Mapped[int | None] = mapped_column(BigInteger, default=None)
    again_shift_id: Mapped[str | None] = mapped_column(String(64), default=None)
    again_total: Mapped[int | None] = mapped_column(BigInteger, default=None)
    again_fiscal_number: Mapped[str | None] = mapped_column(String(64), default=None)
    again_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Settled by the store manager (the second charge refunded, or none after all):
    # when, by whom, the note. NULL while open (listed by the status).
    settled_at: Mapped[datetime | None] = mapped_column(default=None)
    settled_by: Mapped[str | None] = mapped_column(String(64), default=None)
    settled_note: Mapped[str | None] = mapped_column(String(200), default=None)
