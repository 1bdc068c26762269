"""Summary tables behind the head-office reports.

Every table here is a projection: kept up to date at ingestion by
``central.reports.projections`` (additive upserts, one per key and batch; on
PostgreSQL the per-product tables through ``rpt_summary_backlog``, applied seconds
later and before every report) and rebuildable from the raw records with
``python -m central reports rebuild``.
Money in integer minor units, quantities in thousandths, like the raw tables.

Sales measures (the same columns on every sales table):
``receipts`` distinct receipts of the group (for product rows: receipts holding the
product), ``qty_milli``, ``revenue`` (line totals incl. VAT, after discounts),
``vat`` (per line, half-up, see ``central.reports.money.vat_of``), ``discounts``,
``cost`` (cost of goods sold at moving average cost); ``returns`` (customer return
documents), ``returns_qty_milli``, ``returns_amount``, ``returns_vat``,
``returns_cost`` the same for goods customers brought back.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from central.models.base import Base, BigIntPK, utcnow

__all__ = [
    "SALES_MEASURES",
    "LastSellingPrice",
    "PaymentsDaily",
    "SalesBranchDaily",
    "SalesCashierDaily",
    "SalesHourly",
    "SalesProductDaily",
    "SalesProductDailyChain",
    "ShiftPaymentTotals",
    "ShiftTotals",
    "StockClosingMonthly",
    "StockMovementDaily",
    "StockMovementMonthly",
    "SummaryBacklog",
    "SummaryRejected",
]

SALES_MEASURES = (
    "receipts",
    "qty_milli",
    "revenue",
    "vat",
    "discounts",
    "cost",
    "returns",
    "returns_qty_milli",
    "returns_amount",
    "returns_vat",
    "returns_cost",
)


def _amount() -> Mapped[int]:
    return mapped_column(BigInteger, default=0, server_default="0")


def _count() -> Mapped[int]:
    return mapped_column(Integer, default=0, server_default="0")


class _SalesMeasures:
    receipts: Mapped[int] = _count()
    qty_milli: Mapped[int] = _amount()
    revenue: Mapped[int] = _amount()
    vat: Mapped[int] = _amount()
    discounts: Mapped[int] = _amount()
    cost: Mapped[int] = _amount()
    returns: Mapped[int] = _count()
    returns_qty_milli: Mapped[int] = _amount()
    returns_amount: Mapped[int] = _amount()
    returns_vat: Mapped[int] = _amount()
    returns_cost: Mapped[int] = _amount()


class SalesBranchDaily(_SalesMeasures, Base):
    """Per branch and local day: the morning report's rows."""

    __tablename__ = "rpt_sales_branch_daily"
    __table_args__ = (Index("ix_rpt_sales_branch_daily_local_date", "local_date"),)

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    local_date: Mapped[date] = mapped_column(primary_key=True)


class SalesHourly(_SalesMeasures, Base):
    """Per branch, local day and local hour (0-23) of the receipt."""

    __tablename__ = "rpt_sales_hourly"
    __table_args__ = (Index("ix_rpt_sales_hourly_local_date", "local_date"),)

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    local_date: Mapped[date] = mapped_column(primary_key=True)
    hour: Mapped[int] = mapped_column(Integer, primary_key=True)


class SalesCashierDaily(_SalesMeasures, Base):
    """Per branch, local day and cashier, with the loss-prevention counters."""

    __tablename__ = "rpt_sales_cashier_daily"
    __table_args__ = (Index("ix_rpt_sales_cashier_daily_local_date", "local_date"),)

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    local_date: Mapped[date] = mapped_column(primary_key=True)
    cashier: Mapped[str] = mapped_column(String(64), primary_key=True)
    voided_lines: Mapped[int] = _count()
    manual_discount_lines: Mapped[int] = _count()
    manual_discount_amount: Mapped[int] = _amount()
    # Customer returns without receipt (also in ``returns``), migration 1901.
    no_receipt_returns: Mapped[int] = _count()


class SalesProductDaily(_SalesMeasures, Base):
    """Per branch, local day and product."""

    # Always read with a branch (the key's prefix); chain-wide reads use the chain table.
    __tablename__ = "rpt_sales_product_daily"

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    local_date: Mapped[date] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)


class SalesProductDailyChain(_SalesMeasures, Base):
    """Per local day and product over the whole chain (chain-wide product reports
    read ~100x fewer rows than from the per-branch table)."""

    __tablename__ = "rpt_sales_product_daily_chain"

    local_date: Mapped[date] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)


class PaymentsDaily(Base):
    """Per branch, local day and payment type. Cash is net of the change handed back,
    so the amounts of a day add up to its revenue."""

    __tablename__ = "rpt_payments_daily"
    __table_args__ = (Index("ix_rpt_payments_daily_local_date", "local_date"),)

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    local_date: Mapped[date] = mapped_column(primary_key=True)
    payment_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    receipts: Mapped[int] = _count()
    amount: Mapped[int] = _amount()
    refunds: Mapped[int] = _count()
    refunds_amount: Mapped[int] = _amount()


