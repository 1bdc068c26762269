"""Shifts with the fiscal printer's Z totals beside what central recorded; closing days."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import case, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.schemas import Page
from central.auth.context import current_request_audit
from central.errors import ConflictError, NotFoundError, ValidationFailed
from central.models import (
    Branch,
    CashMovement,
    ClosedDay,
    CustomerReturn,
    Receipt,
    Shift,
    ShiftIdConflict,
)
from central.services.audit import cli_actor, record_change
from central.services.fiscal import FiscalInterventionOut, interventions_of_shifts
from central.services.paging import check_branch, check_period, paged
from central.services.receipts import branch_local_time

__all__ = [
    "ClosedDayOut",
    "ShiftIdConflictOut",
    "ShiftOut",
    "ShiftTotals",
    "close_day",
    "list_closed_days",
    "list_shifts",
]


class ShiftTotals(msgspec.Struct, kw_only=True):
    receipts_count: int | None
    sales_total: int | None
    returns_total: int | None
    cash_in: int | None
    cash_out: int | None


class ShiftIdConflictOut(msgspec.Struct, kw_only=True):
    """An opening or closing sent under this shift's id that central did not file into
    it: another shift's (the id given again by an old agent restored or replaced) or a
    second closing of this one. The shift's own figures are left as they were."""

    kind: str  # opened, closed
    event_id: uuid.UUID
    seq: int
    till: str
    cashier: str
    occurred_at: datetime
    local_date: date
    # Of an opening:
    opening_float: int | None
    # Of a closing: the agent's counts and the Z report's number.
    receipts_count: int | None
    sales_total: int | None
    z_report_number: int | None
    received_at: datetime


class ShiftOut(msgspec.Struct, kw_only=True):
    branch: str
    shift_id: str
    till: str
    cashier: str
    local_date: date
    opened_at: datetime | None
    closed_at: datetime | None
    status: str
    # Both on the branch's clock as it was then, for people reading them (ISO 8601 with
    # the offset; None as the moment).
    opened_at_local: str | None = None
    closed_at_local: str | None = (
        None  # open, closed, closed_unopened (the close arrived, the opening not yet)
    )
    opening_float: int
    # What the agent counted at close.
    reported: ShiftTotals
    # What the fiscal printer counted (Z report); turnover per VAT group letter.
    z_report_number: int | None
    z_turnover_by_vat_group: dict[str, int]
    z_storno_by_vat_group: dict[str, int]
    z_turnover_total: int | None
    z_receipts_count: int | None
    # What central holds for the shift (late sales included).
    recorded: ShiftTotals
    late_receipts: int
    # Recorded sales equal the Z turnover and the Z receipt count, recorded returns the
    # Z storno total (None: no Z yet).
    z_matches: bool | None
    # Closed without Z figures by the store manager's decision: whether a Z report was
    # printed at all (False: none, the printer was gone before the close; True: the old
    # printer printed it, its figures unread). None: the close carries the Z (or there
    # is no fiscal printer, or an agent from before).
    z_printed: bool | None = None
    # The drawer at the close: the till's expected cash, what the cashier counted, and
    # counted - expected (over > 0, short < 0); None when not counted.
    expected_cash: int | None = None
    counted_cash: int | None = None
    cash_difference: int | None = None
    # Openings and closings under this id not filed into it (see ShiftIdConflictOut).
    id_conflicts: list[ShiftIdConflictOut] = msgspec.field(default_factory=list)
    # Recorded receipts without a fiscal number (completed without the printer, or a
    # till without one); one whose number came late counts as fiscal.
    unfiscal_receipts: int = 0
    # Managers' interventions on the till's fiscal printer during the shift.
    fiscal_interventions: list[FiscalInterventionOut] = msgspec.field(default_factory=list)


class ClosedDayOut(msgspec.Struct, kw_only=True):
    branch: str
    local_date: date
    closed_at: datetime
    closed_by: str


def _conflict_out(c: ShiftIdConflict) -> ShiftIdConflictOut:
    body = c.body
    z = body.get("z_report") or {}

    def number(name: str) -> int | None:
        value = body.get(name)
        return value if isinstance(value, int) else None

    return ShiftIdConflictOut(
        kind=c.kind,
        event_id=c.event_id,
        seq=c.seq,
        till=c.till,
        cashier=c.cashier,
        occurred_at=c.occurred_at,
        local_date=c.local_date,
        opening_float=number("opening_float") if c.kind == "opened" else None,
        receipts_count=number("receipts_count"),
        sales_total=number("sales_total"),
        z_report_number=z.get("report_number") if isinstance(z, dict) else None,
        received_at=c.received_at,
    )


