"""Sales and customer returns: stored in bulk, flagged late or negative-stock, never refused."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import date
from typing import Any

import msgspec
from sqlalchemy import select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from central.ingest.bulk import allocate_ids, insert_rows, insert_tuples, is_postgresql, table_of
from central.ingest.registry import (
    EARLY_STAGE,
    EventContext,
    IngestBatch,
    register_batch_handler,
)
from central.models import (
    ClosedDay,
    CustomerReturn,
    CustomerReturnLineRow,
    Receipt,
    ReceiptLineRow,
    ReceiptPaymentRow,
    Shift,
)
from protocol.events import CustomerReturnRecorded, ReceiptRecorded

__all__ = ["closed_days_of", "late_events"]


async def closed_days_of(
    session: AsyncSession, day_keys: set[tuple[str, date]]
) -> set[tuple[str, date]]:
    """The (branch, local day) of ``day_keys`` that head office has closed."""
    if not day_keys:
        return set()
    return {
        (r.branch, r.local_date)
        for r in await session.execute(
            select(ClosedDay.branch, ClosedDay.local_date).where(
                tuple_(ClosedDay.branch, ClosedDay.local_date).in_(day_keys)
            )
        )
    }


async def late_events(session: AsyncSession, contexts: Sequence[EventContext]) -> set[uuid.UUID]:
    """Events filed into a shift or a local day that central had already closed."""
    shift_keys: set[tuple[str, str]] = set()
    day_keys: set[tuple[str, date]] = set()
    for ctx in contexts:
        body = ctx.envelope.body
        assert isinstance(body, ReceiptRecorded | CustomerReturnRecorded)
        shift_keys.add((ctx.envelope.branch, body.shift_id))
        day_keys.add((ctx.envelope.branch, ctx.local_date))
    closed_shifts = {
        (r.branch, r.shift_id)
        for r in await session.execute(
            select(Shift.branch, Shift.shift_id).where(
                tuple_(Shift.branch, Shift.shift_id).in_(shift_keys),
                Shift.close_received_at.is_not(None),
            )
        )
    }
    closed_days = await closed_days_of(session, day_keys)
    late: set[uuid.UUID] = set()
    for ctx in contexts:
        body = ctx.envelope.body
        assert isinstance(body, ReceiptRecorded | CustomerReturnRecorded)
        if (ctx.envelope.branch, body.shift_id) in closed_shifts or (
            ctx.envelope.branch,
            ctx.local_date,
        ) in closed_days:
            late.add(ctx.envelope.event_id)
    return late


_RECEIPT_COLUMNS = (
    "id",
    "event_id",
    "branch",
    "till",
    "shift_id",
    "receipt_number",
    "sale_id",
    "cashier",
    "occurred_at",
    "utc_offset_min",
    "local_date",
    "total",
    "change",
    "currency",
    "fiscal_number",
    "late",
    "negative_stock",
    "voided_lines",
)
_LINE_COLUMNS = (
    "receipt_id",
    "line_no",
    "sku",
    "name",
    "barcode",
    "quantity_milli",
    "unit_price",
    "discount",
    "vat_rate_bp",
    "line_total",
    "manual_discount",
    "promotion_id",
    "local_date",
)
_PAYMENT_COLUMNS = ("receipt_id", "type", "amount")


@register_batch_handler(ReceiptRecorded, stage=EARLY_STAGE)
async def store_receipts(
    session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
) -> None:
    """Stored before the stock handler takes its balance locks (nothing here waits on
    another worker), with ``negative_stock`` set afterwards by :func:`flag_negative_stock`."""
    late = await late_events(session, contexts)
    ids = await allocate_ids(session, table_of(Receipt), len(contexts))
    # Tuples in the column orders below: no per-row dicts on the hot path.
    receipts: list[tuple[Any, ...]] = []
    lines: list[tuple[Any, ...]] = []
    payments: list[tuple[Any, ...]] = []
    for receipt_id, ctx in zip(ids, contexts, strict=True):
        env = ctx.envelope
        body = env.body
        assert isinstance(body, ReceiptRecorded)
        day = ctx.local_date
        receipts.append(
            (
                receipt_id,
                env.event_id,
                env.branch,
                body.till,
                body.shift_id,
                body.receipt_number,
                body.sale_id,
                body.cashier,
                env.occurred_at,
                env.utc_offset_min,
                day,
                body.total,
                body.change,
                body.currency,
                body.fiscal_number,
                env.event_id in late,
                False,
                body.voided_lines,
            )
        )
        lines.extend(
            (
                receipt_id,
                line.line_no,
                line.sku,
                line.name,
                line.barcode,
                line.quantity_milli,
                line.unit_price,
                line.discount,
                line.vat_rate_bp,
                line.line_total,
                line.manual_discount,
                line.promotion_id,
                day,
            )
            for line in body.lines
        )
        payments.extend((receipt_id, p.type, p.amount) for p in body.payments)
    await insert_tuples(session, table_of(Receipt), _RECEIPT_COLUMNS, receipts)
    await insert_tuples(session, table_of(ReceiptLineRow), _LINE_COLUMNS, lines)
    await insert_tuples(session, table_of(ReceiptPaymentRow), _PAYMENT_COLUMNS, payments)


_PG_FLAG_NEGATIVE = text(
    "UPDATE receipts SET negative_stock = true WHERE event_id = ANY(CAST(:ids AS uuid[]))"
)


@register_batch_handler(ReceiptRecorded, stage=15)
async def flag_negative_stock(
    session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
) -> None:
    """Flag the receipts of this batch that drove a stock balance negative (the stock
    handler, stage 10, found them; the receipts were stored before it)."""
    negative: set[uuid.UUID] = batch.notes.get("negative_stock", set())
    ids = [c.envelope.event_id for c in contexts if c.envelope.event_id in negative]
    if not ids:
        return
    if is_postgresql(session):
        await session.execute(_PG_FLAG_NEGATIVE, {"ids": ids})
        return
    for start in range(0, len(ids), 500):
        await session.execute(
            update(Receipt)
            .where(Receipt.event_id.in_(ids[start : start + 500]))
            .values(negative_stock=True)
        )


@register_batch_handler(CustomerReturnRecorded, stage=EARLY_STAGE)
async def store_customer_returns(
    session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
) -> None:
    late = await late_events(session, contexts)
    returns: list[dict[str, object]] = []
    lines: list[dict[str, object]] = []
    for ctx in contexts:
        env = ctx.envelope
        body = env.body
        assert isinstance(body, CustomerReturnRecorded)
        returns.append(
            {
                "event_id": env.event_id,
                "branch": env.branch,
                "till": body.till,
                "shift_id": body.shift_id,
                "return_number": body.return_number,
                "return_id": body.return_id,
                "original_sale_id": body.original_sale_id,
                "original_till": body.original_till,
                "cashier": body.cashier,
                "occurred_at": env.occurred_at,
                "utc_offset_min": env.utc_offset_min,
                "local_date": ctx.local_date,
                "total": body.total,
                "currency": body.currency,
                "fiscal_number": body.fiscal_number,
                "reason": body.reason,
                "without_receipt": body.without_receipt,
                "approved_by": body.approved_by,
                "refunds": msgspec.to_builtins(body.refunds),
                "late": env.event_id in late,
            }
        )
        lines.extend(
            {
                "event_id": env.event_id,
                "line_no": line.line_no,
                "sku": line.sku,
                "name": line.name,
                "quantity_milli": line.quantity_milli,
                "unit_price": line.unit_price,
                "discount": line.discount,
                "vat_rate_bp": line.vat_rate_bp,
                "line_total": line.line_total,
            }
            for line in body.lines
        )
    await insert_rows(session, table_of(CustomerReturn), returns)
    await insert_rows(session, table_of(CustomerReturnLineRow), lines)