class StockMovementDaily(Base):
    """The stock ledger summed per branch, local day, product and kind of movement
    (its ``doc_type``: goods_receipt, transfer_in, transfer_out, sale, customer_return,
    supplier_return, write_off, stocktake); write-offs also per reason. Quantities and
    cost values are signed (+ in, - out), so opening + movements = closing."""

    __tablename__ = "rpt_stock_movement_daily"
    # Chain-wide write-offs and stocktakes of a period without reading every sale row.
    __table_args__ = (
        Index("ix_rpt_stock_movement_daily_movement_local_date", "movement", "local_date"),
    )

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    local_date: Mapped[date] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    movement: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Write-off reason; "" for every other movement.
    reason: Mapped[str] = mapped_column(String(64), primary_key=True, default="")
    qty_milli: Mapped[int] = _amount()
    cost_value: Mapped[int] = _amount()


class StockMovementMonthly(Base):
    """The stock ledger summed per branch, calendar month (its first day), product and
    kind of movement: the daily table rolled up, so the stock movement report takes the
    stock before a period, and the full months inside it, from a dozen rows a year per
    product instead of a row per day. Signed like the daily table."""

    __tablename__ = "rpt_stock_movement_monthly"
    # Chain-wide reads of a month range (the key starts with the branch).
    __table_args__ = (Index("ix_rpt_stock_movement_monthly_month", "month"),)

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    # First day of the branch's local calendar month.
    month: Mapped[date] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    movement: Mapped[str] = mapped_column(String(32), primary_key=True)
    qty_milli: Mapped[int] = _amount()
    cost_value: Mapped[int] = _amount()


class StockClosingMonthly(Base):
    """The stock of a product at a branch at the end of a calendar month, one row per
    month in which it moved (a month without movement has no row: its closing is that
    of the latest earlier row). The movement report takes a period's opening from one
    row per product (the latest before the period's month) instead of summing every
    month before it. Kept at ingestion (a late movement is also added to the rows of
    the later months) and rebuilt as a running sum of the monthly movements."""

    __tablename__ = "rpt_stock_closing_monthly"

    # The key is the index the "latest month before" lookups walk backwards.
    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    # First day of the branch's local calendar month.
    month: Mapped[date] = mapped_column(primary_key=True)
    qty_milli: Mapped[int] = _amount()
    value: Mapped[int] = _amount()


class LastSellingPrice(Base):
    """The latest unit price each branch sold each product at: stock on hand is valued
    at retail with it (what the shelf price was when the product last sold)."""

    __tablename__ = "rpt_last_selling_price"

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    unit_price: Mapped[int] = _amount()
    sold_at: Mapped[datetime] = mapped_column()


class ShiftTotals(Base):
    """Per shift: what its receipts and returns recorded (the Z report's other side;
    the closing's own figures are on ``shifts``)."""

    __tablename__ = "rpt_shifts"
    __table_args__ = (Index("ix_rpt_shifts_local_date", "local_date"),)

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    shift_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    till: Mapped[str] = mapped_column(String(32), default="")
    # Local day of the shift's earliest receipt or return.
    local_date: Mapped[date] = mapped_column()
    receipts: Mapped[int] = _count()
    sales: Mapped[int] = _amount()
    returns: Mapped[int] = _count()
    returns_total: Mapped[int] = _amount()
    # Of returns_total, the returns without receipt: never a storno on the printer.
    no_receipt_returns_total: Mapped[int] = _amount()


class ShiftPaymentTotals(Base):
    """Per shift and payment type: recorded payments (cash net of change) and refunds."""

    __tablename__ = "rpt_shift_payments"

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    shift_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    payment_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    amount: Mapped[int] = _amount()
    refunds: Mapped[int] = _amount()


class _SummaryRow:
    """A per-product summary row as ingestion stores it in the backlog."""

    branch: Mapped[str] = mapped_column(String(32))
    local_date: Mapped[date] = mapped_column()
    month: Mapped[date] = mapped_column()
    sku: Mapped[str] = mapped_column(String(64))
    doc_type: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(64))
    # 0 stock document, 1 sale (receipt), 2 customer return.
    kind: Mapped[int] = mapped_column(Integer)
    # The ledger's quantity and value of the event for the product.
    qty: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[int] = mapped_column(BigInteger)
    # The event's line sums of the product (receipts and returns; 0 for documents).
    lq: Mapped[int] = mapped_column(BigInteger)
    revenue: Mapped[int] = mapped_column(BigInteger)
    vat: Mapped[int] = mapped_column(BigInteger)
    discounts: Mapped[int] = mapped_column(BigInteger)
    sold_at: Mapped[datetime | None] = mapped_column()
    price: Mapped[int | None] = mapped_column(BigInteger)


class SummaryBacklog(_SummaryRow, Base):
    """PostgreSQL: the per-product summary rows ingestion has stored but not yet added
    to their tables (product-day, chain product-day, movement day and month, monthly
    closing, last selling price).

    An ingest batch COPYs one row per event, product and ledger document type here, in
    its own transaction (so a stored event always has its row), instead of upserting
    ~13,000 summary rows under the other workers' noses; one applier at a time
    (``central.reports.backlog``) takes rows out and adds them to the tables in one
    transaction, every few seconds and before each report that reads them."""

    __tablename__ = "rpt_summary_backlog"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)


class SummaryRejected(_SummaryRow, Base):
    """Backlog rows the applier could not add to their tables (a sum beyond 64 bits):
    set aside one by one, so they never hold up the rows after them or the reports.
    Their events are stored; the reports leave these rows out (sync health counts
    them). Columns as the backlog's, with the database's error and when."""

    __tablename__ = "rpt_summary_rejected"

    # The row's id in the backlog.
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    error: Mapped[str] = mapped_column(Text)
    rejected_at: Mapped[datetime] = mapped_column(default=utcnow)
