"""The reports: queries over the summary tables (never over every receipt line).

Periods are in the branches' local days, both ends inclusive, at most
``max_span_days`` long. Bad parameters raise ``ValidationFailed``/``NotFoundError``
naming the field, which the API turns into RFC 9457 problems.

A report has at most ``max_rows`` rows (the ``report_max_rows`` setting): each query
that yields the report's rows fetches at most ``max_rows + 1`` of them (a LIMIT in
SQL, so neither the driver nor this process holds more), and one more than the cap
fails the request (``ReportTooLarge``, a 422 naming the parameter to change) rather
than answering with a truncated report or totals of one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import msgspec
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    FromClause,
    Select,
    String,
    Table,
    and_,
    case,
    cast,
    collate,
    func,
    literal_column,
    null,
    or_,
    select,
    true,
    tuple_,
    type_coerce,
    union,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, distinct_on
from sqlalchemy.dialects.postgresql import array as pg_array
from sqlalchemy.ext.asyncio import AsyncSession

from central.errors import NotFoundError, ValidationFailed
from central.ingest.stock import COST_CORRECTION
from central.models import (
    Branch,
    BranchStatus,
    BranchSyncState,
    DeadLetter,
    PriceEntryRow,
    Product,
    Shift,
    ShiftIdConflict,
    StockBalance,
)
from central.models.reports import (
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
from central.reports.backlog import summaries_current
from central.reports.money import ratio_text, rounded_div
from central.reports.projections import BACKLOG_TABLES
from central.reports.schemas import (
    AbcReport,
    AbcRow,
    LossPreventionReport,
    LossPreventionRow,
    MarginFigures,
    MarginReport,
    MarginRow,
    SalesFigures,
    SalesReport,
    SalesRow,
    ShiftDifference,
    ShiftReconciliationReport,
    ShiftRow,
    ShrinkageReport,
    ShrinkageRow,
    StockMovementReport,
    StockMovementRow,
    StockOnHandReport,
    StockOnHandRow,
    SyncHealthReport,
    SyncHealthRow,
    WriteOffReport,
    WriteOffRow,
)
from central.services.masterdata_publisher import current_version, marked_version, up_to_date
from central.services.pricing import not_withdrawn_at, scopes_at
from central.services.sync_state import (
    LIVE_AGENT,
    lost_events,
    recorded_again_open,
    timezone_mismatch,
)
from protocol.pricing import PriceCandidate, branch_scopes, entry_moment, resolve_price

__all__ = [
    "DEFAULT_MAX_ROWS",
    "DEFAULT_MAX_SPAN_DAYS",
    "RETAIL_HEAD_OFFICE",
    "RETAIL_LAST_SALE",
    "RETAIL_MIXED",
    "SALES_GROUPS",
    "Period",
    "ReportTooLarge",
    "abc_analysis",
    "gross_margin",
    "head_office_prices",
    "loss_prevention",
    "parse_group_by",
    "sales_report",
    "shift_reconciliation",
    "shrinkage",
    "stock_movement",
    "stock_on_hand",
    "sync_health",
    "validate_period",
    "write_offs",
]

DEFAULT_MAX_SPAN_DAYS = 366
DEFAULT_MAX_ROWS = 100_000
# A store clock off by more than this is flagged in sync health (its sales are dated,
# and put in days, by it; the agent warns at the same limit).
CLOCK_OFF_MS = 60_000
SALES_GROUPS = ("branch", "day", "hour", "cashier", "product", "category", "payment_type")
_SALES_DETAIL = ("hour", "cashier", "product", "category", "payment_type")


def _t(model: Any) -> Table:
    table: Table = model.__table__
    return table


# --- parameters ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    date_from: date
    date_to: date

    @property
    def days(self) -> int:
        return (self.date_to - self.date_from).days + 1

    def previous(self) -> Period | None:
        """The period of the same length immediately before this one; None when the
        calendar (``date.min``, 0001-01-01) has no such days."""
        if (self.date_from - date.min).days < self.days:
            return None
        return Period(
            self.date_from - timedelta(days=self.days), self.date_from - timedelta(days=1)
        )


def validate_period(
    date_from: date | None, date_to: date | None, max_span_days: int = DEFAULT_MAX_SPAN_DAYS
) -> Period:
    if date_from is None:
        raise ValidationFailed("date_from is required", field="date_from")
    if date_to is None:
        raise ValidationFailed("date_to is required", field="date_to")
    if date_from > date_to:
        raise ValidationFailed(
            f"date_from {date_from} is after date_to {date_to}", field="date_from"
        )
    period = Period(date_from, date_to)
    if period.days > max_span_days:
        raise ValidationFailed(
            f"the period has {period.days} days; at most {max_span_days} are allowed",
            field="date_to",
        )
    return period


def parse_group_by(text: str | None, allowed: Sequence[str], default: str) -> tuple[str, ...]:
    raw = [part.strip() for part in (text if text is not None else default).split(",")]
    groups = tuple(part for part in raw if part)
    if not groups:
        raise ValidationFailed("group_by names no grouping", field="group_by")
    for group in groups:
        if group not in allowed:
            raise ValidationFailed(
                f"unknown grouping {group!r}; use {', '.join(allowed)}", field="group_by"
            )
    if len(set(groups)) != len(groups):
        raise ValidationFailed("group_by names a grouping twice", field="group_by")
    return groups


async def _check_branch(session: AsyncSession, branch: str | None) -> None:
    if branch is not None and await session.get(Branch, branch) is None:
        raise NotFoundError(f"unknown branch {branch!r}", field="branch")


class ReportTooLarge(ValidationFailed):
    """The report would have more rows than allowed (``report_max_rows``)."""

    title = "Report too large"


def _too_large(max_rows: int, field: str, *narrower: str) -> ReportTooLarge:
    """The problem of a report over the cap: the parameter to change (``field``), and
    the ways to narrow the report, that one's first ("" when not applicable)."""
    ways = [w for w in narrower if w] or ["narrower parameters"]
    how = ", ".join(ways[:-1]) + f" or {ways[-1]}" if len(ways) > 1 else ways[0]
    return ReportTooLarge(
        f"the report has more than {max_rows} rows, the most one report may have; narrow it: {how}",
        field=field,
    )


def _capped(rows: Sized, max_rows: int, field: str, *narrower: str) -> None:
    """Fail when a query limited to ``max_rows + 1`` rows returned that many (``rows``:
    what was made of them, one each)."""
    if len(rows) > max_rows:
        raise _too_large(max_rows, field, *narrower)


# Ways to narrow a report, for its problem detail ("" when not applicable).
_SHORTER = "a shorter period (date_from, date_to)"
_COARSER = "a coarser grouping (group_by)"


def _one_branch(branch: str | None) -> str:
    return "one branch (branch)" if branch is None else ""


def _grouped_narrower(branch: str | None) -> tuple[str, ...]:
    """How to narrow a grouped report of the period (a branch's, or the chain's)."""
    return _COARSER, _one_branch(branch), _SHORTER


def _stock_narrower(groups: tuple[str, ...], branch: str | None, sku: str | None) -> list[str]:
    """How to narrow a stock report grouped by branch and/or product."""
    coarser = ""
    if len(groups) > 1:
        coarser = "a coarser grouping (group_by=branch or product)"
    elif groups == ("product",):
        coarser = "a coarser grouping (group_by=branch)"
    return [coarser, _one_branch(branch), "one product (sku)" if sku is None else ""]


def _in_period(column: Any, period: Period) -> ColumnElement[bool]:
    return and_(column >= period.date_from, column <= period.date_to)


def _int(value: Any) -> int:
    return int(value or 0)


# --- sales -----------------------------------------------------------------------------


def _sales_source(groups: tuple[str, ...], branch: str | None) -> Table:
    detail = [g for g in groups if g in _SALES_DETAIL]
    if len(detail) > 1:
        raise ValidationFailed(
            "group_by may combine branch and day with at most one of " + ", ".join(_SALES_DETAIL),
            field="group_by",
        )
    kind = detail[0] if detail else ""
    if kind == "hour":
        return _t(SalesHourly)
    if kind == "cashier":
        return _t(SalesCashierDaily)
    if kind == "payment_type":
        return _t(PaymentsDaily)
    if kind in ("product", "category"):
        per_branch = branch is not None or "branch" in groups
        return _t(SalesProductDaily if per_branch else SalesProductDailyChain)
    return _t(SalesBranchDaily)


def _figures(row: Any, *, payments: bool, receipts_known: bool) -> SalesFigures:
    if payments:
        revenue = _int(row.amount)
        returns_amount = _int(row.refunds_amount)
        receipts = _int(row.receipts)
        return SalesFigures(
            receipts=receipts,
            avg_basket=rounded_div(revenue, receipts) if receipts else None,
            qty_milli=None,
            revenue=revenue,
            vat=None,
            net_of_vat=None,
            discounts=None,
            returns=_int(row.refunds),
            returns_amount=returns_amount,
            returns_vat=None,
            net_sales=revenue - returns_amount,
        )
    revenue = _int(row.revenue)
    vat = _int(row.vat)
    returns_amount = _int(row.returns_amount)
    known: int | None = _int(row.receipts) if receipts_known else None
    return SalesFigures(
        receipts=known,
        avg_basket=rounded_div(revenue, known) if known else None,
        qty_milli=_int(row.qty_milli),
        revenue=revenue,
        vat=vat,
        net_of_vat=revenue - vat,
        discounts=_int(row.discounts),
        returns=_int(row.returns),
        returns_amount=returns_amount,
        returns_vat=_int(row.returns_vat),
        net_sales=revenue - returns_amount,
    )


