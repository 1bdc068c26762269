"""Stock movement over a history of fifteen months: every period (mid-month starts,
month and year boundaries, the opening from history or from today's balance) gives
exactly what the stock ledger says, and the monthly rollup equals its rebuild."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Sequence
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.db import create_engine, create_sessionmaker, upgrade
from central.errors import NotFoundError
from central.ingest.worker import IngestWorker, MessageIn
from central.models import StockMovement
from central.models.reports import StockClosingMonthly, StockMovementMonthly
from central.reports import projections, service
from central.reports.backlog import apply_summary_backlog
from central.reports.projections import write_closing
from central.reports.rebuild import rebuild_summaries
from central.reports.service import _pieces
from central.services.branches import add_branch
from protocol import Payment
from protocol.events import CustomerReturnRecorded, StockDocumentLine
from tests.central.reports_history import History, at, doc, line, sale
from tests.conftest import PG_URL_ENV, empty_database

KINDS = {
    "goods_receipt": ("goods_received", 1),
    "transfer_in": ("transfers_in", 1),
    "customer_return": ("customer_returns", 1),
    "transfer_out": ("transfers_out", -1),
    "sale": ("sales", -1),
    "supplier_return": ("supplier_returns", -1),
    "write_off": ("write_offs", -1),
    "stocktake": ("stocktake_difference", 1),
    "cost_correction": ("cost_corrections", 1),
}
FIELDS = [f for f, _ in KINDS.values()] + ["other"]


def _months() -> list[date]:
    """2025-11 .. 2027-01: fifteen months over a year boundary each side."""
    out, month = [], date(2025, 11, 1)
    while month <= date(2027, 1, 1):
        out.append(month)
        month = (month + timedelta(days=32)).replace(day=1)
    return out


def _month_last(month: date) -> date:
    return (month + timedelta(days=32)).replace(day=1) - timedelta(days=1)


def build_long_history() -> History:
    h = History()
    n = 0
    for i, month in enumerate(_months()):
        last = _month_last(month)
        h.add(
            "B1",
            f"{month.isoformat()}T06:00:00",
            doc(
                f"G{i}",
                "goods_receipt",
                (
                    StockDocumentLine(sku="A", quantity_milli=6000, unit_cost=100 + i),
                    StockDocumentLine(sku="B", quantity_milli=3000, unit_cost=250 + 3 * i),
                ),
            ),
        )
        for day, sku, qty in ((3, "A", 2000), (15, "B", 1000), (15, "A", 1000)):
            n += 1
            h.add(
                "B1",
                f"{month.replace(day=day).isoformat()}T10:00:00",
                sale(
                    f"r{n}",
                    "S1",
                    "ann",
                    (line(1, sku, qty, 199, 199 * qty // 1000, 2000),),
                    (Payment(type="credit_card", amount=199 * qty // 1000),),
                ),
            )
        # 23:30 UTC on the month's last day is already the 1st on B1's clock (UTC+1).
        n += 1
        h.add(
            "B1",
            f"{last.isoformat()}T23:30:00",
            sale(
                f"r{n}",
                "S1",
                "bob",
                (line(1, "A", 1000, 199, 199, 2000),),
                (Payment(type="cash", amount=199),),
            ),
        )
        if i % 2 == 0:
            h.add(
                "B1",
                f"{month.replace(day=20).isoformat()}T12:00:00",
                doc(
                    f"W{i}",
                    "write_off",
                    (StockDocumentLine(sku="B", quantity_milli=-500),),
                    reason="expired",
                ),
            )
        if i % 3 == 1:
            h.add(
                "B1",
                f"{month.replace(day=28).isoformat()}T12:00:00",
                doc(
                    f"T{i}",
                    "stocktake",
                    (StockDocumentLine(sku="A", quantity_milli=-250),),
                ),
            )
        if i % 4 == 2:
            h.add(
                "B1",
                f"{month.replace(day=9).isoformat()}T12:00:00",
                doc(
                    f"TO{i}",
                    "transfer_out",
                    (StockDocumentLine(sku="A", quantity_milli=-1500),),
                    counterpart_branch="B2",
                    transfer_ref=f"TR{i}",
                ),
            )
            h.add(
                "B2",
                f"{month.replace(day=11).isoformat()}T12:00:00",
                doc(
                    f"TI{i}",
                    "transfer_in",
                    (StockDocumentLine(sku="A", quantity_milli=1500),),
                    counterpart_branch="B1",
                    transfer_ref=f"TR{i}",
                ),
            )
        if i % 5 == 3:
            h.add(
                "B1",
                f"{month.replace(day=16).isoformat()}T12:00:00",
                CustomerReturnRecorded(
                    till="T1",
                    shift_id="S1",
                    return_number=i,
                    return_id=f"cr{i}",
                    original_sale_id=f"r{n - 1}",
                    cashier="ann",
                    lines=(line(1, "B", 1000, 199, 199, 2000),),
                    refunds=(Payment(type="credit_card", amount=199),),
                    total=199,
                ),
            )
            h.add(
                "B1",
                f"{month.replace(day=17).isoformat()}T12:00:00",
                doc(
                    f"SR{i}", "supplier_return", (StockDocumentLine(sku="B", quantity_milli=-700),)
                ),
            )
    return h


async def add_two_branches(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as session, session.begin():
        await add_branch(session, code="B1", name="Harbour", timezone="Europe/Berlin")
        await add_branch(session, code="B2", name="Station")


@pytest.fixture
async def long_chain(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    await add_two_branches(sessionmaker)
    worker = IngestWorker(sessionmaker)
    for batch in build_long_history().batches(7):
        stats = await worker.process(batch)
        assert stats.dead_letters == 0
    await apply_summary_backlog(engine)
    try:
        yield sessionmaker
    finally:
        await engine.dispose()


def _expected(ledger: list[Any], d1: date, d2: date, key_of: Any) -> dict[Any, dict[str, int]]:
    """The movement report computed straight from the stock ledger."""
    out: dict[Any, dict[str, int]] = {}
    blank = {f"{n}_{u}": 0 for n in ("opening", *FIELDS, "closing") for u in ("milli", "value")}
    inside_seen: set[Any] = set()
    for row in ledger:
        if row.local_date > d2:
            continue
        acc = out.setdefault(key_of(row), dict(blank))
        if row.local_date < d1:
            acc["opening_milli"] += row.quantity_milli
            acc["opening_value"] += row.value
        else:
            inside_seen.add(key_of(row))
            field, sign = KINDS[row.doc_type]
            acc[f"{field}_milli"] += sign * row.quantity_milli
            acc[f"{field}_value"] += sign * row.value
        acc["closing_milli"] += row.quantity_milli
        acc["closing_value"] += row.value
    return {
        k: v for k, v in out.items() if k in inside_seen or v["opening_milli"] or v["opening_value"]
    }


def _got(rows: list[Any], key_of: Any) -> dict[Any, dict[str, int]]:
    out = {}
    for r in rows:
        fields = {
            f"{n}_{u}": getattr(r, f"{n}_{u}")
            for n in ("opening", *FIELDS, "closing")
            for u in ("milli", "value")
        }
        out[key_of(r)] = fields
    return out


PERIODS = [
    (date(2025, 11, 1), date(2025, 11, 30)),  # the first month, whole
    (date(2025, 11, 14), date(2025, 12, 2)),  # mid-month start, spanning months
    (date(2025, 12, 20), date(2026, 1, 10)),  # across a year boundary, both ends partial
    (date(2026, 1, 1), date(2026, 1, 1)),  # the day the late-evening sales land on
    (date(2026, 2, 15), date(2026, 5, 14)),  # full months inside, partial ends
    (date(2026, 3, 1), date(2026, 6, 30)),  # exactly whole months
    (date(2026, 6, 7), date(2026, 6, 21)),  # inside one month
    (date(2026, 9, 16), date(2027, 1, 31)),  # late: opening from today's balance
    (date(2026, 12, 1), date(2026, 12, 31)),  # a whole month near the end
    (date(2026, 12, 31), date(2027, 1, 1)),  # year boundary, two days
    (date(2027, 1, 5), date(2027, 2, 28)),  # running past the last movement
    (date(2025, 10, 1), date(2025, 10, 31)),  # before any movement: nothing
]


async def _check_periods(
    sessionmaker: async_sessionmaker[AsyncSession], periods: list[tuple[date, date]]
) -> list[Any]:
    """Every period, grouped every way (one branch by product, the chain by branch, by
    branch and product, one product across the chain), equals the ledger; returns it."""
    async with sessionmaker() as s:
        ledger = list((await s.execute(select(StockMovement))).scalars())
    by_product = lambda r: r.sku  # noqa: E731
    by_branch = lambda r: r.branch  # noqa: E731
    for d1, d2 in periods:
        async with sessionmaker() as s:
            products = await service.stock_movement(s, date_from=d1, date_to=d2, branch="B1")
            branches = await service.stock_movement(s, date_from=d1, date_to=d2)
            both = await service.stock_movement(
                s, date_from=d1, date_to=d2, group_by="branch,product"
            )
            one = await service.stock_movement(s, date_from=d1, date_to=d2, sku="A")
            one_here = await service.stock_movement(
                s, date_from=d1, date_to=d2, branch="B1", sku="A"
            )
        b1 = [r for r in ledger if r.branch == "B1"]
        assert _got(products.rows, by_product) == _expected(b1, d1, d2, by_product), (d1, d2)
        assert _got(branches.rows, by_branch) == _expected(ledger, d1, d2, by_branch), (d1, d2)
        pair = lambda r: (r.branch, r.sku)  # noqa: E731
        assert _got(both.rows, pair) == _expected(ledger, d1, d2, pair), (d1, d2)
        only_a = [r for r in ledger if r.sku == "A"]
        assert _got(one.rows, by_branch) == _expected(only_a, d1, d2, by_branch), (d1, d2)
        a_here = [r for r in b1 if r.sku == "A"]
        assert _got(one_here.rows, by_product) == _expected(a_here, d1, d2, by_product), (d1, d2)
        for row in [*products.rows, *branches.rows, products.totals]:
            for unit in ("milli", "value"):
                moved = sum(
                    sign * getattr(row, f"{field}_{unit}") for field, sign in KINDS.values()
                )
                assert getattr(row, f"opening_{unit}") + moved + getattr(
                    row, f"other_{unit}"
                ) == getattr(row, f"closing_{unit}")
    return ledger


async def test_every_period_matches_the_ledger(
    long_chain: async_sessionmaker[AsyncSession],
) -> None:
    ledger = await _check_periods(long_chain, PERIODS)
    # Sanity of the fixture: the late sales of each month land on the next month's 1st.
    jan = [r for r in ledger if r.local_date == date(2026, 1, 1) and r.doc_type == "sale"]
    assert [(r.branch, r.sku, r.quantity_milli) for r in jan] == [("B1", "A", -1000)]


async def test_every_period_matches_the_ledger_with_an_index_step_per_product(
    long_chain: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other way to the latest closing row (a long history): the same answers."""
    monkeypatch.setattr(service, "_CLOSING_SCAN_MONTHS", 0)
    await _check_periods(long_chain, PERIODS)


