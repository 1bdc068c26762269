"""A report that runs too long (PostgreSQL): cancelled by the database after
``report_statement_timeout_s``, a 503 problem; the pooled connection keeps no limit."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest
from sqlalchemy import make_url, text

from central.app import create_app
from central.db import upgrade
from central.embedded_nats import EmbeddedNats
from tests.conftest import (
    PG_URL_ENV,
    asgi_client,
    central_settings,
    create_api_token,
    empty_database,
    register_branch,
    running_central,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"needs {PG_URL_ENV}"),
]

REPORT = "/api/v1/reports/sales?date_from=2026-11-01&date_to=2026-11-30&group_by=product"


async def test_a_report_beyond_the_statement_timeout_is_a_503_and_leaves_no_limit_behind(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with empty_database("postgresql", tmp_path) as url:
        await upgrade(url)
        settings = central_settings(url, nats_server.url, report_statement_timeout_s=0.5)
        async with running_central(settings) as central:
            await register_branch(central, "B1")
            token = await create_api_token(central, "analyst")
            app = create_app(central.settings, runtime=central)
            u = make_url(url)
            blocker = await asyncpg.connect(
                user=u.username, host=u.host, port=u.port, database=u.database
            )
            try:
                async with asgi_client(app, headers={"Authorization": f"Bearer {token}"}) as c:
                    assert (await c.get(REPORT)).status_code == 200
                    # Another session holds the summary tables (a long maintenance job):
                    # the report waits for them, and is cancelled after 0.5 s.
                    transaction = blocker.transaction()
                    await transaction.start()
                    await blocker.execute(
                        "LOCK TABLE rpt_summary_backlog, rpt_sales_product_daily "
                        "IN ACCESS EXCLUSIVE MODE"
                    )
                    started = time.monotonic()
                    async with asyncio.timeout(10):  # without the limit: waits for the lock
                        slow = await c.get(REPORT)
                    waited = time.monotonic() - started
                    assert slow.status_code == 503, slow.text
                    assert slow.headers["content-type"].startswith("application/problem+json")
                    problem = slow.json()
                    assert problem["title"] == "Report took too long"
                    assert "0.5 s" in problem["detail"]
                    assert 0.5 <= waited < 5
                    await transaction.rollback()
                    assert (await c.get(REPORT)).status_code == 200
                # Every pooled connection is back to the server's default: the limit
                # was the report transaction's own.
                async with asyncio.timeout(10):
                    for _ in range(3):
                        async with central.sessionmaker() as session:
                            shown = await session.scalar(text("SHOW statement_timeout"))
                            assert shown == "0"
            finally:
                await blocker.close()
