"""What a branch learns late about its fiscal printers.

``late_fiscal_number``: a sale (or return) went up without a fiscal number (completed
unfiscal) and the printer had printed it after all. The number is set on central's
receipt once: the same number again changes nothing; a receipt that has another
number, or a receipt central does not hold and will not receive, is refused (a dead
letter with the reason, the other messages flow on). One that arrives before its
receipt (the receipt in another worker's batch, or dead-lettered and to be replayed)
waits in ``late_fiscal_numbers`` and is applied when the receipt is stored: the agent
sends the receipt's sequence number, so central knows it is still to come.

``fiscal_intervention``: stored as sent, listed for head office.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from central.ingest.bulk import insert_rows, table_of
from central.ingest.registry import EARLY_STAGE, EventContext, IngestBatch, register_batch_handler
from central.models import (
    BranchSyncState,
    CustomerReturn,
    FiscalInterventionRow,
    LateFiscalNumberRow,
    Receipt,
)
from protocol.events import (
    CustomerReturnRecorded,
    FiscalInterventionRecorded,
    LateFiscalNumber,
    ReceiptRecorded,
)

__all__ = ["LATE_FISCAL_STAGE", "LateFiscalNumberRefused", "sweep_waiting_fiscal_numbers"]

# After the ordering stage (9): a batch holding a gap waited for earlier batches, whose
# receipts are then visible. Touches only receipts of the branch, no shared rows.
LATE_FISCAL_STAGE = 20
# Right after the receipts and returns are stored (EARLY_STAGE).
_WAITING_STAGE = EARLY_STAGE + 1


class LateFiscalNumberRefused(ValueError):
    """A late fiscal number central cannot apply: the message becomes a dead letter.

    A ValueError: a fault of the message (it fails the same way on every retry)."""


def _model(document: str) -> type[Receipt] | type[CustomerReturn]:
    return Receipt if document == "sale" else CustomerReturn


def _key_column(document: str) -> InstrumentedAttribute[str]:
    return Receipt.sale_id if document == "sale" else CustomerReturn.return_id


async def _set_number(
    session: AsyncSession,
    branch: str,
    document: str,
    till: str,
    document_id: str,
    number: str,
    fiscalized_at: datetime,
) -> str | None:
    """Set the number on the document if it has none: "applied", "already" (it has this
    one), the number it has instead, or None when central does not hold it."""
    model = _model(document)
    key = _key_column(document)
    found = (
        await session.execute(
            select(model.fiscal_number)
            .where(model.branch == branch, model.till == till, key == document_id)
            .with_for_update()
        )
    ).first()
    if found is None:
        return None
    if found.fiscal_number == number:
        return "already"
    if found.fiscal_number is not None:
        return str(found.fiscal_number)
    await session.execute(
        update(model)
        .where(model.branch == branch, model.till == till, key == document_id)
        .values(fiscal_number=number, fiscalized_at=fiscalized_at)
    )
    return "applied"


@register_batch_handler(LateFiscalNumber, stage=LATE_FISCAL_STAGE)
async def apply_late_fiscal_numbers(
    session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
) -> None:
    contiguous = {
        row.branch: row.contiguous_seq
        for row in await session.execute(
            select(BranchSyncState.branch, BranchSyncState.contiguous_seq).where(
                BranchSyncState.branch.in_(sorted({c.envelope.branch for c in contexts}))
            )
        )
    }
    rows: list[dict[str, object]] = []
    for ctx in contexts:
        env = ctx.envelope
        body = env.body
        assert isinstance(body, LateFiscalNumber)
        what = f"{body.document} {body.document_id} of till {body.till}"
        outcome = await _set_number(
            session,
            env.branch,
            body.document,
            body.till,
            body.document_id,
            body.fiscal_number,
            body.fiscalized_at,
        )
        if outcome is None:
            # Not here yet, but sent before this (its sequence is above what central
            # holds without a gap): it will come (resent, or a dead letter replayed).
            if body.document_seq is None or body.document_seq <= contiguous.get(env.branch, 0):
                raise LateFiscalNumberRefused(
                    f"late fiscal number {body.fiscal_number} for {what}: central holds no "
                    "such document (replay this letter once it has arrived)"
                )
            status = "waiting"
        elif outcome in ("applied", "already"):
            status = outcome
        else:
            raise LateFiscalNumberRefused(
                f"late fiscal number {body.fiscal_number} for {what}: it already has fiscal "
                f"number {outcome}; nothing changed (check the printer's journal)"
            )
        rows.append(
            {
                "event_id": env.event_id,
                "branch": env.branch,
                "document": body.document,
                "till": body.till,
                "document_id": body.document_id,
                "document_seq": body.document_seq,
                "fiscal_number": body.fiscal_number,
                "fiscalized_at": body.fiscalized_at,
                "fiscal_memory_number": body.fiscal_memory_number,
                "status": status,
                "received_at": batch.received_at,
                "applied_at": None if status == "waiting" else batch.received_at,
            }
        )
    await insert_rows(session, table_of(LateFiscalNumberRow), rows)


@register_batch_handler(ReceiptRecorded, CustomerReturnRecorded, stage=_WAITING_STAGE)
async def apply_waiting_fiscal_numbers(
    session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
) -> None:
    """A receipt or return just stored that a late fiscal number was waiting for."""
    keys: set[tuple[str, str, str]] = set()
    for ctx in contexts:
        body = ctx.envelope.body
        if isinstance(body, ReceiptRecorded):
            keys.add((ctx.envelope.branch, body.till, body.sale_id))
        elif isinstance(body, CustomerReturnRecorded):
            keys.add((ctx.envelope.branch, body.till, body.return_id))
    t = LateFiscalNumberRow
    waiting = (
        await session.scalars(
            select(t)
            .where(
                tuple_(t.branch, t.till, t.document_id).in_(keys),
                t.status == "waiting",
            )
            .order_by(t.received_at)
        )
    ).all()
    for row in waiting:
        # (keeps waiting when the id is a document of the other kind)
        await _settle_waiting(session, row, batch.received_at)


async def _settle_waiting(session: AsyncSession, row: LateFiscalNumberRow, at: datetime) -> bool:
    """Set a waiting number on its document if central holds it now: the row's status
    becomes applied, already or conflict (True), or it keeps waiting (False)."""
    outcome = await _set_number(
        session,
        row.branch,
        "sale" if row.document == "sale" else "return",
        row.till,
        row.document_id,
        row.fiscal_number,
        row.fiscalized_at,
    )
    if outcome is None:
        return False
    row.status = outcome if outcome in ("applied", "already") else "conflict"
    row.applied_at = at
    return True


async def sweep_waiting_fiscal_numbers(
    sessionmaker: async_sessionmaker[AsyncSession], *, older_than_s: float = 10.0
) -> int:
    """Late numbers still waiting for a document central now holds: applied. With
    several workers the receipt's batch can commit beside the number's without either
    seeing the other (the receipt looked for waiting numbers before the number's row
    was committed, the number for the receipt before it was): nothing else would
    retry it. Run every few seconds by the gap monitor; returns how many it settled."""
    t = LateFiscalNumberRow
    now = datetime.now(UTC)
    settled = 0
    async with sessionmaker() as session, session.begin():
        waiting = (
            await session.scalars(
                select(t)
                .where(t.status == "waiting", t.received_at < now - timedelta(seconds=older_than_s))
                .order_by(t.received_at)
                .limit(500)
                .with_for_update(skip_locked=True)
            )
        ).all()
        for row in waiting:
            settled += await _settle_waiting(session, row, now)
    return settled


@register_batch_handler(FiscalInterventionRecorded, stage=EARLY_STAGE)
async def store_fiscal_interventions(
    session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
) -> None:
    rows: list[dict[str, object]] = []
    for ctx in contexts:
        env = ctx.envelope
        body = env.body
        assert isinstance(body, FiscalInterventionRecorded)
        rows.append(
            {
                "event_id": env.event_id,
                "branch": env.branch,
                "seq": env.seq,
                "till": body.till,
                "shift_id": body.shift_id,
                "action": body.action,
                "receipt_number": body.receipt_number,
                "amount": body.amount,
                "paid_before": body.paid_before,
                "cash_added": body.cash_added,
                "document": body.document,
                "reason": body.reason,
                "occurred_at": env.occurred_at,
                "local_date": ctx.local_date,
                "received_at": batch.received_at,
            }
        )
    await insert_rows(session, table_of(FiscalInterventionRow), rows)
