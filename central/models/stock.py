"""The stock ledger (append-only movements with cost), its balance projection, transfers."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, Index, String
from sqlalchemy import false as sa_false
from sqlalchemy.orm import Mapped, mapped_column

from central.models.base import Base, BigIntPK, utcnow

__all__ = [
    "StockBalance",
    "StockMovement",
    "StockTransfer",
    "StockTransferDiscrepancy",
    "StockTransferLine",
]


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

    Either side may arrive first. The transfer's out is the first transfer-out document
    stored for the ref (all its parts); it is received by the first transfer-in
    document of the branch the out names (all its parts), or, while the out is not at
    central, of any branch (re-filed as a wrong receiver's if the out then names
    another). Every other document quoting the ref is a discrepancy
    (:class:`StockTransferDiscrepancy`), never merged into the lines. ``from_branch``
    and ``to_branch`` are the out's when it is in, else what the receipt says.
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
    # The transfer-out document (its branch is from_branch) and its parts at central.
    out_document_id: Mapped[str | None] = mapped_column(String(64), default=None)
    out_parts: Mapped[int] = mapped_column(default=0, server_default="0")
    out_parts_received: Mapped[int] = mapped_column(default=0, server_default="0")
    # The transfer-in document that received it: its branch, the sender it named, parts.
    in_branch: Mapped[str | None] = mapped_column(String(32), default=None)
    in_counterpart: Mapped[str | None] = mapped_column(String(32), default=None)
    in_document_id: Mapped[str | None] = mapped_column(String(64), default=None)
    in_parts: Mapped[int] = mapped_column(default=0, server_default="0")
    in_parts_received: Mapped[int] = mapped_column(default=0, server_default="0")
    # A discrepancy row exists, or both documents are whole and a line differs.
    has_discrepancies: Mapped[bool] = mapped_column(default=False, server_default=sa_false())


class StockTransferDiscrepancy(Base):
    """Something about a transfer that head office must see, stored when central sees it.

    One row per transfer, kind and document (the parts of a document add up into its
    row): ``wrong_receiver`` (a transfer in from a branch the out does not name),
    ``wrong_sender`` (the receipt names another sender than the out's branch),
    ``received_twice`` (another transfer-in document after the one that received it),
    ``sent_twice`` (another transfer-out document under the same ref),
    ``unknown_branch`` (the document names a branch central does not know, or none).
    The goods of a document kept apart (wrong receiver, received or sent twice) are
    summed here, not on the transfer's lines; their stock effects stand (never refused).
    """

    __tablename__ = "stock_transfer_discrepancies"

    transfer_ref: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The branch whose document it is, and the document.
    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    document_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The other branch the document names, and what central expected there.
    counterpart: Mapped[str | None] = mapped_column(String(32), default=None)
    expected: Mapped[str | None] = mapped_column(String(64), default=None)
    quantity_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    value: Mapped[int] = mapped_column(BigInteger, default=0)
    event_id: Mapped[uuid.UUID] = mapped_column()
    detected_at: Mapped[datetime] = mapped_column(default=utcnow)


class StockTransferLine(Base):
    __tablename__ = "stock_transfer_lines"

    transfer_ref: Mapped[str] = mapped_column(String(64), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    sent_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    sent_value: Mapped[int] = mapped_column(BigInteger, default=0)
    received_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    received_value: Mapped[int] = mapped_column(BigInteger, default=0)
