"""A manager's way out when a till's fiscal printer holds a receipt it will not let go.

A printer that refuses a payment after an earlier payment of the same receipt was
taken leaves that receipt open with money paid; the protocol refuses to cancel it, so
no other receipt, report or cash move can print. :func:`finish_open_receipt` ends it
the only ways DEVICES.md allows (the driver's ``finish_open_receipt``): cancelled when
nothing was paid, otherwise the rest paid in cash and closed (then it is fiscalized).

Record first, like every fiscal action of the agent: a ``fiscal_interventions`` row
``pending`` with the receipt's number, amount and what was paid is committed before
the printer is touched, and completed with what the printer did. A row left pending
(the agent killed, the link lost) is settled by the next call: a receipt still open is
finished, one that is not open any more ended the only way its payments allowed
(paid: closed, the rest in cash; not paid: cancelled). The till's queue is then
printed again: a pending sale whose receipt this was is reconciled as fiscalized (its
number closed with its total), or printed anew if it was cancelled.

The completed row's ``fiscal_intervention`` event goes into the outbox in the
transaction that completes it: head office sees every intervention, exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from branch_agent.devices import TillDeviceSet
from branch_agent.models import CustomerReturn, FiscalIntervention, Sale, Shift
from branch_agent.outbox import append_event
from branch_agent.settings import AgentSettings
from devices.fiscal_datecs import TransactionStatus
from protocol.events import FiscalInterventionRecorded

__all__ = ["finish_open_receipt", "open_shift_of"]

log = logging.getLogger(__name__)


def _cents(value: Decimal) -> int:
    return int((value * 100).to_integral_value())


async def _document_of(session: AsyncSession, till: str, receipt_number: int) -> str:
    """The till's sale or return this receipt was printed for ("" if none is)."""
    hint = receipt_number - 1  # a document's receipt is the one after its hint
    sale = await session.scalar(
        select(Sale.sale_id).where(Sale.till == till, Sale.fiscal_hint == hint).limit(1)
    )
    if sale is not None:
        return f"sale {sale}"
    ret = await session.scalar(
        select(CustomerReturn.return_id)
        .where(CustomerReturn.till == till, CustomerReturn.fiscal_hint == hint)
        .limit(1)
    )
    return f"return {ret}" if ret is not None else ""


async def open_shift_of(session: AsyncSession, till: str, at: datetime | None = None) -> str | None:
    """The till's shift open now, or at ``at`` (None: none was)."""
    stmt = select(Shift.shift_id).where(Shift.till == till)
    if at is None:
        stmt = stmt.where(Shift.closed_at.is_(None))
    else:
        stmt = stmt.where(
            Shift.opened_at <= at, or_(Shift.closed_at.is_(None), Shift.closed_at > at)
        )
    return await session.scalar(stmt.order_by(Shift.opened_at.desc()).limit(1))


async def finish_open_receipt(
    sessionmaker: async_sessionmaker[AsyncSession],
    write_lock: asyncio.Lock,
    devices: TillDeviceSet,
    reason: str,
    *,
    settings: AgentSettings,
    on_event: Callable[[], None] = lambda: None,
) -> list[FiscalIntervention]:
    """Finish the receipt open on the till's printer; the rows recorded (settled ones
    of earlier calls first). Raises ``DeviceError`` when the printer cannot be asked."""
    till = devices.till.id
    async with devices.fiscal_queue:
        done: list[FiscalIntervention] = []
        ts = await devices.fiscal_transaction_status()
        async with sessionmaker() as session:
            pending = (
                await session.scalars(
                    select(FiscalIntervention)
                    .where(FiscalIntervention.till == till, FiscalIntervention.action == "pending")
                    .order_by(FiscalIntervention.id)
                )
            ).all()
        for row in pending:
            if ts.is_open and ts.number == row.receipt_number:
                continue  # still open: finished below, on this row
            # not open any more: it ended the only way its payments allowed
            closed = row.paid_before > 0
            done.append(
                await _settle(
                    sessionmaker,
                    write_lock,
                    settings,
                    row.id,
                    "closed" if closed else "cancelled",
                    (row.amount - row.paid_before) if closed else 0,
                )
            )
            on_event()
        if not ts.is_open:
            return done
        row_id = await _intent(sessionmaker, write_lock, till, ts, reason)
        finished = await devices.fiscal_finish_open()
        if finished is None:  # closed by someone else between the two reads
            action, cash = ("closed", 0) if ts.paid > 0 else ("cancelled", 0)
        else:
            action, cash = finished.action, _cents(finished.cash_added)
        row = await _settle(sessionmaker, write_lock, settings, row_id, action, cash)
        on_event()
        log.warning(
            "till %s: receipt %s on the fiscal printer %s by a manager (%s paid, %s added"
            " in cash): %s",
            till,
            row.receipt_number,
            action,
            row.paid_before,
            row.cash_added,
            reason,
        )
        await devices.fiscal_mark_blocked()
        return [*done, row]


async def _intent(
    sessionmaker: async_sessionmaker[AsyncSession],
    write_lock: asyncio.Lock,
    till: str,
    ts: TransactionStatus,
    reason: str,
) -> int:
    async with write_lock, sessionmaker() as session, session.begin():
        existing = await session.scalar(
            select(FiscalIntervention).where(
                FiscalIntervention.till == till,
                FiscalIntervention.action == "pending",
                FiscalIntervention.receipt_number == ts.number,
            )
        )
        if existing is not None:
            return existing.id
        row = FiscalIntervention(
            till=till,
            receipt_number=ts.number,
            action="pending",
            amount=_cents(ts.amount),
            paid_before=_cents(ts.paid),
            cash_added=0,
            document=await _document_of(session, till, ts.number),
            reason=reason[:200],
        )
        session.add(row)
        await session.flush()
        return row.id


async def _settle(
    sessionmaker: async_sessionmaker[AsyncSession],
    write_lock: asyncio.Lock,
    settings: AgentSettings,
    row_id: int,
    action: str,
    cash_added: int,
) -> FiscalIntervention:
    async with write_lock, sessionmaker() as session, session.begin():
        row = await session.get(FiscalIntervention, row_id)
        assert row is not None
        if row.action != "pending":  # settled already (a concurrent call)
            return row
        row.action = action
        row.cash_added = cash_added
        # With the row: head office learns of it exactly once.
        await append_event(
            session,
            branch=settings.branch,
            timezone=settings.timezone,
            body=FiscalInterventionRecorded(
                till=row.till,
                # The shift the manager intervened in, also when a crash or a lost
                # answer left the row pending until after that shift was closed.
                shift_id=await open_shift_of(session, row.till, row.at),
                action=action,
                receipt_number=row.receipt_number,
                amount=row.amount,
                paid_before=row.paid_before,
                cash_added=cash_added,
                document=row.document,
                reason=row.reason,
            ),
            occurred_at=row.at,
        )
    return row
