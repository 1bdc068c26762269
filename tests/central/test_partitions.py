"""Monthly partitions of the stock ledger on PostgreSQL (central/partitions.py, migration
1301): rows land in their month, outliers in DEFAULT (reported, movable), the
maintenance command is idempotent, date-bounded ledger queries read only their months,
and the migration converts a populated ledger and back. SQLite keeps a plain table."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from central.db import alembic_config, create_engine, create_sessionmaker, upgrade
from central.ingest.worker import IngestWorker
from central.models import StockMovement
from central.partitions import (
    add_months,
    include_name,
    maintain_partitions,
    month_start,
    partition_name,
)
from central.services.branches import add_branch
from central.services.stock import list_ledger, rebuild_balances
from tests.central.chain_events import BranchBooks, message
from tests.conftest import PG_URL_ENV, _create_pg_database, _drop_pg_database

THIS_MONTH = month_start(datetime.now(UTC).date())
LAST_MONTH = add_months(THIS_MONTH, -1)
FAR_MONTH = add_months(THIS_MONTH, 40)  # beyond what the migration created


async def _engine_with_branch(url: str) -> AsyncEngine:
    engine = create_engine(url)
    async with create_sessionmaker(engine)() as session, session.begin():
        await add_branch(session, code="B1", name="B1")
    return engine


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await _engine_with_branch(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def bare_pg_url() -> AsyncIterator[str]:
    """An empty PostgreSQL database (not migrated)."""
    admin = os.environ[PG_URL_ENV]
    url = await _create_pg_database(admin)
    try:
        yield url
    finally:
        await _drop_pg_database(admin, url)


@pytest.fixture
async def pg_url(bare_pg_url: str) -> str:
    await upgrade(bare_pg_url)
    return bare_pg_url


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await _engine_with_branch(pg_url)
    yield engine
    await engine.dispose()


def _books(month: date, days: int = 14) -> BranchBooks:
    return BranchBooks(
        "B1", start=datetime.combine(month, datetime.min.time(), UTC) + timedelta(days=days)
    )


async def _ingest(engine: AsyncEngine, books: BranchBooks, first: int = 0) -> None:
    worker = IngestWorker(create_sessionmaker(engine))
    result = await worker.process([message(e) for e in books.events[first:]])
    assert result.stored == len(books.events) - first


def _chain() -> BranchBooks:
    """Goods in and sales on three local months: last month, this month, far ahead."""
    books = _books(LAST_MONTH)
    books.document("goods_receipt", [("MILK", 50_000, 100), ("BREAD", 20_000, 80)])
    books.open_shift()
    books.sale([("MILK", 2_000, 199), ("BREAD", 1_000, 129)])
    return books


def _continue(books: BranchBooks, month: date) -> None:
    books.start = datetime.combine(month, datetime.min.time(), UTC) + timedelta(
        days=3, minutes=-len(books.events)
    )
    books.sale([("MILK", 1_000, 199)])
    books.document("write_off", [("BREAD", -500, None)])


async def _where(engine: AsyncEngine) -> dict[str, int]:
    """Ledger rows per physical table (partition) they are stored in."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT tableoid::regclass::text, count(*) FROM stock_ledger GROUP BY 1")
        )
        return {r[0]: r[1] for r in rows}