async def list_shifts(
    session: AsyncSession,
    *,
    branch: str | None,
    till: str | None,
    date_from: date | None,
    date_to: date | None,
    limit: int,
    offset: int,
) -> Page[ShiftOut]:
    await check_branch(session, branch)
    check_period(date_from, date_to)
    conditions = []
    if branch:
        conditions.append(Shift.branch == branch)
    if till:
        conditions.append(Shift.till == till)
    if date_from:
        conditions.append(Shift.local_date >= date_from)
    if date_to:
        conditions.append(Shift.local_date <= date_to)
    shifts = (
        await session.scalars(
            select(Shift)
            .where(*conditions)
            .order_by(Shift.local_date, Shift.branch, Shift.till, Shift.shift_id)
            .limit(limit)
            .offset(offset)
        )
    ).all()
    keys = [(s.branch, s.shift_id) for s in shifts]
    sales: dict[tuple[str, str], tuple[int, int, int, int]] = {}
    returns: dict[tuple[str, str], int] = {}
    # of returns: those without receipt, never a storno on the printer
    no_receipt: dict[tuple[str, str], int] = {}
    cash: dict[tuple[str, str], tuple[int, int]] = {}
    conflicts: dict[tuple[str, str], list[ShiftIdConflictOut]] = {}
    if keys:
        for c in await session.scalars(
            select(ShiftIdConflict)
            .where(tuple_(ShiftIdConflict.branch, ShiftIdConflict.shift_id).in_(keys))
            .order_by(ShiftIdConflict.seq)
        ):
            conflicts.setdefault((c.branch, c.shift_id), []).append(_conflict_out(c))
        for r in await session.execute(
            select(
                Receipt.branch,
                Receipt.shift_id,
                func.count(Receipt.id),
                func.coalesce(func.sum(Receipt.total), 0),
                func.coalesce(func.sum(case((Receipt.late, 1), else_=0)), 0),
                func.coalesce(func.sum(case((Receipt.fiscal_number.is_(None), 1), else_=0)), 0),
            )
            .where(tuple_(Receipt.branch, Receipt.shift_id).in_(keys))
            .group_by(Receipt.branch, Receipt.shift_id)
        ):
            sales[(r[0], r[1])] = (int(r[2]), int(r[3]), int(r[4]), int(r[5]))
        for r in await session.execute(
            select(
                CustomerReturn.branch,
                CustomerReturn.shift_id,
                func.coalesce(func.sum(CustomerReturn.total), 0),
                func.coalesce(
                    func.sum(case((CustomerReturn.without_receipt, CustomerReturn.total), else_=0)),
                    0,
                ),
            )
            .where(tuple_(CustomerReturn.branch, CustomerReturn.shift_id).in_(keys))
            .group_by(CustomerReturn.branch, CustomerReturn.shift_id)
        ):
            returns[(r[0], r[1])] = int(r[2])
            no_receipt[(r[0], r[1])] = int(r[3])
        for r in await session.execute(
            select(
                CashMovement.branch,
                CashMovement.shift_id,
                func.coalesce(
                    func.sum(case((CashMovement.direction == "in", CashMovement.amount), else_=0)),
                    0,
                ),
                func.coalesce(
                    func.sum(case((CashMovement.direction == "out", CashMovement.amount), else_=0)),
                    0,
                ),
            )
            .where(tuple_(CashMovement.branch, CashMovement.shift_id).in_(keys))
            .group_by(CashMovement.branch, CashMovement.shift_id)
        ):
            cash[(r[0], r[1])] = (int(r[2]), int(r[3]))
    interventions = await interventions_of_shifts(session, keys)
    items = []
    for s in shifts:
        key = (s.branch, s.shift_id)
        count, sales_total, late, unfiscal = sales.get(key, (0, 0, 0, 0))
        cash_in, cash_out = cash.get(key, (0, 0))
        z_total = sum(s.z_turnover_by_vat_group.values()) if s.z_report_number is not None else None
        # Every figure of the Z that central records, as the shift reconciliation report
        # compares them: sales turnover, receipts, and storno (returns) total; returns
        # without receipt have no storno (0x2B needs the original document).
        z_matches = (
            None
            if z_total is None
            else z_total == sales_total
            and (s.z_receipts_count is None or s.z_receipts_count == count)
            and sum(s.z_storno_by_vat_group.values())
            == returns.get(key, 0) - no_receipt.get(key, 0)
        )
        if s.closed_at is None:
            status = "open"
        elif s.opened_at is None:
            status = "closed_unopened"
        else:
            status = "closed"
        items.append(
            ShiftOut(
                branch=s.branch,
                shift_id=s.shift_id,
                till=s.till,
                cashier=s.cashier,
                local_date=s.local_date,
                opened_at=s.opened_at,
                closed_at=s.closed_at,
                status=status,
                opened_at_local=(
                    None
                    if s.opened_at is None
                    else branch_local_time(s.opened_at, s.utc_offset_min)
                ),
                closed_at_local=(
                    None
                    if s.closed_at is None
                    else branch_local_time(
                        s.closed_at,
                        s.utc_offset_min
                        if s.close_utc_offset_min is None
                        else s.close_utc_offset_min,
                    )
                ),
                opening_float=s.opening_float,
                reported=ShiftTotals(
                    receipts_count=s.receipts_count,
                    sales_total=s.sales_total,
                    returns_total=s.returns_total,
                    cash_in=s.cash_in,
                    cash_out=s.cash_out,
                ),
                z_report_number=s.z_report_number,
                z_turnover_by_vat_group=s.z_turnover_by_vat_group,
                z_storno_by_vat_group=s.z_storno_by_vat_group,
                z_turnover_total=z_total,
                z_receipts_count=s.z_receipts_count,
                recorded=ShiftTotals(
                    receipts_count=count,
                    sales_total=sales_total,
                    returns_total=returns.get(key, 0),
                    cash_in=cash_in,
                    cash_out=cash_out,
                ),
                late_receipts=late,
                z_matches=z_matches,
                z_printed=s.z_printed,
                expected_cash=s.expected_cash,
                counted_cash=s.counted_cash,
                cash_difference=s.cash_difference,
                id_conflicts=conflicts.get(key, []),
                unfiscal_receipts=unfiscal,
                fiscal_interventions=interventions.get(key, []),
            )
        )
    return await paged(
        session,
        items,
        select(Shift.branch).where(*conditions),
        limit=limit,
        offset=offset,
    )


