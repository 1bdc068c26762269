"""Rebuild the report summary tables from the raw records (``python -m central reports rebuild``).

Set-based SQL (``INSERT ... SELECT ... GROUP BY``) over receipts, receipt lines and
payments, customer returns and the stock ledger, with the same arithmetic as the
ingest projection (VAT per line half-up, cash net of change, costs from the ledger
rows of each event), so a rebuilt table equals the incrementally kept one row for row.

Few passes over the big tables: the ledger is summed per day, product and kind
(the movement table, which also gives the products' costs) and per sale or return;
receipt lines once per receipt (into a temporary table that the per-branch, hourly,
cashier and shift tables are grouped from) and once per receipt and product (the
per-product table, from which the chain-wide one is grouped).

The loss-prevention counters come from the raw rows too (voided lines per receipt,
the manual-discount flag per line); only cashier-days holding receipts stored before
central kept those (NULL there, migration 1102) keep what ingestion counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Date,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    case,
    cast,
    delete,
    func,
    literal,
    literal_column,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, aliased

from central.models import (
    CustomerReturn,
    CustomerReturnLineRow,
    Receipt,
    ReceiptLineRow,
    ReceiptPaymentRow,
    StockDocument,
    StockMovement,
)
from central.models.reports import (
    SALES_MEASURES,
    LastSellingPrice,
    PaymentsDaily,
    SalesBranchDaily,
    SalesCashierDaily,
    SalesHourly,
    SalesProductDaily,
    SalesProductDailyChain,
    ShiftPaymentTotals,
    ShiftTotals,
    StockClosingMonthly,
    StockMovementDaily,
    StockMovementMonthly,
    SummaryBacklog,
    SummaryRejected,
)
from central.reports.money import vat_sql
from central.reports.projections import upsert_additive

__all__ = [
    "SUMMARY_TABLES",
    "local_hour_sql",
    "month_start_sql",
    "rebuild",
    "rebuild_summaries",
    "summary_rows",
]


def _t(model: Any) -> Table:
    table: Table = model.__table__
    return table


SUMMARY_TABLES: tuple[Table, ...] = tuple(
    _t(m)
    for m in (
        SalesBranchDaily,
        SalesHourly,
        SalesCashierDaily,
        SalesProductDaily,
        SalesProductDailyChain,
        PaymentsDaily,
        StockMovementDaily,
        StockMovementMonthly,
        StockClosingMonthly,
        ShiftTotals,
        ShiftPaymentTotals,
        LastSellingPrice,
    )
)
_NAMES = list(SALES_MEASURES)
# Loss-prevention counters of the cashier table, from the raw receipts and lines.
_COUNTERS = (
    "voided_lines",
    "manual_discount_lines",
    "manual_discount_amount",
    "no_receipt_returns",
)


def local_hour_sql(dialect: str, occurred_at: Any, utc_offset_min: Any) -> ColumnElement[int]:
    """The hour on the branch's clock of a stored UTC instant, in SQL."""
    if dialect == "postgresql":
        local = func.timezone("UTC", occurred_at) + literal_column("interval '1 minute'") * (
            utc_offset_min
        )
        return cast(func.extract("hour", local), Integer)
    # SQLite keeps UTC as naive text; strftime applies the offset as a modifier.
    modifier = func.printf("%+d minutes", utc_offset_min)
    return cast(func.strftime("%H", occurred_at, modifier), Integer)


def month_start_sql(dialect: str, day: Any) -> ColumnElement[Any]:
    """The first day of the month of a stored local date, in SQL."""
    if dialect == "postgresql":
        return cast(func.date_trunc("month", day), Date)
    # SQLite keeps dates as ISO text, which date(..., 'start of month') keeps.
    return func.date(day, "start of month")


def _documents_table() -> Table:
    """Temporary: one row per receipt or customer return with its sums."""
    return Table(
        "rpt_rebuild_documents",
        MetaData(),
        Column("branch", String(32)),
        Column("shift_id", String(64)),
        Column("till", String(32)),
        Column("local_date", Date),
        Column("hour", Integer),
        Column("cashier", String(64)),
        *[Column(n, BigInteger) for n in _NAMES],
        *[Column(n, BigInteger) for n in _COUNTERS],
        # 1: a receipt stored before central kept its loss-prevention fields.
        Column("legacy", Integer),
        # A return without receipt: its amount (the shift's, never a storno).
        Column("no_receipt_total", BigInteger),
        prefixes=["TEMPORARY"],
    )


