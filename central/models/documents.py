"""Stock documents (goods receipts, write-offs, transfers, supplier returns, stocktakes)
and customer returns, as the branches posted them."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, String, Text, UniqueConstraint
from sqlalchemy import false as sa_false
from sqlalchemy.orm import Mapped, mapped_column

from central.models.base import Base

__all__ = [
    "CustomerReturn",
    "CustomerReturnLineRow",
    "StockDocument",
    "StockDocumentLineRow",
]


class StockDocument(Base):
    __tablename__ = "stock_documents"
    __table_args__ = (
        UniqueConstraint("branch", "document_id", "part"),
        Index("ix_stock_documents_branch_local_date", "branch", "local_date"),
        Index("ix_stock_documents_transfer_ref", "transfer_ref"),
    )

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    branch: Mapped[str] = mapped_column(String(32))
    document_id: Mapped[str] = mapped_column(String(64))
    doc_type: Mapped[str] = mapped_column(String(32))
    number: Mapped[str] = mapped_column(String(64), default="")
    supplier: Mapped[str | None] = mapped_column(String(200), default=None)
    counterpart_branch: Mapped[str | None] = mapped_column(String(32), default=None)
    transfer_ref: Mapped[str | None] = mapped_column(String(64), default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    author: Mapped[str] = mapped_column(String(64), default="")
    occurred_at: Mapped[datetime] = mapped_column()
    utc_offset_min: Mapped[int] = mapped_column(default=0)
    local_date: Mapped[date] = mapped_column()
    # Sum of the lines' cost values (signed, minor units).
    value: Mapped[int] = mapped_column(BigInteger, default=0)
    negative_stock: Mapped[bool] = mapped_column(default=False)
    # Filed into a local day head office had already closed (stored anyway).
    late: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    # A document sent in parts (more lines than one message carries): one row per part.
    part: Mapped[int] = mapped_column(default=1, server_default="1")
    parts: Mapped[int] = mapped_column(default=1, server_default="1")


class StockDocumentLineRow(Base):
    __tablename__ = "stock_document_lines"

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    line_no: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(64))
    quantity_milli: Mapped[int] = mapped_column(BigInteger)
    unit_cost: Mapped[int | None] = mapped_column(BigInteger, default=None)
    expected_milli: Mapped[int | None] = mapped_column(BigInteger, default=None)
    counted_milli: Mapped[int | None] = mapped_column(BigInteger, default=None)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class CustomerReturn(Base):
    __tablename__ = "customer_returns"
    __table_args__ = (
        # A return id is the till's, as a sale id is (the agent's key).
        UniqueConstraint("branch", "till", "return_id"),
        Index("ix_customer_returns_branch_local_date", "branch", "local_date"),
        Index("ix_customer_returns_original_sale_id", "original_sale_id"),
    )

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    branch: Mapped[str] = mapped_column(String(32))
    till: Mapped[str] = mapped_column(String(32))
    shift_id: Mapped[str] = mapped_column(String(64))
    return_number: Mapped[int] = mapped_column(BigInteger)
    return_id: Mapped[str] = mapped_column(String(64))
    # None: a return without receipt (``without_receipt``, migration 1901).
    original_sale_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # The till of the original sale (sale ids are per till). None: not known (sent by
    # an agent before this field, and no single receipt of the branch under that id).
    original_till: Mapped[str | None] = mapped_column(String(32), default=None)
    # No original receipt, approved at the store by the manager named in approved_by.
    without_receipt: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    approved_by: Mapped[str] = mapped_column(String(64), default="", server_default="")
    cashier: Mapped[str] = mapped_column(String(64), default="")
    occurred_at: Mapped[datetime] = mapped_column()
    utc_offset_min: Mapped[int] = mapped_column(default=0)
    local_date: Mapped[date] = mapped_column()
    total: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    fiscal_number: Mapped[str | None] = mapped_column(String(64), default=None)
    # As a receipt's: set only with a fiscal number that came late.
    fiscalized_at: Mapped[datetime | None] = mapped_column(default=None)
    reason: Mapped[str] = mapped_column(Text, default="")
    refunds: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    late: Mapped[bool] = mapped_column(default=False)


class CustomerReturnLineRow(Base):
    __tablename__ = "customer_return_lines"
    __table_args__ = (Index("ix_customer_return_lines_sku", "sku"),)

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    line_no: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    quantity_milli: Mapped[int] = mapped_column(BigInteger)
    unit_price: Mapped[int] = mapped_column(BigInteger)
    discount: Mapped[int] = mapped_column(BigInteger, default=0)
    vat_rate_bp: Mapped[int] = mapped_column()
    line_total: Mapped[int] = mapped_column(BigInteger)
