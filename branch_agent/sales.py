"""Recording a sale: price it from the local catalog, commit it with its outbox event.

The sale and its event are one SQLite transaction, so a sale the till was told
about is never lost and never sent twice. The till's sale id makes the call
idempotent: posting the same sale again returns the original receipt.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from branch_agent.catalog import CatalogItem, find_product
from branch_agent.errors import Rejected
from branch_agent.models import Sale
from branch_agent.outbox import append_event, next_counter
from branch_agent.schemas import PaymentIn, SaleIn, SaleLineOut, SaleOut
from branch_agent.settings import AgentSettings
from protocol.events import Payment, ReceiptLine, ReceiptRecorded
from protocol.units import format_milli, line_amount, parse_milli

__all__ = ["SaleService", "sale_out"]


class SaleService:
    def __init__(
        self,
        settings: AgentSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        write_lock: asyncio.Lock,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        # One writer at a time: SQLite would otherwise answer "database is locked".
        self._write_lock = write_lock

    async def record_sale(self, till: str, sale: SaleIn) -> tuple[SaleOut, bool]:
        """Returns the receipt and whether it was created now (False: a repeat)."""
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            existing = await session.scalar(
                select(Sale).where(Sale.till == till, Sale.sale_id == sale.sale_id)
            )
            if existing is not None:
                return sale_out(existing), False
            receipt = await self._price(session, till, sale)
            envelope = await append_event(
                session,
                branch=self._settings.branch,
                timezone=self._settings.timezone,
                body=receipt,
            )
            row = Sale(
                till=till,
                sale_id=sale.sale_id,
                shift_id=receipt.shift_id,
                receipt_number=receipt.receipt_number,
                cashier=sale.cashier,
                total=receipt.total,
                change=receipt.change,
                status="recorded",
                receipt=msgspec.to_builtins(receipt),
                event_id=envelope.event_id,
            )
            session.add(row)
            await session.flush()
            out = sale_out(row)
            out.event_seq = envelope.seq
            return out, True

    async def _price(self, session: AsyncSession, till: str, sale: SaleIn) -> ReceiptRecorded:
        lines: list[ReceiptLine] = []
        price_version = 0
        for index, line_in in enumerate(sale.lines):
            field = f"lines[{index}]"
            product = await self._product(session, line_in.sku, line_in.barcode, field)
            try:
                quantity = parse_milli(line_in.quantity)
            except ValueError as exc:
                raise Rejected(str(exc), field=f"{field}.quantity") from exc
            if quantity <= 0:
                raise Rejected("quantity must be positive in a sale", field=f"{field}.quantity")
            if not product.weighed and quantity % 1000:
                raise Rejected(
                    f"{product.sku} is sold by the piece: whole quantities only",
                    field=f"{field}.quantity",
                )
            price_version = max(price_version, product.price_version)
            gross = line_amount(product.price, quantity)
            if line_in.manual_discount > gross:
                raise Rejected("discount exceeds the line amount", field=f"{field}.manual_discount")
            lines.append(
                ReceiptLine(
                    line_no=index + 1,
                    sku=product.sku,
                    name=product.name,
                    barcode=line_in.barcode,
                    quantity_milli=quantity,
                    unit_price=product.price,
                    discount=line_in.manual_discount,
                    manual_discount=line_in.manual_discount > 0,
                    vat_rate_bp=product.vat_rate_bp,
                    line_total=gross - line_in.manual_discount,
                )
            )
        total = sum(line.line_total for line in lines)
        if sale.expected_total is not None and sale.expected_total != total:
            raise Rejected(
                f"the till's total {sale.expected_total} differs from the agent's {total}",
                field="expected_total",
            )
        paid = sum(p.amount for p in sale.payments)
        if paid < total:
            raise Rejected(f"payments {paid} are short of the total {total}", field="payments")
        non_cash = sum(p.amount for p in sale.payments if p.type != "cash")
        change = paid - total
        if change and non_cash > total:
            raise Rejected("only cash can be overpaid (change is given in cash)", field="payments")
        return ReceiptRecorded(
            till=till,
            shift_id=sale.shift_id or "",
            receipt_number=await next_counter(session, f"receipt_number:{till}"),
            sale_id=sale.sale_id,
            cashier=sale.cashier,
            lines=tuple(lines),
            payments=tuple(Payment(type=p.type, amount=p.amount) for p in sale.payments),
            total=total,
            change=change,
            currency=self._settings.currency,
            price_version=price_version,
        )

    async def _product(
        self, session: AsyncSession, sku: str | None, barcode: str | None, field: str
    ) -> CatalogItem:
        if not sku and not barcode:
            raise Rejected("a line needs a sku or a barcode", field=field)
        item = await find_product(session, sku=sku, barcode=barcode, at=datetime.now(UTC))
        if item is None:
            if barcode:
                raise Rejected(f"unknown barcode {barcode!r}", field=f"{field}.barcode")
            raise Rejected(f"unknown product {sku!r}", field=f"{field}.sku")
        return item


def sale_out(row: Sale) -> SaleOut:
    receipt = msgspec.convert(row.receipt, ReceiptRecorded)
    return SaleOut(
        sale_id=row.sale_id,
        till=row.till,
        shift_id=row.shift_id,
        receipt_number=row.receipt_number,
        status=row.status,
        fiscal_number=row.fiscal_number,
        total=row.total,
        change=row.change,
        lines=[
            SaleLineOut(
                line_no=line.line_no,
                sku=line.sku,
                name=line.name,
                quantity=format_milli(line.quantity_milli),
                unit_price=line.unit_price,
                discount=line.discount,
                vat_rate_bp=line.vat_rate_bp,
                line_total=line.line_total,
            )
            for line in receipt.lines
        ],
        payments=[PaymentIn(type=p.type, amount=p.amount) for p in receipt.payments],
        event_seq=None,
    )