def _clear(session: Session, table: Table) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"TRUNCATE {table.name}"))
    else:
        session.execute(delete(table))


def _zero(name: str) -> ColumnElement[Any]:
    return literal(0, BigInteger).label(name)


def _fill_documents(session: Session, dialect: str, docs: Table) -> None:
    r, line, cr, crl, ledger = (
        Receipt,
        ReceiptLineRow,
        CustomerReturn,
        CustomerReturnLineRow,
        StockMovement,
    )
    # The ledger value of every event (sales go out negative, returns come in positive).
    values = (
        select(ledger.event_id, func.sum(ledger.value).label("value"))
        .where(ledger.doc_type.in_(("sale", "customer_return")))
        .group_by(ledger.event_id)
        .subquery()
    )
    manual = line.manual_discount.is_(True)
    sums = (
        select(
            line.receipt_id,
            func.sum(line.quantity_milli).label("qty"),
            func.sum(line.line_total).label("revenue"),
            func.sum(vat_sql(line.line_total, line.vat_rate_bp)).label("vat"),
            func.sum(line.discount).label("discounts"),
            func.sum(case((manual, 1), else_=0)).label("manual_lines"),
            func.sum(case((manual, line.discount), else_=0)).label("manual_amount"),
        )
        .group_by(line.receipt_id)
        .subquery()
    )
    sales = select(
        r.branch,
        r.shift_id,
        r.till,
        r.local_date,
        local_hour_sql(dialect, r.occurred_at, r.utc_offset_min),
        r.cashier,
        literal(1, BigInteger).label("receipts"),
        func.coalesce(sums.c.qty, 0),
        func.coalesce(sums.c.revenue, 0),
        func.coalesce(sums.c.vat, 0),
        func.coalesce(sums.c.discounts, 0),
        -func.coalesce(values.c.value, 0),
        *[_zero(n) for n in _NAMES[6:]],
        func.coalesce(r.voided_lines, 0),
        func.coalesce(sums.c.manual_lines, 0),
        func.coalesce(sums.c.manual_amount, 0),
        _zero("no_receipt_returns"),
        case((r.voided_lines.is_(None), 1), else_=0),
        _zero("no_receipt_total"),
    ).select_from(
        _t(r)
        .outerjoin(sums, sums.c.receipt_id == r.id)
        .outerjoin(values, values.c.event_id == r.event_id)
    )
    session.execute(docs.insert().from_select([c.name for c in docs.columns], sales))
    returned = (
        select(
            crl.event_id,
            func.sum(crl.quantity_milli).label("qty"),
            func.sum(crl.line_total).label("amount"),
            func.sum(vat_sql(crl.line_total, crl.vat_rate_bp)).label("vat"),
        )
        .group_by(crl.event_id)
        .subquery()
    )
    returns = select(
        cr.branch,
        cr.shift_id,
        cr.till,
        cr.local_date,
        local_hour_sql(dialect, cr.occurred_at, cr.utc_offset_min),
        cr.cashier,
        *[_zero(n) for n in _NAMES[:6]],
        literal(1, BigInteger).label("returns"),
        func.coalesce(returned.c.qty, 0),
        func.coalesce(returned.c.amount, 0),
        func.coalesce(returned.c.vat, 0),
        func.coalesce(values.c.value, 0),
        *[_zero(n) for n in _COUNTERS[:3]],
        case((cr.without_receipt, 1), else_=0).label("no_receipt_returns"),
        literal(0, Integer).label("legacy"),
        case((cr.without_receipt, func.coalesce(returned.c.amount, 0)), else_=0).label(
            "no_receipt_total"
        ),
    ).select_from(
        _t(cr)
        .outerjoin(returned, returned.c.event_id == cr.event_id)
        .outerjoin(values, values.c.event_id == cr.event_id)
    )
    session.execute(docs.insert().from_select([c.name for c in docs.columns], returns))


