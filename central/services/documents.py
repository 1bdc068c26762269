"""Reading stock documents and customer returns as the branches posted them."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import msgspec
from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.schemas import Page
from central.errors import NotFoundError, ValidationFailed
from central.models import (
    CustomerReturn,
    CustomerReturnLineRow,
    StockDocument,
    StockDocumentLineRow,
)
from central.services.paging import check_branch, check_period, paged
from central.services.receipts import branch_local_time
from protocol.units import format_milli

__all__ = [
    "DOCUMENT_TYPES",
    "CustomerReturnOut",
    "StockDocumentOut",
    "get_document",
    "list_customer_returns",
    "list_documents",
]

DOCUMENT_TYPES = (
    "goods_receipt",
    "write_off",
    "transfer_out",
    "transfer_in",
    "supplier_return",
    "stocktake",
)


class DocumentLineOut(msgspec.Struct, kw_only=True):
    line_no: int
    sku: str
    quantity: str
    quantity_milli: int
    unit_cost: int | None
    expected_milli: int | None
    counted_milli: int | None
    # Cost value of the line in the ledger (signed).
    value: int


class StockDocumentOut(msgspec.Struct, kw_only=True):
    event_id: str
    branch: str
    document_id: str
    doc_type: str
    number: str
    supplier: str | None
    counterpart_branch: str | None
    transfer_ref: str | None
    reason: str | None
    author: str
    occurred_at: datetime
    # The branch's local time, for people reading it.
    occurred_at_local: str
    local_date: date
    value: int
    negative_stock: bool
    # Filed into a local day head office had already closed (see closed days).
    late: bool = False
    lines: list[DocumentLineOut]
    # A document sent in parts (more lines than one message carries, e.g. a whole
    # store's stocktake): the list shows each part (``part``), the document's own
    # address all of them together (``part`` null, every line, values summed).
    # ``parts_received`` below ``parts``: the rest are still on their way.
    part: int | None = 1
    parts: int = 1
    parts_received: int = 1


class ReturnLineOut(msgspec.Struct, kw_only=True):
    line_no: int
    sku: str
    name: str
    quantity: str
    quantity_milli: int
    unit_price: int
    discount: int
    vat_rate_bp: int
    line_total: int


class CustomerReturnOut(msgspec.Struct, kw_only=True):
    event_id: str
    branch: str
    till: str
    shift_id: str
    return_number: int
    return_id: str
    # None: a return without receipt.
    original_sale_id: str | None
    # The original sale's till (sale ids are per till); None: not known.
    original_till: str | None
    cashier: str
    occurred_at: datetime
    # The branch's local time, for people reading it.
    occurred_at_local: str
    local_date: date
    total: int
    currency: str
    fiscal_number: str | None
    reason: str
    refunds: list[dict[str, Any]]
    late: bool
    lines: list[ReturnLineOut]
    # As a receipt's: set only when the fiscal number came late.
    fiscalized_at: datetime | None = None
    # No original receipt: approved at the store by approved_by (the manager).
    without_receipt: bool = False
    approved_by: str = ""


async def list_documents(
    session: AsyncSession,
    *,
    branch: str | None,
    doc_type: str | None,
    date_from: date | None,
    date_to: date | None,
    sku: str | None,
    limit: int,
    offset: int,
    late: bool | None = None,
) -> Page[StockDocumentOut]:
    await check_branch(session, branch)
    check_period(date_from, date_to)
    if doc_type and doc_type not in DOCUMENT_TYPES:
        raise ValidationFailed(
            f"doc_type must be one of {', '.join(DOCUMENT_TYPES)}", field="doc_type"
        )
    d = StockDocument
    conditions: list[Any] = []
    if branch:
        conditions.append(d.branch == branch)
    if doc_type:
        conditions.append(d.doc_type == doc_type)
    if date_from:
        conditions.append(d.local_date >= date_from)
    if date_to:
        conditions.append(d.local_date <= date_to)
    if late is not None:
        conditions.append(d.late == late)
    if sku:
        conditions.append(
            d.event_id.in_(
                select(StockDocumentLineRow.event_id).where(StockDocumentLineRow.sku == sku)
            )
        )
    docs = (
        await session.scalars(
            select(d)
            .where(*conditions)
            .order_by(d.occurred_at, d.event_id)
            .limit(limit)
            .offset(offset)
        )
    ).all()
    return await paged(
        session,
        await _with_lines(session, list(docs)),
        select(d.event_id).where(*conditions),
        limit=limit,
        offset=offset,
    )


async def get_document(session: AsyncSession, branch: str, document_id: str) -> StockDocumentOut:
    """The whole document: every part received, lines in the document's order."""
    docs = (
        await session.scalars(
            select(StockDocument)
            .where(StockDocument.branch == branch, StockDocument.document_id == document_id)
            .order_by(StockDocument.part)
        )
    ).all()
    if not docs:
        raise NotFoundError(
            f"document {document_id!r} of {branch!r} not found", field="document_id"
        )
    parts = await _with_lines(session, list(docs))
    whole = parts[0]
    whole.part = None
    whole.value = sum(x.value for x in parts)
    whole.negative_stock = any(x.negative_stock for x in parts)
    whole.late = any(x.late for x in parts)
    whole.lines = [line for x in parts for line in x.lines]
    return whole


