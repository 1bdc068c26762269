"""Managers' interventions on the branches' fiscal printers, for head office."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import date, datetime

import msgspec
from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.schemas import Page
from central.models import FiscalInterventionRow
from central.services.paging import check_branch, check_period, paged

__all__ = ["FiscalInterventionOut", "interventions_of_shifts", "list_fiscal_interventions"]


class FiscalInterventionOut(msgspec.Struct, kw_only=True):
    event_id: uuid.UUID
    branch: str
    till: str
    # The till's shift at the time (None: none was open).
    shift_id: str | None
    # cancelled, closed (a receipt left open on the printer, finished by a manager),
    # completed_unfiscal (a document sent up without the printer), or a manager's
    # settle-pending decision, <intent>_<outcome> (cash_move_printed, ...)
    action: str
    # The printer's receipt number (None for completed_unfiscal).
    receipt_number: int | None
    amount: int
    paid_before: int
    cash_added: int
    # "sale <id>", "return <id>", or "" when the receipt was not the agent's.
    document: str
    reason: str
    occurred_at: datetime
    local_date: date
    received_at: datetime


def intervention_out(row: FiscalInterventionRow) -> FiscalInterventionOut:
    # The answer has the row's own fields, read by name.
    return msgspec.convert(row, FiscalInterventionOut, from_attributes=True)


async def interventions_of_shifts(
    session: AsyncSession, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], list[FiscalInterventionOut]]:
    """Each (branch, shift)'s interventions, in the order the branch recorded them."""
    keys = list(keys)
    found: dict[tuple[str, str], list[FiscalInterventionOut]] = {}
    if not keys:
        return found
    t = FiscalInterventionRow
    for row in await session.scalars(
        select(t).where(tuple_(t.branch, t.shift_id).in_(keys)).order_by(t.branch, t.seq)
    ):
        assert row.shift_id is not None
        found.setdefault((row.branch, row.shift_id), []).append(intervention_out(row))
    return found


async def list_fiscal_interventions(
    session: AsyncSession,
    *,
    branch: str | None,
    till: str | None,
    action: str | None,
    date_from: date | None,
    date_to: date | None,
    limit: int,
    offset: int,
) -> Page[FiscalInterventionOut]:
    await check_branch(session, branch)
    check_period(date_from, date_to)
    t = FiscalInterventionRow
    conditions = []
    if branch:
        conditions.append(t.branch == branch)
    if till:
        conditions.append(t.till == till)
    if action:
        conditions.append(t.action == action)
    if date_from:
        conditions.append(t.local_date >= date_from)
    if date_to:
        conditions.append(t.local_date <= date_to)
    rows = (
        await session.scalars(
            select(t)
            .where(*conditions)
            .order_by(t.local_date, t.branch, t.seq)
            .limit(limit)
            .offset(offset)
        )
    ).all()
    return await paged(
        session,
        [intervention_out(r) for r in rows],
        select(t.event_id).where(*conditions),
        limit=limit,
        offset=offset,
    )