def _group_into(
    session: Session, target: Table, source: Any, keys: Sequence[str], names: Sequence[str]
) -> None:
    key_cols = [source.c[k] for k in keys]
    stmt = select(
        *key_cols, *[cast(func.sum(source.c[n]), target.c[n].type) for n in names]
    ).group_by(*key_cols)
    session.execute(target.insert().from_select([*keys, *names], stmt))


def _rebuild_from_documents(session: Session, dialect: str) -> None:
    docs = _documents_table()
    conn = session.connection()
    docs.drop(conn, checkfirst=True)
    docs.create(conn)
    try:
        _fill_documents(session, dialect, docs)
        for model, keys in (
            (SalesBranchDaily, ("branch", "local_date")),
            (SalesHourly, ("branch", "local_date", "hour")),
        ):
            _clear(session, _t(model))
            _group_into(session, _t(model), docs, keys, _NAMES)
        _rebuild_cashier(session, dialect, docs)
        shifts = _t(ShiftTotals)
        _clear(session, shifts)
        stmt = select(
            docs.c.branch,
            docs.c.shift_id,
            func.max(docs.c.till),
            func.min(docs.c.local_date),
            cast(func.sum(docs.c.receipts), shifts.c.receipts.type),
            cast(func.sum(docs.c.revenue), shifts.c.sales.type),
            cast(func.sum(docs.c.returns), shifts.c.returns.type),
            cast(func.sum(docs.c.returns_amount), shifts.c.returns_total.type),
            cast(func.sum(docs.c.no_receipt_total), shifts.c.no_receipt_returns_total.type),
        ).group_by(docs.c.branch, docs.c.shift_id)
        session.execute(
            shifts.insert().from_select(
                [
                    "branch",
                    "shift_id",
                    "till",
                    "local_date",
                    "receipts",
                    "sales",
                    "returns",
                    "returns_total",
                    "no_receipt_returns_total",
                ],
                stmt,
            )
        )
    finally:
        docs.drop(conn)


def _rebuild_cashier(session: Session, dialect: str, docs: Table) -> None:
    """Measures and loss-prevention counters from the raw records. A cashier-day holding
    receipts stored before central kept voided lines and manual discounts (migration
    1102) keeps the counters ingestion counted for it."""
    table = _t(SalesCashierDaily)
    keys = ["branch", "local_date", "cashier"]
    legacy_keys = select(*[docs.c[k] for k in keys]).where(docs.c.legacy == 1)
    session.execute(update(table).values({n: 0 for n in _NAMES}))
    if session.execute(select(legacy_keys.exists())).scalar():
        recomputed = tuple_(*[table.c[k] for k in keys]).not_in(legacy_keys)
        session.execute(update(table).where(recomputed).values({n: 0 for n in _COUNTERS}))
    else:
        session.execute(update(table).values({n: 0 for n in _COUNTERS}))
    legacy = func.max(docs.c.legacy) == 1
    stmt = select(
        *[docs.c[k] for k in keys],
        *[cast(func.sum(docs.c[n]), table.c[n].type).label(n) for n in _NAMES],
        *[
            cast(case((legacy, 0), else_=func.sum(docs.c[n])), table.c[n].type).label(n)
            for n in _COUNTERS
        ],
    ).group_by(*[docs.c[k] for k in keys])
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    ins = insert.from_select([*keys, *_NAMES, *_COUNTERS], stmt)
    set_: dict[str, Any] = {n: ins.excluded[n] for n in _NAMES}
    # Kept counters were not zeroed and their groups add 0.
    set_.update({n: table.c[n] + ins.excluded[n] for n in _COUNTERS})
    session.execute(ins.on_conflict_do_update(index_elements=keys, set_=set_))
    session.execute(delete(table).where(and_(*[table.c[n] == 0 for n in (*_NAMES, *_COUNTERS)])))


def _padded(keys: Sequence[Any], measures: dict[str, ColumnElement[Any]]) -> list[Any]:
    return [*keys, *[measures.get(n, _zero(n)).label(n) for n in _NAMES]]


