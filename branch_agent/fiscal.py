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

Customer returns at a till with a fiscal printer are storno (refund) receipts, opened
with the Datecs command 0x2B that names the original receipt (its fiscal number, the
time it was fiscalized in the store's zone, the fiscal memory number of the printer
that printed it). They queue with the till's sales, in the order recorded, under the
same exactly-once rules: committed pending first, hint stored, reconciled after any
failure, event written with the storno's fiscal number.

Cash in / out is record-first too (:class:`CashIntents`): the move is committed as
``pending`` with the printer's last document number and cash sum read just before,
then printed, then marked ``done`` with its event. A pending move (crash, lost link)
is settled before anything else is printed on that till, by comparing the printer's
document number and cash sum with the recorded ones: printed -> done, not printed ->
failed (the till may post the same move again), anything else -> left pending and
reported. The background loop only settles; it never prints a cash move by itself.

A cash refund made without receipt is paid out on the printer (cash out) the same way:
its intent is committed with the return (``payout_status`` ``pending``, the printer's
document number and cash sum read just before), printed, then ``printed``; a pending
pay-out is settled by the same comparison (printed, or ``failed``: the till posts the
same return again to pay it out). It is no cash move of the shift: the shift already
counts the refund, and no ``CashMoved`` event is written for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from branch_agent.devices import TillDevices, TillDeviceSet
from branch_agent.errors import Conflict, NotFound
from branch_agent.models import CashMove, CustomerReturn, OutboxEvent, Sale, Shift
from branch_agent.outbox import append_event
from branch_agent.settings import AgentSettings
from devices.errors import Condition, DeviceError
from devices.fiscal_datecs import (
    FiscalReceipt,
    SaleLine,
    StornoReason,
    StornoReference,
    replace_hint,
)
from devices.fiscal_datecs import Payment as FiscalPayment
from protocol.events import (
    CashMoved,
    CustomerReturnRecorded,
    FiscalInterventionRecorded,
    LateFiscalNumber,
    ReceiptRecorded,
)
from protocol.units import format_minor

__all__ = [
    "CLOSE_ROUTE",
    "PERSON_DECIDES",
    "REPLACED",
    "CashIntents",
    "Fiscalizer",
    "cash_moved_event",
    "close_failed_detail",
    "closing_shift_detail",
    "fiscal_fault",
    "fiscal_receipt",
    "fiscal_remedy",
    "printer_serial",
    "same_printer",
    "storno_receipt",
]

log = logging.getLogger(__name__)

_CENT = Decimal("0.01")
_MILLI = Decimal("0.001")
# The printer cannot be asked at all (as opposed to answering with a refusal).
_UNREACHABLE = frozenset({"no_answer", "link_lost", "port_unavailable", "bad_frame"})
# The printer answers but will not print again without a service technician (fiscal
# memory full or damaged, electronic journal full, a failed mechanism): a manager may
# complete its documents without it, as for a printer that cannot be reached.
# A pending document whose hint was read from another printer (the till's was swapped)
# cannot be printed on this one either: whether the old one printed it, only its
# journal tells.
REPLACED = "printer_replaced"
_CANNOT_PRINT = frozenset({"fiscal_memory", "journal_full", "mechanism_failure", REPLACED})
# When a manager decides what became of fiscal cash work (a cash move, float deposit,
# pay-out or Z report) left pending: the printer cannot be asked, cannot print again,
# or its state explains neither outcome (another document since, another printer).
PERSON_DECIDES = _UNREACHABLE | _CANNOT_PRINT | {Condition.UNKNOWN_STATE.value}


async def printer_serial(devices: TillDeviceSet) -> str | None:
    """The till's fiscal printer's serial number, read now (0x5A); None when it does not
    tell. Raises ``DeviceError`` when the printer cannot be reached."""
    try:
        info = await devices.fiscal_diagnostic()
    except DeviceError as exc:
        if exc.condition in _UNREACHABLE:
            raise
        return None
    return info.serial_number or None


async def same_printer(devices: TillDeviceSet, recorded: str | None, what: str) -> None:
    """Raise ``DeviceError`` (printer_replaced) when the till's printer is not the one
    ``what``'s intent was read from (its ``recorded`` serial): another printer's numbers
    say nothing of it, even when they happen to match. Not told (NULL, or a printer that
    does not tell its serial): compared as before."""
    serial = await printer_serial(devices) if recorded else None
    if serial and serial != recorded:
        raise DeviceError(
            REPLACED,
            f"the printer was replaced (serial {serial}; {what}'s intent was read from"
            f" {recorded}): whether the old one printed it, its journal tells",
        )


# A pending pay-out the printer shows no trace of (the agent stopped before it was sent,
# or the printer did not take it).
_NOT_SENT = (
    "not paid out on the fiscal printer (it was not sent, or the printer did not take it):"
    " post the same return again (same return_id) to pay it out"
)

# What a person does about the fiscal printer's condition (see fiscal_remedy).
_REMEDIES = {
    "paper_end": "load paper",
    "cover_open": "close the printer's cover",
    "no_answer": "check that the fiscal printer is on and its cable plugged in",
    "link_lost": "check that the fiscal printer is on and its cable plugged in",
    "port_unavailable": "check that the fiscal printer is on and its cable plugged in",
    "bad_frame": "check the fiscal printer's cable and port settings",
    "fiscal_memory": "call the printer's service technician (fiscal memory)",
    "journal_full": "call the printer's service technician (electronic journal full)",
    "mechanism_failure": "call the printer's service technician (print mechanism)",
}