async def list_closed_days(
    session: AsyncSession,
    *,
    branch: str | None,
    date_from: date | None,
    date_to: date | None,
    limit: int,
    offset: int,
) -> Page[ClosedDayOut]:
    """The days head office closed, latest first."""
    await check_branch(session, branch)
    check_period(date_from, date_to)
    conditions = []
    if branch is not None:
        conditions.append(ClosedDay.branch == branch)
    if date_from is not None:
        conditions.append(ClosedDay.local_date >= date_from)
    if date_to is not None:
        conditions.append(ClosedDay.local_date <= date_to)
    rows = (
        await session.scalars(
            select(ClosedDay)
            .where(*conditions)
            .order_by(ClosedDay.local_date.desc(), ClosedDay.branch)
            .limit(limit)
            .offset(offset)
        )
    ).all()
    total = await session.scalar(select(func.count()).select_from(ClosedDay).where(*conditions))
    return Page(
        items=[
            ClosedDayOut(
                branch=r.branch,
                local_date=r.local_date,
                closed_at=r.closed_at,
                closed_by=r.closed_by,
            )
            for r in rows
        ],
        total=total or 0,
        limit=limit,
        offset=offset,
    )


async def close_day(
    session: AsyncSession, *, branch: str, local_date: date, closed_by: str | None = None
) -> ClosedDayOut:
    """Close a branch's local day at central: sales filed into it afterwards are flagged late.

    ``closed_by``: who closed it; by default the user of the request (as in the audit log).
    """
    found = await session.get(Branch, branch)
    if found is None:
        raise NotFoundError(f"branch {branch!r} not found", field="branch")
    # A closed day is never reopened: closing one that has not begun would flag every
    # sale of that whole day late.
    today = datetime.now(ZoneInfo(found.timezone)).date()
    if local_date > today:
        raise ValidationFailed(
            f"{local_date} has not begun at {branch!r} (its local day is {today})",
            field="local_date",
        )
    if closed_by is None:
        closed_by = (current_request_audit.get() or cli_actor()).actor[:64]
    if await session.get(ClosedDay, (branch, local_date)) is not None:
        raise ConflictError(f"{local_date} is already closed at {branch!r}", field="local_date")
    row = ClosedDay(
        branch=branch, local_date=local_date, closed_at=datetime.now(UTC), closed_by=closed_by
    )
    session.add(row)
    out = ClosedDayOut(
        branch=row.branch,
        local_date=row.local_date,
        closed_at=row.closed_at,
        closed_by=row.closed_by,
    )
    await record_change(
        session,
        action="shift.close_day",
        target=f"closed_day:{branch}:{local_date.isoformat()}",
        before=None,
        after=out,
    )
    await session.commit()
    return out