_SALES_SUMS = (
    "receipts",
    "qty_milli",
    "revenue",
    "vat",
    "discounts",
    "returns",
    "returns_amount",
    "returns_vat",
)
_PAYMENT_SUMS = ("receipts", "amount", "refunds", "refunds_amount")


def _sales_select(
    table: Table, groups: tuple[str, ...], period: Period, branch: str | None
) -> tuple[Select[Any], list[str]]:
    columns: list[ColumnElement[Any]] = []
    names: list[str] = []
    joins: list[Any] = []
    for group in groups:
        if group == "branch":
            columns.append(table.c.branch.label("branch"))
        elif group == "day":
            columns.append(table.c.local_date.label("local_date"))
        elif group == "hour":
            columns.append(table.c.hour.label("hour"))
        elif group == "cashier":
            columns.append(table.c.cashier.label("cashier"))
        elif group == "product":
            columns.append(table.c.sku.label("sku"))
        elif group == "category":
            columns.append(func.coalesce(Product.category_code, "").label("category"))
            joins.append(Product)
        elif group == "payment_type":
            columns.append(table.c.payment_type.label("payment_type"))
        names.append(columns[-1].name)
    payments = table.name == PaymentsDaily.__tablename__
    sums = _PAYMENT_SUMS if payments else _SALES_SUMS
    stmt = select(*columns, *[func.sum(table.c[n]).label(n) for n in sums]).select_from(table)
    for _ in joins:
        stmt = stmt.outerjoin(Product.__table__, Product.sku == table.c.sku)
    stmt = stmt.where(_in_period(table.c.local_date, period))
    if branch is not None:
        stmt = stmt.where(table.c.branch == branch)
    if columns:
        stmt = stmt.group_by(*columns).order_by(*columns)
    return stmt, names


async def _sales_rows(
    session: AsyncSession,
    table: Table,
    groups: tuple[str, ...],
    period: Period,
    branch: str | None,
    max_rows: int,
) -> dict[tuple[Any, ...], SalesFigures]:
    """The groups of a period: at most ``max_rows``, else ``ReportTooLarge``."""
    stmt, names = _sales_select(table, groups, period, branch)
    payments = table.name == PaymentsDaily.__tablename__
    receipts_known = "category" not in groups
    found = (await session.execute(stmt.limit(max_rows + 1))).all()
    # Checked before the figures are made: over the cap they would be a second away.
    _capped(found, max_rows, "group_by", *_grouped_narrower(branch))
    out: dict[tuple[Any, ...], SalesFigures] = {}
    for row in found:
        key = tuple(getattr(row, n) for n in names)
        out[key] = _figures(row, payments=payments, receipts_known=receipts_known)
    return out


# A group without sales: every sum zero.
_NO_SALES = SimpleNamespace(**dict.fromkeys((*_SALES_SUMS, *_PAYMENT_SUMS), 0))


def _sort_key(key: tuple[Any, ...]) -> tuple[tuple[bool, Any], ...]:
    """Rows in key order, an unknown (None) part after every known one."""
    return tuple((part is None, "" if part is None else part) for part in key)


async def _sales_totals(session: AsyncSession, period: Period, branch: str | None) -> SalesFigures:
    stmt, _ = _sales_select(_t(SalesBranchDaily), (), period, branch)
    row = (await session.execute(stmt)).one()
    return _figures(row, payments=False, receipts_known=True)