def _rebuild_products(session: Session) -> None:
    r, line, cr, crl = Receipt, ReceiptLineRow, CustomerReturn, CustomerReturnLineRow
    table = _t(SalesProductDaily)
    _clear(session, table)
    # Per receipt and product first: a product on two lines of a receipt counts once.
    per_receipt = (
        select(
            line.receipt_id,
            line.sku,
            func.sum(line.quantity_milli).label("qty"),
            func.sum(line.line_total).label("revenue"),
            func.sum(vat_sql(line.line_total, line.vat_rate_bp)).label("vat"),
            func.sum(line.discount).label("discounts"),
        )
        .group_by(line.receipt_id, line.sku)
        .subquery()
    )
    k = [r.branch.label("branch"), r.local_date.label("local_date"), per_receipt.c.sku.label("sku")]
    sales = (
        select(
            *_padded(
                k,
                {
                    "receipts": func.count(),
                    "qty_milli": func.sum(per_receipt.c.qty),
                    "revenue": func.sum(per_receipt.c.revenue),
                    "vat": func.sum(per_receipt.c.vat),
                    "discounts": func.sum(per_receipt.c.discounts),
                },
            )
        )
        .select_from(per_receipt.join(_t(r), r.id == per_receipt.c.receipt_id))
        .group_by(r.branch, r.local_date, per_receipt.c.sku)
    )
    per_return = (
        select(
            crl.event_id,
            crl.sku,
            func.sum(crl.quantity_milli).label("qty"),
            func.sum(crl.line_total).label("amount"),
            func.sum(vat_sql(crl.line_total, crl.vat_rate_bp)).label("vat"),
        )
        .group_by(crl.event_id, crl.sku)
        .subquery()
    )
    k = [
        cr.branch.label("branch"),
        cr.local_date.label("local_date"),
        per_return.c.sku.label("sku"),
    ]
    returns = (
        select(
            *_padded(
                k,
                {
                    "returns": func.count(),
                    "returns_qty_milli": func.sum(per_return.c.qty),
                    "returns_amount": func.sum(per_return.c.amount),
                    "returns_vat": func.sum(per_return.c.vat),
                },
            )
        )
        .select_from(per_return.join(_t(cr), cr.event_id == per_return.c.event_id))
        .group_by(cr.branch, cr.local_date, per_return.c.sku)
    )
    # Costs: the ledger summed per day and kind is already in the movement table
    # (rebuilt first); sales go out negative, returns come in positive.
    mv = _t(StockMovementDaily)
    mk: list[Any] = [mv.c.branch, mv.c.local_date, mv.c.sku]
    sale_costs = (
        select(*_padded(mk, {"cost": -func.sum(mv.c.cost_value)}))
        .where(mv.c.movement == "sale")
        .group_by(*mk)
    )
    return_costs = (
        select(*_padded(mk, {"returns_cost": func.sum(mv.c.cost_value)}))
        .where(mv.c.movement == "customer_return")
        .group_by(*mk)
    )
    union = union_all(sales, returns, sale_costs, return_costs).subquery()
    _group_into(session, table, union, ("branch", "local_date", "sku"), _NAMES)
    chain = _t(SalesProductDailyChain)
    _clear(session, chain)
    _group_into(session, chain, table, ("local_date", "sku"), _NAMES)


