"""Reading consolidated receipts."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import TypeVar

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from central.api.schemas import (
    Page,
    PaymentOut,
    ReceiptLineOut,
    ReceiptOut,
)
from central.models import Receipt, ReceiptLineRow
from central.services.paging import check_branch, check_period, paged
from protocol.units import format_milli

__all__ = ["ReceiptQuery", "branch_local_time", "list_receipts", "receipt_out"]

T = TypeVar("T")


class ReceiptQuery:
    def __init__(
        self,
        *,
        branch: str | None = None,
        till: str | None = None,
        date_from: date | None = None,
        date_to: date | None = None,
        fiscal_number: str | None = None,
        sku: str | None = None,
        late: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> None:
        check_period(date_from, date_to)
        self.branch = branch
        self.till = till
        self.date_from = date_from
        self.date_to = date_to
        self.fiscal_number = fiscal_number
        self.sku = sku
        self.late = late
        self.limit = limit
        self.offset = offset

    def where(self, stmt: Select[T]) -> Select[T]:
        if self.branch:
            stmt = stmt.where(Receipt.branch == self.branch)
        if self.till:
            stmt = stmt.where(Receipt.till == self.till)
        if self.date_from:
            stmt = stmt.where(Receipt.local_date >= self.date_from)
        if self.date_to:
            stmt = stmt.where(Receipt.local_date <= self.date_to)
        if self.fiscal_number:
            stmt = stmt.where(Receipt.fiscal_number == self.fiscal_number)
        if self.late is not None:
            stmt = stmt.where(Receipt.late == self.late)
        if self.sku:
            lines = select(ReceiptLineRow.receipt_id).where(ReceiptLineRow.sku == self.sku)
            # Lines carry their receipt's local day: only the months in range are read
            # (monthly partitions on PostgreSQL).
            if self.date_from:
                lines = lines.where(ReceiptLineRow.local_date >= self.date_from)
            if self.date_to:
                lines = lines.where(ReceiptLineRow.local_date <= self.date_to)
            stmt = stmt.where(Receipt.id.in_(lines))
        return stmt


def branch_local_time(at: datetime, utc_offset_min: int) -> str:
    """``at`` on the branch's clock as it was then (the offset its event carried), ISO
    8601 with the offset: for people reading it beside the UTC moment."""
    return at.astimezone(timezone(timedelta(minutes=utc_offset_min))).isoformat()


def receipt_out(receipt: Receipt) -> ReceiptOut:
    return ReceiptOut(
        id=receipt.id,
        event_id=str(receipt.event_id),
        branch=receipt.branch,
        till=receipt.till,
        shift_id=receipt.shift_id,
        receipt_number=receipt.receipt_number,
        sale_id=receipt.sale_id,
        cashier=receipt.cashier,
        occurred_at=receipt.occurred_at,
        occurred_at_local=branch_local_time(receipt.occurred_at, receipt.utc_offset_min),
        local_date=receipt.local_date,
        total=receipt.total,
        change=receipt.change,
        currency=receipt.currency,
        fiscal_number=receipt.fiscal_number,
        late=receipt.late,
        negative_stock=receipt.negative_stock,
        lines=[
            ReceiptLineOut(
                line_no=line.line_no,
                sku=line.sku,
                name=line.name,
                barcode=line.barcode,
                quantity=format_milli(line.quantity_milli),
                quantity_milli=line.quantity_milli,
                unit_price=line.unit_price,
                discount=line.discount,
                vat_rate_bp=line.vat_rate_bp,
                line_total=line.line_total,
            )
            for line in receipt.lines
        ],
        payments=[PaymentOut(type=p.type, amount=p.amount) for p in receipt.payments],
        fiscalized_at=receipt.fiscalized_at,
    )


async def list_receipts(session: AsyncSession, query: ReceiptQuery) -> Page[ReceiptOut]:
    await check_branch(session, query.branch)
    stmt = (
        query.where(select(Receipt))
        .options(selectinload(Receipt.lines), selectinload(Receipt.payments))
        # By the branches' local day, then time: a range of days is one index range.
        .order_by(Receipt.local_date, Receipt.occurred_at, Receipt.id)
        .limit(query.limit)
        .offset(query.offset)
    )
    rows = (await session.scalars(stmt)).all()
    return await paged(
        session,
        [receipt_out(r) for r in rows],
        query.where(select(Receipt.id)),
        limit=query.limit,
        offset=query.offset,
    )