def fiscal_fault(exc: DeviceError) -> str:
    """The printer's condition as a pending sale's ``fiscal_error`` says it (``paper_end:
    paper end``), with the driver's words when they add to it (the command refused)."""
    words = exc.condition.replace("_", " ")
    if exc.message and exc.message != words:
        return f"{exc.condition}: {words} ({exc.message})"
    return f"{exc.condition}: {words}"


def fiscal_remedy(condition: str, till: str) -> str:
    """What to do about ``condition`` before a fiscal document can print again."""
    if condition == REPLACED:
        return (
            "a manager settles what the old printer left pending"
            f" (POST /api/v1/manager/tills/{till}/fiscal/settle-pending)"
        )
    if condition in ("receipt_open", "blocked", "not_permitted"):
        return (
            "finish the receipt left open on the printer"
            f" (POST /api/v1/manager/tills/{till}/fiscal/finish-open-receipt)"
        )
    return _REMEDIES.get(condition, "see to the fiscal printer (its state is in `status`)")


# How a till finishes a close (said in every refusal a close under way causes).
CLOSE_ROUTE = "POST /api/v1/shifts/current/close"


def closing_shift_detail(shift_id: str, till: str, z_error: str | None, then: str) -> str:
    """A 409 for what a shift being closed refuses (its Z report's intent is recorded):
    what to do instead, how to finish the close, and why it failed when it did."""
    detail = (
        f"shift {shift_id} of till {till} is being closed (Z report): {then}. Finish the"
        f" close first: {CLOSE_ROUTE} (repeat it after a failure), then open the next"
        " shift: POST /api/v1/shifts"
    )
    if z_error:
        detail += f". The last close failed: {z_error}"
    return detail


def close_failed_detail(shift_id: str, z_error: str, *, closing: bool) -> str:
    """Why a close did not finish (``z_error``: the printer's condition; what to do about
    it) and how to finish it: the 503 of the close and ``close_error`` of the shift."""
    detail = (
        f"the fiscal printer did not print the Z report of shift {shift_id}: {z_error} and"
        f" repeat the close: {CLOSE_ROUTE}"
    )
    if closing:
        detail += (
            " (the shift is being closed: no sales, returns or cash moves at this till"
            " until the close is done)"
        )
    return detail


def _job_lines(job: dict[str, Any]) -> tuple[SaleLine, ...]:
    return tuple(
        SaleLine(
            name=line["name"],
            vat_group=line["vat_group"],
            price=Decimal(line["price"]) * _CENT,
            quantity=Decimal(line["quantity_milli"]) * _MILLI,
            discount_amount=(Decimal(line["discount"]) * _CENT) if line["discount"] else None,
            surcharge_amount=(
                (Decimal(line["surcharge"]) * _CENT) if line.get("surcharge") else None
            ),
        )
        for line in job.get("lines", [])
    )


def _job_payments(job: dict[str, Any]) -> tuple[FiscalPayment, ...]:
    return tuple(
        FiscalPayment(type=p["type"], amount=Decimal(p["amount"]) * _CENT)
        for p in job.get("payments", [])
    )


def fiscal_receipt(sale: Sale, till_number: int) -> FiscalReceipt:
    """The printer job of a sale, always built the same way from what was stored."""
    job = sale.print_job or {}
    return FiscalReceipt(
        lines=_job_lines(job),
        payments=_job_payments(job),
        till=till_number,
        previous_receipt_number=sale.fiscal_hint,
    )


def storno_receipt(
    ret: CustomerReturn, till_number: int, zone: ZoneInfo, fallback_fm_number: str
) -> FiscalReceipt:
    """The storno job of a return: its lines and refunds, and the original's reference
    (the original's local fiscalization time; the fiscal memory number recorded with it,
    or the printer's own for a sale fiscalized before those were recorded)."""
    job = ret.print_job or {}
    original = job["storno"]
    reference = StornoReference(
        document_number=int(original["document_number"]),
        document_time=datetime.fromisoformat(original["document_time"]).astimezone(zone),
        fiscal_memory_number=original.get("fiscal_memory_number") or fallback_fm_number,
        reason=StornoReason.REFUND,
    )
    return FiscalReceipt(
        lines=_job_lines(job),
        payments=_job_payments(job),
        till=till_number,
        previous_receipt_number=ret.fiscal_hint,
        storno=reference,
    )


def _minor(value: Decimal) -> int:
    return int((value * 100).to_integral_value())


def printer_took(what: str, before: tuple[int, int], now: tuple[int, int], cash_delta: int) -> bool:
    """Whether one cash in/out of ``cash_delta`` sent after reading the printer's
    (last document, cash) ``before`` was printed, given its state ``now``: it was when
    exactly one document more and the drawer moved by the amount, it was not when
    nothing moved. Anything else (another document printed, a different amount)
    cannot be told apart safely, so a person must look: ``DeviceError``."""
    if now == before:
        return False
    if now == (before[0] + 1, before[1] + cash_delta):
        return True
    raise DeviceError(
        Condition.UNKNOWN_STATE,
        f"{what}: printer at document {now[0]} with {now[1]} in the drawer, expected"
        f" {before[0]} or {before[0] + 1} and {before[1]} or {before[1] + cash_delta};"
        " a person must check the journal",
    )


def cash_moved_event(row: CashMove) -> CashMoved:
    """The ``cash_moved`` event of a cash move printed (or known printed)."""
    return CashMoved(
        till=row.till,
        shift_id=row.shift_id,
        direction="in" if row.direction == "in" else "out",
        amount=row.amount,
        reason=row.reason,
        cashier=row.cashier,
    )


