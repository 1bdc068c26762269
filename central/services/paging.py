"""The ``total`` of a list page, bounded: counting every matching row of a chain's
receipts or ledger costs seconds, a page milliseconds."""

from __future__ import annotations

from datetime import date
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.schemas import Page
from central.errors import NotFoundError, ValidationFailed
from central.models import Branch

__all__ = [
    "COUNT_AHEAD",
    "PageTotal",
    "check_branch",
    "check_period",
    "page_total",
    "paged",
]

T = TypeVar("T")

# Rows counted past the end of the page before the total becomes a lower bound: enough
# for a person paging through, cheap enough (an index range) for every request.
COUNT_AHEAD = 10_000


class PageTotal(NamedTuple):
    total: int
    exact: bool


async def page_total(
    session: AsyncSession, matching: Select[Any], *, limit: int, offset: int, found: int
) -> PageTotal:
    """How many rows ``matching`` (the list's filtered statement, narrow, unordered,
    unpaged) has: exact while at most :data:`COUNT_AHEAD` lie past the page, else a
    lower bound (one row more than that, ``exact`` false). ``found``: rows on the page;
    a page that is short and not past the end closes the list, so it needs no count."""
    if found < limit and (found > 0 or offset == 0):
        return PageTotal(offset + found, True)
    bound = offset + limit + COUNT_AHEAD
    counted = int(
        await session.scalar(select(func.count()).select_from(matching.limit(bound + 1).subquery()))
        or 0
    )
    return PageTotal(counted, counted <= bound)


async def paged(
    session: AsyncSession, items: list[T], matching: Select[Any], *, limit: int, offset: int
) -> Page[T]:
    """A list page of ``items`` (the page's rows, one item each) with the bounded total
    of ``matching`` (see :func:`page_total`)."""
    total = await page_total(session, matching, limit=limit, offset=offset, found=len(items))
    return Page(items=items, total=total.total, total_exact=total.exact, limit=limit, offset=offset)


async def check_branch(session: AsyncSession, branch: str | None) -> None:
    """A records list filtered by a branch central does not know is a 404 naming
    ``branch`` (as the reports answer), not an empty page that reads "no records"."""
    if branch and await session.get(Branch, branch) is None:
        raise NotFoundError(f"unknown branch {branch!r}", field="branch")


def check_period(date_from: date | None, date_to: date | None) -> None:
    """A records list's period with its ends reversed is a 422 naming ``date_from`` (as
    the reports answer), not an empty page that reads "nothing in that period"."""
    if date_from and date_to and date_from > date_to:
        raise ValidationFailed("date_from is after date_to", field="date_from")
