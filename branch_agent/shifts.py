"""Till shifts: open, X report, close with the fiscal printer's Z report; cash in and out.

The agent keeps its own totals of a shift (from the sales, returns and cash moves it
recorded) and records the Z report's totals beside them, so a difference between
what the printer counted and what the agent counted is visible, not hidden.

Cash moves and the Z report are recorded before they are printed (a crash between
printing and recording, then a retry, must not print a second cash document or a
zero Z report): a cash move is committed ``pending`` with the printer's document
number and cash sum read just before (see :class:`branch_agent.fiscal.CashIntents`);
the Z report's intent is committed on the shift with the number of the last Z report
in fiscal memory. A retry with the same move id, or a second close of the same shift,
asks the printer what happened instead of printing again; a Z report whose answer was
lost is read back from fiscal memory (0x40).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import func, select, tuple_
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from branch_agent.catalog import find_products
from branch_agent.devices import TillDevices, TillDeviceSet
from branch_agent.errors import Conflict, DeviceFailed, NotFound, Rejected, StorageFull
from branch_agent.fiscal import (
    CLOSE_ROUTE,
    PERSON_DECIDES,
    CashIntents,
    cash_moved_event,
    close_failed_detail,
    closing_shift_detail,
    fiscal_fault,
    fiscal_remedy,
    printer_serial,
    same_printer,
)
from branch_agent.models import CashMove, Counter, CustomerReturn, Sale, Shift
from branch_agent.numbering import SHIFT_FLOOR, EventNumbering
from branch_agent.outbox import append_event
from branch_agent.sales import is_storage_full
from branch_agent.schemas import (
    CashMoveIn,
    CashMoveOut,
    SettleIn,
    SettleOut,
    ShiftCloseOut,
    ShiftOpenIn,
    ShiftOut,
    XReportOut,
)
from branch_agent.settings import AgentSettings
from devices.errors import DeviceError
from devices.fiscal_datecs import ReportResult
from protocol.events import (
    CashMoved,
    CustomerReturnRecorded,
    FiscalInterventionRecorded,
    ReceiptRecorded,
    ShiftClosed,
    ShiftOpened,
    ZReportTotals,
)

__all__ = ["ShiftService"]

log = logging.getLogger(__name__)

VAT_LETTERS = "ABCDEFGH"
# What a manager's decision is about (SettleIn.intent), as the answers name it.
_INTENT_NAMES = {
    "cash_move": "cash move {id}",
    "float": "the opening float of shift {id}",
    "payout": "the pay-out of return {id}",
    "z_report": "the Z report of shift {id}",
}
# Letters and digits staff do not mistake for one another (no 0/o, 1/l/i).
_TAG_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"


def _minor(value: Decimal) -> int:
    return int((value * 100).to_integral_value())


def _money(minor: int) -> str:
    sign, minor = ("-" if minor < 0 else ""), abs(minor)
    return f"{sign}{minor // 100}.{minor % 100:02d}"


def _by_group(values: tuple[Decimal, ...]) -> dict[str, int]:
    return {
        letter: _minor(value) for letter, value in zip(VAT_LETTERS, values, strict=False) if value
    }


class ShiftService:
    def __init__(
        self,
        settings: AgentSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        write_lock: asyncio.Lock,
        devices: TillDevices,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._write_lock = write_lock
        self._devices = devices
        self._zone = ZoneInfo(settings.timezone)
        self._cash = CashIntents(settings, sessionmaker, write_lock)
        # Set by the agent: whether central has answered for this run's numbers.
        self.numbering: EventNumbering | None = None

    async def _current(self, session: AsyncSession, till: str) -> Shift | None:
        result: Shift | None = await session.scalar(
            select(Shift)
            .where(Shift.till == till, Shift.closed_at.is_(None))
            .order_by(Shift.opened_at.desc())
            .limit(1)
        )
        return result

    async def open_shift(self, till: str, data: ShiftOpenIn) -> tuple[ShiftOut, bool]:
        """Record the shift, then deposit its float on the fiscal printer (cash in): the
        printer's cash count is what a cash-out is checked against and what its Z report
        says. The deposit is recorded pending with the shift, so a printer that is away,
        or a crash before it, leaves it to the next print on the till (it goes first)
        or the background retry; never twice (:meth:`CashIntents.deposit_floats`)."""
        out, created = await self._record_shift(till, data)
        if out.float_deposit == "pending":
            devices = self._devices.tills[till]
            try:
                async with devices.fiscal_queue:
                    await self._cash.settle_till(devices)
            except DeviceError as exc:
                log.warning("till %s: opening float not deposited yet: %s", till, exc)
            async with self._sessionmaker() as session:
                shift = await session.get(Shift, out.shift_id)
                assert shift is not None
                out = await self._summary(session, shift)
        return out, created

    async def _record_shift(self, till: str, data: ShiftOpenIn) -> tuple[ShiftOut, bool]:
        devices = self._devices.tills.get(till)
        fiscal = devices is not None and devices.has_fiscal
        try:
            async with self._write_lock, self._sessionmaker() as session, session.begin():
                current = await self._current(session, till)
                if current is not None:
                    if current.z_status is not None:
                        # Its close began (and is under way, or failed): no opening is a
                        # retry of this one now, each is for the next shift.
                        raise Conflict(
                            closing_shift_detail(
                                current.shift_id,
                                till,
                                current.z_error,
                                "the next shift opens once it is closed",
                            ),
                            field="shift",
                        )
                    if data.shift_id not in ("", current.shift_id):
                        raise Conflict(
                            f"shift {current.shift_id} is still open at till {till}",
                            field="shift_id",
                        )
                    # The same request again gets the open shift; one for another
                    # cashier or float is another shift, which cannot open now.
                    _same_shift(current, data)
                    return await self._summary(session, current), False
                shift_id = data.shift_id or await self._new_shift_id(session, till)
                if await session.get(Shift, shift_id) is not None:
                    raise Conflict(f"shift {shift_id} was already used", field="shift_id")
                opening_float = data.opening_float or 0
                shift = Shift(
                    shift_id=shift_id,
                    till=till,
                    cashier=data.cashier,
                    opening_float=opening_float,
                    # 0 would only ask the printer's cash sum: nothing to deposit
                    float_status="pending" if fiscal and opening_float > 0 else None,
                )
                session.add(shift)
                await append_event(
                    session,
                    branch=self._settings.branch,
                    timezone=self._settings.timezone,
                    body=ShiftOpened(
                        till=till,
                        shift_id=shift_id,
                        cashier=data.cashier,
                        opening_float=opening_float,
                    ),
                )
                await session.flush()
                return await self._summary(session, shift), True
        except OperationalError as exc:
            if is_storage_full(exc):
                raise StorageFull("the agent's storage is full") from exc
            raise

    async def _new_shift_id(self, session: AsyncSession, till: str) -> str:
        """``<till>-<n>``: the till's next number, above the floor central's numbering
        answer set (see :mod:`branch_agent.numbering`), so unique at central whatever
        happened to this database. Before that answer (offline at start) the floor may
        be behind central's shifts: a random tag (~28 million values) keeps the id apart
        from any other shift's, e.g. ``T2-5-k7qz2``."""
        floor = await session.get(Counter, SHIFT_FLOOR)
        counter = await session.get(Counter, f"shift:{till}")
        n = max(counter.value if counter else 0, floor.value if floor else 0) + 1
        if counter is None:
            session.add(Counter(name=f"shift:{till}", value=n))
        else:
            counter.value = n
        if self.numbering is None or self.numbering.settled:
            return f"{till}-{n}"
        tag = "".join(secrets.choice(_TAG_ALPHABET) for _ in range(5))
        return f"{till}-{n}-{tag}"

    async def current(self, till: str) -> ShiftOut:
        async with self._sessionmaker() as session:
            shift = await self._current(session, till)
            if shift is None:
                raise NotFound(f"no open shift at till {till}")
            return await self._summary(session, shift)

    async def _totals(self, session: AsyncSession, shift: Shift) -> dict[str, Any]:
        sales = (
            await session.scalars(
                select(Sale).where(Sale.till == shift.till, Sale.shift_id == shift.shift_id)
            )
        ).all()
        returns = (
            await session.scalars(
                select(CustomerReturn).where(
                    CustomerReturn.till == shift.till, CustomerReturn.shift_id == shift.shift_id
                )
            )
        ).all()
        pending_returns = sum(1 for r in returns if r.status == "pending_fiscal")
        moves = (
            await session.execute(
                select(CashMove.direction, func.sum(CashMove.amount))
                .where(
                    CashMove.till == shift.till,
                    CashMove.shift_id == shift.shift_id,
                    CashMove.status == "done",
                )
                .group_by(CashMove.direction)
            )
        ).all()
        cash_moves = {direction: int(total) for direction, total in moves}
        payments: dict[str, int] = defaultdict(int)
        by_group: dict[str, int] = defaultdict(int)
        for sale in sales:
            receipt = msgspec.convert(sale.receipt, ReceiptRecorded)
            for payment in receipt.payments:
                payments[payment.type] += payment.amount
            payments["cash"] -= receipt.change
            for job_line, line in zip(
                (sale.print_job or {}).get("lines", []), receipt.lines, strict=False
            ):
                by_group[job_line["vat_group"]] += line.line_total
        refunds: dict[str, int] = defaultdict(int)
        storno_by_group: dict[str, int] = defaultdict(int)
        originals = await self._original_groups(session, returns)
        unplaced: list[tuple[str, int]] = []
        for ret in returns:
            body = msgspec.convert(ret.body, CustomerReturnRecorded)
            for refund in body.refunds:
                refunds[refund.type] += refund.amount
            if body.without_receipt:
                # Never a storno (0x2B needs the original document): not on the Z's
                # storno totals, and not a difference either.
                continue
            # Every return against the Z's storno totals, as central's reconciliation
            # counts them: one printed without storno shows as a difference there too.
            job_groups = [line["vat_group"] for line in (ret.print_job or {}).get("lines", [])]
            sold_groups = originals.get((ret.original_till or ret.till, ret.original_sale_id), [])
            for index, line in enumerate(body.lines):
                if index < len(job_groups):
                    group = job_groups[index]
                elif line.line_no <= len(sold_groups):
                    group = sold_groups[line.line_no - 1]
                else:
                    unplaced.append((line.sku, line.line_total))
                    continue
                storno_by_group[group] += line.line_total
        if unplaced:
            # sold at a till without a fiscal printer: the product's group now
            listed = await find_products(
                session, [sku for sku, _ in unplaced], at=datetime.now(UTC), priced=False
            )
            for sku, amount in unplaced:
                item = listed.get(sku)
                storno_by_group[item.vat_group if item else "A"] += amount
        return {
            "receipts_count": len(sales),
            "sales_total": sum(s.total for s in sales),
            "returns_total": sum(r.total for r in returns),
            "payments_by_type": {k: v for k, v in payments.items() if v},
            "cash_in": cash_moves.get("in", 0),
            "cash_out": cash_moves.get("out", 0),
            "cash_refunds": refunds.get("cash", 0),
            "by_group": dict(by_group),
            "storno_by_group": dict(storno_by_group),
            "pending": sum(1 for s in sales if s.status == "pending_fiscal") + pending_returns,
        }

    async def _original_groups(
        self, session: AsyncSession, returns: Sequence[CustomerReturn]
    ) -> dict[tuple[str, str], list[str]]:
        """VAT group of each line of the receipts returned without a storno job, by
        (till, sale_id): sale ids are the till's, two tills may use the same one."""
        wanted = {
            (r.original_till or r.till, r.original_sale_id)
            for r in returns
            if not r.print_job and r.original_sale_id
        }
        if not wanted:
            return {}
        rows = await session.execute(
            select(Sale.till, Sale.sale_id, Sale.print_job).where(
                tuple_(Sale.till, Sale.sale_id).in_(sorted(wanted))
            )
        )
        return {
            (till, sale_id): [line["vat_group"] for line in (job or {}).get("lines", [])]
            for till, sale_id, job in rows
        }

    async def _summary(self, session: AsyncSession, shift: Shift) -> ShiftOut:
        t = await self._totals(session, shift)
        return self._out(shift, t)

    def _out(self, shift: Shift, t: dict[str, Any]) -> ShiftOut:
        def local(at: datetime | None) -> str | None:
            return at.astimezone(self._zone).isoformat() if at else None

        expected = (
            shift.opening_float
            + t["payments_by_type"].get("cash", 0)
            - t["cash_refunds"]
            + t["cash_in"]
            - t["cash_out"]
        )
        return ShiftOut(
            shift_id=shift.shift_id,
            till=shift.till,
            cashier=shift.cashier,
            opening_float=shift.opening_float,
            opened_at=local(shift.opened_at) or "",
            closed_at=local(shift.closed_at),
            receipts_count=t["receipts_count"],
            sales_total=t["sales_total"],
            returns_total=t["returns_total"],
            payments_by_type=t["payments_by_type"],
            cash_in=t["cash_in"],
            cash_out=t["cash_out"],
            expected_cash=expected,
            float_deposit=shift.float_status,
            closing=shift.closed_at is None and shift.z_status == "pending",
            close_error=close_failed_detail(
                shift.shift_id, shift.z_error, closing=shift.z_status == "pending"
            )
            if shift.z_error and shift.closed_at is None
            else None,
            counted_cash=shift.counted_cash,
            cash_difference=None if shift.counted_cash is None else shift.counted_cash - expected,
        )

    async def x_report(self, till: str) -> XReportOut:
        summary = await self.current(till)
        devices = self._devices.tills.get(till)
        if devices is None or not devices.has_fiscal:
            return XReportOut(shift=summary)
        try:
            async with devices.fiscal_queue:
                # an unsettled cash move must be compared with the printer first: the X
                # report is a document too
                await self._cash.settle_till(devices)
                report = await devices.fiscal_report("x")
        except DeviceError as exc:
            raise DeviceFailed(
                f"the fiscal printer did not print the X report: {exc.message}",
                condition=exc.condition,
            ) from exc
        return XReportOut(
            shift=await self.current(till),  # as of now: a float may have just gone in
            fiscal_turnover_by_vat_group=_by_group(report.totals),
            fiscal_report_number=report.report_number,
        )

    async def close_shift(
        self, till: str, shift_id: str | None = None, counted_cash: int | None = None
    ) -> ShiftCloseOut:
        """Z report first (the printer's day closes), then the shift with both totals.

        Idempotent: a close repeated after it succeeded (its answer lost), with no shift
        opened since, gets the same answer again, never a second Z report; one with
        another ``counted_cash`` than the close recorded is a 409 (a left-out count is not
        compared). A close whose Z report did not print leaves the shift closing, with
        why and what to do kept on it (``close_error``), until it is repeated. The count is
        kept with the Z report's intent (from then on nothing changes the shift's cash),
        and a repeat may give another (a recount while the printer is put right): nothing
        has left the till yet. A close refused before its intent records no count."""
        devices = self._devices.tills.get(till)
        async with self._sessionmaker() as session:
            shift = await self._current(session, till)
            if shift is None or (shift_id and shift.shift_id != shift_id):
                done = await self._closed_shift(session, till, shift_id)
                if done is not None:
                    _same_count(done, counted_cash)
                    return await self._report(session, done)
                raise NotFound(f"no open shift {shift_id or ''} at till {till}".replace("  ", " "))
            totals = await self._totals(session, shift)
        if totals["pending"]:
            raise Conflict(
                f"{totals['pending']} sale(s) or return(s) of this shift still wait for the"
                " fiscal printer",
                field="shift",
            )
        report: ReportResult | None = None
        if devices is not None and devices.has_fiscal:
            async with devices.fiscal_queue:
                try:
                    report = await self._z_report(devices, shift.shift_id, counted_cash)
                except _ClosedMeanwhile:
                    return await self._closed_answer(till, shift.shift_id, counted_cash)
                except DeviceError as exc:
                    # The questions asked after the failure (fiscal memory) answered: the
                    # printer's state must still say why the Z did not print.
                    devices.keep_fiscal_fault(exc)
                    raise await self._close_failed(till, shift.shift_id, exc) from exc
        z = None
        if report is not None:
            z = ZReportTotals(
                report_number=report.report_number,
                turnover_by_vat_group=_by_group(report.totals),
                storno_by_vat_group=_by_group(report.storno_totals),
            )
        return await self._record_close(till, shift.shift_id, counted_cash, z)

    async def _record_close(
        self,
        till: str,
        shift_id: str,
        counted_cash: int | None,
        z: ZReportTotals | None,
        intervention: FiscalInterventionRecorded | None = None,
        z_printed: bool | None = None,
    ) -> ShiftCloseOut:
        """Close the shift with its closing event (and a manager's ``intervention`` that
        closed it without a Z report, in the same transaction: sent up exactly once)."""
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            row = await session.get(Shift, shift_id)
            assert row is not None
            if row.closed_at is not None:
                # a second close of the same shift raced this one (no fiscal printer)
                _same_count(row, counted_cash)
                return await self._report(session, row)
            if counted_cash is not None:
                row.counted_cash = counted_cash  # else the count kept from a failed close
            totals = await self._totals(session, row)
            row.closed_at = datetime.now(UTC)
            out = self._out(row, totals)
            closed = ShiftClosed(
                till=till,
                shift_id=row.shift_id,
                cashier=row.cashier,
                receipts_count=totals["receipts_count"],
                sales_total=totals["sales_total"],
                returns_total=totals["returns_total"],
                payments_by_type=totals["payments_by_type"],
                cash_in=totals["cash_in"],
                cash_out=totals["cash_out"],
                z_report=z,
                counted_cash=row.counted_cash,
                expected_cash=out.expected_cash,
                z_printed=z_printed,
            )
            row.closing = msgspec.to_builtins(closed)
            row.z_error = None
            if row.z_status is not None:
                row.z_status = "done"
            await append_event(
                session, branch=self._settings.branch, timezone=self._settings.timezone, body=closed
            )
            if intervention is not None:
                await append_event(
                    session,
                    branch=self._settings.branch,
                    timezone=self._settings.timezone,
                    body=intervention,
                )
            answer = self._close_out(out, totals, z)
            # given again to a close repeated after this one, and by GET /shifts/{id}
            row.close_answer = msgspec.to_builtins(answer)
        return answer

    async def _closed_shift(
        self, session: AsyncSession, till: str, shift_id: str | None
    ) -> Shift | None:
        """The closed shift a repeated close is about: the one named, or else the till's
        latest (no shift is open at the till, so nothing was opened after it)."""
        if shift_id:
            shift = await session.get(Shift, shift_id)
        else:
            shift = await session.scalar(
                select(Shift)
                .where(Shift.till == till)
                .order_by(Shift.opened_at.desc(), Shift.shift_id.desc())
                .limit(1)
            )
        if shift is None or shift.till != till or shift.closed_at is None:
            return None
        return shift

    async def _close_failed(self, till: str, shift_id: str, exc: DeviceError) -> DeviceFailed:
        """Say why the Z report did not print and what to do, and keep it on the shift
        (``close_error`` of GET /api/v1/shifts/current) until a close succeeds."""
        # the printer's condition as a sale's fiscal_error says it, and what to do
        z_error = f"{fiscal_fault(exc)}; {fiscal_remedy(exc.condition, till)}"[:500]
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            row = await session.get(Shift, shift_id)
            assert row is not None
            if row.closed_at is None:
                row.z_error = z_error
            closing = row.z_status == "pending"
        return DeviceFailed(
            close_failed_detail(shift_id, z_error, closing=closing), condition=exc.condition
        )

    async def _closed_answer(
        self, till: str, shift_id: str, counted_cash: int | None
    ) -> ShiftCloseOut:
        """The answer of a close that another close of the same shift finished first."""
        async with self._sessionmaker() as session:
            shift = await session.get(Shift, shift_id)
            assert shift is not None
            _same_count(shift, counted_cash)
            return await self._report(session, shift)

    async def get_shift(self, till: str, shift_id: str) -> ShiftCloseOut:
        """A shift of this till, open or closed: the agent's totals, and once closed its
        Z report's figures as the close answered them."""
        async with self._sessionmaker() as session:
            shift = await session.get(Shift, shift_id)
            if shift is None or shift.till != till:
                raise NotFound(f"no shift {shift_id} at till {till}")
            return await self._report(session, shift)

    async def _report(self, session: AsyncSession, shift: Shift) -> ShiftCloseOut:
        if shift.close_answer is not None:
            return msgspec.convert(shift.close_answer, ShiftCloseOut)
        # open, or closed before the answer was kept (agent a1903): made from the records
        totals = await self._totals(session, shift)
        z_report = (shift.closing or {}).get("z_report")
        z = msgspec.convert(z_report, ZReportTotals) if z_report else None
        return self._close_out(self._out(shift, totals), totals, z)

    def _close_out(
        self, out: ShiftOut, totals: dict[str, Any], z: ZReportTotals | None
    ) -> ShiftCloseOut:
        agent_groups = {k: v for k, v in totals["by_group"].items() if v}
        agent_storno = {k: v for k, v in totals["storno_by_group"].items() if v}
        return ShiftCloseOut(
            shift=out,
            z_report_number=z.report_number if z else None,
            z_turnover_by_vat_group=dict(z.turnover_by_vat_group) if z else {},
            z_storno_by_vat_group=dict(z.storno_by_vat_group) if z else {},
            agent_turnover_by_vat_group=agent_groups,
            agent_storno_by_vat_group=agent_storno,
            # every figure the Z carries that the agent records
            matches_fiscal=(
                dict(z.turnover_by_vat_group) == agent_groups
                and dict(z.storno_by_vat_group) == agent_storno
            )
            if z
            else None,
        )

    async def _z_report(
        self, devices: TillDeviceSet, shift_id: str, counted_cash: int | None
    ) -> ReportResult:
        """Print the Z report once for this shift: intent first, then the report; a
        pending intent (crash, lost answer, retry) is settled with the printer's fiscal
        memory. The count is recorded with the intent (or by a repeat that gives one), so
        a close killed or failed after it keeps it. Called with the till's fiscal queue
        held."""
        await self._cash.settle_till(devices)
        async with self._sessionmaker() as session:
            shift = await session.get(Shift, shift_id)
            assert shift is not None
            if shift.closed_at is not None:
                # a second close of the same shift raced the first: never a second Z
                raise _ClosedMeanwhile(shift_id)
            pending, before = shift.z_status == "pending", shift.z_before_number
            z_printer = shift.z_printer
            recount = counted_cash is not None and counted_cash != shift.counted_cash
        if pending and recount:
            async with self._write_lock, self._sessionmaker() as session, session.begin():
                row = await session.get(Shift, shift_id)
                assert row is not None
                row.counted_cash = counted_cash
        if pending and before is not None:
            await same_printer(devices, z_printer, "the Z report")
            last = await devices.fiscal_last_z()
            if last.report_number > before:
                return last  # printed before the crash or the lost answer: read back
        else:
            before = (await devices.fiscal_last_z()).report_number
            z_printer = await printer_serial(devices)
            async with self._write_lock, self._sessionmaker() as session, session.begin():
                row = await session.get(Shift, shift_id)
                assert row is not None
                # Sales commit under the same write lock and are refused once the
                # intent is on the shift; one recorded since the caller's check still
                # waits for this queue and would print after the Z: not this time.
                waiting = await _waiting_for_printer(session, row)
                if waiting:
                    raise Conflict(
                        f"{waiting} sale(s) or return(s) of this shift still wait for the"
                        " fiscal printer",
                        field="shift",
                    )
                row.z_status, row.z_before_number = "pending", before
                row.z_printer = z_printer
                if counted_cash is not None:
                    row.counted_cash = counted_cash
        try:
            report = await devices.fiscal_report("z")
        except DeviceError:
            # the driver already compared document numbers; make sure from fiscal memory
            last = await devices.fiscal_last_z()
            if last.report_number > before:
                return last
            raise
        if report.report_number <= before:
            raise DeviceError("unknown_state", f"Z report {report.report_number} after {before}")
        return report

    async def settle_pending(self, till: str, data: SettleIn) -> SettleOut:
        """A manager's decision on a cash move, opening float deposit, refund pay-out or Z
        report left pending on a printer that cannot answer for it (gone, unable to print
        again, or one whose state explains neither outcome: another printer put in its
        place). Refused while the printer can settle it: the agent asks it first, under
        the till's fiscal queue, exactly as it would before its next print. The decision
        and the ``fiscal_intervention`` event are committed in one transaction (with the
        cash move's ``CashMoved`` when it was printed; with the closing when a Z is
        decided): a repeat after a crash finds nothing pending, nothing counted twice."""
        devices = self._devices.tills.get(till)
        if devices is None or not devices.has_fiscal:
            raise NotFound(f"till {till} has no fiscal printer")
        if data.counted_cash is not None and data.intent != "z_report":
            raise Rejected("counted_cash goes with a z_report decision only", field="counted_cash")
        what = _INTENT_NAMES[data.intent].format(id=data.id)
        async with devices.fiscal_queue:
            # A shift whose printer died before its close was started has no Z intent:
            # the manager may close it without Z (checked below: the printer is gone).
            not_started = data.intent == "z_report" and await self._z_not_started(till, data)
            shift_id = data.id if not_started else await self._pending_intent(till, data, what)
            try:
                if data.intent == "z_report":
                    # The repeated close compares the printer's fiscal memory with the
                    # intent; only a printer that cannot tell (gone, broken, another
                    # one) leaves it to a person.
                    await devices.fiscal_last_z()
                    async with self._sessionmaker() as session:
                        shift = await session.get(Shift, shift_id)
                        assert shift is not None
                    if not not_started:
                        await same_printer(devices, shift.z_printer, "the Z report")
                else:
                    await self._cash.settle_till(devices)
            except DeviceError as exc:
                if exc.condition not in PERSON_DECIDES:
                    raise Conflict(
                        f"the fiscal printer of till {till} answers ({fiscal_fault(exc)}):"
                        f" {fiscal_remedy(exc.condition, till)}, and the agent settles {what}"
                        " with it; a manager settles it only when the printer cannot be"
                        " reached, cannot print again, or its state explains neither outcome",
                        field="intent",
                    ) from exc
            else:
                if not_started:
                    # Another unit swapped in answers too: its Z is the till's fiscal day
                    # (what it printed of this shift), printed by the ordinary close.
                    raise Conflict(
                        f"the fiscal printer of till {till} answers: close the shift as usual"
                        f" ({CLOSE_ROUTE}); it prints the Z report (on a printer swapped in,"
                        " the new one's)",
                        field="intent",
                    )
                if data.intent == "z_report":
                    raise Conflict(
                        f"the fiscal printer of till {till} answers: repeat the close"
                        f" ({CLOSE_ROUTE}); it compares the printer's fiscal memory with the"
                        f" Z report's intent and prints the Z only if it was not printed",
                        field="intent",
                    )
            if data.intent != "z_report":
                # the printer may have settled it just now, or another intent before it
                await self._pending_intent(till, data, what, settled_by_printer=True)
            action = "closed_without_z" if not_started else f"{data.intent}_{data.outcome}"
            intervention = FiscalInterventionRecorded(
                till=till,
                shift_id=shift_id,
                action=action,
                document=what,
                reason=data.reason,
            )
            if data.intent == "z_report":
                await self._record_close(
                    till,
                    shift_id,
                    data.counted_cash,
                    None,
                    intervention,
                    z_printed=data.outcome == "printed",
                )
                status = "closed"
            else:
                status = await self._decide_cash(till, data, intervention)
        log.warning(
            "till %s: %s settled by a manager as %s: %s", till, what, data.outcome, data.reason
        )
        async with self._sessionmaker() as session:
            shift = await session.get(Shift, shift_id)
            assert shift is not None
            out = await self._summary(session, shift)
        return SettleOut(
            till=till,
            intent=data.intent,
            id=data.id,
            outcome=data.outcome,
            action=action,
            status=status,
            shift=out,
        )

    async def _z_not_started(self, till: str, data: SettleIn) -> bool:
        """Whether ``data`` names the till's open shift whose close never reached the
        printer (no Z intent); then nothing may be left of it for a printer: its sales and
        returns completed or printed, its cash intents settled (409s naming ``id``), and
        only ``not_printed`` is possible (no Z was sent: 409 naming ``outcome``)."""
        async with self._sessionmaker() as session:
            shift = await session.get(Shift, data.id)
            if (
                shift is None
                or shift.till != till
                or shift.closed_at is not None
                or shift.z_status is not None
            ):
                return False
            totals = await self._totals(session, shift)
            cash = int(
                await session.scalar(
                    select(func.count())
                    .select_from(CashMove)
                    .where(CashMove.shift_id == shift.shift_id, CashMove.status == "pending")
                )
                or 0
            ) + int(
                await session.scalar(
                    select(func.count())
                    .select_from(CustomerReturn)
                    .where(
                        CustomerReturn.shift_id == shift.shift_id,
                        CustomerReturn.payout_status == "pending",
                    )
                )
                or 0
            )
            if shift.float_status == "pending":
                cash += 1
        if data.outcome != "not_printed":
            raise Conflict(
                f"the close of shift {data.id} never reached the printer: no Z report was"
                " sent, so it cannot have been printed (outcome not_printed)",
                field="outcome",
            )
        if totals["pending"]:
            raise Conflict(
                f"{totals['pending']} sale(s) or return(s) of shift {data.id} still wait for"
                " the fiscal printer: complete-unfiscal or print-on-new-printer each first",
                field="id",
            )
        if cash:
            raise Conflict(
                f"{cash} cash move(s), pay-out(s) or float deposit(s) of shift {data.id}"
                " still wait for the fiscal printer: settle-pending each first",
                field="id",
            )
        return True

    async def _pending_intent(
        self, till: str, data: SettleIn, what: str, *, settled_by_printer: bool = False
    ) -> str:
        """The shift of the pending intent ``data`` names; 404 when there is none, 409
        when it is not pending (settled, by the printer or by an earlier decision)."""
        async with self._sessionmaker() as session:
            status: str | None
            if data.intent == "cash_move":
                move = await session.scalar(
                    select(CashMove).where(CashMove.till == till, CashMove.move_id == data.id)
                )
                found, status = (move.shift_id, move.status) if move else (None, None)
            elif data.intent == "payout":
                ret = await session.scalar(
                    select(CustomerReturn).where(
                        CustomerReturn.till == till, CustomerReturn.return_id == data.id
                    )
                )
                found, status = (ret.shift_id, ret.payout_status) if ret else (None, None)
            else:
                shift = await session.get(Shift, data.id)
                found = shift.shift_id if shift and shift.till == till else None
                if shift is None or found is None:
                    status = None
                elif data.intent == "float":
                    status = shift.float_status
                else:
                    status = "closed" if shift.closed_at else shift.z_status
        if found is None:
            raise NotFound(f"no {what} at till {till}", field="id")
        if status != "pending":
            by = "the printer settled it: " if settled_by_printer else ""
            raise Conflict(
                f"{what} at till {till} is not pending ({by}{status or 'nothing was sent'});"
                " nothing to decide",
                field="id",
            )
        return found

    async def _decide_cash(
        self, till: str, data: SettleIn, intervention: FiscalInterventionRecorded
    ) -> str:
        """The manager's outcome on the intent, its event and the intervention in one
        transaction. Printed: as if the printer had answered (a cash move is done and
        counted in the shift with its ``CashMoved``; a float or pay-out is printed);
        not printed: known not printed (a cash move or pay-out ``failed``, which the till
        may post again on the till's printer; a float ``not_deposited``). Neither changes
        what the drawer holds by the shift's records except a printed cash move."""
        printed = data.outcome == "printed"
        note = f"settled by a manager as {data.outcome.replace('_', ' ')}: {data.reason}"
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            amount = 0
            if data.intent == "cash_move":
                move = await session.scalar(
                    select(CashMove).where(CashMove.till == till, CashMove.move_id == data.id)
                )
                assert move is not None
                assert move.status == "pending"
                amount = move.amount
                move.status = "done" if printed else "failed"
                move.fiscal_error = None if printed else note[:200]
                if printed:
                    await append_event(
                        session,
                        branch=self._settings.branch,
                        timezone=self._settings.timezone,
                        body=cash_moved_event(move),
                        occurred_at=move.created_at,
                    )
                status = move.status
            elif data.intent == "payout":
                ret = await session.scalar(
                    select(CustomerReturn).where(
                        CustomerReturn.till == till, CustomerReturn.return_id == data.id
                    )
                )
                assert ret is not None
                assert ret.payout_status == "pending"
                amount = ret.total
                ret.payout_status = "printed" if printed else "failed"
                ret.payout_error = None if printed else note[:300]
                status = ret.payout_status
            else:
                shift = await session.get(Shift, data.id)
                assert shift is not None
                assert shift.float_status == "pending"
                amount = shift.opening_float
                shift.float_status = "done" if printed else "not_deposited"
                status = shift.float_status
            await append_event(
                session,
                branch=self._settings.branch,
                timezone=self._settings.timezone,
                body=msgspec.structs.replace(intervention, amount=amount),
            )
        return status

    async def move_cash(self, till: str, data: CashMoveIn) -> tuple[CashMoveOut, bool]:
        """Cash in / out, idempotent on ``move_id``. On a till with a fiscal printer the
        move is recorded as an intent first, printed, then completed (module docstring)."""
        devices = self._devices.tills.get(till)
        if devices is None or not devices.has_fiscal:
            return await self._move_cash_unfiscal(till, data)
        async with devices.fiscal_queue:
            async with self._sessionmaker() as session:
                existing = await session.scalar(
                    select(CashMove).where(CashMove.till == till, CashMove.move_id == data.move_id)
                )
                shift = await self._current(session, till)
            if existing is not None:
                _check_same_move(existing, data)
            try:
                # older pending moves first: the printer's counters must be explained
                # in order before anything else is printed
                await self._cash.settle_till(devices)
            except DeviceError as exc:
                raise DeviceFailed(
                    f"a cash move at this till is still unsettled: {exc.message}",
                    condition=exc.condition,
                ) from exc
            if existing is not None:
                async with self._sessionmaker() as session:
                    existing = await session.get(CashMove, existing.id)
                assert existing is not None
                if existing.status == "done":
                    return _cash_out(existing), False
                # failed: known not printed; the till asks again with the same id
            elif shift is None:
                raise Conflict("open a shift before moving cash", field="shift")
            elif shift.z_status is not None:
                # its Z report is printing: the move would come after the Z counted it
                raise Conflict(
                    closing_shift_detail(
                        shift.shift_id, till, shift.z_error, "move cash in the next shift"
                    ),
                    field="shift",
                )
            try:
                document, cash = await self._cash.printer_cash(devices)
                # whose numbers they are: a swapped printer's never settle this move
                serial = await printer_serial(devices)
            except DeviceError as exc:
                raise DeviceFailed(
                    f"the fiscal printer did not answer: {exc.message}", condition=exc.condition
                ) from exc
            if data.direction == "out" and data.amount > cash:
                # The printer refuses a cash-out beyond its cash count (a bare "command
                # failed", which read as a device fault): said plainly, nothing recorded.
                raise Conflict(
                    f"not enough cash in the drawer: {_money(cash)} by the fiscal printer's"
                    f" count, {_money(data.amount)} asked",
                    field="amount",
                )
            move_pk = await self._cash_intent(till, data, existing, shift, (document, cash, serial))
            try:
                await devices.fiscal_cash(Decimal(data.amount) / 100, out=data.direction == "out")
            except DeviceError as exc:
                async with self._sessionmaker() as session:
                    intent = await session.get(CashMove, move_pk)
                assert intent is not None
                try:
                    outcome = await self._cash.settle(devices, intent)
                except DeviceError:
                    outcome = "pending"
                if outcome != "done":
                    raise DeviceFailed(
                        f"the fiscal printer did not register the cash move: {exc.message}"
                        + (" (kept pending: post it again)" if outcome == "pending" else ""),
                        condition=exc.condition,
                    ) from exc
            row = await self._cash.complete(move_pk)
        out = _cash_out(row)
        # Printed by this request (a repeat of a done move was answered above).
        out.drawer, out.drawer_error = await devices.open_drawer_for_cash()
        return out, existing is None

    async def _cash_intent(
        self,
        till: str,
        data: CashMoveIn,
        existing: CashMove | None,
        shift: Shift | None,
        state: tuple[int, int, str | None],
    ) -> int:
        """Commit the intent (or re-arm a failed one) with the printer's state before:
        its last document number, cash sum and serial number."""
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            if existing is not None:
                row = await session.get(CashMove, existing.id)
                assert row is not None
            else:
                assert shift is not None
                row = CashMove(
                    till=till,
                    move_id=data.move_id,
                    shift_id=shift.shift_id,
                    direction=data.direction,
                    amount=data.amount,
                    reason=data.reason,
                    cashier=data.cashier or shift.cashier,
                )
                session.add(row)
            row.status = "pending"
            row.printer_document_before, row.printer_cash_before, row.printer_serial = state
            row.fiscal_error = None
            await session.flush()
            return row.id

    async def _move_cash_unfiscal(self, till: str, data: CashMoveIn) -> tuple[CashMoveOut, bool]:
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            existing = await session.scalar(
                select(CashMove).where(CashMove.till == till, CashMove.move_id == data.move_id)
            )
            if existing is not None:
                _check_same_move(existing, data)
                return _cash_out(existing), False
            shift = await self._current(session, till)
            if shift is None:
                raise Conflict("open a shift before moving cash", field="shift")
            if data.direction == "out":
                # No printer keeps a cash count here: the agent's own is the check. Read
                # and recorded under the write lock, so two cash-outs at once cannot both
                # take the same cash.
                cash = self._out(shift, await self._totals(session, shift)).expected_cash
                if data.amount > cash:
                    raise Conflict(
                        f"not enough cash in the drawer: {_money(cash)} by the till's count,"
                        f" {_money(data.amount)} asked",
                        field="amount",
                    )
            row = CashMove(
                till=till,
                move_id=data.move_id,
                shift_id=shift.shift_id,
                direction=data.direction,
                amount=data.amount,
                reason=data.reason,
                cashier=data.cashier or shift.cashier,
                status="done",
            )
            session.add(row)
            await append_event(
                session,
                branch=self._settings.branch,
                timezone=self._settings.timezone,
                body=CashMoved(
                    till=till,
                    shift_id=shift.shift_id,
                    direction=data.direction,
                    amount=data.amount,
                    reason=data.reason,
                    cashier=row.cashier,
                ),
            )
        out = _cash_out(row)
        devices = self._devices.tills.get(till)
        if devices is not None:
            out.drawer, out.drawer_error = await devices.open_drawer_for_cash()
        return out, True