def _rebuild_payments(session: Session) -> None:
    r, p = Receipt, ReceiptPaymentRow
    per_type = (
        select(p.receipt_id, p.type, func.sum(p.amount).label("amount"))
        .group_by(p.receipt_id, p.type)
        .subquery()
    )
    # Who takes the change: cash if the receipt has it, else its last payment.
    info = (
        select(
            p.receipt_id,
            func.max(case((p.type == "cash", 1), else_=0)).label("has_cash"),
            func.max(p.id).label("last_id"),
        )
        .group_by(p.receipt_id)
        .subquery()
    )
    last = aliased(ReceiptPaymentRow)
    payer = case((info.c.has_cash == 1, "cash"), else_=last.type)
    amount = per_type.c.amount - case(
        (and_(r.change != 0, per_type.c.type == payer), r.change), else_=0
    )
    per_receipt = (
        select(
            r.branch,
            r.local_date,
            r.shift_id,
            per_type.c.type.label("payment_type"),
            amount.label("amount"),
        )
        .select_from(
            per_type.join(_t(r), r.id == per_type.c.receipt_id)
            .join(info, info.c.receipt_id == per_type.c.receipt_id)
            .join(last, last.id == info.c.last_id)
        )
        .subquery()
    )
    for model, keys in (
        (PaymentsDaily, ("branch", "local_date", "payment_type")),
        (ShiftPaymentTotals, ("branch", "shift_id", "payment_type")),
    ):
        table = _t(model)
        _clear(session, table)
        key_cols = [per_receipt.c[k] for k in keys]
        measures: list[ColumnElement[Any]] = [func.sum(per_receipt.c.amount).label("amount")]
        names = ["amount"]
        if model is PaymentsDaily:
            measures.insert(0, func.count().label("receipts"))
            names.insert(0, "receipts")
        session.execute(
            table.insert().from_select(
                [*keys, *names], select(*key_cols, *measures).group_by(*key_cols)
            )
        )
    # Refunds live in a JSON list per return: few rows, summed here and added.
    daily: dict[tuple[Any, ...], dict[str, int]] = {}
    per_shift: dict[tuple[Any, ...], dict[str, int]] = {}
    cr = CustomerReturn
    for row in session.execute(select(cr.branch, cr.local_date, cr.shift_id, cr.refunds)):
        for refund in row.refunds or []:
            key = (row.branch, row.local_date, str(refund["type"]))
            entry = daily.setdefault(key, {"refunds": 0, "refunds_amount": 0})
            entry["refunds"] += 1
            entry["refunds_amount"] += int(refund["amount"])
            skey = (row.branch, row.shift_id, str(refund["type"]))
            per_shift.setdefault(skey, {"refunds": 0})["refunds"] += int(refund["amount"])
    upsert_additive(
        session,
        _t(PaymentsDaily),
        [
            {"branch": k[0], "local_date": k[1], "payment_type": k[2], **daily[k]}
            for k in sorted(daily)
        ],
    )
    upsert_additive(
        session,
        _t(ShiftPaymentTotals),
        [
            {"branch": k[0], "shift_id": k[1], "payment_type": k[2], **per_shift[k]}
            for k in sorted(per_shift)
        ],
    )


def _rebuild_stock(session: Session) -> None:
    table = _t(StockMovementDaily)
    _clear(session, table)
    m, d = StockMovement, StockDocument
    keys = [m.branch, m.local_date, m.sku, m.doc_type]
    sums = [
        cast(func.sum(m.quantity_milli), table.c.qty_milli.type),
        cast(func.sum(m.value), table.c.cost_value.type),
    ]
    others = (
        select(*keys, literal("").label("reason"), *sums)
        .where(m.doc_type != "write_off")
        .group_by(*keys)
    )
    reason = func.coalesce(func.substr(d.reason, 1, 64), "")
    write_offs = (
        select(*keys, reason.label("reason"), *sums)
        .select_from(_t(m).outerjoin(_t(d), d.event_id == m.event_id))
        .where(m.doc_type == "write_off")
        .group_by(*keys, reason)
    )
    columns = ["branch", "local_date", "sku", "movement", "reason", "qty_milli", "cost_value"]
    session.execute(table.insert().from_select(columns, others))
    session.execute(table.insert().from_select(columns, write_offs))


def _rebuild_stock_monthly(session: Session, dialect: str) -> None:
    """The daily movement table (rebuilt first) rolled up per month."""
    table = _t(StockMovementMonthly)
    _clear(session, table)
    daily = _t(StockMovementDaily)
    month = month_start_sql(dialect, daily.c.local_date)
    keys: list[Any] = [daily.c.branch, month, daily.c.sku, daily.c.movement]
    stmt = select(
        *keys,
        cast(func.sum(daily.c.qty_milli), table.c.qty_milli.type),
        cast(func.sum(daily.c.cost_value), table.c.cost_value.type),
    ).group_by(*keys)
    columns = ["branch", "month", "sku", "movement", "qty_milli", "cost_value"]
    session.execute(table.insert().from_select(columns, stmt))


