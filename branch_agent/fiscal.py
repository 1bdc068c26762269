"""Fiscalizing committed sales on each till's fiscal printer, exactly once.

A till's pending sales are printed one at a time, in the order they were recorded
(a later receipt printed before an earlier pending one would make the earlier one's
reconciliation ambiguous). Before a sale is first sent, the printer's last receipt
number is stored with it (the idempotence hint); every later attempt, after a
timeout, a lost link, paper out or an agent crash, passes the hint to the driver,
which asks the printer what happened (transaction status) before printing anything,
so a receipt is never fiscalized twice. On success the fiscal number, the status and
the ``ReceiptRecorded`` outbox event are committed together.

A sale whose printer is gone for good (broken, replaced) stays pending and visible
until a manager completes it without a fiscal number (``complete_unfiscal``); it
then goes up with ``fiscal_number`` empty and the back office sees it. It is never
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from branch_agent.devices import TillDevices, TillDeviceSet
from branch_agent.errors import Conflict, NotFound
from branch_agent.models import Sale
from branch_agent.outbox import append_event
from branch_agent.settings import AgentSettings
from devices.errors import DeviceError
from devices.fiscal_datecs import FiscalReceipt, SaleLine
from devices.fiscal_datecs import Payment as FiscalPayment
from protocol.events import ReceiptRecorded
from protocol.units import format_minor

__all__ = ["Fiscalizer", "fiscal_receipt"]

log = logging.getLogger(__name__)

_CENT = Decimal("0.01")
_MILLI = Decimal("0.001")


def fiscal_receipt(sale: Sale, till_number: int) -> FiscalReceipt:
    """The printer job of a sale, always built the same way from what was stored."""
    job = sale.print_job or {}
    lines = tuple(
        SaleLine(
            name=line["name"],
            vat_group=line["vat_group"],
            price=Decimal(line["price"]) * _CENT,
            quantity=Decimal(line["quantity_milli"]) * _MILLI,
            discount_amount=(Decimal(line["discount"]) * _CENT) if line["discount"] else None,
        )
        for line in job.get("lines", [])
    )
    payments = tuple(
        FiscalPayment(type=p["type"], amount=Decimal(p["amount"]) * _CENT)
        for p in job.get("payments", [])
    )
    return FiscalReceipt(
        lines=lines,
        payments=payments,
        till=till_number,
        previous_receipt_number=sale.fiscal_hint,
    )


class Fiscalizer:
    def __init__(
        self,
        settings: AgentSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        write_lock: asyncio.Lock,
        devices: TillDevices,
        on_event: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._write_lock = write_lock
        self._devices = devices
        self._on_event = on_event
        # When a till's printer last failed (monotonic): a sale right after it does not
        # wait for another attempt; the background retry takes it.
        self._failed_at: dict[str, float] = {}

    def recently_failed(self, till: str) -> bool:
        failed_at = self._failed_at.get(till)
        if failed_at is None:
            return False
        return time.monotonic() - failed_at < self._settings.fiscal_retry_interval_s

    async def process_till(self, till: str) -> int:
        """Print the till's pending sales in order; stops at the first that fails."""
        devices = self._devices.tills.get(till)
        if devices is None or not devices.has_fiscal:
            return 0
        done = 0
        async with devices.fiscal_queue:
            while True:
                async with self._sessionmaker() as session:
                    sale = await session.scalar(
                        select(Sale)
                        .where(Sale.till == till, Sale.status == "pending_fiscal")
                        .order_by(Sale.id)
                        .limit(1)
                    )
                if sale is None:
                    return done
                if not await self._fiscalize(devices, sale):
                    self._failed_at[till] = time.monotonic()
                    return done
                self._failed_at.pop(till, None)
                done += 1

    async def process_all(self) -> int:
        done = 0
        async with self._sessionmaker() as session:
            tills = (
                await session.scalars(
                    select(Sale.till).where(Sale.status == "pending_fiscal").distinct()
                )
            ).all()
        for till in tills:
            done += await self.process_till(till)
        return done

    async def _fiscalize(self, devices: TillDeviceSet, sale: Sale) -> bool:
        try:
            if sale.fiscal_hint is None:
                sale.fiscal_hint = await self._hint(devices)
                await self._update(sale.id, fiscal_hint=sale.fiscal_hint)
            result = await devices.print_fiscal(
                fiscal_receipt(sale, devices.till.printer_till_number)
            )
        except DeviceError as exc:
            log.warning("sale %s/%s not fiscalized: %s", sale.till, sale.sale_id, exc)
            await self._update(
                sale.id,
                fiscal_error=f"{exc.condition}: {exc.message}"[:200],
                fiscal_attempts=sale.fiscal_attempts + 1,
            )
            return False
        await self._complete(sale.id, str(result.slip_number), "fiscalized")
        return True

    async def _hint(self, devices: TillDeviceSet) -> int:
        """The printer's last receipt number, with no receipt left open before ours."""
        status = await devices.fiscal_transaction_status()
        if status.is_open and status.paid == 0:
            # A receipt abandoned before anything was paid (ours never got this far).
            await devices.fiscal_cancel_open()
            status = await devices.fiscal_transaction_status()
        if status.is_open:
            raise DeviceError(
                "receipt_open",
                f"receipt {status.number} is open with {status.paid} paid and is not ours",
            )
        return status.number

    async def _update(self, sale_pk: int, **values: object) -> None:
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            row = await session.get(Sale, sale_pk)
            assert row is not None
            for key, value in values.items():
                setattr(row, key, value)

    async def _complete(self, sale_pk: int, fiscal_number: str | None, status: str) -> None:
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            row = await session.get(Sale, sale_pk)
            assert row is not None
            if row.status != "pending_fiscal":
                return
            receipt = msgspec.convert(row.receipt, ReceiptRecorded)
            receipt = msgspec.structs.replace(receipt, fiscal_number=fiscal_number)
            envelope = await append_event(
                session,
                branch=self._settings.branch,
                timezone=self._settings.timezone,
                body=receipt,
                # The sale happened when it was recorded, not when the printer caught up.
                occurred_at=row.created_at,
            )
            row.receipt = msgspec.to_builtins(receipt)
            row.status = status
            row.fiscal_number = fiscal_number
            row.fiscal_error = None
            row.fiscalized_at = datetime.now(UTC)
            row.event_id = envelope.event_id
        self._on_event()

    async def present(self, till: str, total: int, change: int, cash: bool) -> None:
        """Customer display and cash drawer after a sale: best effort, their state is
        reported (the drawer opens for cash even while the fiscal printer is away)."""
        devices = self._devices.tills.get(till)
        if devices is None:
            return
        if "display" in devices.devices:
            with contextlib.suppress(DeviceError):
                await devices.show(
                    f"TOTAL {format_minor(total):>14}", f"CHANGE {format_minor(change):>13}"
                )
        if cash and "printer" in devices.devices:
            with contextlib.suppress(DeviceError):
                await devices.open_drawer()

    async def complete_unfiscal(self, till: str, sale_id: str, reason: str) -> Sale:
        """A manager's decision: the printer is gone; the sale goes up unfiscalized."""
        devices = self._devices.tills.get(till)
        lock = devices.fiscal_queue if devices is not None else asyncio.Lock()
        async with lock:
            async with self._sessionmaker() as session:
                row = await session.scalar(
                    select(Sale).where(Sale.till == till, Sale.sale_id == sale_id)
                )
            if row is None:
                raise NotFound(f"no sale {sale_id} at till {till}")
            if row.status != "pending_fiscal":
                raise Conflict(f"sale {sale_id} is {row.status}, not pending")
            await self._update(row.id, fiscal_error=f"completed without printer: {reason}"[:200])
            await self._complete(row.id, None, "completed_unfiscal")
        async with self._sessionmaker() as session:
            done = await session.get(Sale, row.id)
            assert done is not None
            return done

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile pending sales at start, then retry them while the printer is away."""
        while not stop.is_set():
            try:
                await self.process_all()
            except Exception:
                log.exception("fiscal retry failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.fiscal_retry_interval_s)
