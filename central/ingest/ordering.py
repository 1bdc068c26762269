"""A branch's stock moves applied in the order the branch recorded them, across workers.

Moving average cost and negative-stock flags depend on the order of a branch's moves.
Within a batch the worker sorts events by (branch, seq); across batches, two workers
draining one branch's backlog could commit the later batch first (whichever reaches
the balance locks first wins). On PostgreSQL each batch therefore holds a *ticket*,
its lowest JetStream stream sequence (the stream keeps each branch's order), as
transaction-scoped advisory locks, one per bucket of the branches it holds. Just
before the stock stage (the first that locks rows other workers share), a batch whose
events do not continue a branch's contiguous sequence at central waits for every
in-flight batch with a lower ticket holding that branch's bucket to end (commit or
roll back); one with no such gap waits for nothing.

What it does not order: a batch that starts its transaction after a later batch
already passed this point, a batch retried after a rollback, an event lost and
resent later, a dead letter replayed later. Those keep central's order of applying
(see README "Stock ledger"). A replayed dead letter takes the ticket of its old
place in the stream; messages without a stream sequence (tests) take none. SQLite
runs one writer at a time: nothing to do.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from central.ingest.bulk import is_postgresql
from central.ingest.registry import EventContext, IngestBatch, register_batch_handler
from central.models import BranchSyncState
from protocol.events import (
    CustomerReturnRecorded,
    LateFiscalNumber,
    ReceiptRecorded,
    StockDocumentPosted,
)

__all__ = ["ORDER_STAGE", "TICKET_NOTE", "hold_ticket", "ticket_keys"]

# Just before the stock stage (10).
ORDER_STAGE = 9
TICKET_NOTE = "ingest_ticket"

# Advisory lock keys: 0x42 in the top byte (no other lock of ours uses it), a bucket
# of branches in bits 48-53, the ticket (a stream sequence) in the low 48 bits.
_NAMESPACE = 0x42 << 56
_BUCKETS = 64
_SEQ_MASK = (1 << 48) - 1


def _bucket(branch: str) -> int:
    return zlib.crc32(branch.encode()) % _BUCKETS


def ticket_keys(ticket: int, branches: Iterable[str]) -> list[int]:
    """The advisory lock keys a batch with this ticket holds for these branches."""
    return sorted({_NAMESPACE | (_bucket(b) << 48) | (ticket & _SEQ_MASK) for b in branches})


async def hold_ticket(session: AsyncSession, ticket: int, branches: Iterable[str]) -> None:
    """Take the batch's ticket locks at the start of its transaction (PostgreSQL)."""
    keys = ticket_keys(ticket, branches)
    if keys and is_postgresql(session):
        await session.execute(
            text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"),
            {"keys": keys},
        )


async def _gap_branches(session: AsyncSession, contexts: Sequence[EventContext]) -> set[str]:
    """Branches whose first event in the batch does not follow central's contiguous
    sequence: the events before it may be in another worker's batch."""
    first: dict[str, int] = {}
    for ctx in contexts:
        seq = ctx.envelope.seq
        branch = ctx.envelope.branch
        if seq < first.get(branch, seq + 1):
            first[branch] = seq
    held = {
        row.branch: row.contiguous_seq
        for row in await session.execute(
            select(BranchSyncState.branch, BranchSyncState.contiguous_seq).where(
                BranchSyncState.branch.in_(sorted(first))
            )
        )
    }
    return {b for b, seq in first.items() if seq > held.get(b, 0) + 1}


_IN_FLIGHT = text(
    "SELECT DISTINCT (classid::bigint << 32) | objid::bigint AS key FROM pg_locks "
    "WHERE locktype = 'advisory' AND objsubid = 1 AND granted "
    "AND pid <> pg_backend_pid()"
)


# A late fiscal number waits too: its receipt may be in an earlier batch in flight.
@register_batch_handler(
    ReceiptRecorded,
    CustomerReturnRecorded,
    StockDocumentPosted,
    LateFiscalNumber,
    stage=ORDER_STAGE,
)
async def wait_for_earlier_batches(
    session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
) -> None:
    ticket: int | None = batch.notes.get(TICKET_NOTE)
    if ticket is None or not is_postgresql(session):
        return
    gaps = await _gap_branches(session, batch.events)
    if not gaps:
        return
    buckets = {_bucket(b) for b in gaps}
    mine = ticket & _SEQ_MASK
    earlier = sorted(
        key
        for key in (await session.execute(_IN_FLIGHT)).scalars()
        if key >> 56 == _NAMESPACE >> 56
        and (key >> 48) & (_BUCKETS - 1) in buckets
        and key & _SEQ_MASK < mine
    )
    for key in earlier:
        # Waits until that batch's transaction ends; taken and let go at once, so a
        # retry of that batch is not held up by this one.
        await session.execute(
            text("SELECT pg_advisory_lock_shared(:k), pg_advisory_unlock_shared(:k)"),
            {"k": key},
        )