def _rebuild_stock_closing(session: Session) -> None:
    """The closing stock of every month a product moved in: the ledger's monthly sums
    (the monthly table, rebuilt from it first) added up month after month."""
    table = _t(StockClosingMonthly)
    _clear(session, table)
    monthly = _t(StockMovementMonthly)
    keys: list[Any] = [monthly.c.branch, monthly.c.sku, monthly.c.month]
    partition: list[Any] = [monthly.c.branch, monthly.c.sku]

    def running(column: Any) -> Any:
        return func.sum(func.sum(column)).over(partition_by=partition, order_by=monthly.c.month)

    stmt = select(
        *keys,
        cast(running(monthly.c.qty_milli), table.c.qty_milli.type),
        cast(running(monthly.c.cost_value), table.c.value.type),
    ).group_by(*keys)
    session.execute(
        table.insert().from_select(["branch", "sku", "month", "qty_milli", "value"], stmt)
    )


def _rebuild_prices(session: Session) -> None:
    table = _t(LastSellingPrice)
    _clear(session, table)
    r, line = Receipt, ReceiptLineRow
    ranked = (
        select(
            r.branch,
            line.sku,
            r.occurred_at,
            line.unit_price,
            func.row_number()
            .over(
                partition_by=(r.branch, line.sku),
                order_by=(r.occurred_at.desc(), line.unit_price.desc()),
            )
            .label("rank"),
        )
        .select_from(_t(line).join(_t(r), line.receipt_id == r.id))
        .subquery()
    )
    stmt = select(ranked.c.branch, ranked.c.sku, ranked.c.occurred_at, ranked.c.unit_price).where(
        ranked.c.rank == 1
    )
    session.execute(table.insert().from_select(["branch", "sku", "sold_at", "unit_price"], stmt))


def _rebuild_all(session: Session) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # Big sorts and hashes in memory rather than on disk, for this transaction only.
        session.execute(text("SET LOCAL work_mem = '512MB'"))
        # Before the first query (so a REPEATABLE READ snapshot starts after it): ingest
        # workers wait for the rebuild, then add their events to the rebuilt rows.
        # The backlog first, as every writer takes it first: its rows (and those set
        # aside) are the summary effects of raw records this snapshot holds,
        # recomputed below; they go.
        pending = (_t(SummaryBacklog), _t(SummaryRejected))
        names = ", ".join(t.name for t in (*pending, *SUMMARY_TABLES))
        session.execute(text(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE"))
        for table in pending:
            session.execute(delete(table))
    _rebuild_stock(session)
    _rebuild_stock_monthly(session, dialect)
    _rebuild_stock_closing(session)
    _rebuild_from_documents(session, dialect)
    _rebuild_products(session)
    _rebuild_payments(session)
    _rebuild_prices(session)


async def rebuild_summaries(session: AsyncSession) -> dict[str, int]:
    """Recompute every summary table in the session's transaction; rows per table.

    On PostgreSQL the transaction should be REPEATABLE READ (see :func:`rebuild`), so
    every statement reads the raw tables as of one moment while ingestion goes on."""
    await session.run_sync(_rebuild_all)
    counts: dict[str, int] = {}
    for table in SUMMARY_TABLES:
        counts[table.name] = int(await session.scalar(select(func.count()).select_from(table)) or 0)
    return counts


async def summary_rows(session: AsyncSession) -> dict[str, list[tuple[Any, ...]]]:
    """Every summary table's rows, sorted: to compare the kept tables with a rebuild."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table in SUMMARY_TABLES:
        rows = (await session.execute(select(table))).all()
        out[table.name] = sorted(tuple(r) for r in rows)
    return out


async def rebuild(engine: AsyncEngine) -> dict[str, int]:
    """Rebuild in a transaction of its own, consistent while ingest workers run: the
    summary tables are locked first, then read in one REPEATABLE READ snapshot."""
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with AsyncSession(bind=conn, expire_on_commit=False) as session, session.begin():
            return await rebuild_summaries(session)