async def test_an_unknown_branch_is_named_and_the_session_keeps_its_settings(
    long_chain: async_sessionmaker[AsyncSession],
) -> None:
    async with long_chain() as s:
        with pytest.raises(NotFoundError) as unknown:
            await service.stock_movement(
                s, date_from=date(2026, 1, 1), date_to=date(2026, 1, 31), branch="NOPE"
            )
        assert unknown.value.field == "branch"
    async with long_chain() as s:
        postgres = s.get_bind().dialect.name == "postgresql"
        if postgres:
            before = (await s.execute(text("SHOW max_parallel_workers_per_gather"))).scalar()
        report = await service.stock_movement(
            s, date_from=date(2026, 2, 15), date_to=date(2026, 5, 14), branch="B1"
        )
        assert report.rows
        if postgres:
            # The report turns parallel workers off for its query only.
            after = (await s.execute(text("SHOW max_parallel_workers_per_gather"))).scalar()
            assert after == before


async def test_a_kind_of_movement_the_report_does_not_know_is_shown_as_other(
    long_chain: async_sessionmaker[AsyncSession],
) -> None:
    periods = [(date(2026, 3, 1), date(2026, 3, 31)), (date(2026, 3, 5), date(2026, 4, 20))]

    async def reports() -> list[Any]:
        async with long_chain() as s:
            return [
                (
                    await service.stock_movement(s, date_from=d1, date_to=d2, branch="B1", sku="A")
                ).rows[0]
                for d1, d2 in periods
            ]

    before = await reports()
    async with long_chain() as s, s.begin():
        for table, day in (
            ("rpt_stock_movement_daily", "local_date"),
            ("rpt_stock_movement_monthly", "month"),
        ):
            await s.execute(
                text(
                    f"INSERT INTO {table} (branch, {day}, sku, movement, qty_milli, cost_value"
                    + (", reason" if day == "local_date" else "")
                    + ") VALUES ('B1', :d, 'A', 'adjustment', 500, 55"
                    + (", ''" if day == "local_date" else "")
                    + ")"
                ),
                {"d": date(2026, 3, 10) if day == "local_date" else date(2026, 3, 1)},
            )
    for old, new in zip(before, await reports(), strict=True):
        assert (new.other_milli, new.other_value) == (500, 55)
        assert (new.opening_milli, new.opening_value) == (old.opening_milli, old.opening_value)
        assert (new.closing_milli, new.closing_value) == (
            old.closing_milli + 500,
            old.closing_value + 55,
        )


