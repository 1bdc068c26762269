"""The till API's reads and device calls that are not a service of their own."""

from __future__ import annotations

import asyncio
import queue
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import msgspec

from branch_agent.catalog import BasketLine, CatalogItem, promotion_discounts, search_products
from branch_agent.devices import DeviceUnavailable
from branch_agent.errors import DeviceFailed, NotFound, Rejected
from branch_agent.fiscal_finish import finish_open_receipt
from branch_agent.lookup import BadCode, resolve_code, weight_layout
from branch_agent.models import CustomerReturn, Sale
from branch_agent.sales import sale_out
from branch_agent.schemas import (
    FiscalInterventionOut,
    ProductOut,
    ReasonText,
    ReturnOut,
    SaleOut,
    SettleIn,
    SettleOut,
    WeightOut,
)
from devices.errors import DeviceError
from protocol.limits import NO_NUL, Code64, Text64
from protocol.units import format_milli, line_amount

if TYPE_CHECKING:
    from branch_agent.agent import Agent

__all__ = ["StocktakeOpenIn", "TillApi", "UnfiscalIn"]


class StocktakeOpenIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    document_id: Annotated[Code64, msgspec.Meta(min_length=1)] | None = None
    author: Text64 = ""
    reason: ReasonText | None = None


class UnfiscalIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Why the printer cannot fiscalize it any more (kept with the sale, shown centrally).
    reason: Annotated[str, msgspec.Meta(min_length=3, max_length=150, pattern=NO_NUL)]


class TillApi:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def _product_out(
        self, item: CatalogItem, quantity_milli: int | None = None
    ) -> ProductOut:
        quantity = quantity_milli if quantity_milli is not None else 1000
        gross = line_amount(item.price, quantity)
        async with self.agent.sessionmaker() as session:
            (promo,) = await promotion_discounts(
                session,
                [
                    BasketLine(
                        sku=item.sku,
                        category=item.category,
                        quantity_milli=quantity,
                        unit_price=item.price,
                        gross=gross,
                    )
                ],
                at=datetime.now(UTC),
            )
        return ProductOut(
            sku=item.sku,
            name=item.name,
            unit=item.unit,
            weighed=item.weighed,
            price=item.price,
            vat_rate_bp=item.vat_rate_bp,
            category=item.category,
            quantity=format_milli(quantity_milli) if quantity_milli is not None else None,
            amount=gross if quantity_milli is not None else None,
            promotion_id=promo.promotion_id if promo.amount else None,
            promotion_discount=min(promo.amount, gross),
        )

    async def lookup_barcode(self, code: str) -> ProductOut:
        try:
            # A scanner may send anything: no barcode of the catalog is longer.
            msgspec.convert(code, Code64)
        except msgspec.ValidationError as exc:
            raise Rejected(f"not a barcode: {exc}", field="code") from exc
        layout = weight_layout(self.agent.settings.weight_barcode_layout)
        async with self.agent.sessionmaker() as session:
            try:
                scanned = await resolve_code(session, code, layout=layout, at=datetime.now(UTC))
            except BadCode as exc:
                raise Rejected(str(exc), field="code") from exc
        if scanned is None:
            raise NotFound(f"unknown barcode {code!r}", field="code")
        return await self._product_out(scanned.item, scanned.embedded_milli)

    async def search(self, text: str, limit: int) -> list[ProductOut]:
        async with self.agent.sessionmaker() as session:
            items = await search_products(session, text, at=datetime.now(UTC), limit=limit)
        return [await self._product_out(item) for item in items]

    async def read_weight(self, till: str) -> WeightOut:
        try:
            reading = await self.agent.devices.for_till(till).read_weight()
        except DeviceUnavailable as exc:
            raise NotFound(str(exc)) from exc
        except DeviceError as exc:
            raise DeviceFailed(
                f"no weight from the scale: {exc.message}", condition=exc.condition
            ) from exc
        grams = reading.grams
        return WeightOut(quantity=format_milli(grams), quantity_milli=grams, net=reading.net)

    async def next_scan(self, till: str, wait_s: float) -> ProductOut:
        devices = self.agent.devices.for_till(till)
        if "scanner" not in devices.devices:
            raise NotFound(f"till {till} has no scanner configured")
        try:
            code = await asyncio.to_thread(devices.scanned.get, True, wait_s)
        except queue.Empty as exc:
            raise NotFound("nothing was scanned") from exc
        return await self.lookup_barcode(code)

    async def fiscalize(self, till: str) -> list[SaleOut]:
        await self.agent.fiscal.process_till(till)
        return await self.agent.sales.pending_sales(till)

    async def complete_unfiscal(self, till: str, sale_id: str, reason: str) -> SaleOut:
        row = await self.agent.fiscal.complete_unfiscal(till, sale_id, reason)
        return sale_out(row)

    async def print_on_new_printer(self, till: str, sale_id: str, reason: str) -> SaleOut:
        row = await self.agent.fiscal.print_on_new_printer(Sale, till, sale_id, reason)
        assert isinstance(row, Sale)
        self.agent.sender.wake()
        return sale_out(row)

    async def print_return_on_new_printer(
        self, till: str, return_id: str, reason: str
    ) -> ReturnOut:
        await self.agent.fiscal.print_on_new_printer(CustomerReturn, till, return_id, reason)
        self.agent.sender.wake()
        return await self.agent.sales.get_return(till, return_id)

    async def finish_open_receipt(self, till: str, reason: str) -> list[FiscalInterventionOut]:
        """Finish what the till's printer holds open, then print the till's queue."""
        devices = self.agent.devices.tills.get(till)
        if devices is None or not devices.has_fiscal:
            raise NotFound(f"till {till} has no fiscal printer")
        try:
            rows = await finish_open_receipt(
                self.agent.sessionmaker,
                self.agent.write_lock,
                devices,
                reason,
                settings=self.agent.settings,
                on_event=self.agent.sender.wake,
            )
        except DeviceError as exc:
            raise DeviceFailed(
                f"the fiscal printer did not finish the receipt: {exc.message}",
                condition=exc.condition,
            ) from exc
        await self.agent.fiscal.process_till(till)
        return [
            FiscalInterventionOut(
                till=row.till,
                receipt_number=row.receipt_number,
                action=row.action,
                amount=row.amount,
                paid_before=row.paid_before,
                cash_added=row.cash_added,
                document=row.document,
                reason=row.reason,
            )
            for row in rows
        ]

    async def settle_pending(self, till: str, data: SettleIn) -> SettleOut:
        out = await self.agent.shifts.settle_pending(till, data)
        self.agent.sender.wake()  # the intervention (with a cash_moved or closing) goes up
        return out

    async def complete_return_unfiscal(self, till: str, return_id: str, reason: str) -> ReturnOut:
        await self.agent.fiscal.complete_return_unfiscal(till, return_id, reason)
        self.agent.sender.wake()
        return await self.agent.sales.get_return(till, return_id)
