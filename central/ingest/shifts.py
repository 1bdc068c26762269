"""Shifts (opened, closed with the Z report) and cash moves.

Opened and closed may arrive in either order and at different workers: each is an
atomic upsert of its own half of the shift row, made only while that half is empty
or already this event's. An opening (closing) for a shift that holds another one is
never merged into it: it is kept whole in ``shift_id_conflicts`` beside the shift
(an agent from before unique shift ids, restored from a backup or replaced, gave the
id again; or a restored database closed the same shift a second time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import or_
from sqlalchemy.ext.asyncio import AsyncSession

from central.ingest.bulk import dialect_insert, insert_rows, table_of
from central.ingest.registry import EventContext, IngestBatch, register_batch_handler
from central.models import CashMovement, Shift, ShiftIdConflict
from protocol.events import CashMoved, ShiftClosed, ShiftOpened

__all__ = ["store_cash_moves", "store_shifts"]


@register_batch_handler(ShiftOpened, ShiftClosed, stage=40)
async def store_shifts(
    session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
) -> None:
    table = table_of(Shift)
    for ctx in contexts:
        env = ctx.envelope
        body = env.body
        assert isinstance(body, ShiftOpened | ShiftClosed)
        half: dict[str, Any]
        if isinstance(body, ShiftOpened):
            half = {
                "opened_at": env.occurred_at,
                "opening_float": body.opening_float,
                "open_event_id": env.event_id,
                # The day of a shift is the day it was opened.
                "local_date": ctx.local_date,
                "utc_offset_min": env.utc_offset_min,
            }
        else:
            z = body.z_report
            half = {
                "closed_at": env.occurred_at,
                "close_utc_offset_min": env.utc_offset_min,
                "close_received_at": batch.received_at,
                "close_event_id": env.event_id,
                "receipts_count": body.receipts_count,
                "sales_total": body.sales_total,
                "returns_total": body.returns_total,
                "payments_by_type": dict(body.payments_by_type),
                "cash_in": body.cash_in,
                "cash_out": body.cash_out,
                "z_report_number": z.report_number if z else None,
                "z_turnover_by_vat_group": dict(z.turnover_by_vat_group) if z else {},
                "z_storno_by_vat_group": dict(z.storno_by_vat_group) if z else {},
                "z_receipts_count": z.receipts_count if z else None,
                "counted_cash": body.counted_cash,
                "expected_cash": body.expected_cash,
                "z_printed": body.z_printed,
            }
        stmt = dialect_insert(session, table)
        values: dict[str, Any] = {
            "branch": env.branch,
            "shift_id": body.shift_id,
            "till": body.till,
            "cashier": body.cashier,
            "local_date": ctx.local_date,
            "utc_offset_min": env.utc_offset_min,
            "payments_by_type": {},
            "z_turnover_by_vat_group": {},
            "z_storno_by_vat_group": {},
            **half,
        }
        update = {name: stmt.excluded[name] for name in half}
        if isinstance(body, ShiftOpened) and body.cashier:
            update["cashier"] = stmt.excluded["cashier"]
        own = "open_event_id" if isinstance(body, ShiftOpened) else "close_event_id"
        # The WHERE is checked on the locked row: two workers cannot both take the half.
        filed = await session.execute(
            stmt.values(**values)
            .on_conflict_do_update(
                index_elements=["branch", "shift_id"],
                set_=update,
                where=or_(table.c[own].is_(None), table.c[own] == stmt.excluded[own]),
            )
            .returning(table.c.shift_id)
        )
        if filed.first() is None:
            conflict = dialect_insert(session, table_of(ShiftIdConflict))
            await session.execute(
                conflict.values(
                    event_id=env.event_id,
                    branch=env.branch,
                    shift_id=body.shift_id,
                    seq=env.seq,
                    kind="opened" if isinstance(body, ShiftOpened) else "closed",
                    till=body.till,
                    cashier=body.cashier,
                    occurred_at=env.occurred_at,
                    local_date=ctx.local_date,
                    body=msgspec.to_builtins(body),
                    received_at=batch.received_at,
                ).on_conflict_do_nothing(index_elements=["event_id"])
            )


@register_batch_handler(CashMoved, stage=40)
async def store_cash_moves(
    session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
) -> None:
    rows: list[dict[str, object]] = []
    for ctx in contexts:
        env = ctx.envelope
        body = env.body
        assert isinstance(body, CashMoved)
        rows.append(
            {
                "event_id": env.event_id,
                "branch": env.branch,
                "till": body.till,
                "shift_id": body.shift_id,
                "direction": body.direction,
                "amount": body.amount,
                "reason": body.reason,
                "cashier": body.cashier,
                "occurred_at": env.occurred_at,
                "local_date": ctx.local_date,
            }
        )
    await insert_rows(session, table_of(CashMovement), rows)
