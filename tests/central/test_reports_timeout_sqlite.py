"""A report that runs too long on SQLite (the embedded database): interrupted after
``report_statement_timeout_s``, a 503 problem; the pooled connection keeps no limit."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from sqlalchemy import text

from central.app import create_app
from central.db import upgrade
from central.embedded_nats import EmbeddedNats
from tests.conftest import (
    asgi_client,
    central_settings,
    create_api_token,
    empty_database,
    register_branch,
    running_central,
)

REPORT = "/api/v1/reports/sales?date_from=2026-11-01&date_to=2026-11-30&group_by=product"
PRODUCTS = 20_000


def _fill(path: Path) -> None:
    """A month of chain-wide daily sales of many products, straight into the summary
    table the report reads (a big chain's month, without ingesting every receipt)."""
    measures = (1, 1000, 250, 40, 0, 150, 0, 0, 0, 0, 0)
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            "INSERT INTO rpt_sales_product_daily_chain (local_date, sku, receipts, qty_milli,"
            " revenue, vat, discounts, cost, returns, returns_qty_milli, returns_amount,"
            " returns_vat, returns_cost) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (f"2026-11-{day:02d}", f"SKU-{n:05d}", *measures)
                for day in range(1, 31)
                for n in range(PRODUCTS)
            ),
        )


async def test_a_report_beyond_the_limit_is_interrupted_and_a_503(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with empty_database("sqlite", tmp_path) as url:
        await upgrade(url)
        await asyncio.to_thread(_fill, tmp_path / "central.db")
        for limit in (0.05, 0.0):
            settings = central_settings(url, nats_server.url, report_statement_timeout_s=limit)
            async with running_central(settings) as central:
                if limit:
                    await register_branch(central, "B1")
                token = await create_api_token(central, "analyst")
                app = create_app(central.settings, runtime=central)
                async with asgi_client(app, headers={"Authorization": f"Bearer {token}"}) as c:
                    response = await c.get(REPORT)
                if limit:
                    assert response.status_code == 503, response.text
                    assert response.headers["content-type"].startswith("application/problem+json")
                    problem = response.json()
                    assert problem["title"] == "Report took too long"
                    assert "0.05 s" in problem["detail"]
                    # The pooled connections keep no timer: a statement as long as the
                    # report's runs to its end outside a report.
                    for _ in range(3):
                        async with central.sessionmaker() as session:
                            count = await session.scalar(
                                text(
                                    "SELECT count(*) FROM (SELECT sku, sum(revenue)"
                                    " FROM rpt_sales_product_daily_chain GROUP BY sku)"
                                )
                            )
                        assert count == PRODUCTS
                else:
                    # No limit: the same report, every product.
                    assert response.status_code == 200, response.text
                    rows = response.json()["rows"]
                    assert len(rows) == PRODUCTS
                    assert rows[0]["figures"]["revenue"] == 30 * 250
