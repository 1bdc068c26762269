"""Rebuild the report summary tables from the raw records (``python -m central reports rebuild``).

Set-based SQL (``INSERT ... SELECT ... GROUP BY``) over receipts, receipt lines and
payments, customer returns and the stock ledger, with the same arithmetic as the
ingest projection (VAT per line half-up, cash net of change, costs from the ledger),
so a rebuilt table equals the incrementally kept one row for row.

Two loss-prevention counters are not in the raw records yet (voided lines per
receipt, the manual-discount flag per line): the rebuild keeps what ingestion counted
for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    Table,
    and_,
    case,
    cast,
    delete,
    exists,
    func,
    literal,
    literal_column,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
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
    StockMovementDaily,
)
from central.reports.money import vat_sql
from central.reports.projections import cash_net_of_change, upsert_additive
from protocol.events import Payment

__all__ = ["SUMMARY_TABLES", "local_hour_sql", "rebuild_summaries"]

SUMMARY_TABLES: tuple[Table, ...] = tuple(
    m.__table__  # type: ignore[misc]
    for m in (
        SalesBranchDaily,
        SalesHourly,
        SalesCashierDaily,
        SalesProductDaily,
        SalesProductDailyChain,
        PaymentsDaily,
        StockMovementDaily,
        ShiftTotals,
        ShiftPaymentTotals,
        LastSellingPrice,
    )
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


def _source(
    keys: Sequence[tuple[str, ColumnElement[Any]]],
    measures: dict[str, ColumnElement[Any]],
    names: Sequence[str],
) -> Select[Any]:
    columns: list[ColumnElement[Any]] = [expr.label(name) for name, expr in keys]
    columns += [measures.get(name, literal(0)).label(name) for name in names]
    return select(*columns)


def _insert_sum(
    session: Session,
    table: Table,
    key_names: Sequence[str],
    names: Sequence[str],
    sources: list[Select[Any]],
) -> None:
    """INSERT INTO table the per-key sums of the union of ``sources``."""
    union = union_all(*sources).subquery()
    stmt = select(
        *[union.c[k] for k in key_names],
        *[cast(func.sum(union.c[n]), table.c[n].type).label(n) for n in names],
    ).group_by(*[union.c[k] for k in key_names])
    session.execute(table.insert().from_select([*key_names, *names], stmt))


def _sales_sources(
    dialect: str, level: str, names: Sequence[str]
) -> tuple[list[str], list[Select[Any]]]:
    """The sources of one sales table; ``level`` is branch, hour, cashier, product or chain."""
    r, line = Receipt, ReceiptLineRow
    cr, crl = CustomerReturn, CustomerReturnLineRow
    ledger = StockMovement

    def keys(doc: Any, sku: Any = None) -> list[tuple[str, ColumnElement[Any]]]:
        base: list[tuple[str, ColumnElement[Any]]] = [("local_date", doc.local_date)]
        if level != "chain":
            base.insert(0, ("branch", doc.branch))
        if level == "hour":
            base.append(("hour", local_hour_sql(dialect, doc.occurred_at, doc.utc_offset_min)))
        if level == "cashier":
            base.append(("cashier", doc.cashier))
        if level in ("product", "chain"):
            base.append(("sku", sku))
        return base

    by_product = level in ("product", "chain")
    lines_join = line.__table__.join(r.__table__, line.receipt_id == r.id)
    returns_join = crl.__table__.join(cr.__table__, crl.event_id == cr.event_id)
    sale_cost_join = ledger.__table__.join(r.__table__, ledger.event_id == r.event_id)
    return_cost_join = ledger.__table__.join(cr.__table__, ledger.event_id == cr.event_id)

    sources: list[Select[Any]] = []
    # Receipts and return documents counted once per group.
    if by_product:
        k = keys(r, line.sku)
        sources.append(
            _source(k, {"receipts": func.count(func.distinct(r.id))}, names)
            .select_from(lines_join)
            .group_by(*[e for _, e in k])
        )
        k = keys(cr, crl.sku)
        sources.append(
            _source(k, {"returns": func.count(func.distinct(cr.event_id))}, names)
            .select_from(returns_join)
            .group_by(*[e for _, e in k])
        )
    else:
        k = keys(r)
        sources.append(
            _source(k, {"receipts": func.count()}, names)
            .select_from(r)
            .group_by(*[e for _, e in k])
        )
        k = keys(cr)
        sources.append(
            _source(k, {"returns": func.count()}, names)
            .select_from(cr)
            .group_by(*[e for _, e in k])
        )
    k = keys(r, line.sku)
    sources.append(
        _source(
            k,
            {
                "qty_milli": func.sum(line.quantity_milli),
                "revenue": func.sum(line.line_total),
                "vat": func.sum(vat_sql(line.line_total, line.vat_rate_bp)),
                "discounts": func.sum(line.discount),
            },
            names,
        )
        .select_from(lines_join)
        .group_by(*[e for _, e in k])
    )
    k = keys(cr, crl.sku)
    sources.append(
        _source(
            k,
            {
                "returns_qty_milli": func.sum(crl.quantity_milli),
                "returns_amount": func.sum(crl.line_total),
                "returns_vat": func.sum(vat_sql(crl.line_total, crl.vat_rate_bp)),
            },
            names,
        )
        .select_from(returns_join)
        .group_by(*[e for _, e in k])
    )
    k = keys(r, ledger.sku)
    sources.append(
        _source(k, {"cost": -func.sum(ledger.value)}, names)
        .select_from(sale_cost_join)
        .group_by(*[e for _, e in k])
    )
    k = keys(cr, ledger.sku)
    sources.append(
        _source(k, {"returns_cost": func.sum(ledger.value)}, names)
        .select_from(return_cost_join)
        .group_by(*[e for _, e in k])
    )
    return [name for name, _ in keys(r, line.sku)], sources


def _rebuild_sales(session: Session, dialect: str) -> None:
    names = list(SALES_MEASURES)
    for level, model in (
        ("branch", SalesBranchDaily),
        ("hour", SalesHourly),
        ("product", SalesProductDaily),
        ("chain", SalesProductDailyChain),
    ):
        table: Table = model.__table__  # type: ignore[assignment]
        key_names, sources = _sales_sources(dialect, level, names)
        session.execute(delete(table))
        _insert_sum(session, table, key_names, names, sources)
    _rebuild_cashier(session, dialect, names)


def _rebuild_cashier(session: Session, dialect: str, names: list[str]) -> None:
    """Zero the measures, add the rebuilt ones, keep the counters only ingestion knows."""
    table: Table = SalesCashierDaily.__table__  # type: ignore[assignment]
    session.execute(update(table).values({n: 0 for n in names}))
    key_names, sources = _sales_sources(dialect, "cashier", names)
    union = union_all(*sources).subquery()
    stmt = select(
        *[union.c[k] for k in key_names],
        *[cast(func.sum(union.c[n]), table.c[n].type).label(n) for n in names],
    ).group_by(*[union.c[k] for k in key_names])
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    ins = insert.from_select([*key_names, *names], stmt)
    session.execute(
        ins.on_conflict_do_update(
            index_elements=key_names, set_={n: ins.excluded[n] for n in names}
        )
    )
    counters = ("voided_lines", "manual_discount_lines", "manual_discount_amount")
    session.execute(delete(table).where(and_(*[table.c[n] == 0 for n in (*names, *counters)])))


def _rebuild_payments(session: Session) -> None:
    r, p = Receipt, ReceiptPaymentRow
    other = aliased(ReceiptPaymentRow)
    has_cash = exists().where(other.receipt_id == r.id, other.type == "cash")
    last_type = (
        select(other.type)
        .where(other.receipt_id == r.id)
        .order_by(other.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    payer = case((r.change == 0, literal(None, String)), (has_cash, "cash"), else_=last_type)
    per_receipt = (
        select(
            r.branch,
            r.local_date,
            r.shift_id,
            r.id.label("receipt_id"),
            p.type.label("payment_type"),
            (func.sum(p.amount) - case((p.type == payer, r.change), else_=0)).label("amount"),
        )
        .select_from(p.__table__.join(r.__table__, p.receipt_id == r.id))
        .group_by(r.branch, r.local_date, r.shift_id, r.id, p.type, r.change)
        .subquery()
    )
    for model, keys in (
        (PaymentsDaily, ("branch", "local_date", "payment_type")),
        (ShiftPaymentTotals, ("branch", "shift_id", "payment_type")),
    ):
        table: Table = model.__table__  # type: ignore[assignment]
        session.execute(delete(table))
        key_cols = [per_receipt.c[k] for k in keys]
        if model is PaymentsDaily:
            measures = [
                func.count().label("receipts"),
                func.sum(per_receipt.c.amount).label("amount"),
            ]
            names = ["receipts", "amount"]
        else:
            measures = [func.sum(per_receipt.c.amount).label("amount")]
            names = ["amount"]
        session.execute(
            table.insert().from_select(
                [*keys, *names], select(*key_cols, *measures).group_by(*key_cols)
            )
        )
    # Refunds live in a JSON list per return: few rows, summed here and added.
    daily: dict[tuple[Any, ...], dict[str, int]] = {}
    per_shift: dict[tuple[Any, ...], dict[str, int]] = {}
    for row in session.execute(
        select(
            CustomerReturn.branch,
            CustomerReturn.local_date,
            CustomerReturn.shift_id,
            CustomerReturn.refunds,
        )
    ):
        for refund in row.refunds or []:
            key = (row.branch, row.local_date, str(refund["type"]))
            entry = daily.setdefault(key, {"refunds": 0, "refunds_amount": 0})
            entry["refunds"] += 1
            entry["refunds_amount"] += int(refund["amount"])
            skey = (row.branch, row.shift_id, str(refund["type"]))
            sentry = per_shift.setdefault(skey, {"refunds": 0})
            sentry["refunds"] += int(refund["amount"])
    upsert_additive(
        session,
        PaymentsDaily.__table__,  # type: ignore[arg-type]
        [
            {"branch": k[0], "local_date": k[1], "payment_type": k[2], **daily[k]}
            for k in sorted(daily)
        ],
    )
    upsert_additive(
        session,
        ShiftPaymentTotals.__table__,  # type: ignore[arg-type]
        [
            {"branch": k[0], "shift_id": k[1], "payment_type": k[2], **per_shift[k]}
            for k in sorted(per_shift)
        ],
    )
    _ = (cash_net_of_change, Payment)  # the Python twin of the SQL above


def _rebuild_shifts(session: Session) -> None:
    table: Table = ShiftTotals.__table__  # type: ignore[assignment]
    session.execute(delete(table))
    r, line, cr = Receipt, ReceiptLineRow, CustomerReturn
    names = ["receipts", "sales", "returns", "returns_total"]
    revenue = (
        select(line.receipt_id, func.sum(line.line_total).label("revenue"))
        .group_by(line.receipt_id)
        .subquery()
    )
    crl = CustomerReturnLineRow
    returned = (
        select(crl.event_id, func.sum(crl.line_total).label("amount"))
        .group_by(crl.event_id)
        .subquery()
    )
    sales = select(
        r.branch.label("branch"),
        r.shift_id.label("shift_id"),
        r.till.label("till"),
        r.local_date.label("local_date"),
        literal(1).label("receipts"),
        func.coalesce(revenue.c.revenue, 0).label("sales"),
        literal(0).label("returns"),
        literal(0).label("returns_total"),
    ).select_from(r.__table__.outerjoin(revenue, revenue.c.receipt_id == r.id))
    returns = select(
        cr.branch.label("branch"),
        cr.shift_id.label("shift_id"),
        cr.till.label("till"),
        cr.local_date.label("local_date"),
        literal(0).label("receipts"),
        literal(0).label("sales"),
        literal(1).label("returns"),
        func.coalesce(returned.c.amount, 0).label("returns_total"),
    ).select_from(cr.__table__.outerjoin(returned, returned.c.event_id == cr.event_id))
    union = union_all(sales, returns).subquery()
    stmt = select(
        union.c.branch,
        union.c.shift_id,
        func.max(union.c.till),
        func.min(union.c.local_date),
        *[cast(func.sum(union.c[n]), table.c[n].type) for n in names],
    ).group_by(union.c.branch, union.c.shift_id)
    session.execute(
        table.insert().from_select(["branch", "shift_id", "till", "local_date", *names], stmt)
    )


def _rebuild_stock(session: Session) -> None:
    table: Table = StockMovementDaily.__table__  # type: ignore[assignment]
    session.execute(delete(table))
    m, d = StockMovement, StockDocument
    reason = case(
        (d.doc_type == "write_off", func.coalesce(func.substr(d.reason, 1, 64), "")), else_=""
    )
    stmt = (
        select(
            m.branch,
            m.local_date,
            m.sku,
            m.doc_type,
            reason.label("reason"),
            cast(func.sum(m.quantity_milli), table.c.qty_milli.type),
            cast(func.sum(m.value), table.c.cost_value.type),
        )
        .select_from(m.__table__.outerjoin(d.__table__, d.event_id == m.event_id))
        .group_by(m.branch, m.local_date, m.sku, m.doc_type, reason)
    )
    session.execute(
        table.insert().from_select(
            ["branch", "local_date", "sku", "movement", "reason", "qty_milli", "cost_value"], stmt
        )
    )


def _rebuild_prices(session: Session) -> None:
    table: Table = LastSellingPrice.__table__  # type: ignore[assignment]
    session.execute(delete(table))
    r, line = Receipt, ReceiptLineRow
    lines_join = line.__table__.join(r.__table__, line.receipt_id == r.id)
    latest = (
        select(r.branch, line.sku, func.max(r.occurred_at).label("sold_at"))
        .select_from(lines_join)
        .group_by(r.branch, line.sku)
        .subquery()
    )
    stmt = (
        select(r.branch, line.sku, latest.c.sold_at, func.max(line.unit_price))
        .select_from(
            lines_join.join(
                latest,
                and_(
                    latest.c.branch == r.branch,
                    latest.c.sku == line.sku,
                    latest.c.sold_at == r.occurred_at,
                ),
            )
        )
        .group_by(r.branch, line.sku, latest.c.sold_at)
    )
    session.execute(table.insert().from_select(["branch", "sku", "sold_at", "unit_price"], stmt))


def _rebuild_all(session: Session) -> None:
    dialect = session.get_bind().dialect.name
    _rebuild_sales(session, dialect)
    _rebuild_payments(session)
    _rebuild_shifts(session)
    _rebuild_stock(session)
    _rebuild_prices(session)


async def rebuild_summaries(session: AsyncSession) -> dict[str, int]:
    """Recompute every summary table in the session's transaction; rows per table."""
    await session.run_sync(_rebuild_all)
    counts: dict[str, int] = {}
    for table in SUMMARY_TABLES:
        counts[table.name] = int(await session.scalar(select(func.count()).select_from(table)) or 0)
    return counts
