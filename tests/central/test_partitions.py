"""Monthly partitions of the stock ledger and the receipt lines on PostgreSQL
(central/partitions.py, migrations 1301 and 1302): ingested rows land in their month,
outliers in DEFAULT (reported, movable), the maintenance command is idempotent,
date-bounded ledger and receipt queries read only their months, and the migrations
convert populated tables and back. SQLite keeps plain tables."""

from __future__ import annotations

import asyncio
import json
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
from central.models import ReceiptLineRow, StockMovement
from central.partitions import (
    add_months,
    include_name,
    maintain_partitions,
    month_start,
    partition_name,
)
from central.services.receipts import ReceiptQuery, list_receipts
from central.services.stock import list_ledger, rebuild_balances
from tests.central.chain_events import BranchBooks, message
from tests.conftest import PG_URL_ENV, empty_database, engine_with_branch

THIS_MONTH = month_start(datetime.now(UTC).date())
LAST_MONTH = add_months(THIS_MONTH, -1)
FAR_MONTH = add_months(THIS_MONTH, 40)  # beyond what the migrations created
TABLES = ("stock_ledger", "receipt_lines")

no_pg = pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"needs {PG_URL_ENV}")


@pytest.fixture
async def bare_pg_url(tmp_path: Any) -> AsyncIterator[str]:
    """An empty PostgreSQL database (not migrated)."""
    async with empty_database("postgresql", tmp_path) as url:
        yield url


@pytest.fixture
async def pg_url(bare_pg_url: str) -> str:
    await upgrade(bare_pg_url)
    return bare_pg_url


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await engine_with_branch(pg_url)
    yield engine
    await engine.dispose()


def _at(month: date, days: int) -> datetime:
    return datetime.combine(month, datetime.min.time(), UTC) + timedelta(days=days)


async def _ingest(engine: AsyncEngine, books: BranchBooks, first: int = 0) -> None:
    worker = IngestWorker(create_sessionmaker(engine))
    result = await worker.process([message(e) for e in books.events[first:]])
    assert result.stored == len(books.events) - first


def _chain() -> BranchBooks:
    """Last month: goods in (2 ledger rows), a shift, a sale of 2 lines (2 rows each)."""
    books = BranchBooks("B1", start=_at(LAST_MONTH, 14))
    books.document("goods_receipt", [("MILK", 50_000, 100), ("BREAD", 20_000, 80)])
    books.open_shift()
    books.sale([("MILK", 2_000, 199), ("BREAD", 1_000, 129)])
    return books


def _continue(books: BranchBooks, month: date) -> None:
    """A sale of one line and a write-off on the 4th of ``month`` (local day)."""
    books.start = _at(month, 3) - timedelta(minutes=len(books.events))
    books.sale([("MILK", 1_000, 199)])
    books.document("write_off", [("BREAD", -500, None)])