async def test_spot_figures_to_the_cent(long_chain: async_sessionmaker[AsyncSession]) -> None:
    """One period checked by hand: 2025-12-20 .. 2026-01-10 at B1, product B."""
    async with long_chain() as s:
        report = await service.stock_movement(
            s, date_from=date(2025, 12, 20), date_to=date(2026, 1, 10), branch="B1", sku="B"
        )
    (b,) = report.rows
    # Nov: +3000 @2.50, -1000 sold, -500 written off -> 1500 left (3.75).
    # Dec 1: +3000 @2.53 -> 4500 worth 3.75 + 7.59 = 11.34; Dec 15: -1000 sold at the
    # average (11.34 x 1000/4500 = 2.52) -> 3500, 8.82. Opening on the 20th: 3500, 8.82.
    assert (b.opening_milli, b.opening_value) == (3500, 882)
    # Dec 20: nothing for B that month (write-offs every other month: Nov, Jan ...).
    # Jan 1: +3000 @2.56 = 7.68 -> 6500, 16.50. Nothing else until the 10th.
    assert (b.goods_received_milli, b.goods_received_value) == (3000, 768)
    assert (b.sales_milli, b.write_offs_milli) == (0, 0)
    assert (b.closing_milli, b.closing_value) == (6500, 1650)


