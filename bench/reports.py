"""Head-office reports on a year of a chain's data, against plain SQL over the raw lines.

``python -m bench.reports [--pg-url URL] [--lines N] [--repeat R] [--db NAME] [--only TEXT]``

``--db NAME`` (with ``--pg-url``) keeps the generated database under that name, and a
later run with the same name migrates it and reuses it (no generation, no rebuild) to
iterate quickly; ``--only`` times just the reports whose name contains the text.

1. A PostgreSQL database (``--pg-url`` of a server, admin URL; or a throwaway cluster
   it starts itself with initdb/pg_ctl on 127.0.0.1, removed at the end), migrated.
2. A year (2025) of 100 branches and 5,000 products generated server-side
   (``INSERT ... SELECT`` over ``generate_series``): receipts of 5 lines (product
   popularity skewed), one payment each (cash with change, or card), the stock ledger
   (a goods receipt per branch and product, every sale at cost, daily write-offs,
   monthly stocktakes), the stock balances, and head office's price entries (chain
   prices with history and a change scheduled far ahead, branch overrides, some
   withdrawn) for nine products in ten.
3. The summary tables built by the rebuild path (``central.reports.rebuild``).
4. Each main report timed through the same service function the API calls, beside a
   plain SQL query over the raw tables giving the same answer, checked equal in the run.

The last line is one JSON object: ``lines``, ``daily_sales_month_ms``,
``stock_on_hand_branch_ms``, ``min_speedup_vs_plain_sql`` and every report's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from bench.pg import throwaway_postgres
from central.db import create_engine, create_sessionmaker, upgrade
from central.models import Receipt, ReceiptLineRow, ReceiptPaymentRow, StockMovement
from central.partitions import maintain_partitions
from central.reports import service
from central.reports.rebuild import rebuild_summaries

__all__ = ["main"]

BRANCHES = 100
PRODUCTS = 5000
CATEGORIES = 50
LINES_PER_RECEIPT = 5
DAYS = 365
YEAR_START = date(2025, 1, 1)
MONTH = (date(2025, 11, 1), date(2025, 11, 30))
LAST_MONTH = (date(2025, 12, 1), date(2025, 12, 31))
QUARTER = (date(2025, 10, 1), date(2025, 12, 31))
# Mid-month to mid-month, half a year of history before it (the opening from the
# monthly summary, not from today's balance).
MIDYEAR = (date(2025, 6, 15), date(2025, 7, 14))
BRANCH = "B042"
# VAT of a line, half-up, as the reports compute it (central.reports.money.vat_of).
VAT_SQL = "((2 * {t} * {r} + (10000 + {r})) / (2 * (10000 + {r})))"


# Server options of this benchmark's throwaway cluster (fsync off: the data is scratch).
PG_OPTIONS = (
    "-c shared_buffers=1GB -c work_mem=64MB -c maintenance_work_mem=512MB "
    "-c max_wal_size=8GB -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
)


async def _admin(url: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    u = make_url(url)
    conn = await asyncpg.connect(
        user=u.username, password=u.password, host=u.host, port=u.port, database=u.database
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# --- data --------------------------------------------------------------------------------

_FUNCTIONS = [
    # Product of line n of receipt g: skewed towards low numbers (popular products).
    """CREATE FUNCTION pg_temp.b_sku(g bigint, n int) RETURNS int AS $$
         SELECT 1 + floor({products} * power(
             (hashint8(g * 8 + n)::bigint & 2147483647)::float8 / 2147483648.0, 3))::int
       $$ LANGUAGE sql IMMUTABLE""",
    """CREATE FUNCTION pg_temp.b_qty(g bigint, n int) RETURNS bigint AS $$
         SELECT 1000 * (1 + ((g + n) % 3))::bigint $$ LANGUAGE sql IMMUTABLE""",
    """CREATE FUNCTION pg_temp.b_price(s int) RETURNS bigint AS $$
         SELECT 50 + (s * 37) % 1950::bigint $$ LANGUAGE sql IMMUTABLE""",
    """CREATE FUNCTION pg_temp.b_cost(s int) RETURNS bigint AS $$
         SELECT (50 + (s * 37) % 1950) * 7 / 10::bigint $$ LANGUAGE sql IMMUTABLE""",
    """CREATE FUNCTION pg_temp.b_disc(g bigint, n int) RETURNS bigint AS $$
         SELECT CASE WHEN (g * 5 + n) % 17 = 0 THEN 10 ELSE 0 END::bigint
       $$ LANGUAGE sql IMMUTABLE""",
    """CREATE FUNCTION pg_temp.b_total(g bigint, n int) RETURNS bigint AS $$
         SELECT pg_temp.b_price(pg_temp.b_sku(g, n)) * pg_temp.b_qty(g, n) / 1000
                - pg_temp.b_disc(g, n) $$ LANGUAGE sql IMMUTABLE""",
    """CREATE FUNCTION pg_temp.b_code(i int) RETURNS text AS $$
         SELECT 'B' || lpad(i::text, 3, '0') $$ LANGUAGE sql IMMUTABLE""",
    """CREATE FUNCTION pg_temp.b_sku_code(s int) RETURNS text AS $$
         SELECT 'P' || lpad(s::text, 5, '0') $$ LANGUAGE sql IMMUTABLE""",
]


def _generation(receipts: int) -> list[tuple[str, str]]:
    per_branch = max(1, receipts // BRANCHES)
    # Receipt g: branch (g-1) % 100, the k-th of its branch spread evenly over the year,
    # at a local hour between 7 and 20; local time is UTC+1.
    receipt_cols = f"""
        g AS id,
        ((g - 1) % {BRANCHES}) + 1 AS b,
        LEAST({DAYS - 1}, ((g - 1) / {BRANCHES}) * {DAYS} / {per_branch})::int AS day,
        7 + (g % 14)::int AS hour"""
    return [
        (
            "categories, products, branches",
            f"""
            INSERT INTO categories (code, name, parent_code)
            SELECT 'C' || lpad(c::text, 2, '0'), 'Category ' || c, NULL
            FROM generate_series(0, {CATEGORIES - 1}) c;
            INSERT INTO products (sku, name, unit, weighed, category_code, vat_rate_bp, vat_group,
                                  active, bucket, version, created_at, updated_at)
            SELECT pg_temp.b_sku_code(s), 'Product ' || s, 'pcs', false,
                   'C' || lpad((s % {CATEGORIES})::text, 2, '0'),
                   CASE WHEN s % 3 = 0 THEN 2000 ELSE 1000 END, 'A', true, 0, 0, now(), now()
            FROM generate_series(1, {PRODUCTS}) s;
            INSERT INTO branches (code, name, timezone, active, created_at)
            SELECT pg_temp.b_code(b), 'Branch ' || b, 'Europe/Berlin', true, now()
            FROM generate_series(1, {BRANCHES}) b;
            """,
        ),
        (
            "head office prices",
            # Chain prices for nine products in ten (one at the start of the year, a
            # change in July, one scheduled far ahead), overrides for one product in
            # twenty at each branch (every third one withdrawn).
            f"""
            INSERT INTO price_entries (scope, scope_id, sku, bucket, price, effective_at,
                                       effective_local, version, withdrawn, created_at)
            SELECT 'all', '', pg_temp.b_sku_code(s), 0, pg_temp.b_price(s) + k * 10,
                   timestamp '{YEAR_START}' AT TIME ZONE 'UTC'
                     + (ARRAY[interval '0 days', interval '181 days', interval '100 years'])[k + 1],
                   NULL, s * 4 + k, false, now()
            FROM generate_series(1, {PRODUCTS}) s, generate_series(0, 2) k
            WHERE s % 10 <> 0;
            INSERT INTO price_entries (scope, scope_id, sku, bucket, price, effective_at,
                                       effective_local, version, withdrawn, created_at)
            SELECT 'branch', pg_temp.b_code(b), pg_temp.b_sku_code(s), 0,
                   pg_temp.b_price(s) + 5,
                   timestamp '{YEAR_START}' AT TIME ZONE 'UTC' + b * interval '1 day',
                   NULL, 100000 + b * {PRODUCTS} + s, (s / 20) % 3 = 0, now()
            FROM generate_series(1, {BRANCHES}) b, generate_series(1, {PRODUCTS}) s
            WHERE s % 20 = b % 20;
            """,
        ),
        (
            "receipts",
            f"""
            INSERT INTO receipts (id, event_id, branch, till, shift_id, receipt_number, sale_id,
                                  cashier, occurred_at, utc_offset_min, local_date, total, change,
                                  currency, late, negative_stock, voided_lines)
            SELECT x.id, gen_random_uuid(), pg_temp.b_code(x.b), 'T' || (x.id % 3 + 1),
                   'S' || x.day || '-' || (x.id % 3 + 1), x.id, 'R' || x.id,
                   'C' || x.b || '-' || (x.id / 700 % 6),
                   (timestamp '{YEAR_START}' + x.day * interval '1 day'
                     + x.hour * interval '1 hour' + (x.id % 60) * interval '1 minute'
                     - interval '60 minutes') AT TIME ZONE 'UTC',
                   60, date '{YEAR_START}' + x.day,
                   t.total,
                   CASE WHEN x.id % 2 = 0 THEN (100 - t.total % 100) % 100 ELSE 0 END,
                   'EUR', false, false,
                   CASE WHEN x.id % 23 = 0 THEN 1 + (x.id / 23) % 3 ELSE 0 END
            FROM (SELECT {receipt_cols} FROM generate_series(1, {receipts}) g) x,
            LATERAL (SELECT sum(pg_temp.b_total(x.id, n)) AS total
                     FROM generate_series(1, {LINES_PER_RECEIPT}) n) t
            """,
        ),
        (
            "receipt lines",
            f"""
            INSERT INTO receipt_lines (id, receipt_id, line_no, sku, name, quantity_milli,
                                       unit_price, discount, vat_rate_bp, line_total,
                                       manual_discount, promotion_id, local_date)
            SELECT (g - 1) * {LINES_PER_RECEIPT} + n, g, n, pg_temp.b_sku_code(s), '',
                   pg_temp.b_qty(g, n), pg_temp.b_price(s), pg_temp.b_disc(g, n),
                   CASE WHEN s % 3 = 0 THEN 2000 ELSE 1000 END, pg_temp.b_total(g, n),
                   -- A discount is keyed in by hand on one receipt in four, else a promotion.
                   pg_temp.b_disc(g, n) > 0 AND g % 4 = 0,
                   CASE WHEN pg_temp.b_disc(g, n) > 0 AND g % 4 <> 0 THEN 'PROMO' || s % 10 END,
                   r.local_date
            FROM generate_series(1, {receipts}) g JOIN receipts r ON r.id = g,
            generate_series(1, {LINES_PER_RECEIPT}) n,
            LATERAL (SELECT pg_temp.b_sku(g, n) AS s) k
            """,
        ),
        (
            "payments",
            """
            INSERT INTO receipt_payments (id, receipt_id, type, amount)
            SELECT id, id, CASE WHEN id % 2 = 0 THEN 'cash' ELSE 'credit_card' END,
                   total + change
            FROM receipts
            """,
        ),
        (
            "stock ledger: goods receipts",
            f"""
            INSERT INTO stock_ledger (branch, sku, doc_type, doc_ref, event_id, line_no,
                                      quantity_milli, unit_cost, value, quantity_after,
                                      value_after, avg_cost_after, occurred_at, local_date)
            SELECT pg_temp.b_code(b), pg_temp.b_sku_code(s), 'goods_receipt', 'GR-' || b,
                   gen_random_uuid(), s, 1000000, pg_temp.b_cost(s), pg_temp.b_cost(s) * 1000,
                   0, 0, pg_temp.b_cost(s), timestamp '{YEAR_START}' AT TIME ZONE 'UTC',
                   date '{YEAR_START}'
            FROM generate_series(1, {BRANCHES}) b, generate_series(1, {PRODUCTS}) s
            """,
        ),
        (
            "stock ledger: sales",
            """
            INSERT INTO stock_ledger (branch, sku, doc_type, doc_ref, event_id, line_no,
                                      quantity_milli, unit_cost, value, quantity_after,
                                      value_after, avg_cost_after, occurred_at, local_date)
            SELECT r.branch, l.sku, 'sale', r.sale_id, r.event_id, l.line_no, -l.quantity_milli,
                   c.cost, -(c.cost * l.quantity_milli / 1000), 0, 0, c.cost, r.occurred_at,
                   r.local_date
            FROM receipt_lines l JOIN receipts r ON r.id = l.receipt_id,
            LATERAL (SELECT pg_temp.b_cost(substr(l.sku, 2)::int) AS cost) c
            """,
        ),
        (
            "stock ledger: write-offs and stocktakes",
            f"""
            CREATE TEMP TABLE bench_docs AS
            SELECT gen_random_uuid() AS e, *
            FROM (
                SELECT b, day, 'write_off' AS doc_type, 0 AS k,
                       1 + (b * 7919 + day * 104729) % 500 AS s, -1000 AS q
                FROM generate_series(1, {BRANCHES}) b, generate_series(0, {DAYS - 1}) day
                UNION ALL
                SELECT b, m * 30 + 14, 'stocktake', k,
                       1 + (b * 31 + m * 97 + k * 13) % {PRODUCTS},
                       CASE WHEN k % 4 = 0 THEN 1000 ELSE -1000 END
                FROM generate_series(1, {BRANCHES}) b, generate_series(0, 11) m,
                     generate_series(1, 20) k
            ) d;
            INSERT INTO stock_documents (event_id, branch, document_id, doc_type, number,
                                         reason, author, occurred_at, utc_offset_min,
                                         local_date, value, negative_stock)
            SELECT e, pg_temp.b_code(b), doc_type || '-' || day || '-' || k || '-' || s,
                   doc_type, '',
                   CASE WHEN doc_type = 'write_off'
                        THEN (ARRAY['damaged', 'expired', 'theft'])[1 + s % 3] END,
                   '',
                   (timestamp '{YEAR_START}' + day * interval '1 day' + interval '19 hours')
                     AT TIME ZONE 'UTC', 60, date '{YEAR_START}' + day,
                   q * pg_temp.b_cost(s) / 1000, false
            FROM bench_docs;
            INSERT INTO stock_ledger (branch, sku, doc_type, doc_ref, event_id, line_no,
                                      quantity_milli, unit_cost, value, quantity_after,
                                      value_after, avg_cost_after, occurred_at, local_date)
            SELECT pg_temp.b_code(b), pg_temp.b_sku_code(s), doc_type, doc_type || '-' || day,
                   e, 1, q, pg_temp.b_cost(s), q * pg_temp.b_cost(s) / 1000, 0, 0,
                   pg_temp.b_cost(s),
                   (timestamp '{YEAR_START}' + day * interval '1 day' + interval '19 hours')
                     AT TIME ZONE 'UTC', date '{YEAR_START}' + day
            FROM bench_docs
            """,
        ),
        (
            "stock balances",
            """
            INSERT INTO stock_balances (branch, sku, quantity_milli, value, avg_cost, movements)
            SELECT branch, sku, sum(quantity_milli), sum(value), max(avg_cost_after), count(*)
            FROM stock_ledger GROUP BY branch, sku
            """,
        ),
        (
            "sequences and statistics",
            """
            SELECT setval(pg_get_serial_sequence('receipts', 'id'), (SELECT max(id) FROM receipts));
            SELECT setval(pg_get_serial_sequence('receipt_lines', 'id'),
                          (SELECT max(id) FROM receipt_lines));
            SELECT setval(pg_get_serial_sequence('receipt_payments', 'id'),
                          (SELECT max(id) FROM receipt_payments));
            ANALYZE;
            """,
        ),
    ]


async def _generate(session: AsyncSession, lines: int) -> dict[str, float]:
    receipts = max(BRANCHES, lines // LINES_PER_RECEIPT)
    conn = await session.connection()
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    for sql in _FUNCTIONS:
        await raw.execute(sql.format(products=PRODUCTS))
    # Secondary indexes of the big tables are built once after loading, not per row.
    indexes = [
        index
        for model in (Receipt, ReceiptLineRow, ReceiptPaymentRow, StockMovement)
        for index in model.__table__.indexes  # type: ignore[attr-defined]
    ]
    for index in indexes:
        await conn.run_sync(index.drop)
    timings: dict[str, float] = {}
    for name, sql in _generation(receipts):
        started = time.perf_counter()
        await raw.execute(sql)
        timings[name] = time.perf_counter() - started
        print(f"  generated {name} in {timings[name]:.1f} s", flush=True)
    started = time.perf_counter()
    await raw.execute("SET maintenance_work_mem = '1GB'")
    for index in indexes:
        await conn.run_sync(index.create)
    await raw.execute("ANALYZE")
    timings["indexes"] = time.perf_counter() - started
    print(f"  built indexes in {timings['indexes']:.1f} s", flush=True)
    return timings


# --- reports and their plain-SQL twins ----------------------------------------------------


def _vat(total: str, rate: str) -> str:
    return VAT_SQL.format(t=total, r=rate)


async def _rows(session: AsyncSession, sql: str, **params: Any) -> list[Any]:
    return list((await session.execute(text(sql), params)).all())


def _p(period: tuple[date, date]) -> dict[str, date]:
    return {"d1": period[0], "d2": period[1]}


def _cases() -> list[tuple[str, Any, Any]]:
    """(name, report(session) -> comparable, plain_sql(session) -> comparable)."""

    async def daily_sales(s: AsyncSession) -> Any:
        r = await service.sales_report(
            s, date_from=MONTH[0], date_to=MONTH[1], group_by="branch,day", compare=False
        )
        return {
            (x.branch, x.local_date): (
                x.figures.receipts,
                x.figures.revenue,
                x.figures.vat,
                x.figures.discounts,
                x.figures.qty_milli,
            )
            for x in r.rows
        }

    async def daily_sales_sql(s: AsyncSession) -> Any:
        rows = await _rows(
            s,
            f"""SELECT r.branch, r.local_date, count(DISTINCT r.id), sum(l.line_total),
                       sum({_vat("l.line_total", "l.vat_rate_bp")}), sum(l.discount),
                       sum(l.quantity_milli)
                FROM receipts r JOIN receipt_lines l ON l.receipt_id = r.id
                WHERE r.local_date BETWEEN :d1 AND :d2 GROUP BY 1, 2""",
            **_p(MONTH),
        )
        return {(x[0], x[1]): tuple(int(v) for v in x[2:]) for x in rows}

    async def on_hand(s: AsyncSession) -> Any:
        r = await service.stock_on_hand(s, branch=BRANCH)
        return {
            x.sku: (x.qty_milli, x.value_at_cost, x.value_at_retail, x.retail_price_source)
            for x in r.rows
        }

    async def on_hand_sql(s: AsyncSession) -> Any:
        rows = await _rows(
            s,
            """WITH stock AS (
                   SELECT sku, sum(quantity_milli) AS q, sum(value) AS v
                   FROM stock_ledger WHERE branch = :b GROUP BY sku),
               last_sale AS (
                   SELECT DISTINCT ON (l.sku) l.sku, l.unit_price
                   FROM receipt_lines l JOIN receipts r ON r.id = l.receipt_id
                   WHERE r.branch = :b
                   ORDER BY l.sku, r.occurred_at DESC, l.unit_price DESC),
               -- Head office's price in force (the bench's branches have no zone or
               -- format, and no entry in local time): the branch's own, else the chain's.
               head_office AS (
                   SELECT DISTINCT ON (sku) sku, price
                   FROM price_entries
                   WHERE NOT withdrawn AND effective_at <= now()
                     AND (scope = 'all' OR (scope = 'branch' AND scope_id = :b))
                   ORDER BY sku, scope = 'branch' DESC, effective_at DESC, version DESC,
                            price),
               price AS (
                   SELECT stock.sku, coalesce(h.price, s.unit_price, 0) AS unit_price,
                          CASE WHEN h.price IS NOT NULL THEN 'head_office'
                               WHEN s.unit_price IS NOT NULL THEN 'last_sale' END AS source
                   FROM stock LEFT JOIN head_office h ON h.sku = stock.sku
                   LEFT JOIN last_sale s ON s.sku = stock.sku)
               SELECT stock.sku, q, v,
                      -- half-up, away from zero for negative stock (integer division
                      -- truncates towards zero)
                      CASE WHEN q < 0
                           THEN -((-2 * q * unit_price + 1000) / 2000)
                           ELSE (2 * q * unit_price + 1000) / 2000 END,
                      source
               FROM stock JOIN price ON price.sku = stock.sku""",
            b=BRANCH,
        )
        return {x[0]: (int(x[1]), int(x[2]), int(x[3]), x[4]) for x in rows}

    async def by_product(s: AsyncSession) -> Any:
        r = await service.sales_report(
            s, date_from=MONTH[0], date_to=MONTH[1], group_by="product", compare=False
        )
        return {
            x.sku: (x.figures.receipts, x.figures.qty_milli, x.figures.revenue, x.figures.vat)
            for x in r.rows
        }

    async def by_product_sql(s: AsyncSession) -> Any:
        rows = await _rows(
            s,
            f"""SELECT l.sku, count(DISTINCT r.id), sum(l.quantity_milli), sum(l.line_total),
                       sum({_vat("l.line_total", "l.vat_rate_bp")})
                FROM receipts r JOIN receipt_lines l ON l.receipt_id = r.id
                WHERE r.local_date BETWEEN :d1 AND :d2 GROUP BY 1""",
            **_p(MONTH),
        )
        return {x[0]: tuple(int(v) for v in x[1:]) for x in rows}

    async def hourly(s: AsyncSession) -> Any:
        r = await service.sales_report(
            s, date_from=MONTH[0], date_to=MONTH[1], group_by="hour", compare=False
        )
        return {x.hour: (x.figures.receipts, x.figures.revenue) for x in r.rows}

    async def hourly_sql(s: AsyncSession) -> Any:
        rows = await _rows(
            s,
            """SELECT extract(hour FROM (r.occurred_at AT TIME ZONE 'UTC')
                              + r.utc_offset_min * interval '1 minute')::int,
                      count(DISTINCT r.id), sum(l.line_total)
               FROM receipts r JOIN receipt_lines l ON l.receipt_id = r.id
               WHERE r.local_date BETWEEN :d1 AND :d2 GROUP BY 1""",
            **_p(MONTH),
        )
        return {int(x[0]): (int(x[1]), int(x[2])) for x in rows}

    async def cashiers(s: AsyncSession) -> Any:
        r = await service.sales_report(
            s, date_from=MONTH[0], date_to=MONTH[1], group_by="branch,cashier", compare=False
        )
        return {(x.branch, x.cashier): (x.figures.receipts, x.figures.revenue) for x in r.rows}

    async def cashiers_sql(s: AsyncSession) -> Any:
        rows = await _rows(
            s,
            """SELECT r.branch, r.cashier, count(DISTINCT r.id), sum(l.line_total)
               FROM receipts r JOIN receipt_lines l ON l.receipt_id = r.id
               WHERE r.local_date BETWEEN :d1 AND :d2 GROUP BY 1, 2""",
            **_p(MONTH),
        )
        return {(x[0], x[1]): (int(x[2]), int(x[3])) for x in rows}

    async def payments(s: AsyncSession) -> Any:
        r = await service.sales_report(
            s, date_from=MONTH[0], date_to=MONTH[1], group_by="branch,payment_type", compare=False
        )
        return {(x.branch, x.payment_type): (x.figures.receipts, x.figures.revenue) for x in r.rows}

    async def payments_sql(s: AsyncSession) -> Any:
        rows = await _rows(
            s,
            """SELECT r.branch, p.type, count(DISTINCT r.id),
                      sum(p.amount - CASE WHEN p.type = 'cash' THEN r.change ELSE 0 END)
               FROM receipts r JOIN receipt_payments p ON p.receipt_id = r.id
               WHERE r.local_date BETWEEN :d1 AND :d2 GROUP BY 1, 2""",
            **_p(MONTH),
        )
        return {(x[0], x[1]): (int(x[2]), int(x[3])) for x in rows}

    async def margin(s: AsyncSession) -> Any:
        r = await service.gross_margin(s, date_from=MONTH[0], date_to=MONTH[1], group_by="category")
        return {
            x.category: (x.figures.net_sales, x.figures.cost_of_goods_sold, x.figures.margin)
            for x in r.rows
        }

    async def margin_sql(s: AsyncSession) -> Any:
        rows = await _rows(
            s,
            f"""WITH sales AS (
                   SELECT coalesce(p.category_code, '') AS category,
                          sum(l.line_total - {_vat("l.line_total", "l.vat_rate_bp")}) AS net
                   FROM receipts r JOIN receipt_lines l ON l.receipt_id = r.id
                   LEFT JOIN products p ON p.sku = l.sku
                   WHERE r.local_date BETWEEN :d1 AND :d2 GROUP BY 1),
               cost AS (
                   SELECT coalesce(p.category_code, '') AS category, -sum(c.value) AS cogs
                   FROM (SELECT m.sku, m.value
                         FROM receipts r JOIN stock_ledger m ON m.event_id = r.event_id
                         WHERE r.local_date BETWEEN :d1 AND :d2
                         UNION ALL
                         SELECT sku, value FROM stock_ledger
                         WHERE doc_type = 'cost_correction'
                           AND local_date BETWEEN :d1 AND :d2) AS c
                   LEFT JOIN products p ON p.sku = c.sku GROUP BY 1)
               SELECT sales.category, net, coalesce(cogs, 0), net - coalesce(cogs, 0)
               FROM sales LEFT JOIN cost ON cost.category = sales.category""",
            **_p(MONTH),
        )
        return {x[0]: (int(x[1]), int(x[2]), int(x[3])) for x in rows}

    async def abc(s: AsyncSession) -> Any:
        r = await service.abc_analysis(s, date_from=QUARTER[0], date_to=QUARTER[1])
        return [(x.sku, x.value, x.abc_class) for x in r.rows]

    async def abc_sql(s: AsyncSession) -> Any:
        rows = await _rows(
            s,
            """SELECT l.sku, sum(l.line_total) AS v
               FROM receipts r JOIN receipt_lines l ON l.receipt_id = r.id
               WHERE r.local_date BETWEEN :d1 AND :d2 GROUP BY 1 ORDER BY v DESC, l.sku""",
            **_p(QUARTER),
        )
        total = sum(int(x[1]) for x in rows if int(x[1]) > 0)
        out, before = [], 0
        for sku, value in rows:
            v = int(value)
            cls = "A" if before * 100 < 80 * total else "B" if before * 100 < 95 * total else "C"
            out.append((sku, v, cls if v > 0 else "C"))
            before += max(v, 0)
        return out

    def movement(period: tuple[date, date]) -> Any:
        async def report(s: AsyncSession) -> Any:
            r = await service.stock_movement(
                s, date_from=period[0], date_to=period[1], branch=BRANCH
            )
            return {
                x.sku: (
                    x.opening_milli,
                    x.sales_milli,
                    x.write_offs_milli,
                    x.closing_milli,
                    x.closing_value,
                )
                for x in r.rows
            }

        return report

    def movement_sql(period: tuple[date, date]) -> Any:
        async def plain(s: AsyncSession) -> Any:
            rows = await _rows(
                s,
                """SELECT sku,
                          sum(quantity_milli) FILTER (WHERE local_date < :d1),
                          -sum(quantity_milli) FILTER (WHERE local_date BETWEEN :d1 AND :d2
                                                       AND doc_type = 'sale'),
                          -sum(quantity_milli) FILTER (WHERE local_date BETWEEN :d1 AND :d2
                                                       AND doc_type = 'write_off'),
                          sum(quantity_milli) FILTER (WHERE local_date <= :d2),
                          sum(value) FILTER (WHERE local_date <= :d2)
                   FROM stock_ledger WHERE branch = :b AND local_date <= :d2 GROUP BY sku""",
                b=BRANCH,
                **_p(period),
            )
            return {x[0]: tuple(int(v or 0) for v in x[1:]) for x in rows}

        return plain

    async def loss_prevention(s: AsyncSession) -> Any:
        r = await service.loss_prevention(s, date_from=MONTH[0], date_to=MONTH[1])
        return {
            (x.branch, x.cashier): (
                x.receipts,
                x.voided_lines,
                x.manual_discount_lines,
                x.manual_discount_amount,
            )
            for x in r.rows
        }

    async def loss_prevention_sql(s: AsyncSession) -> Any:
        rows = await _rows(
            s,
            """WITH per_receipt AS (
                   SELECT r.branch, r.cashier, r.voided_lines,
                          count(*) FILTER (WHERE l.manual_discount) AS manual,
                          coalesce(sum(l.discount) FILTER (WHERE l.manual_discount), 0)
                            AS manual_amount
                   FROM receipts r JOIN receipt_lines l ON l.receipt_id = r.id
                   WHERE r.local_date BETWEEN :d1 AND :d2
                   GROUP BY r.id, r.branch, r.cashier, r.voided_lines)
               SELECT branch, cashier, count(*), sum(voided_lines), sum(manual),
                      sum(manual_amount)
               FROM per_receipt GROUP BY 1, 2""",
            **_p(MONTH),
        )
        return {(x[0], x[1]): tuple(int(v) for v in x[2:]) for x in rows}

    return [
        ("daily_sales_month", daily_sales, daily_sales_sql),
        ("stock_on_hand_branch", on_hand, on_hand_sql),
        ("sales_by_product_month", by_product, by_product_sql),
        ("sales_by_hour_month", hourly, hourly_sql),
        ("sales_by_cashier_month", cashiers, cashiers_sql),
        ("payments_month", payments, payments_sql),
        ("gross_margin_category_month", margin, margin_sql),
        ("abc_revenue_quarter", abc, abc_sql),
        ("stock_movement_branch_month", movement(LAST_MONTH), movement_sql(LAST_MONTH)),
        ("stock_movement_branch_midyear", movement(MIDYEAR), movement_sql(MIDYEAR)),
        ("loss_prevention_month", loss_prevention, loss_prevention_sql),
    ]


async def _time(
    sessionmaker: Any, fn: Callable[[AsyncSession], Awaitable[Any]], repeat: int
) -> tuple[float, Any]:
    """Best of ``repeat`` runs (after one warm-up), in ms; a fresh session per run."""
    async with sessionmaker() as session:
        answer = await fn(session)
    best = float("inf")
    for _ in range(repeat):
        async with sessionmaker() as session:
            started = time.perf_counter()
            answer = await fn(session)
            best = min(best, (time.perf_counter() - started) * 1000)
    return best, answer


async def _exists(pg_url: str, name: str) -> bool:
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    u = make_url(pg_url)
    conn = await asyncpg.connect(
        user=u.username, password=u.password, host=u.host, port=u.port, database=u.database
    )
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def run(
    pg_url: str, lines: int, repeat: int, keep: str = "", only: str = ""
) -> dict[str, Any]:
    name = keep or f"bench_reports_{uuid.uuid4().hex[:8]}"
    reuse = bool(keep) and await _exists(pg_url, name)
    if not reuse:
        await _admin(pg_url, f'CREATE DATABASE "{name}"')
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url, pool_size=2)
    result: dict[str, Any] = {"lines": 0}
    try:
        await upgrade(url)
        if reuse:
            # A database kept by an earlier run (migrated to this schema): time the
            # reports on it as it is.
            return await _reports(create_sessionmaker(engine), repeat, only, {})
        # The year's monthly partitions of the ledger and the lines (PostgreSQL).
        await maintain_partitions(engine, since=YEAR_START)
        sessionmaker = create_sessionmaker(engine)
        print(f"generating {lines:,} receipt lines ({BRANCHES} branches, {PRODUCTS} products)")
        started = time.perf_counter()
        async with sessionmaker() as session, session.begin():
            await _generate(session, lines)
        generate_s = time.perf_counter() - started
        async with sessionmaker() as session:
            count = int(
                (await session.execute(text("SELECT count(*) FROM receipt_lines"))).scalar_one()
            )
        started = time.perf_counter()
        async with sessionmaker() as session, session.begin():
            await session.execute(text("SET LOCAL work_mem = '256MB'"))
            summary_rows = await rebuild_summaries(session)
        rebuild_s = time.perf_counter() - started
        async with sessionmaker() as session, session.begin():
            await session.execute(text("ANALYZE"))
        print(
            f"generated in {generate_s:.1f} s; summaries rebuilt in {rebuild_s:.1f} s: {summary_rows}"
        )
        result = {
            "lines": count,
            "generate_s": round(generate_s, 1),
            "rebuild_s": round(rebuild_s, 1),
        }
        return await _reports(sessionmaker, repeat, only, result)
    finally:
        await engine.dispose()
        if not keep:
            await _admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _reports(
    sessionmaker: Any, repeat: int, only: str, result: dict[str, Any]
) -> dict[str, Any]:
    """Every report (those whose name contains ``only``) beside its plain-SQL twin."""
    if "lines" not in result or not result["lines"]:
        async with sessionmaker() as session:
            result["lines"] = int(
                (await session.execute(text("SELECT count(*) FROM receipt_lines"))).scalar_one()
            )
    speedups: list[float] = []
    different: list[str] = []
    print(f"{'report':32} {'summary ms':>11} {'plain SQL ms':>13} {'speedup':>8}  answer")
    for case, report, plain in _cases():
        if only not in case:
            continue
        report_ms, report_answer = await _time(sessionmaker, report, repeat)
        plain_ms, plain_answer = await _time(sessionmaker, plain, max(1, repeat // 2))
        same = report_answer == plain_answer
        speedup = plain_ms / report_ms if report_ms > 0 else float("inf")
        speedups.append(speedup)
        size = len(report_answer)
        print(
            f"{case:32} {report_ms:11.1f} {plain_ms:13.1f} {speedup:7.1f}x  "
            f"{'same' if same else 'DIFFERENT'} ({size} rows)",
            flush=True,
        )
        if not same:
            different.append(case)
        result[f"{case}_ms"] = round(report_ms, 2)
        result[f"{case}_plain_sql_ms"] = round(plain_ms, 2)
    result["min_speedup_vs_plain_sql"] = round(min(speedups, default=0.0), 1)
    result["answers_differ"] = different
    targets: dict[str, bool] = {}
    # (With --only, the targets of the reports timed.)
    if "daily_sales_month_ms" in result:
        targets["daily_sales_month_under_300ms"] = result["daily_sales_month_ms"] < 300
    if "stock_on_hand_branch_ms" in result:
        targets["stock_on_hand_branch_under_200ms"] = result["stock_on_hand_branch_ms"] < 200
    targets["every_report_10x_plain_sql"] = bool(speedups) and min(speedups) >= 10
    targets["every_answer_equal_to_plain_sql"] = not different
    result["targets"] = targets
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reports", description=__doc__)
    parser.add_argument(
        "--pg-url", default="", help="PostgreSQL server (admin URL); default: a throwaway cluster"
    )
    parser.add_argument("--lines", type=int, default=10_000_000, help="receipt lines to generate")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per report (best kept)")
    parser.add_argument(
        "--db", default="", help="keep the database under this name; reuse it if it exists"
    )
    parser.add_argument("--only", default="", help="time only reports whose name has this")
    args = parser.parse_args()
    if args.db and not args.pg_url:
        parser.error("--db needs --pg-url (the throwaway cluster is removed at the end)")
    if args.pg_url:
        result = asyncio.run(run(args.pg_url, args.lines, args.repeat, args.db, args.only))
    else:
        with throwaway_postgres("reports", PG_OPTIONS) as url:
            result = asyncio.run(run(url, args.lines, args.repeat))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
