"""The bounded ``total`` of list pages: exact while few rows lie past the page, else a
lower bound marked ``total_exact: false``; on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from central.models import DeadLetter
from central.services import paging
from central.services.paging import PageTotal, page_total
from tests.central.test_records_filters import page, seed


async def _letters(engine: AsyncEngine, count: int, branch: str) -> None:
    async with async_sessionmaker(engine)() as session, session.begin():
        session.add_all(
            DeadLetter(subject=f"backroom.up.{branch}.x", branch=branch, reason="bad", raw=b"x")
            for _ in range(count)
        )


@pytest.mark.parametrize(
    ("limit", "offset", "found", "expected"),
    [
        # A full first page: 5 rows counted past it, and one more: a lower bound.
        (10, 0, 10, PageTotal(16, False)),
        # Fewer than the bound past the page: exact.
        (10, 20, 10, PageTotal(30, True)),
        # A short page ends the list (the count is not even asked).
        (10, 25, 5, PageTotal(30, True)),
        (100, 0, 30, PageTotal(30, True)),
        # Past the end: counted, exact.
        (10, 40, 0, PageTotal(30, True)),
    ],
)
async def test_page_total_is_exact_up_to_the_bound(
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    limit: int,
    offset: int,
    found: int,
    expected: PageTotal,
) -> None:
    monkeypatch.setattr(paging, "COUNT_AHEAD", 5)
    await _letters(engine, 30, "B1")
    async with async_sessionmaker(engine)() as session:
        got = await page_total(
            session, select(DeadLetter.id), limit=limit, offset=offset, found=found
        )
    assert got == expected


async def test_page_total_counts_only_matching_rows(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paging, "COUNT_AHEAD", 5)
    await _letters(engine, 30, "B1")
    await _letters(engine, 7, "B2")
    async with async_sessionmaker(engine)() as session:
        b2 = select(DeadLetter.id).where(DeadLetter.branch == "B2")
        assert await page_total(session, b2, limit=2, offset=0, found=2) == PageTotal(7, True)
        assert await page_total(session, b2, limit=1, offset=0, found=1) == PageTotal(7, False)


async def test_list_routes_mark_a_bounded_total(
    central: Any, central_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(central)  # 5 receipts (3 on till T2) and 5 stock documents
    route = "/api/v1/receipts"
    exact = await page(central_client, route, limit=2)
    assert (exact["total"], exact["total_exact"]) == (5, True)
    monkeypatch.setattr(paging, "COUNT_AHEAD", 1)
    bounded = await page(central_client, route, limit=2)
    assert (bounded["total"], bounded["total_exact"], len(bounded["items"])) == (4, False, 2)
    # The last page knows where the list ends.
    last = await page(central_client, route, limit=2, offset=4)
    assert (last["total"], last["total_exact"], len(last["items"])) == (5, True, 1)
    filtered = await page(central_client, route, till="T2", limit=1)
    assert (filtered["total"], filtered["total_exact"]) == (3, False)
    documents = await page(central_client, "/api/v1/documents", limit=1)
    assert documents["total_exact"] is False
    assert documents["total"] == 3