async def test_monthly_rollup_equals_its_rebuild(
    long_chain: async_sessionmaker[AsyncSession],
) -> None:
    async def monthly() -> list[Any]:
        async with long_chain() as s:
            return sorted(
                tuple(r) for r in (await s.execute(select(StockMovementMonthly.__table__)))
            )

    incremental = await monthly()
    # B1: 2025-11 .. 2027-02 (the last evening sale lands on 1 February), B2: 4 transfers.
    assert len({(r[0], r[1]) for r in incremental}) == 16 + 4
    async with long_chain() as session, session.begin():
        await rebuild_summaries(session)
    assert await monthly() == incremental


def test_a_period_splits_into_whole_months_and_partial_days() -> None:
    d = date
    assert _pieces(d(2026, 2, 15), d(2026, 5, 14)) == [
        ("daily", d(2026, 2, 15), d(2026, 2, 28)),
        ("monthly", d(2026, 3, 1), d(2026, 4, 30)),
        ("daily", d(2026, 5, 1), d(2026, 5, 14)),
    ]
    assert _pieces(d(2026, 3, 1), d(2026, 6, 30)) == [("monthly", d(2026, 3, 1), d(2026, 6, 30))]
    assert _pieces(d(2026, 6, 7), d(2026, 6, 21)) == [("daily", d(2026, 6, 7), d(2026, 6, 21))]
    assert _pieces(d(2025, 12, 20), d(2026, 1, 10)) == [
        ("daily", d(2025, 12, 20), d(2025, 12, 31)),
        ("daily", d(2026, 1, 1), d(2026, 1, 10)),
    ]
    assert _pieces(None, d(2026, 1, 10)) == [
        ("monthly", None, d(2025, 12, 31)),
        ("daily", d(2026, 1, 1), d(2026, 1, 10)),
    ]
    assert _pieces(d(2026, 1, 10), None) == [
        ("daily", d(2026, 1, 10), d(2026, 1, 31)),
        ("monthly", d(2026, 2, 1), None),
    ]
    assert _pieces(d(2026, 1, 2), d(2026, 1, 1)) == []