class _ClosedMeanwhile(Exception):
    """The shift a close waited to print the Z of was closed meanwhile (a repeated close
    that raced the first): its answer is the first close's."""


def _same_shift(current: Shift, data: ShiftOpenIn) -> None:
    """Refuse an opening that names another cashier or float than the open shift's
    (a field left out is not compared)."""
    opened = (
        f"shift {current.shift_id} is open at till {current.till} for"
        f" {current.cashier or 'no cashier'} with a float of {_money(current.opening_float)}:"
        " close it first"
    )
    if data.cashier and data.cashier != current.cashier:
        raise Conflict(opened, field="cashier")
    if data.opening_float is not None and data.opening_float != current.opening_float:
        raise Conflict(opened, field="opening_float")


def _same_count(shift: Shift, counted_cash: int | None) -> None:
    """A close repeated after the shift closed: another count than the one recorded
    (sent to head office with the closing) is a 409; a left-out count is not compared."""
    if counted_cash is None or counted_cash == shift.counted_cash:
        return
    recorded = "no count" if shift.counted_cash is None else _money(shift.counted_cash)
    raise Conflict(
        f"shift {shift.shift_id} was closed with {recorded} counted in the drawer, not"
        f" {_money(counted_cash)}: a closed shift's count is not changed",
        field="counted_cash",
    )