class CashIntents:
    """Settles cash moves left pending on a till (see the module docstring). Callers
    hold the till's ``fiscal_queue``."""

    def __init__(
        self,
        settings: AgentSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        write_lock: asyncio.Lock,
        on_event: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._write_lock = write_lock
        self._on_event = on_event

    async def printer_cash(self, devices: TillDeviceSet) -> tuple[int, int]:
        """The printer's last document number and cash sum (cents): what a cash document
        is compared against after it was sent."""
        document = await devices.fiscal_last_document()
        return document, _minor((await devices.fiscal_cash_state()).cash)

    async def settle_till(self, devices: TillDeviceSet) -> None:
        """Settle every pending move and pay-out of the till, oldest first; raises
        ``DeviceError`` when one cannot be settled now (then nothing else may print on
        this till)."""
        async with self._sessionmaker() as session:
            pending = (
                await session.scalars(
                    select(CashMove)
                    .where(CashMove.till == devices.till.id, CashMove.status == "pending")
                    .order_by(CashMove.id)
                )
            ).all()
        for move in pending:
            await self.settle(devices, move)
        async with self._sessionmaker() as session:
            payouts = (
                await session.scalars(
                    select(CustomerReturn)
                    .where(
                        CustomerReturn.till == devices.till.id,
                        CustomerReturn.payout_status == "pending",
                    )
                    .order_by(CustomerReturn.id)
                )
            ).all()
        for ret in payouts:
            await self.settle_payout(devices, ret)
        await self.deposit_floats(devices)

    async def settle_payout(self, devices: TillDeviceSet, ret: CustomerReturn) -> str:
        """Compare the printer with what was read before the pay-out was sent: ``printed``
        or ``failed``; ``DeviceError`` when the printer cannot be asked or its state
        explains neither."""
        before = ret.payout_document_before, ret.payout_cash_before
        if before[0] is None or before[1] is None:
            await self._payout(ret.id, "failed", _NOT_SENT)
            return "failed"
        await same_printer(devices, ret.payout_printer, f"the pay-out of return {ret.return_id}")
        took = printer_took(
            f"pay-out of return {ret.return_id}",
            (before[0], before[1]),
            await self.printer_cash(devices),
            -ret.total,
        )
        await self._payout(ret.id, *(("printed", None) if took else ("failed", _NOT_SENT)))
        return "printed" if took else "failed"

    async def pay_out(
        self,
        devices: TillDeviceSet,
        return_pk: int,
        state: tuple[int, int] | None,
        serial: str | None = None,
    ) -> None:
        """Pay out a return's cash refund on the printer (cash out), exactly once: a
        ``pending`` pay-out is sent; a ``failed`` one (known not printed: a till posting
        the same return again) is recorded pending again with the printer's ``state``
        read just before (None: the printer could not be asked, it stays failed) and the
        ``serial`` of the printer it was read from, then
        sent. After a failure the printer is compared, never sent to blind. Called with
        the till's fiscal queue held, older intents settled."""
        async with self._sessionmaker() as session:
            ret = await session.get(CustomerReturn, return_pk)
        assert ret is not None
        if ret.payout_status == "failed" and state is not None:
            if ret.total > state[1]:
                await self._payout(
                    ret.id,
                    "failed",
                    f"not paid out on the fiscal printer: its cash count is"
                    f" {format_minor(state[1])}, the refund {format_minor(ret.total)}; post"
                    " the same return again once the printer has the cash (a sale or the"
                    " float it has not registered yet)",
                )
                return
            async with self._write_lock, self._sessionmaker() as session, session.begin():
                row = await session.get(CustomerReturn, return_pk)
                assert row is not None
                row.payout_status = "pending"
                row.payout_document_before, row.payout_cash_before = state
                row.payout_printer = serial
                row.payout_error = None
                await session.flush()
            ret = row
        if ret.payout_status != "pending":
            return
        try:
            await devices.fiscal_cash(Decimal(ret.total) / 100, out=True)
        except DeviceError as exc:
            why = f"{fiscal_fault(exc)}; {fiscal_remedy(exc.condition, ret.till)}"
            try:
                outcome = await self.settle_payout(devices, ret)
            except DeviceError:
                # Not known whether it printed: settled before anything else prints.
                await self._payout(ret.id, "pending", f"not known yet: {why}")
                return
            if outcome == "failed":
                await self._payout(
                    ret.id,
                    "failed",
                    f"not paid out on the fiscal printer: {why}; then post the same return"
                    " again (same return_id)",
                )
            return
        await self._payout(ret.id, "printed", None)

    async def _payout(self, return_pk: int, status: str, error: str | None) -> None:
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            row = await session.get(CustomerReturn, return_pk)
            assert row is not None
            row.payout_status = status
            row.payout_error = error[:300] if error else None

    async def deposit_floats(self, devices: TillDeviceSet) -> None:
        """Deposit the opening float of the till's shifts that still wait for it (cash
        in on the printer), exactly once: a deposit sent before is compared with the
        printer first. Raises ``DeviceError`` when it cannot be done now."""
        async with self._sessionmaker() as session:
            waiting = (
                await session.scalars(
                    select(Shift)
                    .where(Shift.till == devices.till.id, Shift.float_status == "pending")
                    .order_by(Shift.opened_at)
                )
            ).all()
        for shift in waiting:
            await self._deposit(devices, shift)

    async def _deposit(self, devices: TillDeviceSet, shift: Shift) -> None:
        amount = shift.opening_float
        document_before, cash_before = shift.float_document_before, shift.float_cash_before
        if await self._deposited(
            devices, document_before, cash_before, amount, shift.float_printer
        ):
            await self._float_done(shift.shift_id)
            return
        # Not printed (never sent, or sent and not executed): read the state, record it,
        # then send; the same comparison settles a crash or a lost answer after this.
        document, cash = await self.printer_cash(devices)
        serial = await printer_serial(devices)
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            row = await session.get(Shift, shift.shift_id)
            assert row is not None
            row.float_document_before, row.float_cash_before = document, cash
            row.float_printer = serial
        try:
            await devices.fiscal_cash(Decimal(amount) / 100, out=False)
        except DeviceError:
            if not await self._deposited(devices, document, cash, amount, serial):
                raise
        await self._float_done(shift.shift_id)

    async def _deposited(
        self,
        devices: TillDeviceSet,
        document_before: int | None,
        cash_before: int | None,
        amount: int,
        printer: str | None,
    ) -> bool:
        """Whether a deposit sent after reading (document_before, cash_before) from the
        ``printer`` was printed (None: never sent); ``DeviceError`` when the printer's
        state explains neither, or it is another printer."""
        if document_before is None or cash_before is None:
            return False
        await same_printer(devices, printer, "the opening float")
        return printer_took(
            "opening float",
            (document_before, cash_before),
            await self.printer_cash(devices),
            amount,
        )

    async def _float_done(self, shift_id: str) -> None:
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            row = await session.get(Shift, shift_id)
            assert row is not None
            row.float_status = "done"

    async def settle(self, devices: TillDeviceSet, move: CashMove) -> str:
        """Compare the printer with what was read before printing: ``done`` or ``failed``;
        ``DeviceError`` when the printer cannot be asked, its state explains neither, or
        it is not the printer the state was read from."""
        document, cash = await self.printer_cash(devices)
        before_document = move.printer_document_before
        before_cash = move.printer_cash_before
        if before_document is None or before_cash is None:
            # the intent was committed but never printed (no state was read): not printed
            await self.fail(move.id, "not printed")
            return "failed"
        await same_printer(devices, move.printer_serial, f"cash move {move.move_id}")
        delta = move.amount if move.direction == "in" else -move.amount
        took = printer_took(
            f"cash move {move.move_id}", (before_document, before_cash), (document, cash), delta
        )
        if took:
            await self.complete(move.id)
            return "done"
        await self.fail(move.id, "not printed")
        return "failed"

    async def complete(self, move_pk: int) -> CashMove:
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            row = await session.get(CashMove, move_pk)
            assert row is not None
            if row.status != "done":
                row.status = "done"
                row.fiscal_error = None
                await append_event(
                    session,
                    branch=self._settings.branch,
                    timezone=self._settings.timezone,
                    body=cash_moved_event(row),
                    occurred_at=row.created_at,
                )
        self._on_event()
        return row

    async def fail(self, move_pk: int, error: str) -> None:
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            row = await session.get(CashMove, move_pk)
            assert row is not None
            if row.status == "pending":
                row.status = "failed"
                row.fiscal_error = error[:200]


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
        self._zone = ZoneInfo(settings.timezone)
        # Fiscal memory number and serial number per till's printer, read once (0x5A)
        # and again when documents completed unfiscal are checked (a swapped printer).
        self._fm_numbers: dict[str, str] = {}
        self._serials: dict[str, str] = {}
        # The printer's outage count when they were read: after an outage (a swap
        # unplugs the old printer) they are read again before the next print.
        self._identity_at: dict[str, int] = {}
        self.cash = CashIntents(settings, sessionmaker, write_lock, on_event)

    def recently_failed(self, till: str) -> bool:
        failed_at = self._failed_at.get(till)
        if failed_at is None:
            return False
        return time.monotonic() - failed_at < self._settings.fiscal_retry_interval_s

    async def process_till(self, till: str) -> int:
        """Print the till's pending sales and returns in the order they were recorded;
        stops at the first that fails. Pending cash moves are settled first."""
        devices = self._devices.tills.get(till)
        if devices is None or not devices.has_fiscal:
            return 0
        async with devices.fiscal_queue:
            return await self._process_locked(devices)

    async def _process_locked(self, devices: TillDeviceSet) -> int:
        """``process_till`` for a caller holding the till's ``fiscal_queue``."""
        till = devices.till.id
        done = 0
        try:
            await self.cash.settle_till(devices)
        except DeviceError as exc:
            log.warning("till %s: pending cash move not settled: %s", till, exc)
            self._failed_at[till] = time.monotonic()
            return done
        try:
            # Before anything else prints: a later receipt would hide whether the
            # printer had printed a document completed without it.
            await self._check_unfiscal(devices)
        except DeviceError as exc:
            log.warning("till %s: unfiscal documents not checked: %s", till, exc)
            self._failed_at[till] = time.monotonic()
            return done
        while True:
            document = await self._next_pending(till)
            if document is None:
                return done
            if not await self._fiscalize(devices, document):
                self._failed_at[till] = time.monotonic()
                # a receipt left open with money paid: status says blocked, and why
                await devices.fiscal_mark_blocked()
                return done
            self._failed_at.pop(till, None)
            done += 1

    async def _check_unfiscal(self, devices: TillDeviceSet) -> None:
        """Compare each document completed unfiscal while the printer was away (its hint
        stored: the printer may have printed it) with what the printer says now."""
        till = devices.till.id
        async with self._sessionmaker() as session:
            documents: list[Sale | CustomerReturn] = [
                *(
                    await session.scalars(
                        select(Sale).where(Sale.till == till, Sale.unfiscal_check == "pending")
                    )
                ).all(),
                *(
                    await session.scalars(
                        select(CustomerReturn).where(
                            CustomerReturn.till == till, CustomerReturn.unfiscal_check == "pending"
                        )
                    )
                ).all(),
            ]
        if not documents:
            return
        # Read again, not from the cache: the printer may have been swapped since.
        await self._read_identity(devices)
        serial = self._serials.get(till) or None
        # The queue prints in order and stops at the first failure, so at most one of
        # them was in the printer; oldest first all the same.
        for document in sorted(documents, key=lambda d: d.created_at):
            if document.hint_printer and serial and document.hint_printer != serial:
                # Another printer's numbers say nothing of this document: nothing is
                # cancelled or printed on it; a person checks the old one's journal.
                await self._record_check(
                    document,
                    "unknown",
                    None,
                    None,
                    error=(
                        f"completed without printer; the printer was replaced (serial "
                        f"{serial}, the hint was read from {document.hint_printer}): check "
                        "the old printer's journal"
                    ),
                )
                continue
            verdict, number = await self._printed_after_all(devices, document)
            await self._record_check(document, verdict, number, await self._fm_number(devices))

    async def _printed_after_all(
        self, devices: TillDeviceSet, document: Sale | CustomerReturn
    ) -> tuple[str, int | None]:
        """The driver's reconciliation rules (DEVICES.md: read 0x4C against the hint),
        except that a document not printed is never printed now: the manager closed it."""
        hint = document.fiscal_hint
        if hint is None:
            return "not_printed", None
        job = self._job(devices, document, await self._fm_number(devices) or "")
        total = job.total()
        ts = await devices.fiscal_transaction_status()
        if ts.is_open:
            if ts.is_open == job.open_state and ts.number == hint + 1:
                if ts.paid == 0:
                    # left open, nothing paid: cancelling it leaves nothing fiscalized
                    await devices.fiscal_cancel_open()
                    return "not_printed", None
                if ts.amount == total:
                    # paid: the printer refuses to cancel it; closing it is the only way
                    # on, and it is this document's receipt (the driver finishes it)
                    result = await devices.print_fiscal(replace_hint(job, hint))
                    return "printed", result.slip_number
            return "unknown", None
        if ts.number == hint:
            return "not_printed", None
        if ts.number > hint and ts.paid > 0 and ts.amount == total:
            return "printed", ts.number
        if ts.number > hint and ts.paid == 0:
            return "not_printed", None  # its receipt was cancelled
        return "unknown", None

    async def _late_fiscal_number(
        self,
        session: AsyncSession,
        row: Sale | CustomerReturn,
        number: str,
        fm_number: str | None,
    ) -> None:
        """The ``late_fiscal_number`` event of a document completed unfiscal that the
        printer had printed, in the caller's transaction (the one recording the number)."""
        assert row.fiscalized_at is not None
        seq = (
            await session.scalar(
                select(OutboxEvent.seq).where(OutboxEvent.event_id == row.event_id)
            )
            if row.event_id is not None
            else None
        )
        await append_event(
            session,
            branch=self._settings.branch,
            timezone=self._settings.timezone,
            body=LateFiscalNumber(
                document="sale" if isinstance(row, Sale) else "return",
                till=row.till,
                document_id=row.sale_id if isinstance(row, Sale) else row.return_id,
                document_event_id=row.event_id,
                document_seq=seq,
                fiscal_number=number,
                fiscalized_at=row.fiscalized_at,
                fiscal_memory_number=fm_number or None,
            ),
        )

    def _job(
        self, devices: TillDeviceSet, document: Sale | CustomerReturn, fm_number: str
    ) -> FiscalReceipt:
        if isinstance(document, Sale):
            return fiscal_receipt(document, devices.till.printer_till_number)
        return storno_receipt(document, devices.till.printer_till_number, self._zone, fm_number)

    async def _record_check(
        self,
        document: Sale | CustomerReturn,
        verdict: str,
        number: int | None,
        fm_number: str | None,
        *,
        error: str | None = None,
    ) -> None:
        name = document.sale_id if isinstance(document, Sale) else document.return_id
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            row: Sale | CustomerReturn | None = await session.get(type(document), document.id)
            assert row is not None
            if row.unfiscal_check != "pending":
                return
            row.unfiscal_check = verdict
            if verdict == "printed":
                log.error(
                    "%s/%s was completed without printer but the printer had printed it as"
                    " %s: recorded with that fiscal number",
                    row.till,
                    name,
                    number,
                )
                row.fiscal_number = str(number)
                # Printed when it was sent, not when this check found it (possibly days
                # later): a later storno quotes the original's date and time.
                row.fiscalized_at = row.created_at
                row.fiscal_error = f"printed as {number} after all (completed without printer)"
                if isinstance(row, Sale) and fm_number:
                    row.fiscal_memory_number = fm_number
                # Central holds it without a number: it learns it with this, exactly once.
                await self._late_fiscal_number(session, row, str(number), fm_number)
            elif verdict == "unknown":
                log.error(
                    "%s/%s: the printer's state does not tell whether it printed it (hint %s)",
                    row.till,
                    name,
                    row.fiscal_hint,
                )
                row.fiscal_error = (
                    error
                    or f"completed without printer; whether receipt {row.fiscal_hint} + 1 is "
                    "it cannot be told: check the printer's journal"
                )[:200]
        if verdict == "printed":
            self._on_event()  # the late_fiscal_number event, committed: send it

    async def _next_pending(self, till: str) -> Sale | CustomerReturn | None:
        """The oldest pending document of the till (sale or storno)."""
        async with self._sessionmaker() as session:
            sale = await session.scalar(
                select(Sale)
                .where(Sale.till == till, Sale.status == "pending_fiscal")
                .order_by(Sale.id)
                .limit(1)
            )
            ret = await session.scalar(
                select(CustomerReturn)
                .where(CustomerReturn.till == till, CustomerReturn.status == "pending_fiscal")
                .order_by(CustomerReturn.id)
                .limit(1)
            )
        if sale is None or ret is None:
            return sale or ret
        return sale if sale.created_at <= ret.created_at else ret

    async def process_all(self) -> int:
        done = 0
        async with self._sessionmaker() as session:
            tills = set(
                (
                    await session.scalars(
                        select(Sale.till).where(Sale.status == "pending_fiscal").distinct()
                    )
                ).all()
            )
            tills.update(
                (
                    await session.scalars(
                        select(CustomerReturn.till)
                        .where(CustomerReturn.status == "pending_fiscal")
                        .distinct()
                    )
                ).all()
            )
            tills.update(
                (
                    await session.scalars(
                        select(CashMove.till).where(CashMove.status == "pending").distinct()
                    )
                ).all()
            )
            tills.update(
                (
                    await session.scalars(
                        select(Shift.till).where(Shift.float_status == "pending").distinct()
                    )
                ).all()
            )
            tills.update(
                (
                    await session.scalars(
                        select(CustomerReturn.till)
                        .where(CustomerReturn.payout_status == "pending")
                        .distinct()
                    )
                ).all()
            )
            for model in (Sale, CustomerReturn):
                # completed unfiscal, still to compare with their printer
                tills.update(
                    (
                        await session.scalars(
                            select(model.till).where(model.unfiscal_check == "pending").distinct()
                        )
                    ).all()
                )
        for till in sorted(tills):
            done += await self.process_till(till)
        return done

    async def _fiscalize(self, devices: TillDeviceSet, document: Sale | CustomerReturn) -> bool:
        model = type(document)
        try:
            fm_number = await self._fm_number(devices)
            serial = self._serials.get(devices.till.id) or None
            if document.hint_printer and serial and document.hint_printer != serial:
                # Another printer's numbers say nothing of this document: the old one
                # may have printed it, so it is neither reconciled nor printed here.
                await self._update(
                    document.id,
                    model=model,
                    fiscal_error=(
                        f"{REPLACED}: printer replaced (serial {serial}, the hint was read"
                        f" from {document.hint_printer}); the old one may have printed it:"
                        " check its journal, then complete-unfiscal or print-on-new-printer"
                    )[:200],
                    fiscal_attempts=document.fiscal_attempts + 1,
                )
                return False
            if document.fiscal_hint is None:
                document.fiscal_hint = await self._hint(devices)
                # Whose numbers the hint is: a printer swapped later has others.
                document.hint_printer = await self._serial(devices)
                await self._update(
                    document.id,
                    model=model,
                    fiscal_hint=document.fiscal_hint,
                    hint_printer=document.hint_printer,
                )
            if isinstance(document, Sale):
                job = fiscal_receipt(document, devices.till.printer_till_number)
            else:
                job = storno_receipt(
                    document, devices.till.printer_till_number, self._zone, fm_number or ""
                )
            result = await devices.print_fiscal(job)
        except DeviceError as exc:
            name = document.sale_id if isinstance(document, Sale) else document.return_id
            log.warning("%s/%s not fiscalized: %s", document.till, name, exc)
            await self._update(
                document.id,
                model=model,
                fiscal_error=f"{exc.condition}: {exc.message}"[:200],
                fiscal_attempts=document.fiscal_attempts + 1,
            )
            return False
        except (KeyError, ValueError) as exc:
            # A stored job the driver cannot print (e.g. a storno whose original lacks a
            # fiscal memory number and the printer gave none): kept pending, reported.
            await self._update(
                document.id,
                model=model,
                fiscal_error=f"bad_request: {exc}"[:200],
                fiscal_attempts=document.fiscal_attempts + 1,
            )
            return False
        if isinstance(document, Sale):
            await self._complete(document.id, str(result.slip_number), "fiscalized", fm_number)
        else:
            await self._complete_return(document.id, str(result.slip_number), "fiscalized")
        return True

    async def _fm_number(self, devices: TillDeviceSet) -> str | None:
        """The printer's fiscal memory number (recorded with each sale for later stornos);
        a printer that cannot tell it does not stop sales."""
        till = devices.till.id
        if till not in self._fm_numbers or self._identity_at.get(till) != devices.fiscal_outages:
            await self._read_identity(devices)
        return self._fm_numbers[till] or None

    async def _read_identity(self, devices: TillDeviceSet) -> None:
        """Read the printer's fiscal memory and serial numbers (0x5A) into the caches
        ("" when this printer does not tell: not asked again until the next check)."""
        till = devices.till.id
        outages = devices.fiscal_outages
        try:
            info = await devices.fiscal_diagnostic()
        except DeviceError as exc:
            if exc.condition in ("no_answer", "link_lost", "port_unavailable"):
                raise
            self._fm_numbers[till] = self._serials[till] = ""
            self._identity_at[till] = outages
            return
        self._fm_numbers[till] = info.fiscal_memory_number
        self._serials[till] = info.serial_number
        self._identity_at[till] = outages

    async def _serial(self, devices: TillDeviceSet) -> str | None:
        """The printer's serial number, read with its fiscal memory number."""
        await self._fm_number(devices)
        return self._serials.get(devices.till.id) or None

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

    async def _update(
        self, pk: int, *, model: type[Sale] | type[CustomerReturn] = Sale, **values: object
    ) -> None:
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            row = await session.get(model, pk)
            assert row is not None
            for key, value in values.items():
                setattr(row, key, value)

    async def _complete_return(
        self,
        pk: int,
        fiscal_number: str | None,
        status: str,
        *,
        intervention: FiscalInterventionRecorded | None = None,
    ) -> None:
        await self._finish(
            CustomerReturn,
            pk,
            "body",
            CustomerReturnRecorded,
            fiscal_number,
            status,
            intervention=intervention,
        )

    async def complete_return_unfiscal(self, till: str, return_id: str, reason: str) -> None:
        """A manager's decision for a pending return whose printer is gone for good."""
        await self._complete_unfiscal(CustomerReturn, till, return_id, reason)

    async def _printer_answers(self, devices: TillDeviceSet | None) -> bool:
        if devices is None or not devices.has_fiscal:
            return False
        try:
            await devices.fiscal_transaction_status()
        except DeviceError as exc:
            # a refusal is an answer too (paper out, cover open): the printer is there
            return exc.condition not in _UNREACHABLE
        return True

    async def _complete_unfiscal(
        self, model: type[Sale] | type[CustomerReturn], till: str, doc_id: str, reason: str
    ) -> Sale | CustomerReturn:
        """A manager's decision: the printer is gone; the document goes up unfiscalized.
        Refused while the printer answers: then it is asked instead (it may have printed
        the document, whose fiscal number must not be lost)."""
        kind = "sale" if model is Sale else "return"
        devices = self._devices.tills.get(till)
        lock = devices.fiscal_queue if devices is not None else asyncio.Lock()
        async with lock:
            row = await self._document(model, till, doc_id)
            if row is None:
                raise NotFound(f"no {kind} {doc_id} at till {till}")
            if row.status != "pending_fiscal":
                raise Conflict(f"{kind} {doc_id} is {row.status}, not pending")
            if devices is not None and await self._printer_answers(devices):
                await self._process_locked(devices)
                row = await self._document(model, till, doc_id)
                assert row is not None
                if row.status == "fiscalized":
                    raise Conflict(
                        f"the fiscal printer of till {till} answers: {kind} {doc_id} was "
                        f"reconciled with it and is fiscalized (fiscal number "
                        f"{row.fiscal_number}); nothing to complete"
                    )
                if (row.fiscal_error or "").split(":", 1)[0] not in _CANNOT_PRINT:
                    raise Conflict(
                        f"the fiscal printer of till {till} answers, so {kind} {doc_id} "
                        f"stays pending and is printed (exactly once) as soon as the printer "
                        f"can: {row.fiscal_error or 'an earlier document of the till is not printed'}"
                        "; fix the printer (paper, cover) instead. complete-unfiscal is for a "
                        "printer that cannot be reached or cannot print again (fiscal memory "
                        "or journal full, a failed mechanism)"
                    )
            await self._update(
                row.id,
                model=model,
                fiscal_error=f"completed without printer: {reason}"[:200],
                # it may have reached the printer: compare when the printer answers again
                unfiscal_check="pending" if row.fiscal_hint is not None else None,
            )
            # Head office sees the manager's decision beside the receipt without number.
            intervention = FiscalInterventionRecorded(
                till=till,
                action="completed_unfiscal",
                amount=row.total,
                document=f"{kind} {doc_id}",
                reason=reason[:200],
            )
            if isinstance(row, Sale):
                await self._complete(row.id, None, "completed_unfiscal", intervention=intervention)
            else:
                await self._complete_return(
                    row.id, None, "completed_unfiscal", intervention=intervention
                )
            done = await self._document(model, till, doc_id)
            assert done is not None
            return done

    async def print_on_new_printer(
        self, model: type[Sale] | type[CustomerReturn], till: str, doc_id: str, reason: str
    ) -> Sale | CustomerReturn:
        """A manager's decision on a document held back as ``printer_replaced``: the old
        printer's journal shows it was not printed, so it is printed on the printer now
        there. Its old hint is dropped and the ``fiscal_intervention`` event written in
        one transaction; then it takes the normal exactly-once path (a new hint read from
        the new printer, stored before the receipt is sent). Refused while the printer
        the hint was read from is the one that answers: then the agent decides itself."""
        kind = "sale" if model is Sale else "return"
        field = f"{kind}_id"
        devices = self._devices.tills.get(till)
        if devices is None or not devices.has_fiscal:
            raise NotFound(f"till {till} has no fiscal printer", field="till")
        async with devices.fiscal_queue:
            row = await self._document(model, till, doc_id)
            if row is None:
                raise NotFound(f"no {kind} {doc_id} at till {till}", field=field)
            if row.status != "pending_fiscal":
                raise Conflict(f"{kind} {doc_id} is {row.status}, not pending", field=field)
            try:
                # Read again, not from the cache: the swap is what is being checked.
                await self._read_identity(devices)
            except DeviceError as exc:
                raise Conflict(
                    f"the fiscal printer of till {till} cannot be reached ({exc.condition}):"
                    f" plug in the new printer to print {kind} {doc_id} on it, or"
                    " complete-unfiscal",
                    field=field,
                ) from exc
            serial = self._serials.get(till) or None
            old = row.hint_printer
            if old is None or serial is None or serial == old:
                # The hint's own printer answers (or none was read, or the printer does
                # not tell its serial): it alone tells whether it printed the document.
                raise Conflict(
                    f"{kind} {doc_id} was not sent to another printer than the one that "
                    f"answers now (serial {serial or 'not told'}): the agent prints or "
                    "reconciles it itself, exactly once",
                    field=field,
                )
            async with self._write_lock, self._sessionmaker() as session, session.begin():
                locked: Sale | CustomerReturn | None = await session.get(model, row.id)
                assert locked is not None
                # Under the fiscal queue nothing else changes it; checked all the same.
                if locked.status != "pending_fiscal" or locked.hint_printer != old:
                    raise Conflict(f"{kind} {doc_id} changed meanwhile: ask again", field=field)
                locked.fiscal_hint = None
                locked.hint_printer = None
                locked.fiscal_error = f"to be printed on the new printer: {reason}"[:200]
                await append_event(
                    session,
                    branch=self._settings.branch,
                    timezone=self._settings.timezone,
                    body=FiscalInterventionRecorded(
                        till=till,
                        shift_id=locked.shift_id,
                        action="printed_on_new_printer",
                        amount=locked.total,
                        document=f"{kind} {doc_id}",
                        reason=reason[:200],
                    ),
                )
            self._on_event()
            log.warning(
                "%s %s/%s: the manager says printer %s did not print it (%s): printing it on %s",
                kind,
                till,
                doc_id,
                old,
                reason,
                serial,
            )
            await self._process_locked(devices)
            done = await self._document(model, till, doc_id)
            assert done is not None
            return done

    async def _document(
        self, model: type[Sale] | type[CustomerReturn], till: str, doc_id: str
    ) -> Sale | CustomerReturn | None:
        async with self._sessionmaker() as session:
            if model is Sale:
                return await session.scalar(
                    select(Sale).where(Sale.till == till, Sale.sale_id == doc_id)
                )
            return await session.scalar(
                select(CustomerReturn).where(
                    CustomerReturn.till == till, CustomerReturn.return_id == doc_id
                )
            )

    async def _complete(
        self,
        sale_pk: int,
        fiscal_number: str | None,
        status: str,
        fiscal_memory_number: str | None = None,
        *,
        intervention: FiscalInterventionRecorded | None = None,
    ) -> None:
        await self._finish(
            Sale,
            sale_pk,
            "receipt",
            ReceiptRecorded,
            fiscal_number,
            status,
            intervention=intervention,
            fiscal_memory_number=fiscal_memory_number,
        )

    async def _finish(
        self,
        model: type[Sale] | type[CustomerReturn],
        pk: int,
        payload: str,
        event_type: type[ReceiptRecorded] | type[CustomerReturnRecorded],
        fiscal_number: str | None,
        status: str,
        *,
        intervention: FiscalInterventionRecorded | None = None,
        **columns: Any,
    ) -> None:
        """A pending sale or return is done: its event (with the fiscal number, if any)
        goes into the outbox in the same transaction as the new status, and so does the
        manager's ``intervention`` that completed it, if any."""
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            row: Sale | CustomerReturn | None = await session.get(model, pk)
            assert row is not None
            if row.status != "pending_fiscal":
                return
            body = msgspec.convert(getattr(row, payload), event_type)
            body = msgspec.structs.replace(body, fiscal_number=fiscal_number)
            envelope = await append_event(
                session,
                branch=self._settings.branch,
                timezone=self._settings.timezone,
                body=body,
                # It happened when it was recorded, not when the printer caught up.
                occurred_at=row.created_at,
            )
            if intervention is not None:
                await append_event(
                    session,
                    branch=self._settings.branch,
                    timezone=self._settings.timezone,
                    # the document's own shift
                    body=msgspec.structs.replace(intervention, shift_id=row.shift_id),
                )
            setattr(row, payload, msgspec.to_builtins(body))
            row.status = status
            row.fiscal_number = fiscal_number
            row.fiscal_error = None
            row.fiscalized_at = datetime.now(UTC)
            row.event_id = envelope.event_id
            for name, value in columns.items():
                setattr(row, name, value)
        self._on_event()

    async def present(
        self, till: str, total: int, change: int, cash: bool
    ) -> tuple[Literal["opened", "not_opened"] | None, str | None]:
        """Customer display and cash drawer after a sale: best effort, their state is
        reported (the drawer opens for cash even while the fiscal printer is away);
        returns how the drawer went (``TillDeviceSet.open_drawer_for_cash``)."""
        devices = self._devices.tills.get(till)
        if devices is None:
            return None, None
        if "display" in devices.devices:
            with contextlib.suppress(DeviceError):
                await devices.show(
                    f"TOTAL {format_minor(total):>14}", f"CHANGE {format_minor(change):>13}"
                )
        return await self.open_drawer_for_cash(till) if cash else (None, None)

    async def open_drawer_for_cash(
        self, till: str
    ) -> tuple[Literal["opened", "not_opened"] | None, str | None]:
        devices = self._devices.tills.get(till)
        if devices is None:
            return None, None
        return await devices.open_drawer_for_cash()

    async def complete_unfiscal(self, till: str, sale_id: str, reason: str) -> Sale:
        """A manager's decision: the printer is gone; the sale goes up unfiscalized."""
        done = await self._complete_unfiscal(Sale, till, sale_id, reason)
        assert isinstance(done, Sale)
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