# --- closing stock per month ----------------------------------------------------------------

Closing = tuple[str, str, date, int, int]


def _closing_from_ledger(ledger: list[Any]) -> list[Closing]:
    """(branch, sku, month, qty, value) for every month a product moved in: the running
    sum of its ledger up to that month's end."""
    moved: dict[tuple[str, str], dict[date, list[int]]] = {}
    for r in ledger:
        sums = moved.setdefault((r.branch, r.sku), {}).setdefault(
            r.local_date.replace(day=1), [0, 0]
        )
        sums[0] += r.quantity_milli
        sums[1] += r.value
    out: list[Closing] = []
    for (branch, sku), months in moved.items():
        qty = value = 0
        for month in sorted(months):
            qty += months[month][0]
            value += months[month][1]
            out.append((branch, sku, month, qty, value))
    return sorted(out)


async def _closing_rows(sessionmaker: async_sessionmaker[AsyncSession]) -> list[Closing]:
    async with sessionmaker() as s:
        rows = await s.execute(select(StockClosingMonthly.__table__))
        return sorted((r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows)


async def _ledger(sessionmaker: async_sessionmaker[AsyncSession]) -> list[Any]:
    async with sessionmaker() as s:
        return list((await s.execute(select(StockMovement))).scalars())


async def test_closing_rows_follow_the_ledger_and_their_rebuild(
    long_chain: async_sessionmaker[AsyncSession],
) -> None:
    incremental = await _closing_rows(long_chain)
    assert incremental == _closing_from_ledger(await _ledger(long_chain))
    # At B1, A moves in 16 months (the last evening sale lands on 1 February 2027), B
    # in 15; B2 gets A four times.
    assert len(incremental) == 16 + 15 + 4
    async with long_chain() as session, session.begin():
        await rebuild_summaries(session)
    assert await _closing_rows(long_chain) == incremental


async def _ingest(
    sessionmaker: async_sessionmaker[AsyncSession], messages: Sequence[MessageIn], size: int
) -> None:
    worker = IngestWorker(sessionmaker)
    for start in range(0, len(messages), size):
        stats = await worker.process(list(messages[start : start + size]))
        assert stats.dead_letters == 0
    await apply_summary_backlog(sessionmaker.kw["bind"])


async def test_late_and_out_of_order_events_keep_the_closing_exact(db_url: str) -> None:
    """The first three months arrive last (newest first), everything else shuffled, so
    batches hold several months of one product and earlier months land after later
    months have closing rows: every closing row, every report and the rebuild still
    agree with the ledger."""
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    try:
        await add_two_branches(sessionmaker)
        h = build_long_history()
        late = [e for e in h.events if e.occurred_at < at("2026-02-01T00:00:00")]
        rest = [e for e in h.events if e.occurred_at >= at("2026-02-01T00:00:00")]
        random.Random(6).shuffle(rest)
        await _ingest(sessionmaker, h.messages(rest), 9)
        before_late = await _closing_rows(sessionmaker)
        assert before_late == _closing_from_ledger(await _ledger(sessionmaker))
        assert min(r[2] for r in before_late) == date(2026, 2, 1)
        await _ingest(sessionmaker, h.messages(late[::-1]), 4)
        ledger = await _ledger(sessionmaker)
        incremental = await _closing_rows(sessionmaker)
        assert incremental == _closing_from_ledger(ledger)
        assert min(r[2] for r in incremental) == date(2025, 11, 1)
        await _check_periods(sessionmaker, PERIODS)
        async with sessionmaker() as session, session.begin():
            await rebuild_summaries(session)
        assert await _closing_rows(sessionmaker) == incremental
    finally:
        await engine.dispose()


async def test_one_batch_over_several_months_around_existing_rows(db_url: str) -> None:
    """Rows Jan 10, Feb 15, Apr 20; one batch adds 1 in January and 2 in March: January
    gets its 1, February the 1 before it, March (new) February's closing + 1 + 2, April
    both. A new product moving in May and July: July carries May's stock."""
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    d = date
    try:
        async with sessionmaker() as session, session.begin():
            await session.execute(
                insert(StockClosingMonthly),
                [
                    {"branch": "B1", "sku": "A", "month": d(2026, m, 1)}
                    | {"qty_milli": q, "value": 10 * q}
                    for m, q in ((1, 10), (2, 15), (4, 20))
                ]
                + [
                    {"branch": "B1", "sku": "Z", "month": d(2026, 2, 1), "qty_milli": 5, "value": 7}
                ],
            )
            deltas = {
                ("B1", "A", d(2026, 1, 1)): (1, 10),
                ("B1", "A", d(2026, 3, 1)): (2, 20),
                # A new product's first two months, and a month before any row.
                ("B1", "N", d(2026, 5, 1)): (4, 40),
                ("B1", "N", d(2026, 7, 1)): (3, 30),
                ("B1", "Z", d(2026, 1, 1)): (-1, -1),
            }
            await session.run_sync(write_closing, deltas)
        assert await _closing_rows(sessionmaker) == [
            ("B1", "A", d(2026, 1, 1), 11, 110),
            ("B1", "A", d(2026, 2, 1), 16, 160),
            ("B1", "A", d(2026, 3, 1), 18, 180),
            ("B1", "A", d(2026, 4, 1), 23, 230),
            ("B1", "N", d(2026, 5, 1), 4, 40),
            ("B1", "N", d(2026, 7, 1), 7, 70),
            ("B1", "Z", d(2026, 1, 1), -1, -1),
            ("B1", "Z", d(2026, 2, 1), 4, 6),
        ]
    finally:
        await engine.dispose()


_KINDS: list[Any] = ["sqlite"]
if os.environ.get(PG_URL_ENV):
    _KINDS.append(pytest.param("postgresql", marks=pytest.mark.postgres))


@pytest.fixture(params=_KINDS)
async def unmigrated_url(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[str]:
    async with empty_database(request.param, tmp_path) as url:
        yield url


async def test_migration_fills_the_closing_from_the_monthly_movements(
    unmigrated_url: str,
) -> None:
    await upgrade(unmigrated_url, "1302")
    engine = create_engine(unmigrated_url)
    sessionmaker = create_sessionmaker(engine)
    d = date
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO rpt_stock_movement_monthly "
                    "(branch, month, sku, movement, qty_milli, cost_value) "
                    "VALUES (:b, :m, :s, :k, :q, :v)"
                ),
                [
                    {"b": b, "m": m, "s": s, "k": k, "q": q, "v": v}
                    for b, m, s, k, q, v in (
                        ("B1", d(2026, 1, 1), "A", "goods_receipt", 5000, 500),
                        ("B1", d(2026, 1, 1), "A", "sale", -1000, -100),
                        ("B1", d(2026, 3, 1), "A", "sale", -2000, -200),
                        ("B1", d(2026, 3, 1), "A", "write_off", -500, -50),
                        ("B1", d(2026, 2, 1), "B", "goods_receipt", 1000, 70),
                        ("B2", d(2026, 1, 1), "A", "transfer_in", 700, 77),
                    )
                ],
            )
        await upgrade(unmigrated_url, "1401")
        assert await _closing_rows(sessionmaker) == [
            ("B1", "A", d(2026, 1, 1), 4000, 400),
            ("B1", "A", d(2026, 3, 1), 1500, 150),
            ("B1", "B", d(2026, 2, 1), 1000, 70),
            ("B2", "A", d(2026, 1, 1), 700, 77),
        ]
    finally:
        await engine.dispose()


