"""The sales and customer returns central holds that an agent database gone back in
time (restored from a backup) no longer has.

Its tills retry a sale (or return) whose answer was lost with the same id until they
are answered; the restored database would record and print it again. When central
answers its numbering question with a start past the numbers it had, it says how many
such records lie between (``SnapshotReply.held_records``), and the agent fetches them
page by page (``HeldRecordsRequest``, ordered by event number) before it takes the
answer: it then refuses those retries and numbers its receipts past them.

What the old database sent just before it was replaced may not be stored yet (still in
the up stream, see ``central.sync.in_flight``): those records are listed too, read from
the stream, each once (a number central has stored meanwhile is listed from the
database).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import msgspec
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from central.models import CustomerReturn, IngestedEvent, Receipt
from central.sync.in_flight import InFlight
from protocol.masterdata import HELD_RECORDS_PAGE, HeldRecordsReply, HeldReturn, HeldSale

__all__ = ["HeldCount", "count_held_records", "held_records_page"]


_Q = TypeVar("_Q", bound=Select)  # type: ignore[type-arg]


def _in_range(query: _Q, branch: str, after: int, through: int) -> _Q:
    return query.where(
        IngestedEvent.branch == branch, IngestedEvent.seq > after, IngestedEvent.seq <= through
    )


async def _stored(session: AsyncSession, branch: str, seqs: Iterable[int]) -> set[int]:
    """Which of ``seqs`` central holds an event of ``branch`` under."""
    wanted = sorted(set(seqs))
    held: set[int] = set()
    for at in range(0, len(wanted), 1000):  # bind parameters stay few
        chunk = wanted[at : at + 1000]
        held.update(
            await session.scalars(
                select(IngestedEvent.seq).where(
                    IngestedEvent.branch == branch, IngestedEvent.seq.in_(chunk)
                )
            )
        )
    return held


def _flying(
    flight: InFlight | None, after: int, through: int, stored: set[int]
) -> tuple[list[HeldSale], list[HeldReturn]]:
    """The records read from the stream in (after, through] that central has not stored."""
    if flight is None:
        return [], []

    def wanted(seq: int) -> bool:
        return after < seq <= through and seq not in stored

    return (
        [s for s in flight.sales if wanted(s.seq)],
        [r for r in flight.returns if wanted(r.seq)],
    )


class HeldCount(msgspec.Struct, frozen=True, kw_only=True):
    # Sales and returns to list, and how many of them are read from the stream.
    records: int
    in_flight: int
    # Numbers in the range central neither holds nor sees in the stream.
    unknown: int


async def count_held_records(
    session: AsyncSession,
    branch: str,
    after: int,
    through: int,
    flight: InFlight | None = None,
) -> HeldCount:
    """How many sales and returns of ``branch`` central holds, or sees on their way
    (``flight``), numbered in (after, through]; and how many numbers there it neither
    holds nor sees."""
    total = 0
    for record in (Receipt, CustomerReturn):
        query = (
            select(func.count())
            .select_from(record)
            .join(IngestedEvent, IngestedEvent.event_id == record.event_id)
        )
        total += await session.scalar(_in_range(query, branch, after, through)) or 0
    coming = [s for s in flight.seqs if after < s <= through] if flight else []
    # Before the count: one stored in between is counted there, not missed by both.
    stored = await _stored(session, branch, coming)
    events = await session.scalar(_in_range(select(func.count()), branch, after, through)) or 0
    sales, returns = _flying(flight, after, through, stored)
    unseen = len(set(coming) - stored)
    return HeldCount(
        records=total + len(sales) + len(returns),
        in_flight=len(sales) + len(returns),
        unknown=max(0, through - after - int(events) - unseen),
    )


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
    flight: InFlight | None = None,
) -> HeldRecordsReply:
    """The first ``limit`` of them after event ``after``, lowest event number first
    (with those read from the stream, ``flight``, that central has not stored: read
    before the database, so one stored meanwhile is listed from it)."""
    where = (branch, after, through, limit)
    coming = [s for s in flight.seqs if after < s <= through] if flight else []
    flying = _flying(flight, after, through, await _stored(session, branch, coming))
    sale_rows = await _held(session, Receipt, (Receipt.sale_id, Receipt.receipt_number), where)
    return_rows = await _held(
        session, CustomerReturn, (CustomerReturn.return_id, CustomerReturn.return_number), where
    )
    # One list per kind, each cut at the limit as the database's are.
    sale_rows = sorted(
        sale_rows + [msgspec.structs.asdict(s) for s in flying[0]], key=lambda r: r["seq"]
    )[:limit]
    return_rows = sorted(
        return_rows + [msgspec.structs.asdict(r) for r in flying[1]], key=lambda r: r["seq"]
    )[:limit]
    # Both lists from the same event numbers on: the page ends at the limit-th lowest.
    seqs = sorted(row["seq"] for row in sale_rows + return_rows)
    last = seqs[limit - 1] if len(seqs) > limit else (seqs[-1] if seqs else after)
    return HeldRecordsReply(
        sales=tuple(HeldSale(**r) for r in sale_rows if r["seq"] <= last),
        returns=tuple(HeldReturn(**r) for r in return_rows if r["seq"] <= last),
        next_after_seq=last,
        done=len(seqs) <= limit and len(sale_rows) < limit and len(return_rows) < limit,
    )