async def _waiting_for_printer(session: AsyncSession, shift: Shift) -> int:
    """How many sales and returns of the shift are still to be printed."""
    count = 0
    for model in (Sale, CustomerReturn):
        count += int(
            await session.scalar(
                select(func.count())
                .select_from(model)
                .where(
                    model.till == shift.till,
                    model.shift_id == shift.shift_id,
                    model.status == "pending_fiscal",
                )
            )
            or 0
        )
    return count


def _cash_out(row: CashMove) -> CashMoveOut:
    return CashMoveOut(
        move_id=row.move_id,
        till=row.till,
        shift_id=row.shift_id,
        direction=row.direction,
        amount=row.amount,
        reason=row.reason,
    )


def _check_same_move(row: CashMove, data: CashMoveIn) -> None:
    """A move_id posted again must be the same move (a retry): another direction,
    amount, reason or cashier under it is a 409, never answered with the first."""
    differences = [
        name
        for name, before, now in (
            ("direction", row.direction, data.direction),
            ("amount", row.amount, data.amount),
            # Left out of a retry, a reason or cashier is not another one (without a
            # cashier the shift's was recorded): only one named otherwise differs.
            ("reason", row.reason, data.reason or row.reason),
            ("cashier", row.cashier, data.cashier or row.cashier),
        )
        if before != now
    ]
    if differences:
        raise Conflict(
            f"cash move {data.move_id} was recorded with other content"
            f" ({', '.join(differences)}): a different move needs its own id",
            field="move_id",
        )
