"""An ingest process killed while its applier adds the summary backlog to the report
tables, before that transaction commits (PostgreSQL): the restarted process applies
the backlog once, and the report tables hold every sale exactly once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from central.db import create_sessionmaker
from central.embedded_nats import EmbeddedNats
from central.models import IngestedEvent, SalesProductDaily, SummaryBacklog
from tests.central.chain_events import BranchBooks, ingest_env, publish_books
from tests.central.summaries import assert_books_stored_once
from tests.conftest import PG_URL_ENV, wait_until
from tests.faults.ingest_process import ingest_until_crash, running_ingest

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"needs {PG_URL_ENV}"),
]


async def test_applier_killed_before_its_commit_counts_nothing_twice(
    pg_engine: AsyncEngine, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    sessionmaker = create_sessionmaker(pg_engine)
    db_url = pg_engine.url.render_as_string(hide_password=False)
    books = BranchBooks("B1")
    books.document("goods_receipt", [("MILK", 200_000, 100), ("BREAD", 50_000, 150)])
    for n in range(80):
        books.sale([("MILK", 1_000 + n, 199), ("BREAD", 500, 320)])
    await publish_books(nats_server.url, books)
    env = ingest_env(
        db_url,
        nats_server.url,
        str(tmp_path),
        BACKROOM_INGEST_BATCH="20",
        BACKROOM_SUMMARY_INTERVAL_S="0.3",
    )

    async def count(what: type) -> int:
        async with sessionmaker() as session:
            return int(await session.scalar(select(func.count()).select_from(what)) or 0)

    log = (tmp_path / "ingest.log").open("wb")
    try:
        # It stores batches, then dies inside its first applying transaction that
        # took rows.
        await ingest_until_crash(env, "BACKROOM_FAULT_CRASH_IN_SUMMARY_APPLY", log)
        assert await count(IngestedEvent) > 0
        assert await count(SummaryBacklog) > 0
        assert await count(SalesProductDaily) == 0  # the applied chunk rolled back

        async with running_ingest(env, log):

            async def caught_up() -> bool:
                return (
                    await count(IngestedEvent) == len(books.events)
                    and await count(SummaryBacklog) == 0
                )

            await wait_until(caught_up, timeout=60)
    finally:
        log.close()

    await assert_books_stored_once(sessionmaker, books)
