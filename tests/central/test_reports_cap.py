"""The cap on a report's rows (``report_max_rows``): one row over it is a 422 problem
naming the parameter to change, exactly at it the whole report, for every report whose
size grows with the chain (all but sync health: one row per branch).

On the extended history of ``test_reports_coverage`` (two branches, products A, B, W,
2026-11-02..06), each report is asked with a cap of its own row count (the same
answer as without a cap) and of one less (the problem); then once through the API
with the setting lowered, JSON and CSV.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any

import msgspec
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.embedded_nats import EmbeddedNats
from central.ingest.worker import IngestWorker
from central.reports import service
from central.reports.backlog import apply_summary_backlog
from central.reports.service import ReportTooLarge
from tests.central.reports_history import doc
from tests.central.test_reports_coverage import (
    PERIOD,
    STOCK_PERIOD,
    extended_history,
    load,
    moved,
)
from tests.conftest import asgi_client, central_settings, create_api_token, running_central

D2, D3, D4, D5, D6 = (date(2026, 11, day) for day in (2, 3, 4, 5, 6))
# Far above any of these reports: the answer without a cap.
UNCAPPED = 1_000_000

Report = Callable[[AsyncSession, int], Awaitable[Any]]


async def _at_and_over_the_cap(
    chain: async_sessionmaker[AsyncSession], report: Report, rows: int, field: str
) -> ReportTooLarge:
    """``report`` has ``rows`` rows: capped at that many it is the uncapped answer, at
    one less a ReportTooLarge naming ``field`` (returned for more checks)."""
    async with chain() as s:
        whole = await report(s, UNCAPPED)
        assert len(whole.rows) == rows
        at_cap = await report(s, rows)
        with pytest.raises(ReportTooLarge) as over:
            await report(s, rows - 1)
    assert msgspec.json.encode(at_cap) == msgspec.json.encode(whole)
    problem = over.value
    assert (problem.status, problem.field) == (422, field)
    assert f"the report has more than {rows - 1} rows" in problem.detail
    assert "narrow it: " in problem.detail
    return problem


async def test_sales_capped_on_its_rows(chain: async_sessionmaker[AsyncSession]) -> None:
    # (B1, A) (B1, B) (B1, W) (B2, A); the previous period sold only (B1, A).
    problem = await _at_and_over_the_cap(
        chain,
        lambda s, n: service.sales_report(
            s, date_from=D2, date_to=D3, group_by="branch,product", max_rows=n
        ),
        4,
        "group_by",
    )
    assert problem.detail == (
        "the report has more than 3 rows, the most one report may have; narrow it: a coarser "
        "grouping (group_by), one branch (branch) or a shorter period (date_from, date_to)"
    )
    # One branch: "one branch" is no advice any more.
    problem = await _at_and_over_the_cap(
        chain,
        lambda s, n: service.sales_report(
            s, date_from=D2, date_to=D3, branch="B1", group_by="day,product", max_rows=n
        ),
        # 11-02 A B W, 11-03 A B (a return); 11-01 A shifted onto 11-03 is already there.
        5,
        "group_by",
    )
    assert "one branch" not in problem.detail


async def test_sales_cap_counts_the_groups_sold_only_in_the_previous_period(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    """On 11-03 cash and debit card were paid, on 11-02 cash and credit card: two
    groups in each period, three rows (credit card: nothing now, its previous
    figures beside)."""

    def by_payment(s: AsyncSession, n: int, compare: bool = True) -> Any:
        return service.sales_report(
            s, date_from=D3, date_to=D3, group_by="payment_type", compare=compare, max_rows=n
        )

    await _at_and_over_the_cap(chain, by_payment, 3, "group_by")
    async with chain() as s:
        alone = await by_payment(s, 2, compare=False)
        with pytest.raises(ReportTooLarge):
            await by_payment(s, 2)
    assert [r.payment_type for r in alone.rows] == ["cash", "debit_card"]


async def test_sales_over_the_cap_asks_for_one_row_past_it_and_no_previous_period(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    """The current period's groups are read with a LIMIT of max_rows + 1; over the cap
    the previous period is never read."""
    reads: list[tuple[str, Any]] = []

    def read(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "rpt_sales_product_daily" in statement:
            reads.append((statement, parameters))

    # The backlog's own statements write that table: applied before listening.
    await apply_summary_backlog(chain.kw["bind"])
    async with chain() as s:
        engine = s.bind.sync_engine
        event.listen(engine, "before_cursor_execute", read)
        try:
            with pytest.raises(ReportTooLarge):
                await service.sales_report(
                    s, date_from=D2, date_to=D3, group_by="branch,product", max_rows=2
                )
        finally:
            event.remove(engine, "before_cursor_execute", read)
    ((statement, parameters),) = reads
    assert "LIMIT" in statement.upper()
    assert 3 in tuple(parameters)


async def test_stock_reports_capped_on_their_rows(chain: async_sessionmaker[AsyncSession]) -> None:
    # Balances (B1, A) (B1, B) (B1, W) (B2, A).
    problem = await _at_and_over_the_cap(
        chain, lambda s, n: service.stock_on_hand(s, max_rows=n), 4, "group_by"
    )
    assert problem.detail.endswith(
        "narrow it: a coarser grouping (group_by=branch or product), one branch (branch) or "
        "one product (sku)"
    )
    await _at_and_over_the_cap(
        chain, lambda s, n: service.stock_on_hand(s, group_by="product", max_rows=n), 3, "group_by"
    )
    await _at_and_over_the_cap(
        chain,
        lambda s, n: service.stock_movement(
            s, date_from=D2, date_to=D6, group_by="branch,product", max_rows=n
        ),
        4,
        "group_by",
    )
    await _at_and_over_the_cap(
        chain,
        lambda s, n: service.stock_movement(s, date_from=D2, date_to=D6, max_rows=n),
        2,  # by branch without a branch
        "group_by",
    )
    await _at_and_over_the_cap(
        chain,
        lambda s, n: service.write_offs(
            s, date_from=D2, date_to=D6, group_by="branch,product", max_rows=n
        ),
        3,
        "group_by",
    )
    await _at_and_over_the_cap(
        chain,
        lambda s, n: service.shrinkage(
            s, date_from=D2, date_to=D6, group_by="branch,product", max_rows=n
        ),
        4,
        "group_by",
    )


async def test_stock_on_hand_by_branch_or_product_reads_the_balances_a_page_at_a_time(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    """Summed per branch or product, the four balances are read max_rows at a time,
    each page valued at its own branches' prices: the same answer as in one go, a
    branch split over two pages included (B1 at max_rows 2)."""
    from central.services.pricing import PriceChangeIn, set_price

    async with chain() as s:
        for change in (
            PriceChangeIn(sku="A", price=229),
            PriceChangeIn(sku="A", price=249, scope="branch", scope_id="B2"),
            PriceChangeIn(sku="W", price=1499, scope="branch", scope_id="B1"),
        ):
            await set_price(s, change)
        await s.commit()
    moment = datetime.now(UTC)
    whole: dict[str, Any] = {}
    pages: list[str] = []

    def read(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM stock_balances" in statement:
            pages.append(statement)

    async with chain() as s:
        engine = s.bind.sync_engine
        event.listen(engine, "before_cursor_execute", read)
        try:
            for group_by, rows, max_rows in (("branch", 2, 2), ("branch", 2, 3), ("product", 3, 3)):
                whole[group_by] = await service.stock_on_hand(s, group_by=group_by, at=moment)
                assert len(whole[group_by].rows) == rows
                pages.clear()
                paged = await service.stock_on_hand(
                    s, group_by=group_by, at=moment, max_rows=max_rows
                )
                assert len(pages) == 2, (group_by, max_rows)  # 4 balances: two pages
                assert msgspec.json.encode(paged) == msgspec.json.encode(whole[group_by]), max_rows
        finally:
            event.remove(engine, "before_cursor_execute", read)
    # A 2.5 x 2.29 + B 2 x 4.50 (last sale) + W 0.6 x 14.99; A 1 x 2.49 at B2.
    by_branch = {r.branch: (r.value_at_retail, r.retail_price_source) for r in whole["branch"].rows}
    assert by_branch == {"B1": (573 + 900 + 899, "mixed"), "B2": (249, "head_office")}
    by_product = {r.sku: (r.value_at_retail, r.retail_price_source) for r in whole["product"].rows}
    assert by_product == {
        "A": (573 + 249, "head_office"),
        "B": (900, "last_sale"),
        "W": (899, "head_office"),
    }


async def test_margin_and_abc_capped_on_their_rows(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    await _at_and_over_the_cap(
        chain,
        lambda s, n: service.gross_margin(
            s, date_from=D2, date_to=D3, group_by="branch,product", max_rows=n
        ),
        4,
        "group_by",
    )
    # No grouping: the chain's products, narrowed by asking for one branch ...
    problem = await _at_and_over_the_cap(
        chain,
        lambda s, n: service.abc_analysis(s, date_from=D2, date_to=D3, max_rows=n),
        3,
        "branch",
    )
    assert problem.detail.endswith("one branch (branch) or a shorter period (date_from, date_to)")
    # ... and a branch's by a shorter period.
    await _at_and_over_the_cap(
        chain,
        lambda s, n: service.abc_analysis(s, date_from=D2, date_to=D3, branch="B1", max_rows=n),
        3,
        "date_to",
    )


async def test_shifts_and_loss_prevention_capped_on_their_rows(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    async with chain() as s:
        every = await service.shift_reconciliation(s, date_from=D2, date_to=D6)
    shifts = len(every.rows)
    assert shifts >= 3
    await _at_and_over_the_cap(
        chain,
        lambda s, n: service.shift_reconciliation(s, date_from=D2, date_to=D6, max_rows=n),
        shifts,
        "branch",
    )
    await _at_and_over_the_cap(
        chain,
        lambda s, n: service.shift_reconciliation(
            s, date_from=D2, date_to=D6, branch="B1", max_rows=n
        ),
        shifts - 1,  # B2 has one shift
        "date_to",
    )
    # Only the differing shifts are shown, but every shift is read and compared: the
    # cap is on the shifts reconciled.
    async with chain() as s:
        only = await service.shift_reconciliation(
            s, date_from=D2, date_to=D6, only_differences=True, max_rows=shifts
        )
        assert len(only.rows) < shifts
        with pytest.raises(ReportTooLarge):
            await service.shift_reconciliation(
                s, date_from=D2, date_to=D6, only_differences=True, max_rows=shifts - 1
            )
    # (B1, ann) (B1, bob) (B2, cy): the medians are of all three or of none.
    await _at_and_over_the_cap(
        chain,
        lambda s, n: service.loss_prevention(s, date_from=D2, date_to=D3, max_rows=n),
        3,
        "branch",
    )


async def test_sync_health_is_not_capped(chain: async_sessionmaker[AsyncSession]) -> None:
    async with chain() as s:
        report = await service.sync_health(s)
    assert [r.branch for r in report.rows] == ["B1", "B2"]


# --- through the API, the setting lowered -------------------------------------------------


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_the_setting_caps_every_report_of_the_api(
    db_url: str, nats_server: EmbeddedNats
) -> None:
    settings = central_settings(db_url, nats_server.url, report_max_rows=3)
    async with running_central(settings) as central:
        from central.app import create_app

        await load(central.sessionmaker)
        token = await create_api_token(central, "analyst")
        async with asgi_client(
            create_app(central.settings, runtime=central),
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            base = "/api/v1/reports"
            # Exactly at the cap: the whole report, as JSON and as CSV. By branch and
            # day: (B1, 11-02) (B1, 11-03) (B2, 11-03); 11-01 falls on (B1, 11-03).
            at_cap = f"{base}/sales?{PERIOD}&group_by=branch,day"
            response = await client.get(at_cap)
            assert response.status_code == 200, response.text
            body = response.json()
            assert [(r["branch"], r["local_date"]) for r in body["rows"]] == [
                ("B1", "2026-11-02"),
                ("B1", "2026-11-03"),
                ("B2", "2026-11-03"),
            ]
            assert body["totals"]["revenue"] == 3314
            as_csv = await client.get(f"{at_cap}&format=csv")
            assert as_csv.status_code == 200
            assert [(r["branch"], r["local_date"]) for r in _csv_rows(as_csv.text)] == [
                ("B1", "2026-11-02"),
                ("B1", "2026-11-03"),
                ("B2", "2026-11-03"),
            ]
            # One over (four products at branches): a problem naming group_by, asked
            # for as JSON and as CSV.
            over = f"{base}/sales?{PERIOD}&group_by=branch,product"
            for url, headers in (
                (over, {}),
                (f"{over}&format=csv", {}),
                (over, {"Accept": "text/csv"}),
            ):
                response = await client.get(url, headers=headers)
                assert response.status_code == 422, (url, response.text)
                assert response.headers["content-type"].startswith("application/problem+json")
                problem = response.json()
                assert (problem["status"], problem["title"]) == (422, "Report too large")
                assert problem["instance"] == "/api/v1/reports/sales"
                assert [e["field"] for e in problem["errors"]] == ["group_by"]
                assert problem["detail"].startswith("the report has more than 3 rows")
            # Every other capped report: one over its cap and one at or under it.
            cases = [
                ("stock-on-hand?", 422, "group_by"),  # 4 balances
                ("stock-on-hand?group_by=product", 200, None),  # A, B, W
                (f"stock-movement?{STOCK_PERIOD}&group_by=branch,product", 422, "group_by"),
                (f"stock-movement?{STOCK_PERIOD}", 200, None),  # B1, B2
                (f"gross-margin?{PERIOD}&group_by=branch,product", 422, "group_by"),
                (f"gross-margin?{PERIOD}&group_by=product", 200, None),
                (f"abc?{PERIOD}&a_pct=50&b_pct=80", 200, None),  # A, B, W
                (f"write-offs?{STOCK_PERIOD}&group_by=branch,product", 200, None),  # 3 rows
                (f"write-offs?{STOCK_PERIOD}&group_by=branch,reason,product", 422, "group_by"),
                (f"shrinkage?{STOCK_PERIOD}&group_by=branch,product", 422, "group_by"),
                (f"shrinkage?{STOCK_PERIOD}&group_by=product", 200, None),
                (f"shifts?{STOCK_PERIOD}", 422, "branch"),
                (f"shifts?{STOCK_PERIOD}&branch=B2", 200, None),
                (f"loss-prevention?{PERIOD}", 200, None),  # 3 cashiers
                ("sync-health?", 200, None),  # not capped
            ]
            for path, status, field in cases:
                for suffix in ("", "&format=csv"):
                    response = await client.get(f"{base}/{path}{suffix}")
                    assert response.status_code == status, (path, suffix, response.text)
                    if status == 422:
                        assert [e["field"] for e in response.json()["errors"]] == [field], path


async def test_the_setting_reaches_abc_and_loss_prevention(
    db_url: str, nats_server: EmbeddedNats
) -> None:
    """At a cap of 2 the chain's three products and three cashiers are one too many;
    B2's one product and one cashier are not."""
    settings = central_settings(db_url, nats_server.url, report_max_rows=2)
    async with running_central(settings) as central:
        from central.app import create_app

        await load(central.sessionmaker)
        token = await create_api_token(central, "analyst")
        async with asgi_client(
            create_app(central.settings, runtime=central),
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            for path in ("abc", "loss-prevention"):
                over = await client.get(f"/api/v1/reports/{path}?{PERIOD}&format=csv")
                assert over.status_code == 422, (path, over.text)
                assert [e["field"] for e in over.json()["errors"]] == ["branch"]
                under = await client.get(f"/api/v1/reports/{path}?{PERIOD}&branch=B2")
                assert under.status_code == 200, (path, under.text)
                assert len(under.json()["rows"]) == 1


async def test_stock_on_hand_tells_unpriced_stock_apart(
    chain: async_sessionmaker[AsyncSession],
) -> None:
    """Stock with no retail price (no head-office price, never sold at the branch) adds
    0 at retail: the report says how much of the quantity and of the value at cost that
    is, per row and summed, so "worth nothing" is not read as "not priced"."""
    # B2 receives B, which it never sold and head office has no price for.
    history = extended_history()
    received = history.add(
        "B2", "2026-11-06T12:00:00", doc("G9", "goods_receipt", (moved("B", 3000, 200),))
    )
    stats = await IngestWorker(chain).process(history.messages([received]))
    assert (stats.dead_letters, stats.stored) == (0, 1)
    async with chain() as s:
        by_row = await service.stock_on_hand(s)
        by_branch = await service.stock_on_hand(s, group_by="branch")
    rows = {(r.branch, r.sku): r for r in by_row.rows}
    unpriced = {k for k, r in rows.items() if r.retail_price_source is None}
    assert unpriced == {("B2", "B")}
    b2 = rows[("B2", "B")]
    assert (b2.qty_milli, b2.value_at_cost, b2.value_at_retail) == (3000, 600, 0)
    assert (b2.unpriced_qty_milli, b2.unpriced_value_at_cost) == (b2.qty_milli, b2.value_at_cost)
    for key, row in rows.items():
        if key not in unpriced:
            assert (row.unpriced_qty_milli, row.unpriced_value_at_cost) == (0, 0), key
    branches = {r.branch: r for r in by_branch.rows}
    assert (branches["B1"].unpriced_qty_milli, branches["B1"].unpriced_value_at_cost) == (0, 0)
    assert branches["B2"].unpriced_qty_milli == b2.qty_milli
    assert branches["B2"].unpriced_value_at_cost == b2.value_at_cost
    assert by_row.totals.unpriced_qty_milli == b2.qty_milli
    assert by_branch.totals.unpriced_value_at_cost == b2.value_at_cost
