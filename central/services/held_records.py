"""The sales and customer returns central holds that an agent database gone back in
time (restored from a backup) no longer has.

Its tills retry a sale (or return) whose answer was lost with the same id until they
are answered; the restored database would record and print it again. When central
answers its numbering question with a start past the numbers it had, it says how many
such records lie between (``SnapshotReply.held_records``), and the agent fetches them
page by page (``HeldRecordsRequest``, ordered by event number) before it takes the
answer: it then refuses those retries and numbers its receipts past them.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from central.models import CustomerReturn, IngestedEvent, Receipt
from protocol.masterdata import HELD_RECORDS_PAGE, HeldRecordsReply, HeldReturn, HeldSale

__all__ = ["count_held_records", "held_records_page"]


_Q = TypeVar("_Q", bound=Select)  # type: ignore[type-arg]


def _in_range(query: _Q, branch: str, after: int, through: int) -> _Q:
    return query.where(
        IngestedEvent.branch == branch, IngestedEvent.seq > after, IngestedEvent.seq <= through
    )


async def count_held_records(session: AsyncSession, branch: str, after: int, through: int) -> int:
    """How many sales and returns of ``branch`` central holds numbered in (after, through]."""
    total = 0
    for record in (Receipt, CustomerReturn):
        query = (
            select(func.count())
            .select_from(record)
            .join(IngestedEvent, IngestedEvent.event_id == record.event_id)
        )
        total += await session.scalar(_in_range(query, branch, after, through)) or 0
    return total


async def _held(
    session: AsyncSession,
    record: type[Receipt] | type[CustomerReturn],
    columns: tuple[Any, Any],
    where: tuple[str, int, int, int],
) -> list[dict[str, Any]]:
    """Up to ``limit`` rows of ``record`` with ``columns`` (its id and number, labelled
    with the wire's names), as the wire Struct's fields."""
    branch, after, through, limit = where
    query = select(
        IngestedEvent.seq,
        record.till,
        *columns,
        record.shift_id,
        record.total,
        record.fiscal_number,
    ).join(IngestedEvent, IngestedEvent.event_id == record.event_id)
    query = _in_range(query, branch, after, through).order_by(IngestedEvent.seq).limit(limit)
    return [dict(row._mapping) for row in await session.execute(query)]


async def held_records_page(
    session: AsyncSession,
    branch: str,
    after: int,
    through: int,
    limit: int = HELD_RECORDS_PAGE,
) -> HeldRecordsReply:
    """The first ``limit`` of them after event ``after``, lowest event number first."""
    where = (branch, after, through, limit)
    sale_rows = await _held(session, Receipt, (Receipt.sale_id, Receipt.receipt_number), where)
    return_rows = await _held(
        session, CustomerReturn, (CustomerReturn.return_id, CustomerReturn.return_number), where
    )
    # Both lists from the same event numbers on: the page ends at the limit-th lowest.
    seqs = sorted(row["seq"] for row in sale_rows + return_rows)
    last = seqs[limit - 1] if len(seqs) > limit else (seqs[-1] if seqs else after)
    return HeldRecordsReply(
        sales=tuple(HeldSale(**r) for r in sale_rows if r["seq"] <= last),
        returns=tuple(HeldReturn(**r) for r in return_rows if r["seq"] <= last),
        next_after_seq=last,
        done=len(seqs) <= limit and len(sale_rows) < limit and len(return_rows) < limit,
    )
