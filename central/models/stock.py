"""The stock ledger (append-only movements with cost), its balance projection, transfers."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from central.models.base import Base, BigIntPK, utcnow

__all__ = ["StockBalance", "StockMovement", "StockTransfer", "StockTransferLine"]


class StockMovement(Base):
    """One movement of one product at one branch; never updated, never deleted.

    ``value`` is the signed cost of the movement in minor units (the moving average
    cost for outgoing goods, so margins can be computed from sales lines later);
    ``quantity_after``/``value_after``/``avg_cost_after`` are the balance right after
    it, so the projection can be rebuilt and checked from the ledger alone.
    """

    __tablename__ = "stock_ledger"
    __table_args__ = (
        # The ledger of one product at one branch, in posting order.
        Index("ix_stock_ledger_branch_sku_id", "branch", "sku", "id"),
        Index("ix_stock_ledger_event_id", "event_id"),
        # Monthly partitions of the branch's local day on PostgreSQL (migration 1301,
        # central/partitions.py). There the primary key is (id, local_date), as
        # PostgreSQL wants the partition key in it; id alone stays unique (one
        # sequence) and is the ORM identity.
        {"postgresql_partition_by": "RANGE (local_date)"},
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    branch: Mapped[str] = mapped_column(String(32))
    sku: Mapped[str] = mapped_column(String(64))
    # sale, customer_return, goods_receipt, write_off, transfer_out, transfer_in,
    # supplier_return, stocktake
    doc_type: Mapped[str] = mapped_column(String(32))
    # The source document: sale_id, return_id or the stock document's id.
    doc_ref: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[uuid.UUID] = mapped_column()
    line_no: Mapped[int] = mapped_column()
    quantity_milli: Mapped[int] = mapped_column(BigInteger)
    # Cost per whole unit (minor units) at which the movement was valued.
    unit_cost: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[int] = mapped_column(BigInteger)
    quantity_after: Mapped[int] = mapped_column(BigInteger)
    value_after: Mapped[int] = mapped_column(BigInteger)
    avg_cost_after: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime] = mapped_column()
    local_date: Mapped[date] = mapped_column()


class StockBalance(Base):
    """Projection of the ledger: what is on hand, its value and moving average cost."""

    __tablename__ = "stock_balances"

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    quantity_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    value: Mapped[int] = mapped_column(BigInteger, default=0)
    # Minor units per whole unit; kept while stock is zero or negative.
    avg_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    movements: Mapped[int] = mapped_column(BigInteger, default=0)


class StockTransfer(Base):
    """A transfer between branches, matched out (sender) and in (receiver) by its ref.

    Either side may arrive first; until both are in, the goods are in transit.
    """

    __tablename__ = "stock_transfers"
    __table_args__ = (
        Index("ix_stock_transfers_from_branch", "from_branch"),
        Index("ix_stock_transfers_to_branch", "to_branch"),
    )

    transfer_ref: Mapped[str] = mapped_column(String(64), primary_key=True)
    from_branch: Mapped[str | None] = mapped_column(String(32), default=None)
    to_branch: Mapped[str | None] = mapped_column(String(32), default=None)
    out_event_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    in_event_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    received_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StockTransferLine(Base):
    __tablename__ = "stock_transfer_lines"

    transfer_ref: Mapped[str] = mapped_column(String(64), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    sent_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    sent_value: Mapped[int] = mapped_column(BigInteger, default=0)
    received_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    received_value: Mapped[int] = mapped_column(BigInteger, default=0)
