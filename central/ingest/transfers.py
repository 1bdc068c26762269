"""Transfer headers shared by the stock handler (stage 10) and the matching (stage 30).

A batch with transfer documents creates its transfers if new and locks them, in ref
order, at the start of the stock stage: before any stock balance (so the lock order is
transfers, then balances, for every worker) and after the ordering stage (9), whose
waits must not hold a lock another batch needs. Reading the headers under the lock
means a worker sees the other workers' documents of the same transfer committed: an in
is valued by its out, or revalued when its out comes later, never by a stale read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from central.ingest.bulk import dialect_insert, is_postgresql, table_of
from central.models import StockTransfer, utcnow
from protocol.events import StockDocumentPosted

__all__ = [
    "HEADER_STATE",
    "TRANSFER_DOC_TYPES",
    "TRANSFER_HEADERS",
    "lock_transfer_headers",
    "transfer_ref_of",
]

TRANSFER_DOC_TYPES = frozenset({"transfer_out", "transfer_in"})
# Key in IngestBatch.notes of the batch's locked headers: ref -> HEADER_STATE values.
TRANSFER_HEADERS = "transfer_headers"

HEADER_STATE = (
    "from_branch",
    "to_branch",
    "out_event_id",
    "in_event_id",
    "sent_at",
    "received_at",
    "out_document_id",
    "out_parts",
    "out_parts_received",
    "in_branch",
    "in_counterpart",
    "in_document_id",
    "in_parts",
    "in_parts_received",
    "has_discrepancies",
)


def transfer_ref_of(body: StockDocumentPosted) -> str:
    """Transfers are matched by the ref; an outbound one without it is its own ref."""
    return body.transfer_ref or body.document_id


async def lock_transfer_headers(
    session: AsyncSession, refs: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Create the transfers that are new, lock all of them in ref order (PostgreSQL;
    SQLite has one writer) and return their state."""
    ordered = sorted(set(refs))
    if not ordered:
        return {}
    table = table_of(StockTransfer)
    now = utcnow()
    await session.execute(
        dialect_insert(session, table).on_conflict_do_nothing(index_elements=["transfer_ref"]),
        [{"transfer_ref": ref, "created_at": now} for ref in ordered],
    )
    stmt = (
        select(table.c.transfer_ref, *(table.c[name] for name in HEADER_STATE))
        .where(table.c.transfer_ref.in_(ordered))
        .order_by(table.c.transfer_ref)
    )
    if is_postgresql(session):
        stmt = stmt.with_for_update()
    return {row.transfer_ref: dict(row._mapping) for row in await session.execute(stmt)}