async def test_a_batch_failing_after_the_closing_upkeep_leaves_nothing_behind(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops right after both closing statements ran (in the batch on
    SQLite, in the backlog's applier on PostgreSQL): that transaction rolls back with
    them, and the redelivered batch (or the backlog, applied again) is counted once."""
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    try:
        await add_two_branches(sessionmaker)
        messages = build_long_history().messages()
        first, rest = messages[:40], messages[40:]
        await _ingest(sessionmaker, first, 40)
        kept = await _closing_rows(sessionmaker)
        real = projections.write_closing

        def then_fail(session: Any, deltas: Any, **chunk: Any) -> None:
            real(session, deltas, **chunk)
            raise ConnectionResetError("link dropped after the closing upkeep")

        monkeypatch.setattr(projections, "write_closing", then_fail)

        async def store_and_apply() -> None:
            await IngestWorker(sessionmaker).process(rest)
            await apply_summary_backlog(engine)

        with pytest.raises(ConnectionResetError):
            await store_and_apply()
        assert await _closing_rows(sessionmaker) == kept
        monkeypatch.setattr(projections, "write_closing", real)
        await _ingest(sessionmaker, messages, 25)  # redelivered, first part included
        assert await _closing_rows(sessionmaker) == _closing_from_ledger(
            await _ledger(sessionmaker)
        )
        # Every ledger row once: as many as the lines of the history's events.
        ledger = await _ledger(sessionmaker)
        assert len({(r.event_id, r.line_no) for r in ledger}) == len(ledger)
    finally:
        await engine.dispose()


async def test_the_embedded_database_needs_no_full_join(tmp_path: Any) -> None:
    """SQLite has FULL JOIN only from 3.39 (Ubuntu 22.04's Python links 3.37): the
    movement report on the embedded database must give its answer without one."""
    from sqlalchemy import event

    url = f"sqlite+aiosqlite:///{tmp_path / 'central.db'}"
    await upgrade(url)
    engine = create_engine(url)
    statements: list[str] = []
    event.listen(
        engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, sql, *_rest: statements.append(sql),
    )
    try:
        sessionmaker = create_sessionmaker(engine)
        await add_two_branches(sessionmaker)
        worker = IngestWorker(sessionmaker)
        for batch in build_long_history().batches(7):
            assert (await worker.process(batch)).dead_letters == 0
        statements.clear()
        async with sessionmaker() as s:
            report = await service.stock_movement(
                s, date_from=date(2026, 2, 15), date_to=date(2026, 5, 14), branch="B1"
            )
        assert report.rows
        assert any("stock_movement" in sql for sql in statements)
        assert not [sql for sql in statements if "FULL" in sql.upper()]
    finally:
        await engine.dispose()
