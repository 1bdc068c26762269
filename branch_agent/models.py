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
    "Counter",
    "OutboxEvent",
    "Product",
    "ProductBarcode",
    "Sale",
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
    # recorded -> fiscalized; pending_fiscal while the printer could not finish it.
    status: Mapped[str] = mapped_column(String(16), default="recorded")
    fiscal_number: Mapped[str | None] = mapped_column(String(64), default=None)
    # The priced receipt (protocol ReceiptRecorded, as JSON) returned to a retrying till.
    receipt: Mapped[dict[str, Any]] = mapped_column(JSON)
    event_id: Mapped[uuid.UUID | None] = mapped_column(default=None)


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