async def sales_report(
    session: AsyncSession,
    *,
    date_from: date | None,
    date_to: date | None,
    branch: str | None = None,
    group_by: str | None = None,
    compare: bool = True,
    max_span_days: int = DEFAULT_MAX_SPAN_DAYS,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> SalesReport:
    """Sales of a period grouped by any of branch, day and one of hour, cashier, product,
    category or payment type; with the previous period of the same length beside.
    At most ``max_rows`` rows, counting the groups sold only in the previous period."""
    period = validate_period(date_from, date_to, max_span_days)
    groups = parse_group_by(group_by, SALES_GROUPS, "branch")
    table = _sales_source(groups, branch)
    await _check_branch(session, branch)
    if table.name in BACKLOG_TABLES:
        await summaries_current(session)
    current = await _sales_rows(session, table, groups, period, branch, max_rows)
    previous: dict[tuple[Any, ...], SalesFigures] = {}
    prev_period = period.previous() if compare else None
    # A period whose previous one would begin before the calendar: compared with an
    # empty previous period (no dates, zero totals), not a 500.
    no_previous = compare and prev_period is None
    if prev_period is not None:
        # More previous groups than the cap: more rows than it too (each is a row).
        previous = await _sales_rows(session, table, groups, prev_period, branch, max_rows)
    names = _names(groups)
    day_index = names.index("local_date") if "local_date" in names else None

    def shifted(key: tuple[Any, ...], days: int) -> tuple[Any, ...]:
        if day_index is None:
            return key
        moved = list(key)
        moved[day_index] = key[day_index] + timedelta(days=days)
        return tuple(moved)

    # Groups that sold only in the previous period are rows too, with nothing sold now
    # (a product or branch that stopped selling is what a comparison is for).
    figures_of = dict(current)
    nothing = _figures(
        _NO_SALES,
        payments=table.name == PaymentsDaily.__tablename__,
        receipts_known="category" not in groups,
    )
    for key in previous:
        figures_of.setdefault(shifted(key, period.days), nothing)
    if len(figures_of) > max_rows:
        raise _too_large(max_rows, "group_by", *_grouped_narrower(branch))
    rows = [
        SalesRow(
            **dict(zip(names, key, strict=True)),
            figures=figures_of[key],
            previous=previous.get(shifted(key, -period.days)) if prev_period else None,
        )
        # Code-point order of the keys, the same on every database.
        for key in sorted(figures_of, key=_sort_key)
    ]
    return SalesReport(
        date_from=period.date_from,
        date_to=period.date_to,
        previous_from=prev_period.date_from if prev_period else None,
        previous_to=prev_period.date_to if prev_period else None,
        branch=branch,
        group_by=list(groups),
        rows=rows,
        totals=await _sales_totals(session, period, branch),
        previous_totals=(
            await _sales_totals(session, prev_period, branch)
            if prev_period
            else _figures(_NO_SALES, payments=False, receipts_known=True)
            if no_previous
            else None
        ),
    )


def _names(groups: tuple[str, ...]) -> list[str]:
    rename = {"day": "local_date", "product": "sku"}
    return [rename.get(g, g) for g in groups]


# --- stock on hand ---------------------------------------------------------------------


# Where the retail value of stock on hand comes from.
RETAIL_HEAD_OFFICE = "head_office"
RETAIL_LAST_SALE = "last_sale"
# Aggregated rows whose products were valued on different bases.
RETAIL_MIXED = "mixed"
# Local-time price entries take effect at a branch up to a day after (or before) their
# stored UTC moment: entries this far ahead are read and resolved exactly.
_LOCAL_MOMENT_SLACK = timedelta(days=2)


async def head_office_prices(
    session: AsyncSession, branches: Sequence[Branch], sku: str | None, at: datetime
) -> dict[tuple[str, str], int]:
    """The selling price head office has in force at ``at`` per (branch, sku), by the
    rules the tills and central share (``protocol.pricing``): the most specific scope
    with an entry in effect (branch > zone > format > chain) among the scopes the branch
    had then, within it the latest entry; overrides withdrawn by then do not count.
    Products without one are left out."""
    prices_of = await _price_book(session, branches, sku, at)
    return prices_of(branches)


_PriceBook = Callable[[Sequence[Branch]], dict[tuple[str, str], int]]


async def _price_book(
    session: AsyncSession, branches: Sequence[Branch], sku: str | None, at: datetime
) -> _PriceBook:
    """Head office's price entries of ``branches`` read once; the returned function
    gives the prices in force (``head_office_prices``) at any of those branches, a few
    at a time if need be (the entries are per scope, the prices per branch and
    product: a chain's whole price list at every branch at once can be millions)."""
    if not branches:
        return lambda _: {}
    # The scopes each branch had at ``at`` (a branch moved to another zone since kept
    # its old zone's prices until the move).
    scopes_then = await scopes_at(session, branches, at)
    scopes = {
        b.code: [
            (scope, scope_id or "")
            for scope, scope_id in branch_scopes(b.code, *scopes_then[b.code])
        ]
        for b in branches
    }
    wanted = sorted({pair for pairs in scopes.values() for pair in pairs})
    e = PriceEntryRow

    def narrowed(stmt: Any) -> Any:
        stmt = stmt.where(not_withdrawn_at(at))
        if len(branches) == 1:
            stmt = stmt.where(tuple_(e.scope, e.scope_id).in_(wanted))
        if sku is not None:
            stmt = stmt.where(e.sku == sku)
        return stmt

    columns = (e.scope, e.scope_id, e.sku, e.price, e.effective_at, e.effective_local, e.version)
    # Entries given as a UTC moment take effect at that moment everywhere: of those the
    # database keeps only the latest in force per scope and product (history of years
    # stays in the database), ranked like protocol.pricing (moment, version, -price).
    rank = (
        func.row_number()
        .over(
            partition_by=(e.scope, e.scope_id, e.sku),
            order_by=(e.effective_at.desc(), e.version.desc(), e.price.asc()),
        )
        .label("rank")
    )
    ranked = narrowed(
        select(*columns, rank).where(e.effective_local.is_(None), e.effective_at <= at)
    ).subquery()
    latest = select(*[ranked.c[c.key] for c in columns]).where(ranked.c.rank == 1)
    # Entries given in local time take effect at a different moment in each time zone:
    # every one that may be in force is resolved below.
    local = narrowed(
        select(*columns).where(
            e.effective_local.is_not(None), e.effective_at <= at + _LOCAL_MOMENT_SLACK
        )
    )
    # (scope, scope id) -> sku -> the scope's candidate entries
    entries: dict[tuple[str, str], dict[str, list[Any]]] = {}
    for stmt in (latest, local):
        for row in (await session.execute(stmt)).all():
            entries.setdefault((row[0], row[1] or ""), {}).setdefault(row[2], []).append(row)
    # The entry in force at each scope, per time zone (local-time entries differ by zone).
    in_force: dict[tuple[str, str, str], dict[str, PriceCandidate]] = {}

    def scope_prices(scope: tuple[str, str], timezone: str) -> dict[str, PriceCandidate]:
        key = (*scope, timezone)
        got = in_force.get(key)
        if got is not None:
            return got
        got = in_force[key] = {}
        for item_sku, rows in entries.get(scope, {}).items():
            candidates = [
                PriceCandidate(r[0], int(r[3]), entry_moment(r[4], r[5], timezone), int(r[6]))
                for r in rows
            ]
            best = candidates[0] if len(rows) == 1 and rows[0][5] is None else None
            if best is None:
                best = resolve_price(candidates, at)
            if best is not None:
                got[item_sku] = best
        return got

    def prices_of(some: Sequence[Branch]) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for b in some:
            per_scope = [scope_prices(pair, b.timezone) for pair in scopes[b.code]]
            seen: dict[str, list[PriceCandidate]] = {}
            for prices in per_scope:
                for item_sku, candidate in prices.items():
                    seen.setdefault(item_sku, []).append(candidate)
            for item_sku, candidates in seen.items():
                winner = candidates[0] if len(candidates) == 1 else resolve_price(candidates, at)
                if winner is not None:
                    out[(b.code, item_sku)] = winner.price
        return out

    return prices_of


async def stock_on_hand(
    session: AsyncSession,
    *,
    branch: str | None = None,
    group_by: str | None = None,
    sku: str | None = None,
    at: datetime | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> StockOnHandReport:
    """Quantity on hand per branch and product, valued at moving average cost (the stock
    balance) and at retail: head office's selling price in force for the branch
    (``retail_price_source`` "head_office"), else the branch's last selling price of the
    product ("last_sale"); neither: no retail value.

    By branch and product each balance is a row: at most ``max_rows`` of them. By branch
    or by product alone the balances are summed here, read ``max_rows`` at a time in
    (branch, sku) order and each page valued at its own branches' prices, so no more of
    them (and of their prices) are held at once however big the chain is."""
    groups = parse_group_by(group_by, ("branch", "product"), "branch,product")
    await _check_branch(session, branch)
    await summaries_current(session)
    moment = at or datetime.now(UTC)
    b, p = StockBalance, LastSellingPrice

    def page_after(after: tuple[str, str] | None) -> Select[str, str, int, int, int]:
        """The next max_rows + 1 balances after ``after`` (both sides of the join start
        there: a merge join along both keys, no rereading of the pages before)."""
        on = and_(p.branch == b.branch, p.sku == b.sku)
        where: list[ColumnElement[bool]] = []
        if after is not None:
            on = and_(on, tuple_(p.branch, p.sku) > after)
            where.append(tuple_(b.branch, b.sku) > after)
        if branch is not None:
            where.append(b.branch == branch)
        if sku is not None:
            where.append(b.sku == sku)
        return (
            select(b.branch, b.sku, b.quantity_milli, b.value, p.unit_price)
            .select_from(b.__table__.outerjoin(p.__table__, on))
            .where(*where)
            .order_by(b.branch, b.sku)
            .limit(max_rows + 1)
        )

    branch_stmt = select(Branch)
    if branch is not None:
        branch_stmt = branch_stmt.where(Branch.code == branch)
    branch_of = {x.code: x for x in await session.scalars(branch_stmt)}
    prices_of: _PriceBook | None = None
    names = ["branch" if g == "branch" else "sku" for g in groups]
    per_row = set(groups) == {"branch", "product"}
    branch_first = groups[0] == "branch"
    narrower = _stock_narrower(groups, branch, sku)
    # key -> [qty, value at cost, value at retail, unpriced qty, its value at cost];
    # unit price and its source
    per_key: dict[tuple[Any, ...], list[int]] = {}
    prices: dict[tuple[Any, ...], int | None] = {}
    sources: dict[tuple[Any, ...], str | None] = {}
    after: tuple[str, str] | None = None
    while True:
        page = (await session.execute(page_after(after))).all()
        if per_row:
            _capped(page, max_rows, "group_by", *narrower)
        balances = page[:max_rows]
        present = {row[0] for row in balances}
        if prices_of is None:
            # Read once: the entries of the branches holding stock when one page holds
            # it all (one branch: only its scopes are read), else of every branch.
            holding = [x for code, x in branch_of.items() if code in present]
            prices_of = await _price_book(
                session, holding if len(page) <= max_rows else list(branch_of.values()), sku, moment
            )
        head_office = prices_of([x for code, x in branch_of.items() if code in present])
        for row_branch, row_sku, qty_value, cost_value, last_price in balances:
            qty = int(qty_value)
            price = head_office.get((row_branch, row_sku))
            source: str | None = RETAIL_HEAD_OFFICE
            if price is None:
                price = None if last_price is None else int(last_price)
                source = None if price is None else RETAIL_LAST_SALE
            retail = rounded_div(qty * (price or 0), 1000)
            figures = [qty, int(cost_value), retail]
            # unpriced quantity and its value at cost
            figures += [qty, int(cost_value)] if price is None else [0, 0]
            if per_row:
                key: tuple[Any, ...] = (
                    (row_branch, row_sku) if branch_first else (row_sku, row_branch)
                )
                per_key[key] = figures
                prices[key] = price
                sources[key] = source
                continue
            key = (row_branch,) if groups[0] == "branch" else (row_sku,)
            acc = per_key.get(key)
            if acc is None:
                per_key[key] = figures
                sources[key] = source
                # A row holding one balance (one branch's product: by product with a
                # branch, by branch with a sku) has its price; a sum of several has none.
                prices[key] = price
            else:
                for i, figure in enumerate(figures):
                    acc[i] += figure
                if sources[key] != source:
                    sources[key] = RETAIL_MIXED
                prices[key] = None
        if len(per_key) > max_rows:
            raise _too_large(max_rows, "group_by", *narrower)
        if len(page) <= max_rows:
            break
        after = (balances[-1][0], balances[-1][1])
    columns = (
        *names,
        "qty_milli",
        "value_at_cost",
        "value_at_retail",
        "unpriced_qty_milli",
        "unpriced_value_at_cost",
        "unit_price",
    )
    rows = msgspec.convert(
        [
            {
                **dict(zip(columns, (*key, *per_key[key], prices.get(key)), strict=True)),
                "retail_price_source": sources[key],
            }
            for key in sorted(per_key)
        ],
        list[StockOnHandRow],
    )
    return StockOnHandReport(
        branch=branch,
        group_by=list(groups),
        rows=rows,
        totals=StockOnHandRow(
            qty_milli=sum(r.qty_milli for r in rows),
            value_at_cost=sum(r.value_at_cost for r in rows),
            value_at_retail=sum(r.value_at_retail for r in rows),
            unpriced_qty_milli=sum(r.unpriced_qty_milli for r in rows),
            unpriced_value_at_cost=sum(r.unpriced_value_at_cost for r in rows),
        ),
    )


# --- stock movement, write-offs, shrinkage ----------------------------------------------


# Movement kind -> (report column, sign shown: ins positive, outs positive).
_MOVEMENT_COLUMNS: dict[str, tuple[str, int]] = {
    "goods_receipt": ("goods_received", 1),
    "transfer_in": ("transfers_in", 1),
    "customer_return": ("customer_returns", 1),
    "transfer_out": ("transfers_out", -1),
    "sale": ("sales", -1),
    "supplier_return": ("supplier_returns", -1),
    "write_off": ("write_offs", -1),
    "stocktake": ("stocktake_difference", 1),
    # Value only: units sold below zero revalued at the cost of the goods covering them.
    "cost_correction": ("cost_corrections", 1),
}
_OUTGOING = frozenset({"transfers_out", "sales", "supplier_returns", "write_offs"})
# Marks the movement rows that add to the opening (never a movement kind).
_OPENING = "~opening"
_MOVEMENT_FIELDS = (
    "goods_received",
    "transfers_in",
    "customer_returns",
    "transfers_out",
    "sales",
    "supplier_returns",
    "write_offs",
    "stocktake_difference",
    "cost_corrections",
    "other",
)
# The quantity and value columns of a movement row, in the order they are computed.
_MOVEMENT_OUT_NAMES = tuple(
    f"{name}_{unit}"
    for unit in ("milli", "value")
    for name in ("opening", *_MOVEMENT_FIELDS, "closing")
)


def _month_last(day: date) -> date:
    """The last day of the calendar month of ``day``."""
    if day.month == 12:
        # December's last without the next month (there is none after 9999-12).
        return day.replace(day=31)
    following = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return following - timedelta(days=1)


# Which summary rows cover a range of local days: ("monthly" | "daily", from, to), both
# ends inclusive, None open.
_Piece = tuple[str, date | None, date | None]


def _pieces(start: date | None, end: date | None) -> list[_Piece]:
    """A range of days as the full calendar months inside it (monthly rows) and the
    partial months at its ends (daily rows)."""
    if start is not None and end is not None and start > end:
        return []
    pieces: list[_Piece] = []
    if start is not None and start.day != 1:
        head_last = _month_last(start)
        if end is not None and end <= head_last:
            return [("daily", start, end)]
        pieces.append(("daily", start, head_last))
        if head_last == date.max:
            return pieces
        start = head_last + timedelta(days=1)
    tail: _Piece | None = None
    if end is not None and end != _month_last(end):
        tail = ("daily", end.replace(day=1), end)
        if end.replace(day=1) == date.min:
            # No month before the calendar's first (start, if any, is its first day).
            return [*pieces, tail]
        end = end.replace(day=1) - timedelta(days=1)
    if start is None or end is None or start <= end:
        pieces.append(("monthly", start, end))
    if tail is not None:
        pieces.append(tail)
    return pieces


# Compiled movement statements by their SQLAlchemy cache key (the statement's shape;
# its values are bound per call): compiling one costs several milliseconds.
_COMPILED: dict[Any, Any] = {}


_PARALLEL = "max_parallel_workers_per_gather"


async def _fetch(
    session: AsyncSession, stmt: Select[Any], *, restore: str | None
) -> Sequence[Sequence[Any]]:
    """The rows of a statement; on PostgreSQL straight from the driver (asyncpg) in the
    session's transaction: building SQLAlchemy rows of thousands of report rows costs
    more than the query itself. ``restore``: the parallel-workers setting to put back
    after it."""
    conn = await session.connection()
    if conn.dialect.name != "postgresql":
        found: Sequence[Sequence[Any]] = (await conn.execute(stmt)).all()
        return found
    key = stmt._generate_cache_key()
    compiled = _COMPILED.get(key.key) if key is not None else None
    if compiled is None:
        compiled = conn.dialect.statement_compiler(conn.dialect, stmt, cache_key=key)
        if key is not None:
            if len(_COMPILED) >= 256:
                _COMPILED.clear()
            _COMPILED[key.key] = compiled
    values = compiled.construct_params(
        extracted_parameters=key.bindparams if key is not None else None
    )
    params = [values[name] for name in compiled.positiontup or ()]
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    rows: Sequence[Sequence[Any]] = await driver.fetch(compiled.string, *params)
    if restore is not None:
        # The caller's setting back for the rest of the transaction (after an error the
        # transaction is aborted and rolled back, setting and all: nothing to restore,
        # and trying would hide the error).
        await driver.execute(f"SELECT set_config('{_PARALLEL}', $1, true)", restore)
    return rows


def _months_between(first: date, last: date) -> int:
    """Calendar months from the month of ``first`` to that of ``last`` (0: the same)."""
    return (last.year - first.year) * 12 + last.month - first.month


# The opening scans every closing row of a branch before the period (one hash pass, no
# index step per product) while its history is at most this many months long; longer
# histories take one index step backwards per product instead.
_CLOSING_SCAN_MONTHS = 13


def _closing_before(
    session: AsyncSession,
    month: date,
    names: Sequence[str],
    filtered: Any,
    *,
    narrow: bool,
    scan: bool,
) -> Select[Any]:
    """Per branch and product the closing of the latest month before ``month`` in which
    it moved: rows (*names, qty, value). ``narrow``: one branch or one product, not the
    whole chain; ``scan``: every closing row before ``month`` may be read (short
    history)."""
    c = _t(StockClosingMonthly)
    if session.get_bind().dialect.name == "postgresql":
        if narrow and scan:
            # One pass over the branch's closing rows, keeping each product's latest
            # month: the greatest [month, qty, value] array (months differ per product).
            latest = (
                filtered(
                    select(
                        c.c.branch,
                        c.c.sku,
                        func.max(
                            pg_array([c.c.month - date(2000, 1, 1), c.c.qty_milli, c.c.value])
                        ).label("m"),
                    ).where(c.c.month < month),
                    c,
                )
                .group_by(c.c.branch, c.c.sku)
                .subquery("latest")
            )
            m = type_coerce(latest.c.m, ARRAY(BigInteger))
            return select(*[latest.c[n] for n in names], m[2].label("qty"), m[3].label("value"))
        if narrow:
            # One backward step down the (branch, sku, month) key per product of the
            # branch (or branch of the product) that ever moved, found through its
            # balance row: O(products), however many months of history.
            b = _t(StockBalance)
            step = (
                select(c.c.qty_milli, c.c.value)
                .where(c.c.branch == b.c.branch, c.c.sku == b.c.sku, c.c.month < month)
                .order_by(c.c.month.desc())
                .limit(1)
                .lateral("latest")
            )
            stmt = select(
                *[b.c[n] for n in names],
                step.c.qty_milli.label("qty"),
                step.c.value.label("value"),
            ).select_from(b.join(step, true()))
            result: Select[Any] = filtered(stmt, b)
            return result
        # The whole chain: hundreds of thousands of index probes cost more than one
        # ordered pass over the key, keeping each (branch, sku)'s last month.
        last = (
            select(c)
            .ext(distinct_on(c.c.branch, c.c.sku))
            .where(c.c.month < month)
            .order_by(c.c.branch.desc(), c.c.sku.desc(), c.c.month.desc())
            .subquery()
        )
        return select(
            *[last.c[n] for n in names], last.c.qty_milli.label("qty"), last.c.value.label("value")
        )
    last_month = filtered(
        select(c.c.branch, c.c.sku, func.max(c.c.month).label("month"))
        .where(c.c.month < month)
        .group_by(c.c.branch, c.c.sku),
        c,
    ).subquery()
    return select(
        *[c.c[n] for n in names], c.c.qty_milli.label("qty"), c.c.value.label("value")
    ).select_from(
        c.join(
            last_month,
            and_(
                c.c.branch == last_month.c.branch,
                c.c.sku == last_month.c.sku,
                c.c.month == last_month.c.month,
            ),
        )
    )


async def stock_movement(
    session: AsyncSession,
    *,
    date_from: date | None,
    date_to: date | None,
    branch: str | None = None,
    group_by: str | None = None,
    sku: str | None = None,
    max_span_days: int = DEFAULT_MAX_SPAN_DAYS,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> StockMovementReport:
    """Opening, every kind of movement, closing; opening + ins - outs = closing.

    Read from the movement summaries: full calendar months from the monthly table,
    partial ones from the daily table. The opening is either today's stock balance
    minus the movements since the period starts, when nothing moved after the period's
    last month (the usual "this month" report: no history read), or one row per
    product and branch, the closing of the latest month before the period's first
    month in which the product moved (``rpt_stock_closing_monthly``), plus the daily
    rows of that first month before the period starts. One query returns the report's
    rows: the movements pivoted per key in the database, the opening joined beside.

    At most ``max_rows`` rows (the LIMIT stops only the rows sent: the database still
    sums and sorts every key before it, e.g. the whole chain by branch and product)."""
    period = validate_period(date_from, date_to, max_span_days)
    groups = parse_group_by(group_by, ("branch", "product"), "product" if branch else "branch")
    await summaries_current(session)
    daily, monthly = _t(StockMovementDaily), _t(StockMovementMonthly)
    names = ["branch" if g == "branch" else "sku" for g in groups]
    postgres = session.get_bind().dialect.name == "postgresql"

    def filtered(stmt: Select[Any], table: Table) -> Select[Any]:
        if branch is not None:
            stmt = stmt.where(table.c.branch == branch)
        if sku is not None:
            stmt = stmt.where(table.c.sku == sku)
        return stmt

    def rows(
        start: date | None, end: date | None, *, sign: int = 1, marker: str = ""
    ) -> list[Select[Any]]:
        """The movement rows of a range of days: (*names, movement, qty, value); the
        movement is ``marker`` if given."""
        out = []
        for kind, lo, hi in _pieces(start, end):
            table, day = (
                (monthly, monthly.c.month) if kind == "monthly" else (daily, daily.c.local_date)
            )
            qty, value = table.c.qty_milli, table.c.cost_value
            stmt = select(
                *[table.c[n] for n in names],
                (literal_column(f"'{marker}'") if marker else table.c.movement).label("movement"),
                (qty if sign > 0 else -qty).label("qty"),
                (value if sign > 0 else -value).label("value"),
            )
            if lo is not None:
                stmt = stmt.where(day >= lo)
            if hi is not None:
                stmt = stmt.where(day <= hi)
            out.append(filtered(stmt, table))
        return out

    # The months with movements (of the branch, else of the chain: a wider range only
    # costs speed, never exactness): they choose where the opening comes from.
    span = select(
        func.min(monthly.c.month),
        func.max(monthly.c.month),
        # The branch checked in the same round trip.
        select(func.count()).where(Branch.code == branch).scalar_subquery(),
    )
    if branch is not None:
        span = span.where(monthly.c.branch == branch)
    if postgres:
        # Small reads: starting parallel workers costs more than they save here (this
        # transaction's setting, reset after the report's query).
        span = span.add_columns(
            func.current_setting(_PARALLEL), func.set_config(_PARALLEL, "0", true())
        )
    found: tuple[Any, ...] = tuple((await session.execute(span)).one())
    first_month, last_month, known_branch = found[:3]
    parallel: str | None = found[3] if postgres else None
    if branch is not None and not known_branch:
        raise NotFoundError(f"unknown branch {branch!r}", field="branch")
    month_from = period.date_from.replace(day=1)
    from_balance = last_month is None or last_month <= period.date_to.replace(day=1)
    # The opening's one source: (*names, qty, value) rows.
    if from_balance:
        # Today's balance less every movement from the period's start: the period's own
        # (taken off below) and any after it (none when chosen, unless one arrived
        # since the months were read: read anyway, an index probe).
        b = _t(StockBalance)
        source = filtered(
            select(
                *[b.c[n] for n in names], b.c.quantity_milli.label("qty"), b.c.value.label("value")
            ),
            b,
        )
        # Movement rows that add to the opening (here: taken off it).
        # (None after the calendar's last day.)
        extra = (
            rows(period.date_to + timedelta(days=1), None, sign=-1, marker=_OPENING)
            if period.date_to < date.max
            else []
        )
        if postgres:
            # Stored since the backlog was applied above, so in the balance but not yet
            # in the movement tables: taken off too (the query reads one snapshot).
            q = _t(SummaryBacklog)
            pending = select(
                *[q.c[n] for n in names],
                literal_column(f"'{_OPENING}'").label("movement"),
                (-q.c.qty).label("qty"),
                (-q.c.value).label("value"),
            )
            extra.append(filtered(pending, q))
    else:
        scan = first_month is not None and _months_between(first_month, month_from) <= (
            _CLOSING_SCAN_MONTHS
        )
        source = _closing_before(
            session,
            month_from,
            names,
            filtered,
            narrow=branch is not None or sku is not None,
            scan=scan and branch is not None,
        )
        # That month's days before the period (none when it starts on the 1st).
        extra = (
            rows(month_from, period.date_from - timedelta(days=1), marker=_OPENING)
            if period.date_from > month_from
            else []
        )
    # The source's rows are one per key when the key (with the filters) names a branch
    # and a product; else they are summed per key.
    if all(n in names or fixed is not None for n, fixed in (("branch", branch), ("sku", sku))):
        o = source.subquery("o")
    else:
        u = source.subquery("u")
        o = (
            select(
                *[u.c[n] for n in names],
                cast(func.sum(u.c.qty), BigInteger).label("qty"),
                cast(func.sum(u.c.value), BigInteger).label("value"),
            )
            .group_by(*[u.c[n] for n in names])
            .subquery("o")
        )
    # The movements, the period's and those adding to the opening (kind _OPENING):
    # summed per key and kind, then one column per kind (each (key, kind) is one row
    # there: max picks it), unknown kinds summed as "other".
    parts = [*rows(period.date_from, period.date_to), *extra]
    src = union_all(*parts).subquery("src") if len(parts) > 1 else parts[0].subquery("src")
    kind = src.c.movement.label("kind")
    per_kind = (
        select(
            *[src.c[n] for n in names],
            kind,
            cast(func.sum(src.c.qty), BigInteger).label("qty"),
            cast(func.sum(src.c.value), BigInteger).label("value"),
        )
        .group_by(*[src.c[n] for n in names], kind)
        .subquery("per_kind")
    )
    k = per_kind.c
    moved = k.kind != literal_column(f"'{_OPENING}'")
    pivot_columns: list[ColumnElement[Any]] = []
    for unit in ("qty", "value"):
        for field in _MOVEMENT_FIELDS:
            kinds = [m for m, (f, _) in _MOVEMENT_COLUMNS.items() if f == field]
            one: ColumnElement[Any]
            if kinds:
                one = func.max(k[unit]).filter(k.kind == literal_column(f"'{kinds[0]}'"))
            else:
                one = cast(
                    func.sum(k[unit]).filter(
                        k.kind.not_in(
                            [literal_column(f"'{m}'") for m in (*_MOVEMENT_COLUMNS, _OPENING)]
                        )
                    ),
                    BigInteger,
                )
            shown = func.coalesce(one, 0)
            pivot_columns.append((-shown if field in _OUTGOING else shown).label(f"{field}_{unit}"))
        pivot_columns.append(cast(func.sum(k[unit]).filter(moved), BigInteger).label(f"net_{unit}"))
        pivot_columns.append(
            func.max(k[unit])
            .filter(k.kind == literal_column(f"'{_OPENING}'"))
            .label(f"extra_{unit}")
        )
    pivot_columns.append(func.count().filter(moved).label("moved"))
    i = (
        select(*[k[n] for n in names], *pivot_columns)
        .group_by(*[k[n] for n in names])
        .subquery("i")
    )
    joined: FromClause
    if postgres:
        keys = [func.coalesce(o.c[n], i.c[n]).label(n) for n in names]
        joined = o.join(i, and_(*[o.c[n] == i.c[n] for n in names]), full=True)
    else:
        # SQLite has FULL JOIN only from 3.39 (Ubuntu 22.04's is 3.37): every key of
        # either side, then both sides joined to it.
        every = union(select(*[o.c[n] for n in names]), select(*[i.c[n] for n in names])).subquery(
            "every"
        )
        keys = [every.c[n].label(n) for n in names]
        joined = every.outerjoin(o, and_(*[o.c[n] == every.c[n] for n in names])).outerjoin(
            i, and_(*[i.c[n] == every.c[n] for n in names])
        )
    out: list[ColumnElement[Any]] = []
    openings: list[ColumnElement[Any]] = []
    for unit, suffix in (("qty", "milli"), ("value", "value")):
        net = func.coalesce(i.c[f"net_{unit}"], 0)
        opened: ColumnElement[Any] = func.coalesce(o.c[unit], 0) + func.coalesce(
            i.c[f"extra_{unit}"], 0
        )
        if from_balance:
            opened = opened - net
        openings.append(opened)
        out.append(opened.label(f"opening_{suffix}"))
        out += [
            func.coalesce(i.c[f"{field}_{unit}"], 0).label(f"{field}_{suffix}")
            for field in _MOVEMENT_FIELDS
        ]
        out.append((opened + net).label(f"closing_{suffix}"))
    # Both key columns, the one not grouped by as NULL: rows come out in the field order
    # of StockMovementRow and are built positionally.
    by_name = dict(zip(names, keys, strict=True))
    both_keys = [by_name.get(n, cast(null(), String).label(n)) for n in ("branch", "sku")]
    stmt = (
        select(*both_keys, *out)
        .select_from(joined)
        # Products with nothing on hand and nothing moving are left out.
        .where(or_(i.c.moved > 0, *[x != 0 for x in openings]))
        # Python's order of the keys (code points): PostgreSQL's "C" collation.
        .order_by(*[collate(key, "C") if postgres else key for key in keys])
        .limit(max_rows + 1)
    )
    result = await _fetch(session, stmt, restore=parallel)
    _capped(result, max_rows, "group_by", *_stock_narrower(groups, branch, sku))
    # Positional construction: a dict per row and one msgspec.convert took a fifth of
    # a branch's 5,000-row report.
    report_rows = [StockMovementRow(*row) for row in result]
    totals = [sum(column) for column in list(zip(*result, strict=True))[2:]] if result else []
    return StockMovementReport(
        date_from=period.date_from,
        date_to=period.date_to,
        branch=branch,
        group_by=list(groups),
        rows=report_rows,
        totals=StockMovementRow(None, None, *(totals or [0] * len(_MOVEMENT_OUT_NAMES))),
    )


async def write_offs(
    session: AsyncSession,
    *,
    date_from: date | None,
    date_to: date | None,
    branch: str | None = None,
    group_by: str | None = None,
    max_span_days: int = DEFAULT_MAX_SPAN_DAYS,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> WriteOffReport:
    """Goods written off, by reason (and branch or product); quantities and values at
    cost shown as positive numbers."""
    period = validate_period(date_from, date_to, max_span_days)
    groups = parse_group_by(group_by, ("reason", "branch", "product"), "reason")
    await _check_branch(session, branch)
    await summaries_current(session)
    t = _t(StockMovementDaily)
    # Reasons typed differing only in letter case or surrounding blanks ("Damaged",
    # "damaged ") are one reason: one row, shown in its alphabetically first spelling.
    reason = func.lower(func.trim(t.c.reason))
    column_of = {"reason": reason, "branch": t.c.branch, "product": t.c.sku}
    keys = [column_of[g] for g in groups]
    shown = [func.min(func.trim(t.c.reason)) if g == "reason" else column_of[g] for g in groups]
    stmt = (
        select(*shown, func.sum(t.c.qty_milli), func.sum(t.c.cost_value))
        .where(t.c.movement == "write_off", _in_period(t.c.local_date, period))
        .group_by(*keys)
        .order_by(*keys)
    )
    if branch is not None:
        stmt = stmt.where(t.c.branch == branch)
    names = ["sku" if g == "product" else g for g in groups]
    n = len(keys)
    rows = [
        WriteOffRow(
            **dict(zip(names, row[:n], strict=True)),
            qty_milli=-_int(row[n]),
            value=-_int(row[n + 1]),
        )
        for row in await session.execute(stmt.limit(max_rows + 1))
    ]
    _capped(rows, max_rows, "group_by", *_grouped_narrower(branch))
    return WriteOffReport(
        date_from=period.date_from,
        date_to=period.date_to,
        branch=branch,
        group_by=list(groups),
        rows=rows,
        totals=WriteOffRow(
            qty_milli=sum(r.qty_milli for r in rows), value=sum(r.value for r in rows)
        ),
    )


async def shrinkage(
    session: AsyncSession,
    *,
    date_from: date | None,
    date_to: date | None,
    branch: str | None = None,
    group_by: str | None = None,
    max_span_days: int = DEFAULT_MAX_SPAN_DAYS,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> ShrinkageReport:
    """Stocktake differences: what was counted below the books (loss) or above (gain),
    per product and day netted, then summed per group (in the database: a year of a
    chain's stocktakes is millions of product-days for a row per branch)."""
    period = validate_period(date_from, date_to, max_span_days)
    groups = parse_group_by(group_by, ("branch", "product"), "branch")
    await _check_branch(session, branch)
    await summaries_current(session)
    t = _t(StockMovementDaily)
    qty, value = t.c.qty_milli, t.c.cost_value
    # A product-day counted below the books (or at no quantity, below in value).
    loss = or_(qty < 0, and_(qty == 0, value < 0))
    keys = [t.c.branch if g == "branch" else t.c.sku for g in groups]
    stmt = (
        select(
            *keys,
            func.sum(case((loss, -qty), else_=0)),
            func.sum(case((loss, -value), else_=0)),
            func.sum(case((loss, 0), else_=qty)),
            func.sum(case((loss, 0), else_=value)),
        )
        .where(t.c.movement == "stocktake", _in_period(t.c.local_date, period))
        .group_by(*keys)
        .limit(max_rows + 1)
    )
    if branch is not None:
        stmt = stmt.where(t.c.branch == branch)
    n = len(keys)
    acc = {tuple(row[:n]): [_int(x) for x in row[n:]] for row in await session.execute(stmt)}
    _capped(acc, max_rows, "group_by", *_grouped_narrower(branch))
    names = ["sku" if g == "product" else g for g in groups]

    def make(named: dict[str, Any], a: Sequence[int]) -> ShrinkageRow:
        return ShrinkageRow(
            **named,
            loss_milli=a[0],
            loss_value=a[1],
            gain_milli=a[2],
            gain_value=a[3],
            net_milli=a[2] - a[0],
            net_value=a[3] - a[1],
        )

    rows = [make(dict(zip(names, key, strict=True)), acc[key]) for key in sorted(acc)]
    totals = [sum(acc[k][i] for k in acc) for i in range(4)]
    return ShrinkageReport(
        date_from=period.date_from,
        date_to=period.date_to,
        branch=branch,
        group_by=list(groups),
        rows=rows,
        totals=make({}, totals),
    )


# --- gross margin and ABC ----------------------------------------------------------------


def _margin(net_sales: int, cogs: int, corrections: int = 0) -> MarginFigures:
    margin = net_sales - cogs
    return MarginFigures(
        net_sales=net_sales,
        cost_of_goods_sold=cogs,
        margin=margin,
        margin_pct=ratio_text(margin * 100, net_sales),
        cost_corrections=corrections,
    )


def _margin_sums(table: Table) -> list[ColumnElement[Any]]:
    c = table.c
    net = func.sum(c.revenue - c.vat - c.returns_amount + c.returns_vat)
    cogs = func.sum(c.cost - c.returns_cost)
    return [net.label("net_sales"), cogs.label("cogs")]


async def _cost_corrections(
    session: AsyncSession, period: Period, branch: str | None, groups: Sequence[str]
) -> dict[tuple[Any, ...], int]:
    """The period's cost corrections (units sold below zero revalued when goods covered
    them) as cost of goods sold, per group key (branch, category, product as in
    ``groups``). Few rows: read through the (movement, local_date) index."""
    t = _t(StockMovementDaily)
    keys: list[ColumnElement[Any]] = []
    for g in groups:
        if g == "branch":
            keys.append(t.c.branch)
        elif g == "product":
            keys.append(t.c.sku)
        else:
            keys.append(func.coalesce(Product.category_code, ""))
    stmt = select(*keys, func.sum(-t.c.cost_value)).select_from(t)
    if "category" in groups:
        stmt = stmt.outerjoin(Product.__table__, Product.sku == t.c.sku)
    stmt = stmt.where(t.c.movement == COST_CORRECTION, _in_period(t.c.local_date, period)).group_by(
        *keys
    )
    if branch is not None:
        stmt = stmt.where(t.c.branch == branch)
    n = len(keys)
    return {tuple(row[:n]): _int(row[n]) for row in await session.execute(stmt)}


async def gross_margin(
    session: AsyncSession,
    *,
    date_from: date | None,
    date_to: date | None,
    branch: str | None = None,
    group_by: str | None = None,
    max_span_days: int = DEFAULT_MAX_SPAN_DAYS,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> MarginReport:
    """Net sales (without VAT, after returns) minus cost of goods sold at moving average
    cost, by branch, category or product; the cost includes the period's cost
    corrections (goods sold before they were received, revalued at their cost)."""
    period = validate_period(date_from, date_to, max_span_days)
    groups = parse_group_by(group_by, ("branch", "category", "product"), "branch")
    await _check_branch(session, branch)
    await summaries_current(session)
    product_level = "category" in groups or "product" in groups
    if product_level:
        per_branch = branch is not None or "branch" in groups
        table = _t(SalesProductDaily if per_branch else SalesProductDailyChain)
    else:
        table = _t(SalesBranchDaily)
    keys: list[ColumnElement[Any]] = []
    names: list[str] = []
    for g in groups:
        if g == "branch":
            keys.append(table.c.branch)
            names.append("branch")
        elif g == "product":
            keys.append(table.c.sku)
            names.append("sku")
        else:
            keys.append(func.coalesce(Product.category_code, ""))
            names.append("category")
    stmt = select(*keys, *_margin_sums(table)).select_from(table)
    if "category" in groups:
        stmt = stmt.outerjoin(Product.__table__, Product.sku == table.c.sku)
    stmt = stmt.where(_in_period(table.c.local_date, period))
    if branch is not None:
        stmt = stmt.where(table.c.branch == branch)
    stmt = stmt.group_by(*keys).limit(max_rows + 1)
    n = len(keys)
    sums: dict[tuple[Any, ...], list[int]] = {
        tuple(row[:n]): [_int(row[n]), _int(row[n + 1]), 0] for row in await session.execute(stmt)
    }
    for key, amount in (await _cost_corrections(session, period, branch, groups)).items():
        figures = sums.setdefault(key, [0, 0, 0])
        figures[1] += amount
        figures[2] += amount
    # Keys in code point order (as PostgreSQL's "C" collation, on either database).
    rows = [
        MarginRow(**dict(zip(names, key, strict=True)), figures=_margin(*sums[key]))
        for key in sorted(sums)
    ]
    _capped(rows, max_rows, "group_by", *_grouped_narrower(branch))
    return MarginReport(
        date_from=period.date_from,
        date_to=period.date_to,
        branch=branch,
        group_by=list(groups),
        rows=rows,
        totals=_margin(
            sum(r.figures.net_sales for r in rows),
            sum(r.figures.cost_of_goods_sold for r in rows),
            sum(r.figures.cost_corrections for r in rows),
        ),
    )


async def abc_analysis(
    session: AsyncSession,
    *,
    date_from: date | None,
    date_to: date | None,
    branch: str | None = None,
    measure: str = "revenue",
    a_pct: int = 80,
    b_pct: int = 95,
    max_span_days: int = DEFAULT_MAX_SPAN_DAYS,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> AbcReport:
    """Products ranked by net revenue or margin: A until ``a_pct`` % of the total is
    reached, then B until ``b_pct`` %, then C (a product counts in the class where the
    cumulative share before it falls). Products with no positive value are C."""
    period = validate_period(date_from, date_to, max_span_days)
    if measure not in ("revenue", "margin"):
        raise ValidationFailed("measure must be revenue or margin", field="measure")
    if not 0 < a_pct < b_pct < 100:
        raise ValidationFailed("need 0 < a_pct < b_pct < 100", field="a_pct")
    await _check_branch(session, branch)
    await summaries_current(session)
    table = _t(SalesProductDaily if branch is not None else SalesProductDailyChain)
    c = table.c
    if measure == "revenue":
        value = func.sum(c.revenue - c.returns_amount)
    else:
        value = func.sum(
            c.revenue - c.vat - c.returns_amount + c.returns_vat - c.cost + c.returns_cost
        )
    stmt = select(c.sku, value.label("value")).where(_in_period(c.local_date, period))
    if branch is not None:
        stmt = stmt.where(c.branch == branch)
    # Ranked here: any max_rows + 1 products tell that there are too many.
    stmt = stmt.group_by(c.sku).limit(max_rows + 1)
    values = {row.sku: _int(row.value) for row in await session.execute(stmt)}
    if measure == "margin" and len(values) <= max_rows:
        corrections = await _cost_corrections(session, period, branch, ("product",))
        for (sku,), amount in corrections.items():
            values[sku] = values.get(sku, 0) - amount
    items = sorted(values.items(), key=lambda item: (-item[1], item[0]))
    # No grouping to coarsen: a branch sells fewer products than the chain.
    field = "branch" if branch is None else "date_to"
    _capped(items, max_rows, field, _one_branch(branch), _SHORTER)
    total = sum(v for _, v in items if v > 0)
    rows: list[AbcRow] = []
    before = 0
    for sku, v in items:
        if v <= 0 or total == 0:
            abc = "C"
        elif before * 100 < a_pct * total:
            abc = "A"
        elif before * 100 < b_pct * total:
            abc = "B"
        else:
            abc = "C"
        after = before + max(v, 0)
        rows.append(
            AbcRow(
                sku=sku,
                value=v,
                share_pct=ratio_text(v * 100, total),
                cumulative_pct=ratio_text(after * 100, total),
                abc_class=abc,
            )
        )
        before = after
    return AbcReport(
        date_from=period.date_from,
        date_to=period.date_to,
        branch=branch,
        measure=measure,
        a_pct=a_pct,
        b_pct=b_pct,
        total=total,
        rows=rows,
    )


# --- shifts and Z reports ----------------------------------------------------------------


def _difference(
    field: str, source: str, recorded: int | None, reported: int | None
) -> ShiftDifference | None:
    if reported is None or recorded == reported:
        return None
    return ShiftDifference(
        field=field,
        source=source,
        recorded=recorded,
        reported=reported,
        difference=None if recorded is None else reported - recorded,
    )


async def shift_reconciliation(
    session: AsyncSession,
    *,
    date_from: date | None,
    date_to: date | None,
    branch: str | None = None,
    only_differences: bool = False,
    max_span_days: int = DEFAULT_MAX_SPAN_DAYS,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> ShiftReconciliationReport:
    """Per shift: the receipts and returns central recorded beside the till's closing
    counts and the fiscal printer's Z totals, with every difference listed.

    At most ``max_rows`` shifts are reconciled (``only_differences`` or not: every
    shift is read and compared here to find the differing ones)."""
    period = validate_period(date_from, date_to, max_span_days)
    await _check_branch(session, branch)
    s, t = Shift, _t(ShiftTotals)
    # The period's shifts as central files them, and as their receipts are filed.
    filed = [_in_period(s.local_date, period)]
    sold = [_in_period(t.c.local_date, period)]
    if branch is not None:
        filed.append(s.branch == branch)
        sold.append(t.c.branch == branch)
    field = "branch" if branch is None else "date_to"
    narrower = (_one_branch(branch), _SHORTER)
    # Each query's shifts are rows (or the rows' figures): at most max_rows + 1 read.
    found_shifts = (await session.scalars(select(s).where(*filed).limit(max_rows + 1))).all()
    _capped(found_shifts, max_rows, field, *narrower)
    found_recorded = (await session.execute(select(t).where(*sold).limit(max_rows + 1))).all()
    _capped(found_recorded, max_rows, field, *narrower)
    shifts = {(x.branch, x.shift_id): x for x in found_shifts}
    recorded = {(r.branch, r.shift_id): r for r in found_recorded}
    # Recorded totals of the period's shifts filed under another day (the day of a
    # shift's first receipt need not be the day central files the shift under): one
    # join, not a query per shift (at most one per shift read above: no limit needed).
    on_shift = and_(t.c.branch == s.branch, t.c.shift_id == s.shift_id)
    elsewhere = select(t).join(s, on_shift).where(*filed, ~_in_period(t.c.local_date, period))
    for row in await session.execute(elsewhere):
        recorded[(row.branch, row.shift_id)] = row
    # And the other way round: receipts of the period whose shift central files under
    # another day (opened before midnight, first sale after it) belong to that day's
    # report, not to a second row here showing the shift as never closed.
    filed_elsewhere = (
        select(s.branch, s.shift_id)
        .join(t, on_shift)
        .where(*sold, ~_in_period(s.local_date, period))
    )
    for row in await session.execute(filed_elsewhere):
        recorded.pop((row.branch, row.shift_id), None)
    keys = sorted(set(shifts) | set(recorded))
    if len(keys) > max_rows:
        raise _too_large(max_rows, field, *narrower)
    # Payments of every shift of either kind, read once through a subquery of their
    # keys (a chain's year of shifts is too many for an IN list of values): a few per
    # shift (one per payment type), of at most max_rows shifts.
    sp = _t(ShiftPaymentTotals)
    shift_keys = union(
        select(t.c.branch, t.c.shift_id).where(*sold), select(s.branch, s.shift_id).where(*filed)
    )
    pay_stmt = select(sp).where(tuple_(sp.c.branch, sp.c.shift_id).in_(shift_keys))
    payments: dict[tuple[str, str], dict[str, int]] = {}
    for p in await session.execute(pay_stmt):
        # The till reports payments net of change, refunds apart.
        payments.setdefault((p.branch, p.shift_id), {})[p.payment_type] = _int(p.amount)
    conflicts: dict[tuple[str, str], int] = {}
    conflict_stmt = (
        select(ShiftIdConflict.branch, ShiftIdConflict.shift_id, func.count())
        .where(tuple_(ShiftIdConflict.branch, ShiftIdConflict.shift_id).in_(shift_keys))
        .group_by(ShiftIdConflict.branch, ShiftIdConflict.shift_id)
    )
    for c in await session.execute(conflict_stmt):
        conflicts[(c[0], c[1])] = int(c[2])
    rows: list[ShiftRow] = []
    for key in keys:
        shift = shifts.get(key)
        rec = recorded.get(key)
        rec_receipts = _int(rec.receipts) if rec is not None else 0
        rec_sales = _int(rec.sales) if rec is not None else 0
        rec_returns = _int(rec.returns_total) if rec is not None else 0
        # never a storno on the printer (0x2B needs the original document)
        rec_no_receipt = _int(rec.no_receipt_returns_total) if rec is not None else 0
        closed = shift is not None and shift.closed_at is not None
        z_turnover = (
            sum(shift.z_turnover_by_vat_group.values())
            if shift is not None and shift.z_report_number is not None
            else None
        )
        z_storno = (
            sum(shift.z_storno_by_vat_group.values())
            if shift is not None and shift.z_report_number is not None
            else None
        )
        diffs: list[ShiftDifference | None] = []
        if closed and shift is not None:
            diffs += [
                _difference("receipts", "agent", rec_receipts, shift.receipts_count),
                _difference("sales", "agent", rec_sales, shift.sales_total),
                _difference("returns", "agent", rec_returns, shift.returns_total),
                _difference("receipts", "fiscal_printer", rec_receipts, shift.z_receipts_count),
                _difference("sales", "fiscal_printer", rec_sales, z_turnover),
                _difference("returns", "fiscal_printer", rec_returns - rec_no_receipt, z_storno),
            ]
            recorded_payments = payments.get(key, {})
            reported_payments = shift.payments_by_type or {}
            for payment_type in sorted(set(recorded_payments) | set(reported_payments)):
                diffs.append(
                    _difference(
                        f"payment:{payment_type}",
                        "agent",
                        recorded_payments.get(payment_type, 0),
                        int(reported_payments.get(payment_type, 0)),
                    )
                )
        # Another shift's opening or closing under this id: the figures above may mix
        # two shifts' receipts (an agent from before unique shift ids), say so.
        diffs.append(_difference("id_conflicts", "central", 0, conflicts.get(key)))
        differences = [d for d in diffs if d is not None]
        if only_differences and not differences:
            continue
        rows.append(
            ShiftRow(
                branch=key[0],
                shift_id=key[1],
                till=(shift.till if shift is not None else "")
                or (rec.till if rec is not None else ""),
                cashier=shift.cashier if shift is not None else "",
                local_date=shift.local_date
                if shift is not None
                else (rec.local_date if rec is not None else None),
                closed=closed,
                z_report_number=shift.z_report_number if shift is not None else None,
                recorded_receipts=rec_receipts,
                recorded_sales=rec_sales,
                recorded_returns_total=rec_returns,
                reported_receipts=shift.receipts_count if shift is not None else None,
                reported_sales=shift.sales_total if shift is not None else None,
                reported_returns_total=shift.returns_total if shift is not None else None,
                z_receipts=shift.z_receipts_count if shift is not None else None,
                z_turnover=z_turnover,
                z_storno=z_storno,
                differences=differences,
                id_conflicts=conflicts.get(key, 0),
                recorded_no_receipt_returns_total=rec_no_receipt,
                expected_cash=shift.expected_cash if shift is not None else None,
                counted_cash=shift.counted_cash if shift is not None else None,
                cash_difference=shift.cash_difference if shift is not None else None,
                z_printed=shift.z_printed if shift is not None else None,
            )
        )
    counted = [r.cash_difference for r in rows if r.cash_difference is not None]
    return ShiftReconciliationReport(
        date_from=period.date_from,
        date_to=period.date_to,
        branch=branch,
        shifts=len(rows),
        shifts_with_differences=sum(1 for r in rows if r.differences),
        rows=rows,
        counted_shifts=len(counted),
        cash_difference_total=sum(counted),
    )


# --- loss prevention -------------------------------------------------------------------------


def _median_rate(values: list[tuple[int, int]]) -> Fraction | None:
    """Median of the rates count / receipts, exact."""
    rates = sorted(Fraction(n, d) for n, d in values if d > 0)
    if not rates:
        return None
    middle = len(rates) // 2
    if len(rates) % 2:
        return rates[middle]
    return (rates[middle - 1] + rates[middle]) / 2


async def loss_prevention(
    session: AsyncSession,
    *,
    date_from: date | None,
    date_to: date | None,
    branch: str | None = None,
    factor: int = 3,
    min_count: int = 3,
    max_span_days: int = DEFAULT_MAX_SPAN_DAYS,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> LossPreventionReport:
    """Cashiers whose rate of voided lines, returns or manual discounts per receipt is at
    least ``factor`` times the median cashier's (and at least ``min_count`` events)."""
    period = validate_period(date_from, date_to, max_span_days)
    if factor < 1:
        raise ValidationFailed("factor must be at least 1", field="factor")
    if min_count < 0:
        raise ValidationFailed("min_count must not be negative", field="min_count")
    await _check_branch(session, branch)
    t = _t(SalesCashierDaily)
    c = t.c
    stmt = (
        select(
            c.branch,
            c.cashier,
            func.sum(c.receipts).label("receipts"),
            func.sum(c.voided_lines).label("voided_lines"),
            func.sum(c.returns).label("returns"),
            func.sum(c.returns_amount).label("returns_amount"),
            func.sum(c.manual_discount_lines).label("manual_discount_lines"),
            func.sum(c.manual_discount_amount).label("manual_discount_amount"),
            func.sum(c.no_receipt_returns).label("no_receipt_returns"),
        )
        .where(_in_period(c.local_date, period))
        .group_by(c.branch, c.cashier)
        .order_by(c.branch, c.cashier)
    )
    if branch is not None:
        stmt = stmt.where(c.branch == branch)
    data = (await session.execute(stmt.limit(max_rows + 1))).all()
    # The medians are of every cashier: fail rather than compare with some of them.
    _capped(
        data, max_rows, "branch" if branch is None else "date_to", _one_branch(branch), _SHORTER
    )
    metrics = (
        ("voided_lines", "voided_lines"),
        ("returns", "returns"),
        ("manual_discounts", "manual_discount_lines"),
        ("no_receipt_returns", "no_receipt_returns"),
    )
    medians = {
        name: _median_rate([(_int(getattr(r, col)), _int(r.receipts)) for r in data])
        for name, col in metrics
    }
    rows: list[LossPreventionRow] = []
    for r in data:
        receipts = _int(r.receipts)
        flags = []
        for name, col in metrics:
            count = _int(getattr(r, col))
            median = medians[name]
            if receipts == 0 or count < min_count or count == 0:
                continue
            if median is None or median == 0 or Fraction(count, receipts) >= factor * median:
                flags.append(name)
        rows.append(
            LossPreventionRow(
                branch=r.branch,
                cashier=r.cashier,
                receipts=receipts,
                voided_lines=_int(r.voided_lines),
                returns=_int(r.returns),
                returns_amount=_int(r.returns_amount),
                manual_discount_lines=_int(r.manual_discount_lines),
                manual_discount_amount=_int(r.manual_discount_amount),
                voided_lines_rate=ratio_text(_int(r.voided_lines) * 100, receipts),
                returns_rate=ratio_text(_int(r.returns) * 100, receipts),
                manual_discounts_rate=ratio_text(_int(r.manual_discount_lines) * 100, receipts),
                flags=flags,
                no_receipt_returns=_int(r.no_receipt_returns),
                no_receipt_returns_rate=ratio_text(_int(r.no_receipt_returns) * 100, receipts),
            )
        )

    def median_text(name: str) -> str | None:
        m = medians[name]
        return None if m is None else ratio_text(m.numerator * 100, m.denominator)

    return LossPreventionReport(
        date_from=period.date_from,
        date_to=period.date_to,
        branch=branch,
        factor=factor,
        min_count=min_count,
        median_voided_lines_rate=median_text("voided_lines"),
        median_returns_rate=median_text("returns"),
        median_manual_discounts_rate=median_text("manual_discounts"),
        median_no_receipt_returns_rate=median_text("no_receipt_returns"),
        rows=rows,
    )


# --- sync health -------------------------------------------------------------------------------


async def sync_health(session: AsyncSession, *, now: datetime | None = None) -> SyncHealthReport:
    """Per branch: the last event received, how far behind it is, the outbox backlog and
    applied master-data version from its heartbeat, and its open dead letters.

    Not capped by ``max_rows``: one row per branch (and each query reads at most one row
    per branch), as many as the chain has stores."""
    now = now or datetime.now(UTC)
    branches = list(await session.scalars(select(Branch).order_by(Branch.code)))
    states = {s.branch: s for s in await session.scalars(select(BranchSyncState))}
    statuses = {s.branch: s for s in await session.scalars(select(BranchStatus))}
    letters = {
        row[0]: int(row[1])
        for row in await session.execute(
            select(DeadLetter.branch, func.count())
            .where(DeadLetter.status == "open")
            .group_by(DeadLetter.branch)
        )
    }

    again = await recorded_again_open(session)
    lost = await lost_events(session, list(states.values()))
    published = await marked_version(session)
    central = await current_version(session)

    def age(at: datetime | None) -> int | None:
        return None if at is None else max(0, int((now - at).total_seconds()))

    rows = []
    for b in branches:
        state = states.get(b.code)
        status = statuses.get(b.code)
        contiguous = state.contiguous_seq if state is not None else 0
        rows.append(
            SyncHealthRow(
                branch=b.code,
                name=b.name,
                active=b.active,
                last_event_at=state.last_event_at if state else None,
                last_received_at=state.last_received_at if state else None,
                receive_age_s=age(state.last_received_at if state else None),
                contiguous_seq=contiguous,
                max_seq=state.max_seq if state is not None else 0,
                seq_lag=(
                    max(0, status.last_recorded_seq - contiguous) if status is not None else None
                ),
                heartbeat_at=status.sent_at if status else None,
                heartbeat_age_s=age(status.received_at if status else None),
                outbox_backlog=status.outbox_backlog if status else None,
                applied_version=status.applied_version if status else None,
                agent_version=status.agent_version if status else None,
                open_dead_letters=letters.get(b.code, 0),
                recorded_again_open=again.get(b.code, 0),
                outbox_held=list(status.outbox_held) if status else [],
                # Only a replacement of a database that had numbered events (start > 1).
                agent_replaced_at=(
                    state.restarted_at if state and (state.restarted_at_seq or 0) > 1 else None
                ),
                lost_events=lost.get(b.code, 0),
                agent_restart_reason=(
                    state.restart_reason if state and (state.restarted_at_seq or 0) > 1 else None
                ),
                clock_offset_ms=status.clock_offset_ms if status else None,
                agent_conflict_at=(
                    state.refused_at
                    if state and state.refused_at and state.refused_at > now - 2 * LIVE_AGENT
                    else None
                ),
                clock_off=bool(
                    status
                    and status.clock_offset_ms is not None
                    and abs(status.clock_offset_ms) > CLOCK_OFF_MS
                ),
                published_version=published,
                up_to_date=up_to_date(
                    status.applied_version if status else None, published, central
                ),
                timezone=b.timezone,
                agent_timezone=status.agent_timezone if status else None,
                timezone_mismatch=timezone_mismatch(b.timezone, status),
            )
        )
    backlog = await session.scalar(select(func.count()).select_from(SummaryBacklog))
    rejected = await session.scalar(select(func.count()).select_from(SummaryRejected))
    return SyncHealthReport(
        generated_at=now,
        rows=rows,
        summary_backlog=int(backlog or 0),
        summary_rejected=int(rejected or 0),
    )