async def test_ingested_rows_land_in_their_month_and_outliers_in_default(
    engine: AsyncEngine, db_kind: str
) -> None:
    books = _chain()
    _continue(books, THIS_MONTH)
    _continue(books, FAR_MONTH)
    await _ingest(engine, books)
    if db_kind == "sqlite":
        # SQLite: one plain table, nothing to maintain, same totals.
        assert await maintain_partitions(engine) == []
        async with engine.connect() as connection:
            count = await connection.scalar(select(func.count()).select_from(StockMovement))
        assert count == 8
        return
    assert await _where(engine) == {
        partition_name("stock_ledger", LAST_MONTH): 4,
        partition_name("stock_ledger", THIS_MONTH): 2,
        "stock_ledger_default": 2,
    }
    far = FAR_MONTH.strftime("%Y-%m")

    # Report only: DEFAULT's month is not created (PostgreSQL would refuse), rows stay.
    first = await maintain_partitions(engine)
    assert len(first) == 1
    assert first[0].table == "stock_ledger"
    assert first[0].created == []
    assert first[0].blocked == []
    assert first[0].default_rows == {far: 2}
    # Further ahead: the months in between are created, DEFAULT's month is blocked.
    ahead = (FAR_MONTH.year - THIS_MONTH.year) * 12 + FAR_MONTH.month - THIS_MONTH.month
    wide = (await maintain_partitions(engine, ahead=ahead))[0]
    assert len(wide.created) == ahead - 3 - 1  # 3 were made by the migration
    assert wide.blocked == [far]
    assert wide.default_rows == {far: 2}
    again = (await maintain_partitions(engine, ahead=ahead))[0]
    assert again.created == []
    assert again.partitions == wide.partitions

    # Moved out of DEFAULT into the new month, in one transaction; nothing lost.
    async with create_sessionmaker(engine)() as session:
        before = (await session.execute(select(func.sum(StockMovement.value)))).scalar_one()
    moved = (await maintain_partitions(engine, move_default=True))[0]
    assert moved.created == [partition_name("stock_ledger", FAR_MONTH)]
    assert (moved.moved_rows, moved.default_rows) == (2, {})
    assert await _where(engine) == {
        partition_name("stock_ledger", LAST_MONTH): 4,
        partition_name("stock_ledger", THIS_MONTH): 2,
        partition_name("stock_ledger", FAR_MONTH): 2,
    }
    async with create_sessionmaker(engine)() as session, session.begin():
        after = (await session.execute(select(func.sum(StockMovement.value)))).scalar_one()
        assert after == before
        report = await rebuild_balances(session, verify_only=True)
        assert report.agree
        assert report.movements == 8

    # Ingestion goes on into the moved month's partition (ids from the same sequence).
    books.sale([("MILK", 1_000, 199)])
    await _ingest(engine, books, first=len(books.events) - 1)
    assert (await _where(engine))[partition_name("stock_ledger", FAR_MONTH)] == 3
    async with engine.connect() as connection:
        ids = (await connection.execute(text("SELECT id FROM stock_ledger"))).scalars().all()
    assert len(set(ids)) == len(ids) == 9


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"needs {PG_URL_ENV}")
async def test_partitions_command_reports_default_rows_and_is_idempotent(
    pg_engine: AsyncEngine, pg_url: str
) -> None:
    engine, db_url = pg_engine, pg_url
    books = _books(FAR_MONTH)
    books.document("goods_receipt", [("MILK", 5_000, 100)])
    await _ingest(engine, books)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKROOM_")}
    env["BACKROOM_DATABASE_URL"] = db_url

    def run(*args: str) -> tuple[int, dict[str, Any]]:
        import json

        done = subprocess.run(
            [sys.executable, "-m", "central", "db", "partitions", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        assert len(lines) == 1, done.stdout + done.stderr
        return done.returncode, json.loads(lines[0])

    code, out = await asyncio.to_thread(run, "--ahead", "5")
    # Rows in DEFAULT: reported, exit 1 (for a scheduled run's alarm).
    assert code == 1
    assert out["default_rows"] == {FAR_MONTH.strftime("%Y-%m"): 1}
    assert out["created"] == [
        partition_name("stock_ledger", add_months(THIS_MONTH, 4)),
        partition_name("stock_ledger", add_months(THIS_MONTH, 5)),
    ]
    code, again = await asyncio.to_thread(run, "--ahead", "5")
    assert code == 1
    assert again["created"] == []
    assert again["partitions"] == out["partitions"]
    code, moved = await asyncio.to_thread(run, "--move-default")
    assert code == 0
    assert moved["moved_rows"] == 1
    assert moved["default_rows"] == {}
    assert await _where(engine) == {partition_name("stock_ledger", FAR_MONTH): 1}


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"needs {PG_URL_ENV}")
async def test_a_date_bounded_ledger_query_reads_only_its_months(pg_engine: AsyncEngine) -> None:
    engine = pg_engine
    books = _chain()
    _continue(books, THIS_MONTH)
    _continue(books, add_months(THIS_MONTH, 1))
    await _ingest(engine, books)
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "FROM stock_ledger" in statement:
            statements.append((statement, params))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with create_sessionmaker(engine)() as session:
            page = await list_ledger(
                session,
                branch="B1",
                sku="MILK",
                date_from=THIS_MONTH,
                date_to=add_months(THIS_MONTH, 1) - timedelta(days=1),
                limit=100,
                offset=0,
            )
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    assert page.total == 1
    assert len(page.items) == 1
    assert len(statements) == 2  # the page and its count
    async with engine.connect() as connection:
        for statement, params in statements:
            plan = "\n".join(
                r[0] for r in await connection.exec_driver_sql(f"EXPLAIN {statement}", params)
            )
            assert partition_name("stock_ledger", THIS_MONTH) in plan, plan
            others = [LAST_MONTH, add_months(THIS_MONTH, 1), add_months(THIS_MONTH, 2)]
            for month in others:
                assert partition_name("stock_ledger", month) not in plan, plan
            assert "stock_ledger_default" not in plan, plan


_LEDGER_ROW = (
    "INSERT INTO stock_ledger (branch, sku, doc_type, doc_ref, event_id, line_no, "
    "quantity_milli, unit_cost, value, quantity_after, value_after, avg_cost_after, "
    "occurred_at, local_date) VALUES ('B1', 'MILK', 'goods_receipt', 'D', "
    "gen_random_uuid(), 1, 1000, 100, 100, 1000, 100, 100, now(), :d) RETURNING id"
)


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"needs {PG_URL_ENV}")
async def test_migration_converts_a_populated_ledger_and_back(bare_pg_url: str) -> None:
    old_month = date(2024, 2, 1)
    days = [date(2024, 2, 29), LAST_MONTH + timedelta(days=3), THIS_MONTH, date(2099, 1, 1)]
    await upgrade(bare_pg_url, "1102")
    engine = create_engine(bare_pg_url)
    try:
        async with engine.begin() as connection:
            ids = [
                (await connection.execute(text(_LEDGER_ROW), {"d": d})).scalar_one() for d in days
            ]
        await upgrade(bare_pg_url, "1301")
        assert await _where(engine) == {
            partition_name("stock_ledger", old_month): 1,
            partition_name("stock_ledger", LAST_MONTH): 1,
            partition_name("stock_ledger", THIS_MONTH): 1,
            "stock_ledger_default": 1,
        }
        async with engine.begin() as connection:
            children = (
                (
                    await connection.execute(
                        text(
                            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                            "WHERE i.inhparent = 'stock_ledger'::regclass"
                        )
                    )
                )
                .scalars()
                .all()
            )
            # Every month from the earliest row's to three months ahead, and DEFAULT.
            month, expected = old_month, {"stock_ledger_default"}
            while month <= add_months(THIS_MONTH, 3):
                expected.add(partition_name("stock_ledger", month))
                month = add_months(month, 1)
            assert set(children) == expected
            assert all(not include_name(c, "table", {}) for c in children)
            kept = await connection.execute(text("SELECT id FROM stock_ledger ORDER BY id"))
            assert kept.scalars().all() == ids
            # The sequence moved with the table: new ids continue after the old ones.
            new_id = (await connection.execute(text(_LEDGER_ROW), {"d": THIS_MONTH})).scalar_one()
            assert new_id > max(ids)
            key = await connection.scalar(
                text(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conname = 'pk_stock_ledger'"
                )
            )
            assert key == "PRIMARY KEY (id, local_date)"

        await asyncio.to_thread(command.downgrade, alembic_config(bare_pg_url), "1102")
        assert await _where(engine) == {"stock_ledger": 5}
        async with engine.begin() as connection:
            kind = await connection.scalar(
                text("SELECT relkind::text FROM pg_class WHERE relname = 'stock_ledger'")
            )
            assert kind == "r"
            after = (await connection.execute(text(_LEDGER_ROW), {"d": THIS_MONTH})).scalar_one()
            assert after > new_id
        await upgrade(bare_pg_url, "1301")
        assert sum((await _where(engine)).values()) == 6
    finally:
        await engine.dispose()
