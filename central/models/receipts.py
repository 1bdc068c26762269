"""Consolidated sales: receipts with their lines and payments."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from central.models.base import Base, BigIntPK

__all__ = ["Receipt", "ReceiptLineRow", "ReceiptPaymentRow"]


class Receipt(Base):
    __tablename__ = "receipts"
    __table_args__ = (
        # A sale id is the till's (the agent's key): two tills may use the same one.
        UniqueConstraint("branch", "till", "sale_id"),
        # The receipt list's order (local day, time, id) after its date range, with or
        # without a branch: one index range gives a page.
        Index(
            "ix_receipts_branch_local_date_occurred_at_id",
            "branch",
            "local_date",
            "occurred_at",
            "id",
        ),
        Index("ix_receipts_local_date_occurred_at_id", "local_date", "occurred_at", "id"),
        Index("ix_receipts_fiscal_number", "fiscal_number"),
        # Shift totals beside the Z report.
        Index("ix_receipts_branch_shift_id", "branch", "shift_id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    branch: Mapped[str] = mapped_column(String(32))
    till: Mapped[str] = mapped_column(String(32))
    shift_id: Mapped[str] = mapped_column(String(64))
    receipt_number: Mapped[int] = mapped_column(BigInteger)
    sale_id: Mapped[str] = mapped_column(String(64))
    cashier: Mapped[str] = mapped_column(String(64), default="")
    occurred_at: Mapped[datetime] = mapped_column()
    utc_offset_min: Mapped[int] = mapped_column(default=0)
    local_date: Mapped[date] = mapped_column()
    total: Mapped[int] = mapped_column(BigInteger)
    change: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    fiscal_number: Mapped[str | None] = mapped_column(String(64), default=None)
    # Set only with a fiscal number that came late (``late_fiscal_number``: completed
    # without the printer, printed after all): when the printer printed it.
    fiscalized_at: Mapped[datetime | None] = mapped_column(default=None)
    # Flags for the back office: accepted, never refused (a sale that happened).
    late: Mapped[bool] = mapped_column(default=False)
    negative_stock: Mapped[bool] = mapped_column(default=False)
    # Lines voided before the receipt closed (loss prevention). None: stored before
    # central kept it (migration 1102).
    voided_lines: Mapped[int | None] = mapped_column(Integer, default=0)

    # Joined on the local day too: loading a receipt's lines then reads only its
    # month's partition of receipt_lines (PostgreSQL), not every month's index.
    lines: Mapped[list[ReceiptLineRow]] = relationship(
        back_populates="receipt",
        primaryjoin="and_(Receipt.id == foreign(ReceiptLineRow.receipt_id), "
        "Receipt.local_date == foreign(ReceiptLineRow.local_date))",
        order_by="ReceiptLineRow.line_no",
        lazy="raise",
    )
    payments: Mapped[list[ReceiptPaymentRow]] = relationship(back_populates="receipt", lazy="raise")


class ReceiptLineRow(Base):
    __tablename__ = "receipt_lines"
    __table_args__ = (
        Index("ix_receipt_lines_sku", "sku"),
        # Monthly partitions of the receipt's local day on PostgreSQL (migration 1302,
        # central/partitions.py); the primary key there is (id, local_date), id alone
        # stays unique (one sequence) and is the ORM identity.
        {"postgresql_partition_by": "RANGE (local_date)"},
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    receipt_id: Mapped[int] = mapped_column(
        ForeignKey("receipts.id", ondelete="CASCADE"), index=True
    )
    line_no: Mapped[int] = mapped_column()
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    barcode: Mapped[str | None] = mapped_column(String(64), default=None)
    quantity_milli: Mapped[int] = mapped_column(BigInteger)
    unit_price: Mapped[int] = mapped_column(BigInteger)
    discount: Mapped[int] = mapped_column(BigInteger, default=0)
    vat_rate_bp: Mapped[int] = mapped_column()
    line_total: Mapped[int] = mapped_column(BigInteger)
    # The discount was keyed in by the cashier (loss prevention). None: stored before
    # central kept it (migration 1102).
    manual_discount: Mapped[bool | None] = mapped_column(default=False)
    promotion_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # The receipt's local day, repeated on the line: the partition key (migration 1302).
    local_date: Mapped[date] = mapped_column()

    receipt: Mapped[Receipt] = relationship(
        back_populates="lines",
        primaryjoin="and_(Receipt.id == foreign(ReceiptLineRow.receipt_id), "
        "Receipt.local_date == foreign(ReceiptLineRow.local_date))",
        lazy="raise",
    )


class ReceiptPaymentRow(Base):
    __tablename__ = "receipt_payments"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    receipt_id: Mapped[int] = mapped_column(
        ForeignKey("receipts.id", ondelete="CASCADE"), index=True
    )
    type: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)

    receipt: Mapped[Receipt] = relationship(back_populates="payments", lazy="raise")