async def _where(engine: AsyncEngine, table: str) -> dict[str, int]:
    """Rows per physical table (partition) they are stored in."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(f"SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1")
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
        # SQLite: plain tables, nothing to maintain; the lines carry their local day.
        assert await maintain_partitions(engine) == []
        async with create_sessionmaker(engine)() as session:
            count = await session.scalar(select(func.count()).select_from(StockMovement))
            days = (await session.scalars(select(ReceiptLineRow.local_date))).all()
        assert count == 8
        assert sorted(days) == [_at(LAST_MONTH, 14).date()] * 2 + [
            _at(THIS_MONTH, 3).date(),
            _at(FAR_MONTH, 3).date(),
        ]
        return
    assert await _where(engine, "stock_ledger") == {
        partition_name("stock_ledger", LAST_MONTH): 4,
        partition_name("stock_ledger", THIS_MONTH): 2,
        "stock_ledger_default": 2,
    }
    assert await _where(engine, "receipt_lines") == {
        partition_name("receipt_lines", LAST_MONTH): 2,
        partition_name("receipt_lines", THIS_MONTH): 1,
        "receipt_lines_default": 1,
    }
    far = FAR_MONTH.strftime("%Y-%m")

    # Report only: DEFAULT's month is not created (PostgreSQL would refuse), rows stay.
    first = {s.table: s for s in await maintain_partitions(engine)}
    assert set(first) == set(TABLES)
    assert [s.created for s in first.values()] == [[], []]
    assert [s.blocked for s in first.values()] == [[], []]
    assert first["stock_ledger"].default_rows == {far: 2}
    assert first["receipt_lines"].default_rows == {far: 1}
    # Further ahead: the months in between are created, DEFAULT's month is blocked.
    ahead = (FAR_MONTH.year - THIS_MONTH.year) * 12 + FAR_MONTH.month - THIS_MONTH.month
    wide = {s.table: s for s in await maintain_partitions(engine, ahead=ahead)}
    for status in wide.values():
        assert len(status.created) == ahead - 3 - 1  # 3 were made by the migration
        assert status.blocked == [far]
    again = {s.table: s for s in await maintain_partitions(engine, ahead=ahead)}
    for table in TABLES:
        assert again[table].created == []
        assert again[table].partitions == wide[table].partitions

    # Moved out of DEFAULT into the new month, in one transaction; nothing lost.
    async with create_sessionmaker(engine)() as session:
        before = (await session.execute(select(func.sum(StockMovement.value)))).scalar_one()
    moved = {s.table: s for s in await maintain_partitions(engine, move_default=True)}
    for table, rows in (("stock_ledger", 2), ("receipt_lines", 1)):
        assert moved[table].created == [partition_name(table, FAR_MONTH)]
        assert moved[table].moved_rows == rows
        assert moved[table].default_rows == {}
    assert await _where(engine, "stock_ledger") == {
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

    # Ingestion goes on into the moved month's partitions (ids from the same sequences).
    books.sale([("MILK", 1_000, 199)])
    await _ingest(engine, books, first=len(books.events) - 1)
    assert (await _where(engine, "stock_ledger"))[partition_name("stock_ledger", FAR_MONTH)] == 3
    assert (await _where(engine, "receipt_lines"))[partition_name("receipt_lines", FAR_MONTH)] == 2
    async with engine.connect() as connection:
        ids = (await connection.execute(text("SELECT id FROM stock_ledger"))).scalars().all()
    assert len(set(ids)) == len(ids) == 9


@pytest.mark.postgres
@no_pg
async def test_partitions_command_reports_default_rows_and_is_idempotent(
    pg_engine: AsyncEngine, pg_url: str
) -> None:
    books = BranchBooks("B1", start=_at(FAR_MONTH, 3))
    books.document("goods_receipt", [("MILK", 5_000, 100)])
    await _ingest(pg_engine, books)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKROOM_")}
    env["BACKROOM_DATABASE_URL"] = pg_url

    def run(*args: str) -> tuple[int, dict[str, dict[str, Any]]]:
        done = subprocess.run(
            [sys.executable, "-m", "central", "db", "partitions", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        found = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
        assert len(found) == len(TABLES), done.stdout + done.stderr
        return done.returncode, {s["table"]: s for s in found}

    code, out = await asyncio.to_thread(run, "--ahead", "5")
    # Rows in DEFAULT: reported, exit 1 (for a scheduled run's alarm).
    assert code == 1
    assert out["stock_ledger"]["default_rows"] == {FAR_MONTH.strftime("%Y-%m"): 1}
    assert out["receipt_lines"]["default_rows"] == {}
    for table in TABLES:
        assert out[table]["created"] == [
            partition_name(table, add_months(THIS_MONTH, 4)),
            partition_name(table, add_months(THIS_MONTH, 5)),
        ]
    code, again = await asyncio.to_thread(run, "--ahead", "5")
    assert code == 1
    for table in TABLES:
        assert again[table]["created"] == []
        assert again[table]["partitions"] == out[table]["partitions"]
    code, moved = await asyncio.to_thread(run, "--move-default")
    assert code == 0
    assert moved["stock_ledger"]["moved_rows"] == 1
    assert moved["stock_ledger"]["default_rows"] == {}
    assert await _where(pg_engine, "stock_ledger") == {partition_name("stock_ledger", FAR_MONTH): 1}
    # History to load: its months are made first.
    code, since = await asyncio.to_thread(run, "--since", "2024-01")
    assert code == 0
    assert partition_name("receipt_lines", date(2024, 1, 1)) in since["receipt_lines"]["created"]


async def _plans(engine: AsyncEngine, statements: list[tuple[str, Any]]) -> list[str]:
    async with engine.connect() as connection:
        return [
            "\n".join(r[0] for r in await connection.exec_driver_sql(f"EXPLAIN {sql}", params))
            for sql, params in statements
        ]


def _reads_only(plan: str, table: str, month: date) -> None:
    assert partition_name(table, month) in plan, plan
    for other in (LAST_MONTH, add_months(THIS_MONTH, 1), add_months(THIS_MONTH, 2)):
        if other != month:
            assert partition_name(table, other) not in plan, plan
    assert f"{table}_default" not in plan, plan


@pytest.mark.postgres
@no_pg
async def test_date_bounded_ledger_and_receipt_queries_read_only_their_months(
    pg_engine: AsyncEngine,
) -> None:
    books = _chain()
    _continue(books, THIS_MONTH)
    _continue(books, add_months(THIS_MONTH, 1))
    await _ingest(pg_engine, books)
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "FROM stock_ledger" in statement or "receipt_lines.sku =" in statement:
            statements.append((statement, params))

    month_end = add_months(THIS_MONTH, 1) - timedelta(days=1)
    event.listen(pg_engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with create_sessionmaker(pg_engine)() as session:
            ledger = await list_ledger(
                session,
                branch="B1",
                sku="MILK",
                date_from=THIS_MONTH,
                date_to=month_end,
                # Full pages (one row each): a short page is not counted.
                limit=1,
                offset=0,
            )
            receipts = await list_receipts(
                session,
                ReceiptQuery(sku="MILK", date_from=THIS_MONTH, date_to=month_end, limit=1),
            )
    finally:
        event.remove(pg_engine.sync_engine, "before_cursor_execute", capture)
    assert (ledger.total, ledger.total_exact) == (1, True)
    assert [r.local_date for r in receipts.items] == [_at(THIS_MONTH, 3).date()]
    assert len(receipts.items[0].lines) == 1
    # The ledger page and its count, the receipt search and its count.
    assert len(statements) == 4
    plans = await _plans(pg_engine, statements)
    _reads_only(plans[0], "stock_ledger", THIS_MONTH)
    _reads_only(plans[1], "stock_ledger", THIS_MONTH)
    _reads_only(plans[2], "receipt_lines", THIS_MONTH)
    _reads_only(plans[3], "receipt_lines", THIS_MONTH)


_RECEIPT = (
    "INSERT INTO receipts (event_id, branch, till, shift_id, receipt_number, sale_id, "
    "cashier, occurred_at, utc_offset_min, local_date, total, change, currency, late, "
    "negative_stock) VALUES (gen_random_uuid(), 'B1', 'T1', 'S1', 1, :sale, '', now(), 0, "
    ":d, 100, 0, 'EUR', false, false) RETURNING id"
)
_LINE = (
    "INSERT INTO receipt_lines (receipt_id, line_no, sku, name, quantity_milli, unit_price, "
    "discount, vat_rate_bp, line_total) VALUES (:r, :n, 'MILK', '', 1000, 50, 0, 1900, 50)"
)
_LEDGER_ROW = (
    "INSERT INTO stock_ledger (branch, sku, doc_type, doc_ref, event_id, line_no, "
    "quantity_milli, unit_cost, value, quantity_after, value_after, avg_cost_after, "
    "occurred_at, local_date) VALUES ('B1', 'MILK', 'goods_receipt', 'D', "
    "gen_random_uuid(), 1, 1000, 100, 100, 1000, 100, 100, now(), :d) RETURNING id"
)


async def _children(engine: AsyncEngine, table: str) -> set[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = CAST(:t AS regclass)"
            ),
            {"t": table},
        )
        return {r[0] for r in rows}


@pytest.mark.postgres
@no_pg
async def test_migrations_convert_populated_tables_and_back(bare_pg_url: str) -> None:
    old_month = date(2024, 2, 1)
    days = [date(2024, 2, 29), LAST_MONTH + timedelta(days=3), THIS_MONTH, date(2099, 1, 1)]
    await upgrade(bare_pg_url, "1102")
    engine = create_engine(bare_pg_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO branches (code, name, timezone, active, created_at) "
                    "VALUES ('B1', 'B1', 'UTC', true, now())"
                )
            )
            ids = []
            for n, day in enumerate(days):
                ids.append((await connection.execute(text(_LEDGER_ROW), {"d": day})).scalar_one())
                receipt = (
                    await connection.execute(text(_RECEIPT), {"sale": f"s{n}", "d": day})
                ).scalar_one()
                for line_no in (1, 2):
                    await connection.execute(text(_LINE), {"r": receipt, "n": line_no})
        await upgrade(bare_pg_url, "1302")
        for table, per_row in (("stock_ledger", 1), ("receipt_lines", 2)):
            assert await _where(engine, table) == {
                partition_name(table, old_month): per_row,
                partition_name(table, LAST_MONTH): per_row,
                partition_name(table, THIS_MONTH): per_row,
                f"{table}_default": per_row,
            }
            # Every month from the earliest row's to three months ahead, and DEFAULT.
            month, expected = old_month, {f"{table}_default"}
            while month <= add_months(THIS_MONTH, 3):
                expected.add(partition_name(table, month))
                month = add_months(month, 1)
            children = await _children(engine, table)
            assert children == expected
            assert not any(include_name(c, "table", {}) for c in children)
        async with engine.begin() as connection:
            # Each line got its receipt's local day.
            mismatched = await connection.scalar(
                text(
                    "SELECT count(*) FROM receipt_lines l JOIN receipts r "
                    "ON r.id = l.receipt_id WHERE l.local_date <> r.local_date"
                )
            )
            assert mismatched == 0
            kept = await connection.execute(text("SELECT id FROM stock_ledger ORDER BY id"))
            assert kept.scalars().all() == ids
            # The sequence moved with the table: new ids continue after the old ones.
            new_id = (await connection.execute(text(_LEDGER_ROW), {"d": THIS_MONTH})).scalar_one()
            assert new_id > max(ids)
            keys = dict(
                (
                    await connection.execute(
                        text(
                            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                            "WHERE conname IN ('pk_stock_ledger', 'pk_receipt_lines', "
                            "'fk_receipt_lines_receipt_id_receipts')"
                        )
                    )
                ).all()
            )
            assert keys == {
                "pk_stock_ledger": "PRIMARY KEY (id, local_date)",
                "pk_receipt_lines": "PRIMARY KEY (id, local_date)",
                "fk_receipt_lines_receipt_id_receipts": (
                    "FOREIGN KEY (receipt_id) REFERENCES receipts(id) ON DELETE CASCADE"
                ),
            }

        await asyncio.to_thread(command.downgrade, alembic_config(bare_pg_url), "1102")
        assert await _where(engine, "stock_ledger") == {"stock_ledger": 5}
        assert await _where(engine, "receipt_lines") == {"receipt_lines": 8}
        async with engine.begin() as connection:
            kinds = (
                (
                    await connection.execute(
                        text(
                            "SELECT relkind::text FROM pg_class "
                            "WHERE relname IN ('stock_ledger', 'receipt_lines')"
                        )
                    )
                )
                .scalars()
                .all()
            )
            assert kinds == ["r", "r"]
            after = (await connection.execute(text(_LEDGER_ROW), {"d": THIS_MONTH})).scalar_one()
            assert after > new_id
        await upgrade(bare_pg_url, "1302")
        assert sum((await _where(engine, "stock_ledger")).values()) == 6
        assert sum((await _where(engine, "receipt_lines")).values()) == 8
    finally:
        await engine.dispose()


@pytest.mark.postgres
@no_pg
async def test_a_month_waiting_on_a_long_transaction_is_reported_and_made_next_time(
    pg_engine: AsyncEngine,
) -> None:
    # A reader inside a long transaction holds the ledger; creating a partition needs
    # the table to itself, so the pass gives up after the lock timeout, says so, and
    # leaves everything else as it was.
    month = add_months(THIS_MONTH, 4)
    async with pg_engine.connect() as reader:
        await reader.execute(text("SELECT count(*) FROM stock_ledger"))
        statuses = {
            s.table: s
            for s in await maintain_partitions(
                pg_engine, ahead=4, tables=["stock_ledger"], lock_timeout_s=0.3
            )
        }
        assert statuses["stock_ledger"].lock_timeouts == [month.strftime("%Y-%m")]
        assert statuses["stock_ledger"].created == []
        assert partition_name("stock_ledger", month) not in await _children(
            pg_engine, "stock_ledger"
        )
        await reader.rollback()
    again = (await maintain_partitions(pg_engine, ahead=4, tables=["stock_ledger"]))[0]
    assert again.created == [partition_name("stock_ledger", month)]
    assert again.lock_timeouts == []


@pytest.mark.postgres
@no_pg
async def test_creating_a_month_that_default_holds_rows_of_is_refused_and_classified(
    pg_engine: AsyncEngine,
) -> None:
    # The race maintain_partitions covers (a row of the month reaching DEFAULT between
    # its look and its CREATE) ends in this refusal, which it reports as blocked.
    from sqlalchemy.exc import DBAPIError

    from central.db import sqlstate_of
    from central.partitions import _CHECK_VIOLATION, _create_month

    books = BranchBooks("B1", start=_at(FAR_MONTH, 3))
    books.document("goods_receipt", [("MILK", 5_000, 100)])
    await _ingest(pg_engine, books)
    with pytest.raises(DBAPIError) as refused:
        async with pg_engine.begin() as connection:
            await _create_month(connection, "stock_ledger", FAR_MONTH)
    assert sqlstate_of(refused.value) == _CHECK_VIOLATION
    assert await _where(pg_engine, "stock_ledger") == {"stock_ledger_default": 1}