async def _with_lines(session: AsyncSession, docs: list[StockDocument]) -> list[StockDocumentOut]:
    lines: dict[uuid.UUID, list[DocumentLineOut]] = {}
    received: dict[tuple[str, str], int] = {}
    several = {(x.branch, x.document_id) for x in docs if x.parts > 1}
    if several:
        d = StockDocument
        received = {
            (branch, document_id): count
            for branch, document_id, count in await session.execute(
                select(d.branch, d.document_id, func.count())
                .where(tuple_(d.branch, d.document_id).in_(sorted(several)))
                .group_by(d.branch, d.document_id)
            )
        }
    if docs:
        for line in await session.scalars(
            select(StockDocumentLineRow)
            .where(StockDocumentLineRow.event_id.in_([x.event_id for x in docs]))
            .order_by(StockDocumentLineRow.event_id, StockDocumentLineRow.line_no)
        ):
            lines.setdefault(line.event_id, []).append(
                DocumentLineOut(
                    line_no=line.line_no,
                    sku=line.sku,
                    quantity=format_milli(line.quantity_milli),
                    quantity_milli=line.quantity_milli,
                    unit_cost=line.unit_cost,
                    expected_milli=line.expected_milli,
                    counted_milli=line.counted_milli,
                    value=line.value,
                )
            )
    return [
        StockDocumentOut(
            event_id=str(x.event_id),
            branch=x.branch,
            document_id=x.document_id,
            doc_type=x.doc_type,
            number=x.number,
            supplier=x.supplier,
            counterpart_branch=x.counterpart_branch,
            transfer_ref=x.transfer_ref,
            reason=x.reason,
            author=x.author,
            occurred_at=x.occurred_at,
            occurred_at_local=branch_local_time(x.occurred_at, x.utc_offset_min),
            local_date=x.local_date,
            value=x.value,
            negative_stock=x.negative_stock,
            late=x.late,
            lines=lines.get(x.event_id, []),
            part=x.part,
            parts=x.parts,
            parts_received=received.get((x.branch, x.document_id), 1),
        )
        for x in docs
    ]


async def list_customer_returns(
    session: AsyncSession,
    *,
    branch: str | None,
    date_from: date | None,
    date_to: date | None,
    original_sale_id: str | None,
    limit: int,
    original_till: str | None = None,
    offset: int,
    late: bool | None = None,
) -> Page[CustomerReturnOut]:
    await check_branch(session, branch)
    check_period(date_from, date_to)
    r = CustomerReturn
    conditions: list[Any] = []
    if branch:
        conditions.append(r.branch == branch)
    if date_from:
        conditions.append(r.local_date >= date_from)
    if date_to:
        conditions.append(r.local_date <= date_to)
    if original_sale_id:
        conditions.append(r.original_sale_id == original_sale_id)
    if original_till:
        conditions.append(r.original_till == original_till)
    if late is not None:
        conditions.append(r.late == late)
    rows = (
        await session.scalars(
            select(r)
            .where(*conditions)
            .order_by(r.occurred_at, r.event_id)
            .limit(limit)
            .offset(offset)
        )
    ).all()
    lines: dict[uuid.UUID, list[ReturnLineOut]] = {}
    if rows:
        for line in await session.scalars(
            select(CustomerReturnLineRow)
            .where(CustomerReturnLineRow.event_id.in_([x.event_id for x in rows]))
            .order_by(CustomerReturnLineRow.event_id, CustomerReturnLineRow.line_no)
        ):
            lines.setdefault(line.event_id, []).append(
                ReturnLineOut(
                    line_no=line.line_no,
                    sku=line.sku,
                    name=line.name,
                    quantity=format_milli(line.quantity_milli),
                    quantity_milli=line.quantity_milli,
                    unit_price=line.unit_price,
                    discount=line.discount,
                    vat_rate_bp=line.vat_rate_bp,
                    line_total=line.line_total,
                )
            )
    return await paged(
        session,
        [
            CustomerReturnOut(
                event_id=str(x.event_id),
                branch=x.branch,
                till=x.till,
                shift_id=x.shift_id,
                return_number=x.return_number,
                return_id=x.return_id,
                original_sale_id=x.original_sale_id,
                original_till=x.original_till,
                without_receipt=x.without_receipt,
                approved_by=x.approved_by,
                cashier=x.cashier,
                occurred_at=x.occurred_at,
                occurred_at_local=branch_local_time(x.occurred_at, x.utc_offset_min),
                local_date=x.local_date,
                total=x.total,
                currency=x.currency,
                fiscal_number=x.fiscal_number,
                reason=x.reason,
                refunds=list(x.refunds),
                late=x.late,
                lines=lines.get(x.event_id, []),
                fiscalized_at=x.fiscalized_at,
            )
            for x in rows
        ],
        select(r.event_id).where(*conditions),
        limit=limit,
        offset=offset,
    )
