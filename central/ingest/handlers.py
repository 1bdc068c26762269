"""Effects of each event kind, applied in the ingesting transaction.

A handler receives the session of the batch's transaction and one new (never seen
before) event. It must only add rows; the caller commits, and acks after commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date

from sqlalchemy.ext.asyncio import AsyncSession

from central.models import Receipt, ReceiptLineRow, ReceiptPaymentRow
from protocol.events import BranchEvent, EventEnvelope, ReceiptRecorded

__all__ = ["EventContext", "Handler", "handler_for", "register_handler"]


@dataclass(frozen=True, slots=True)
class EventContext:
    envelope: EventEnvelope
    local_date: date


Handler = Callable[[AsyncSession, EventContext], Awaitable[None]]

_HANDLERS: dict[type[BranchEvent], Handler] = {}


def register_handler(event_type: type[BranchEvent]) -> Callable[[Handler], Handler]:
    def decorate(handler: Handler) -> Handler:
        _HANDLERS[event_type] = handler
        return handler

    return decorate


def handler_for(event: BranchEvent) -> Handler | None:
    return _HANDLERS.get(type(event))


@register_handler(ReceiptRecorded)
async def apply_receipt(session: AsyncSession, ctx: EventContext) -> None:
    envelope = ctx.envelope
    body = envelope.body
    assert isinstance(body, ReceiptRecorded)
    receipt = Receipt(
        event_id=envelope.event_id,
        branch=envelope.branch,
        till=body.till,
        shift_id=body.shift_id,
        receipt_number=body.receipt_number,
        sale_id=body.sale_id,
        cashier=body.cashier,
        occurred_at=envelope.occurred_at,
        utc_offset_min=envelope.utc_offset_min,
        local_date=ctx.local_date,
        total=body.total,
        change=body.change,
        currency=body.currency,
        fiscal_number=body.fiscal_number,
    )
    session.add(receipt)
    await session.flush()
    session.add_all(
        ReceiptLineRow(
            receipt_id=receipt.id,
            line_no=line.line_no,
            sku=line.sku,
            name=line.name,
            barcode=line.barcode,
            quantity_milli=line.quantity_milli,
            unit_price=line.unit_price,
            discount=line.discount,
            vat_rate_bp=line.vat_rate_bp,
            line_total=line.line_total,
        )
        for line in body.lines
    )
    session.add_all(
        ReceiptPaymentRow(receipt_id=receipt.id, type=p.type, amount=p.amount)
        for p in body.payments
    )
