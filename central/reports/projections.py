"""Summary-table projections, applied inside the ingest batch's transaction.

One batch handler sums the contributions of every new event of the batch in Python
(:class:`SummaryDelta`), then writes one additive upsert per summary row
(``x = x + excluded.x``), tables in a fixed order and keys sorted, so two ingest
workers touching the same rows only wait on each other's row locks and never
deadlock. It runs in the batch's transaction: an event and its summary
contribution are stored exactly once, together.

On PostgreSQL the per-product tables (product-day, chain product-day, movement day
and month, monthly closing, last selling price) are the exception: the batch stores
its contribution as rows of ``rpt_summary_backlog`` (one COPY, same transaction), and
:func:`apply_backlog` adds them to the tables later, in bigger chunks, one applier at
a time (see ``central.reports.backlog``).

Costs come from the stock ledger (``stock_ledger``, moving average cost), which the
stock handlers append in the same transaction: at flush time the ledger rows of the
batch's events are read once and filed into the movement and margin columns.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Date, Table, and_, bindparam, case, func, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from central.ingest.bulk import Stage, copy_records
from central.ingest.registry import (
    EARLY_STAGE,
    EventContext,
    IngestBatch,
    register_batch_handler,
)
from central.ingest.stock import COST_CORRECTION, LEDGER_SUMS, LedgerSums
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
from central.models.stock import StockMovement
from central.reports.money import vat_of
from protocol.events import (
    CustomerReturnRecorded,
    EventEnvelope,
    Payment,
    ReceiptRecorded,
    StockDocumentPosted,
)

__all__ = [
    "BACKLOG_TABLES",
    "BacklogBusy",
    "SummaryDelta",
    "apply_backlog",
    "cash_net_of_change",
    "closing_deltas",
    "flush_delta",
    "local_hour",
    "month_of",
    "project_summaries",
    "set_aside_first",
    "upsert_additive",
    "write_closing",
]


def _t(model: Any) -> Table:
    table: Table = model.__table__
    return table


# Order in which tables are written (and so locked): the same in every worker.
_TABLE_ORDER: tuple[Table, ...] = tuple(
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
        ShiftTotals,
        ShiftPaymentTotals,
    )
)


def _pk(table: Table) -> tuple[str, ...]:
    return tuple(c.name for c in table.primary_key.columns)


@dataclass(frozen=True, slots=True)
class _SaleKeys:
    """Where the cost of one sale or return event is filed."""

    returned: bool
    branch: str
    local_date: date
    hour: int
    cashier: str


@dataclass(slots=True)
class SummaryDelta:
    """Contributions of a set of events to the summary tables, not yet written."""

    # table name -> primary key -> column -> amount to add
    add: dict[str, dict[tuple[Any, ...], dict[str, int]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    # (branch, sku) -> (sold_at, unit price) of the latest sale seen
    last_price: dict[tuple[str, str], tuple[datetime, int]] = field(default_factory=dict)
    # (branch, shift) -> (till, earliest local day)
    shifts: dict[tuple[str, str], tuple[str, date]] = field(default_factory=dict)
    # Events whose ledger rows are filed at flush time: sales, returns, stock documents.
    sale_events: dict[uuid.UUID, _SaleKeys] = field(default_factory=dict)
    # event id -> write-off reason (every stock-moving event is listed, reason or "").
    ledger_events: dict[uuid.UUID, str] = field(default_factory=dict)
    # True once the ledger rows were filed from the batch itself (not read back).
    ledger_filed: bool = False
    # PostgreSQL ingest: the per-product tables (product day, chain product day, last
    # selling price) are summed by the database from the batch's backlog rows, so
    # only each event's per-product line sums are kept here:
    # event id -> sku -> [qty_milli, revenue, vat, discounts, highest unit price].
    staged: bool = False
    sku_lines: dict[uuid.UUID, dict[str, list[int]]] = field(default_factory=dict)
    sold_at: dict[uuid.UUID, datetime] = field(default_factory=dict)

    def bump(self, table: Table, key: tuple[Any, ...], **amounts: int) -> None:
        row = self.add[table.name].get(key)
        if row is None:
            self.add[table.name][key] = dict(amounts)
            return
        for name, value in amounts.items():
            row[name] = row.get(name, 0) + value

    def is_empty(self) -> bool:
        return not (self.add or self.last_price or self.shifts or self.ledger_events)

    # --- what each event contributes ---------------------------------------------

    def add_event(self, envelope: EventEnvelope, local_date: date) -> None:
        body = envelope.body
        if isinstance(body, ReceiptRecorded):
            self.receipt(
                envelope.event_id,
                envelope.branch,
                local_date,
                envelope.occurred_at,
                envelope.utc_offset_min,
                body,
            )
        elif isinstance(body, CustomerReturnRecorded):
            self.customer_return(
                envelope.event_id,
                envelope.branch,
                local_date,
                envelope.occurred_at,
                envelope.utc_offset_min,
                body,
            )
        elif isinstance(body, StockDocumentPosted):
            self.stock_document(envelope.event_id, body)

    def receipt(
        self,
        event_id: uuid.UUID,
        branch: str,
        local_date: date,
        occurred_at: datetime,
        utc_offset_min: int,
        body: ReceiptRecorded,
    ) -> None:
        hour = local_hour(occurred_at, utc_offset_min)
        per_sku = _per_sku(body)
        totals = {
            "receipts": 1,
            "qty_milli": sum(a["qty_milli"] for a in per_sku.values()),
            "revenue": sum(a["revenue"] for a in per_sku.values()),
            "vat": sum(a["vat"] for a in per_sku.values()),
            "discounts": sum(a["discounts"] for a in per_sku.values()),
        }
        self.bump(_t(SalesBranchDaily), (branch, local_date), **totals)
        self.bump(_t(SalesHourly), (branch, local_date, hour), **totals)
        manual = [line for line in body.lines if line.manual_discount]
        self.bump(
            _t(SalesCashierDaily),
            (branch, local_date, body.cashier),
            **totals,
            voided_lines=body.voided_lines,
            manual_discount_lines=len(manual),
            manual_discount_amount=sum(line.discount for line in manual),
        )
        if self.staged:
            self.sku_lines[event_id] = _staged_lines(body, per_sku)
            self.sold_at[event_id] = occurred_at
        else:
            for sku, amounts in per_sku.items():
                self.bump(_t(SalesProductDaily), (branch, local_date, sku), receipts=1, **amounts)
                self.bump(_t(SalesProductDailyChain), (local_date, sku), receipts=1, **amounts)
            for line in body.lines:
                key = (branch, line.sku)
                candidate = (occurred_at, line.unit_price)
                # Latest sale wins; ties go to the higher price, so any arrival order agrees.
                seen = self.last_price.get(key)
                if seen is None or candidate > seen:
                    self.last_price[key] = candidate
        for payment_type, amount in cash_net_of_change(body.payments, body.change).items():
            self.bump(
                _t(PaymentsDaily), (branch, local_date, payment_type), receipts=1, amount=amount
            )
            self.bump(_t(ShiftPaymentTotals), (branch, body.shift_id, payment_type), amount=amount)
        self.bump(_t(ShiftTotals), (branch, body.shift_id), receipts=1, sales=totals["revenue"])
        self._shift_seen(branch, body.shift_id, body.till, local_date)
        self.sale_events[event_id] = _SaleKeys(False, branch, local_date, hour, body.cashier)
        self.ledger_events[event_id] = ""

    def customer_return(
        self,
        event_id: uuid.UUID,
        branch: str,
        local_date: date,
        occurred_at: datetime,
        utc_offset_min: int,
        body: CustomerReturnRecorded,
    ) -> None:
        hour = local_hour(occurred_at, utc_offset_min)
        per_sku = _per_sku(body)
        totals = {
            "returns": 1,
            "returns_qty_milli": sum(a["qty_milli"] for a in per_sku.values()),
            "returns_amount": sum(a["revenue"] for a in per_sku.values()),
            "returns_vat": sum(a["vat"] for a in per_sku.values()),
        }
        self.bump(_t(SalesBranchDaily), (branch, local_date), **totals)
        self.bump(_t(SalesHourly), (branch, local_date, hour), **totals)
        self.bump(
            _t(SalesCashierDaily),
            (branch, local_date, body.cashier),
            **totals,
            no_receipt_returns=int(body.without_receipt),
        )
        if self.staged:
            self.sku_lines[event_id] = _staged_lines(body, per_sku)
        else:
            for sku, amounts in per_sku.items():
                product = {
                    "returns": 1,
                    "returns_qty_milli": amounts["qty_milli"],
                    "returns_amount": amounts["revenue"],
                    "returns_vat": amounts["vat"],
                }
                self.bump(_t(SalesProductDaily), (branch, local_date, sku), **product)
                self.bump(_t(SalesProductDailyChain), (local_date, sku), **product)
        for refund in body.refunds:
            self.bump(
                _t(PaymentsDaily),
                (branch, local_date, refund.type),
                refunds=1,
                refunds_amount=refund.amount,
            )
            self.bump(
                _t(ShiftPaymentTotals), (branch, body.shift_id, refund.type), refunds=refund.amount
            )
        self.bump(
            _t(ShiftTotals),
            (branch, body.shift_id),
            returns=1,
            returns_total=totals["returns_amount"],
            no_receipt_returns_total=totals["returns_amount"] if body.without_receipt else 0,
        )
        self._shift_seen(branch, body.shift_id, body.till, local_date)
        self.sale_events[event_id] = _SaleKeys(True, branch, local_date, hour, body.cashier)
        self.ledger_events[event_id] = ""

    def stock_document(self, event_id: uuid.UUID, body: StockDocumentPosted) -> None:
        reason = (body.reason or "") if body.doc_type == "write_off" else ""
        self.ledger_events[event_id] = reason[:64]

    def _shift_seen(self, branch: str, shift_id: str, till: str, local_date: date) -> None:
        seen = self.shifts.get((branch, shift_id))
        if seen is None or local_date < seen[1]:
            self.shifts[(branch, shift_id)] = (till, local_date)

    # --- costs from the ledger ------------------------------------------------------

    def file_ledger_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        """File ledger sums (event_id, branch, local_date, sku, doc_type, qty, value)."""
        movement = self.add[_t(StockMovementDaily).name]
        monthly = self.add[_t(StockMovementMonthly).name]
        branch_daily = self.add[_t(SalesBranchDaily).name]
        hourly = self.add[_t(SalesHourly).name]
        cashier = self.add[_t(SalesCashierDaily).name]
        product = self.add[_t(SalesProductDaily).name]
        chain = self.add[_t(SalesProductDailyChain).name]
        for event_id, branch, local_date, sku, doc_type, qty, value in rows:
            qty = int(qty)
            value = int(value)
            reason = self.ledger_events.get(event_id, "")
            _add_to(movement, (branch, local_date, sku, doc_type, reason), "qty_milli", qty)
            _add_to(movement, (branch, local_date, sku, doc_type, reason), "cost_value", value)
            month_key = (branch, month_of(local_date), sku, doc_type)
            _add_to(monthly, month_key, "qty_milli", qty)
            _add_to(monthly, month_key, "cost_value", value)
            keys = self.sale_events.get(event_id)
            if keys is None or doc_type == COST_CORRECTION:
                # A customer return's correction (it covered units sold below zero) is
                # cost of goods sold of its own, not the return's cost.
                continue
            # Outgoing sale value is negative in the ledger; cost of goods sold is positive.
            column = "returns_cost" if keys.returned else "cost"
            amount = value if keys.returned else -value
            date_key = keys.local_date
            _add_to(branch_daily, (keys.branch, date_key), column, amount)
            _add_to(hourly, (keys.branch, date_key, keys.hour), column, amount)
            _add_to(cashier, (keys.branch, date_key, keys.cashier), column, amount)
            _add_to(product, (keys.branch, date_key, sku), column, amount)
            _add_to(chain, (date_key, sku), column, amount)


def _add_to(
    rows: dict[tuple[Any, ...], dict[str, int]], key: tuple[Any, ...], name: str, amount: int
) -> None:
    row = rows.get(key)
    if row is None:
        rows[key] = {name: amount}
    else:
        row[name] = row.get(name, 0) + amount


def cash_net_of_change(payments: Sequence[Payment], change: int) -> dict[str, int]:
    """Amounts per payment type, the change taken off cash (else off the last payment),
    so that they add up to what the customer paid for the goods."""
    amounts: dict[str, int] = {}
    if not payments:
        return amounts
    for payment in payments:
        amounts[payment.type] = amounts.get(payment.type, 0) + payment.amount
    if change:
        payer = "cash" if "cash" in amounts else payments[-1].type
        amounts[payer] = amounts.get(payer, 0) - change
    return amounts


def _per_sku(body: ReceiptRecorded | CustomerReturnRecorded) -> dict[str, dict[str, int]]:
    per: dict[str, dict[str, int]] = {}
    for line in body.lines:
        amounts = per.setdefault(line.sku, {"qty_milli": 0, "revenue": 0, "vat": 0, "discounts": 0})
        amounts["qty_milli"] += line.quantity_milli
        amounts["revenue"] += line.line_total
        amounts["vat"] += vat_of(line.line_total, line.vat_rate_bp)
        amounts["discounts"] += line.discount
    return per


_NO_PRICE = -(1 << 62)


def _staged_lines(
    body: ReceiptRecorded | CustomerReturnRecorded, per_sku: dict[str, dict[str, int]]
) -> dict[str, list[int]]:
    """Per sku: [qty_milli, revenue, vat, discounts, highest unit price] of the event."""
    out = {
        sku: [a["qty_milli"], a["revenue"], a["vat"], a["discounts"], _NO_PRICE]
        for sku, a in per_sku.items()
    }
    for line in body.lines:
        row = out[line.sku]
        if line.unit_price > row[4]:
            row[4] = line.unit_price
    return out


def month_of(day: date) -> date:
    """The first day of the calendar month of ``day`` (the monthly summaries' key)."""
    return day.replace(day=1)


def local_hour(occurred_at: datetime, utc_offset_min: int) -> int:
    """The hour (0-23) on the branch's clock."""
    return (occurred_at + timedelta(minutes=utc_offset_min)).hour


# --- ingestion hooks -------------------------------------------------------------------


_DELTA_NOTE = "report_summary_delta"


@register_batch_handler(
    ReceiptRecorded, CustomerReturnRecorded, StockDocumentPosted, stage=EARLY_STAGE
)
async def prepare_summaries(
    session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
) -> None:
    """The batch's contribution, summed in Python before any shared row is locked."""
    delta = SummaryDelta(staged=session.get_bind().dialect.name == "postgresql")
    for ctx in contexts:
        delta.add_event(ctx.envelope, ctx.local_date)
    batch.notes[_DELTA_NOTE] = delta


@register_batch_handler(ReceiptRecorded, CustomerReturnRecorded, StockDocumentPosted)
async def project_summaries(
    session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
) -> None:
    """One batch's contribution, written after central's own handlers (default stage),
    so the stock ledger rows of the same events are there to take costs from."""
    delta: SummaryDelta | None = batch.notes.pop(_DELTA_NOTE, None)
    if delta is None:
        delta = SummaryDelta()
        for ctx in contexts:
            delta.add_event(ctx.envelope, ctx.local_date)
    if delta.is_empty():
        return
    sums: LedgerSums | None = batch.notes.get(LEDGER_SUMS)
    if delta.staged:
        if sums is None:
            # No stock handler ran before (not in central's own setup): read them back.
            rows = await session.run_sync(_ledger_rows, sorted(delta.ledger_events))
            sums = {}
            for event_id, branch, local_date, sku, doc_type, qty, value in rows:
                entry = sums.setdefault((event_id, doc_type), (branch, local_date, {}))
                entry[2][sku] = [int(qty), int(value)]
        await _flush_staged(session, delta, sums)
        return
    if sums is not None:
        # The stock handler (same event types, earlier stage) left this batch's ledger
        # rows summed: no need to read them back.
        delta.file_ledger_rows(
            (event_id, branch, local_date, sku, doc_type, qty, value)
            for (event_id, doc_type), (branch, local_date, skus) in sums.items()
            if event_id in delta.ledger_events
            for sku, (qty, value) in skus.items()
        )
        delta.ledger_filed = True
    await session.run_sync(flush_delta, delta)


# --- PostgreSQL: per-product tables summed by the database ---------------------------------
#
# Each batch COPYs its ledger sums (one row per event, sku and document type, with the
# event's line sums of that sku beside) into the backlog table; the applier then
# writes each per-product summary as one INSERT ... SELECT ... GROUP BY ... ORDER BY
# key ... ON CONFLICT DO UPDATE over a chunk of it (ids up to :upto). Same rows and
# sums as the Python delta, without summing them in Python or sending them as arrays.

_BACKLOG = SummaryBacklog.__tablename__
# COPY order of the backlog rows.
_BACKLOG_COLUMNS = (
    "branch",
    "local_date",
    "month",
    "sku",
    "doc_type",
    "reason",
    # 0 stock document, 1 sale (receipt), 2 customer return.
    "kind",
    "qty",
    "value",
    "lq",
    "revenue",
    "vat",
    "discounts",
    "sold_at",
    "price",
)
_CHUNK = "id <= :upto"
_KIND_DOCUMENT, _KIND_SALE, _KIND_RETURN = 0, 1, 2


def _staged_product_sql(table: str, keys: str) -> Any:
    sale = f"FILTER (WHERE kind = {_KIND_SALE})"
    ret = f"FILTER (WHERE kind = {_KIND_RETURN})"
    amounts = {
        "receipts": f"count(*) {sale}",
        "qty_milli": f"coalesce(sum(lq) {sale}, 0)",
        "revenue": f"coalesce(sum(revenue) {sale}, 0)",
        "vat": f"coalesce(sum(vat) {sale}, 0)",
        "discounts": f"coalesce(sum(discounts) {sale}, 0)",
        # Outgoing sale value is negative in the ledger; cost of goods sold is positive.
        "cost": f"coalesce(-sum(value) {sale}, 0)",
        "returns": f"count(*) {ret}",
        "returns_qty_milli": f"coalesce(sum(lq) {ret}, 0)",
        "returns_amount": f"coalesce(sum(revenue) {ret}, 0)",
        "returns_vat": f"coalesce(sum(vat) {ret}, 0)",
        "returns_cost": f"coalesce(sum(value) {ret}, 0)",
    }
    return text(
        f"INSERT INTO {table} AS t ({keys}, {', '.join(amounts)}) "
        f"SELECT {keys}, {', '.join(amounts.values())} FROM {_BACKLOG} "
        f"WHERE {_CHUNK} AND kind <> {_KIND_DOCUMENT} GROUP BY {keys} ORDER BY {keys} "
        f"ON CONFLICT ({keys}) DO UPDATE SET "
        + ", ".join(f"{n} = t.{n} + excluded.{n}" for n in amounts)
    )


def _staged_movement_sql(table: str, keys: str, staged_keys: str) -> Any:
    return text(
        f"INSERT INTO {table} AS t ({keys}, qty_milli, cost_value) "
        f"SELECT {staged_keys}, sum(qty), sum(value) FROM {_BACKLOG} "
        f"WHERE {_CHUNK} GROUP BY {staged_keys} ORDER BY {staged_keys} "
        f"ON CONFLICT ({keys}) DO UPDATE SET qty_milli = t.qty_milli + excluded.qty_milli, "
        "cost_value = t.cost_value + excluded.cost_value"
    )


_PG_STAGED: dict[str, Any] = {
    SalesProductDaily.__tablename__: _staged_product_sql(
        SalesProductDaily.__tablename__, "branch, local_date, sku"
    ),
    SalesProductDailyChain.__tablename__: _staged_product_sql(
        SalesProductDailyChain.__tablename__, "local_date, sku"
    ),
    StockMovementDaily.__tablename__: _staged_movement_sql(
        StockMovementDaily.__tablename__,
        "branch, local_date, sku, movement, reason",
        "branch, local_date, sku, doc_type, reason",
    ),
    StockMovementMonthly.__tablename__: _staged_movement_sql(
        StockMovementMonthly.__tablename__,
        "branch, month, sku, movement",
        "branch, month, sku, doc_type",
    ),
}
# Latest sale wins; ties go to the higher price (as the Python delta's last_price).
_PG_STAGED_PRICE = text(
    f"INSERT INTO {LastSellingPrice.__tablename__} AS t (branch, sku, sold_at, unit_price) "
    "SELECT DISTINCT ON (branch, sku) branch, sku, sold_at, price "
    f"FROM {_BACKLOG} WHERE {_CHUNK} AND kind = {_KIND_SALE} "
    "ORDER BY branch, sku, sold_at DESC, price DESC "
    "ON CONFLICT (branch, sku) DO UPDATE SET "
    "unit_price = CASE WHEN excluded.sold_at > t.sold_at OR (excluded.sold_at = t.sold_at "
    "AND excluded.unit_price > t.unit_price) THEN excluded.unit_price ELSE t.unit_price END, "
    "sold_at = CASE WHEN excluded.sold_at > t.sold_at OR (excluded.sold_at = t.sold_at "
    "AND excluded.unit_price > t.unit_price) THEN excluded.sold_at ELSE t.sold_at END"
)


async def _flush_staged(session: AsyncSession, delta: SummaryDelta, sums: LedgerSums) -> None:
    """PostgreSQL: the batch's ledger sums (with its line sums) into the backlog for
    the per-product tables, then the per-event tables from the delta."""
    records: list[tuple[Any, ...]] = []
    event_cost: dict[uuid.UUID, int] = {}
    months: dict[date, date] = {}
    no_lines: dict[str, list[int]] = {}
    nothing = (0, 0, 0, 0, None)
    ledger_events = delta.ledger_events
    sale_events = delta.sale_events
    for (event_id, doc_type), (branch, local_date, skus) in sums.items():
        reason = ledger_events.get(event_id)
        if reason is None:
            continue
        month = months.get(local_date)
        if month is None:
            month = months[local_date] = month_of(local_date)
        keys = sale_events.get(event_id)
        if keys is not None and doc_type == COST_CORRECTION:
            keys = None  # a customer return's correction: no line of the return
        if keys is None:
            kind, lines, sold_at, cost = _KIND_DOCUMENT, no_lines, None, 0
        else:
            kind = _KIND_RETURN if keys.returned else _KIND_SALE
            lines = delta.sku_lines.get(event_id, no_lines)
            sold_at = delta.sold_at.get(event_id)
            cost = 0
        for sku, (qty, value) in skus.items():
            line: Sequence[Any] = lines.get(sku, nothing)
            records.append(
                (
                    branch,
                    local_date,
                    month,
                    sku,
                    doc_type,
                    reason,
                    kind,
                    qty,
                    value,
                    line[0],
                    line[1],
                    line[2],
                    line[3],
                    sold_at,
                    line[4] if kind == _KIND_SALE else None,
                )
            )
            cost += value
        if keys is not None:
            # Outgoing sale value is negative in the ledger; cost of goods sold is positive.
            event_cost[event_id] = event_cost.get(event_id, 0) + (cost if keys.returned else -cost)
    # Costs of the per-event tables: one sum per event, filed three times.
    branch_daily = delta.add[_t(SalesBranchDaily).name]
    hourly = delta.add[_t(SalesHourly).name]
    cashier = delta.add[_t(SalesCashierDaily).name]
    for event_id, amount in event_cost.items():
        keys = sale_events[event_id]
        column = "returns_cost" if keys.returned else "cost"
        _add_to(branch_daily, (keys.branch, keys.local_date), column, amount)
        _add_to(hourly, (keys.branch, keys.local_date, keys.hour), column, amount)
        _add_to(cashier, (keys.branch, keys.local_date, keys.cashier), column, amount)
    delta.ledger_filed = True
    # The per-product rows wait in the backlog for the applier (first: the rebuild
    # locks the backlog before the summary tables, so must every writer).
    await copy_records(session, _BACKLOG, _BACKLOG_COLUMNS, records)
    await session.run_sync(_write_per_event, delta)


def _write_per_event(session: Session, delta: SummaryDelta) -> None:
    """The tables summed per event (branch-day, hour, cashier, payments, shifts): a few
    rows per branch and batch, written in the batch's own transaction."""
    for table in _TABLE_ORDER:
        if table.name in _PG_STAGED:
            continue
        rows = delta.add.get(table.name, {})
        if table.name == ShiftTotals.__tablename__:
            _write_shifts(session, table, delta, rows)
            continue
        _upsert_delta(session, table, rows)


# --- PostgreSQL: the backlog applied -------------------------------------------------------
#
# One applier at a time (a self-conflicting lock on the backlog, which ingestion's
# inserts do not wait for) adds a chunk of the backlog to the per-product tables and
# deletes it, in one REPEATABLE READ transaction: every statement, the DELETE included,
# sees the same rows (batches committing meanwhile wait for the next chunk), and a
# crash anywhere leaves the tables and the backlog as they were. Being the only writer
# of these tables (besides the rebuild, which locks the backlog first) is also what
# keeps the read-then-write statements of the monthly closing right.

# The tables that lag ingestion by the backlog.
BACKLOG_TABLES = frozenset(
    [*_PG_STAGED, StockClosingMonthly.__tablename__, LastSellingPrice.__tablename__]
)
# Taken before the transaction's first query, so its snapshot starts after the lock.
_LOCK_BACKLOG = f"LOCK TABLE {_BACKLOG} IN SHARE UPDATE EXCLUSIVE MODE"
_FIRST = text(f"SELECT id FROM {_BACKLOG} ORDER BY id LIMIT 1")
# The first id past the chunk.
_PAST_CHUNK = text(f"SELECT id FROM {_BACKLOG} ORDER BY id OFFSET :size LIMIT 1")
_DELETE_CHUNK = text(f"DELETE FROM {_BACKLOG} WHERE {_CHUNK}")
_WHOLE = 2**63 - 1
# lock_not_available
_LOCK_BUSY = "55P03"


class BacklogBusy(Exception):
    """Another applier (or a rebuild) holds the backlog."""


def apply_backlog(session: Session, *, limit: int, wait: bool) -> int:
    """Add up to ``limit`` backlog rows to the per-product tables and delete them, in
    the session's transaction, which must be REPEATABLE READ and not have run a query
    yet; returns how many. Raises :class:`BacklogBusy` when another applier is at work
    and ``wait`` is false (the transaction is then unusable: roll it back)."""
    try:
        session.execute(text(_LOCK_BACKLOG if wait else _LOCK_BACKLOG + " NOWAIT"))
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == _LOCK_BUSY:
            raise BacklogBusy from exc
        raise
    if session.execute(_FIRST).scalar() is None:
        return 0
    past = session.execute(_PAST_CHUNK, {"size": limit}).scalar()
    chunk = {"upto": _WHOLE if past is None else int(past) - 1}
    # Big chunks (a backlog after a burst) group in memory rather than on disk.
    session.execute(text("SET LOCAL work_mem = '64MB'"))
    for table in _TABLE_ORDER:
        staged = _PG_STAGED.get(table.name)
        if staged is None:
            continue
        session.execute(staged, chunk)
        if table.name == StockMovementMonthly.__tablename__:
            write_closing(session, None, upto=chunk["upto"])
    session.execute(_PG_STAGED_PRICE, chunk)
    result: Any = session.execute(_DELETE_CHUNK, chunk)
    return int(result.rowcount or 0)


_SET_ASIDE = text(
    f"WITH moved AS (DELETE FROM {_BACKLOG} WHERE id = (SELECT min(id) FROM {_BACKLOG}) "
    f"RETURNING id, {', '.join(_BACKLOG_COLUMNS)}) "
    f"INSERT INTO {SummaryRejected.__tablename__} "
    f"(id, {', '.join(_BACKLOG_COLUMNS)}, error, rejected_at) "
    f"SELECT id, {', '.join(_BACKLOG_COLUMNS)}, :error, now() FROM moved RETURNING id"
)


def set_aside_first(session: Session, error: str) -> int | None:
    """Move the backlog's first row to ``rpt_summary_rejected`` (it cannot be added
    alone); its id, or None when the backlog is empty. Same transaction rules as
    :func:`apply_backlog` (waits for an applier at work)."""
    session.execute(text(_LOCK_BACKLOG))
    moved = session.execute(_SET_ASIDE, {"error": error}).scalar()
    return None if moved is None else int(moved)


# --- writing ----------------------------------------------------------------------------


def _ledger_rows(session: Session, event_ids: Sequence[uuid.UUID]) -> list[Any]:
    m = StockMovement
    rows: list[Any] = []
    for start in range(0, len(event_ids), 1000):
        part = event_ids[start : start + 1000]
        rows.extend(
            session.execute(
                select(
                    m.event_id,
                    m.branch,
                    m.local_date,
                    m.sku,
                    m.doc_type,
                    func.sum(m.quantity_milli).label("qty"),
                    func.sum(m.value).label("value"),
                )
                .where(m.event_id.in_(part))
                .group_by(m.event_id, m.branch, m.local_date, m.sku, m.doc_type)
            )
        )
    return rows


def _insert(dialect: str, table: Table) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"summary upserts are not written for {dialect!r}")


def upsert_additive(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    additive: Sequence[str] | None = None,
    merge: Any = None,
) -> None:
    """INSERT rows, or add their ``additive`` amounts to the existing rows of the same
    key; ``merge(excluded)`` gives the SET clauses of the other columns.

    Rows must be unique by key (a delta is). The statement is the same for every
    batch, so it is compiled once and cached: on PostgreSQL one
    ``INSERT ... SELECT FROM unnest(arrays)`` (one round trip for the whole delta),
    elsewhere a single-row upsert run as executemany.
    """
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    # Every row must name the same columns.
    columns = sorted({name for row in rows for name in row})
    if dialect == "postgresql":
        arrays = {name: [row.get(name, 0) for row in rows] for name in columns}
        _upsert_arrays(session, table, arrays, additive=additive, merge=merge)
        return
    keys = list(_pk(table))
    stmt = _insert(dialect, table)
    excluded = stmt.excluded
    names = additive if additive is not None else [c for c in columns if c not in keys]
    set_: dict[str, Any] = {name: table.c[name] + excluded[name] for name in names}
    if merge is not None:
        set_.update(merge(table, excluded))
    upsert = stmt.on_conflict_do_update(index_elements=keys, set_=set_)
    session.execute(upsert, [{name: row.get(name, 0) for name in columns} for row in rows])


def _upsert_arrays(
    session: Session,
    table: Table,
    arrays: dict[str, list[Any]],
    *,
    additive: Sequence[str] | None = None,
    merge: Any = None,
) -> None:
    """PostgreSQL: one ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT`` for all rows."""
    keys = list(_pk(table))
    columns = sorted(arrays)
    pg = postgresql.insert(table)
    binds = [bindparam(f"a_{name}", type_=postgresql.ARRAY(table.c[name].type)) for name in columns]
    source = select(func.unnest(*binds).table_valued(*columns).render_derived(name="u"))
    stmt = pg.from_select(columns, source)
    excluded = stmt.excluded
    names = additive if additive is not None else [c for c in columns if c not in keys]
    set_: dict[str, Any] = {name: table.c[name] + excluded[name] for name in names}
    if merge is not None:
        set_.update(merge(table, excluded))
    upsert = stmt.on_conflict_do_update(index_elements=keys, set_=set_)
    session.execute(upsert, {f"a_{name}": arrays[name] for name in columns})


def _upsert_delta(
    session: Session, table: Table, rows: dict[tuple[Any, ...], dict[str, int]]
) -> None:
    """Additive upsert of one table's part of a delta, keys sorted (the lock order)."""
    if not rows:
        return
    if session.get_bind().dialect.name != "postgresql":
        keys = _pk(table)
        upsert_additive(
            session,
            table,
            [dict(zip(keys, key, strict=True), **rows[key]) for key in sorted(rows)],
        )
        return
    ordered = sorted(rows)
    amounts = [rows[key] for key in ordered]
    names = sorted({name for row in amounts for name in row})
    # Columns straight from the delta: no per-row dicts on the hot path.
    arrays: dict[str, list[Any]] = {
        name: [key[i] for key in ordered] for i, name in enumerate(_pk(table))
    }
    for name in names:
        arrays[name] = [row.get(name, 0) for row in amounts]
    _upsert_arrays(session, table, arrays)


def _merge_shift(table: Table, excluded: Any) -> dict[str, Any]:
    c = table.c
    return {
        "till": case((c.till == "", excluded.till), else_=c.till),
        "local_date": case(
            (excluded.local_date < c.local_date, excluded.local_date), else_=c.local_date
        ),
    }


def _merge_price(table: Table, excluded: Any) -> dict[str, Any]:
    c = table.c
    newer = or_(
        excluded.sold_at > c.sold_at,
        and_(excluded.sold_at == c.sold_at, excluded.unit_price > c.unit_price),
    )
    return {
        "unit_price": case((newer, excluded.unit_price), else_=c.unit_price),
        "sold_at": case((newer, excluded.sold_at), else_=c.sold_at),
    }


def _write_shifts(
    session: Session,
    table: Table,
    delta: SummaryDelta,
    rows: dict[tuple[Any, ...], dict[str, int]],
) -> None:
    shift_keys = sorted(set(rows) | set(delta.shifts))
    upsert_additive(
        session,
        table,
        [
            {
                "branch": k[0],
                "shift_id": k[1],
                "till": delta.shifts[k][0],
                "local_date": delta.shifts[k][1],
                **rows.get(k, {}),
            }
            for k in shift_keys
        ],
        additive=("receipts", "sales", "returns", "returns_total", "no_receipt_returns_total"),
        merge=_merge_shift,
    )


def flush_delta(session: Session, delta: SummaryDelta) -> None:
    """Write a delta: ledger costs first read, then every table in the fixed order."""
    if delta.ledger_events and not delta.ledger_filed:
        delta.file_ledger_rows(_ledger_rows(session, sorted(delta.ledger_events)))
    for table in _TABLE_ORDER:
        rows = delta.add.get(table.name, {})
        if table.name == ShiftTotals.__tablename__:
            _write_shifts(session, table, delta, rows)
            continue
        _upsert_delta(session, table, rows)
        if table.name == StockMovementMonthly.__tablename__:
            write_closing(session, closing_deltas(rows))
    prices = delta.last_price
    if not prices:
        return
    ordered = sorted(prices)
    if session.get_bind().dialect.name == "postgresql":
        seen = [prices[k] for k in ordered]
        _upsert_arrays(
            session,
            _t(LastSellingPrice),
            {
                "branch": [k[0] for k in ordered],
                "sku": [k[1] for k in ordered],
                "sold_at": [p[0] for p in seen],
                "unit_price": [p[1] for p in seen],
            },
            additive=(),
            merge=_merge_price,
        )
        return
    upsert_additive(
        session,
        _t(LastSellingPrice),
        [
            {"branch": k[0], "sku": k[1], "sold_at": prices[k][0], "unit_price": prices[k][1]}
            for k in ordered
        ],
        additive=(),
        merge=_merge_price,
    )


# --- closing stock per month ----------------------------------------------------------------
#
# rpt_stock_closing_monthly holds, per (branch, sku), the closing of every month in which
# the product moved. A batch's movements of month m change the closing of m and of every
# later month that has a row. Two statements per batch, whatever its size:
#   1. the row of (branch, sku, m): the latest row at or before m (the row itself when
#      it exists, else the closing carried over from an earlier month, else 0) + delta;
#   2. every existing row of (branch, sku) with month > m: + delta (late or out-of-order
#      events).
# Both read rows of the same (branch, sku) before writing them, which is safe because
# the stock handler (stage 10, earlier in this transaction) holds the FOR UPDATE lock
# of every (branch, sku) balance row this batch moves until commit: no two workers
# ever touch the closing rows of one (branch, sku) at the same time. This projection
# must therefore keep running after the stock handler (it does: default stage).

_CLOSING = StockClosingMonthly.__tablename__
# Upper end of the last range of a product: every later month.
_NO_END = date(9999, 12, 31)
# SQLite runs each statement row by row (executemany), each row seeing the previous
# ones: later rows first (step 2 on the rows as they were), then the batch's months in
# ascending order, each reading the latest row at or before it, already up to date.
_SQLITE_CLOSING_LATER = text(
    f"UPDATE {_CLOSING} SET qty_milli = qty_milli + :dq, value = value + :dv "
    "WHERE branch = :branch AND sku = :sku AND month > :month"
).bindparams(bindparam("month", type_=Date))
_SQLITE_CLOSING_UPSERT = text(
    f"INSERT INTO {_CLOSING} (branch, sku, month, qty_milli, value) "
    "SELECT :branch, :sku, :month, coalesce(max(p.qty_milli), 0) + :dq, "
    "coalesce(max(p.value), 0) + :dv "
    f"FROM (SELECT c.qty_milli, c.value FROM {_CLOSING} AS c "
    "      WHERE c.branch = :branch AND c.sku = :sku AND c.month <= :month "
    "      ORDER BY c.month DESC LIMIT 1) AS p "
    # WHERE true: SQLite's parser needs it between INSERT ... SELECT and ON CONFLICT.
    "WHERE true "
    "ON CONFLICT (branch, sku, month) DO UPDATE "
    "SET qty_milli = excluded.qty_milli, value = excluded.value"
).bindparams(bindparam("month", type_=Date))


# PostgreSQL: the batch's deltas per (branch, sku, month) are COPYed into a staged
# table (see Stage) that both statements read.
_CLOSING_STAGE = Stage(
    "ingest_closing_stage",
    (
        ("branch", "text"),
        ("sku", "text"),
        ("month", "date"),
        ("dq", "bigint"),
        ("dv", "bigint"),
    ),
)
# One statement, one snapshot: every row reads the table as it was before the batch,
# and step 2 (next statement) then adds the earlier months' deltas to the rows of later
# months, new ones included.
_PG_CLOSING_UPSERT_STAGED = text(
    f"INSERT INTO {_CLOSING} (branch, sku, month, qty_milli, value) "
    "SELECT u.branch, u.sku, u.month, coalesce(p.qty_milli, 0) + u.dq, "
    "coalesce(p.value, 0) + u.dv "
    f"FROM {_CLOSING_STAGE.name} AS u "
    "LEFT JOIN LATERAL (SELECT c.qty_milli, c.value "
    f"  FROM {_CLOSING} AS c "
    "  WHERE c.branch = u.branch AND c.sku = u.sku AND c.month <= u.month "
    "  ORDER BY c.month DESC LIMIT 1) AS p ON true "
    "ORDER BY u.branch, u.sku, u.month "
    "ON CONFLICT (branch, sku, month) DO UPDATE "
    "SET qty_milli = excluded.qty_milli, value = excluded.value"
)
# Step 2 as an upsert of rows that all exist: each (branch, sku) range of later months
# is walked through its key by a lateral subquery (OFFSET 0 keeps it from being
# flattened into a join the planner could answer with a scan of the whole table),
# and every row found is written back by its key. The ranges of one (branch, sku)
# are disjoint, (month of the batch, next month of the batch] (lead() over the
# product's months), each adding the batch's movements up to and including its lower
# end (a running sum): a row is written once.
_PG_CLOSING_LATER_STAGED = text(
    f"INSERT INTO {_CLOSING} (branch, sku, month, qty_milli, value) "
    "SELECT u.branch, u.sku, c.month, c.qty_milli + u.cq, c.value + u.cv "
    "FROM (SELECT s.branch, s.sku, s.month AS after, "
    f"  coalesce(lead(s.month) OVER w, DATE '{_NO_END.isoformat()}') AS until, "
    "  CAST(sum(s.dq) OVER w AS bigint) AS cq, CAST(sum(s.dv) OVER w AS bigint) AS cv "
    f"  FROM {_CLOSING_STAGE.name} AS s "
    "  WINDOW w AS (PARTITION BY s.branch, s.sku ORDER BY s.month "
    "  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS u "
    "CROSS JOIN LATERAL (SELECT c.month, c.qty_milli, c.value "
    f"  FROM {_CLOSING} AS c "
    "  WHERE c.branch = u.branch AND c.sku = u.sku AND c.month > u.after "
    "  AND c.month <= u.until OFFSET 0) AS c "
    "ORDER BY u.branch, u.sku, c.month "
    "ON CONFLICT (branch, sku, month) DO UPDATE "
    "SET qty_milli = excluded.qty_milli, value = excluded.value"
)


# The summary stage's rows summed per (branch, sku, month), without a round trip.
_PG_CLOSING_FROM_SUMMARY = text(
    f"INSERT INTO {_CLOSING_STAGE.name} (branch, sku, month, dq, dv) "
    "SELECT branch, sku, month, CAST(sum(qty) AS bigint), CAST(sum(value) AS bigint) "
    f"FROM {_BACKLOG} WHERE {_CHUNK} GROUP BY branch, sku, month"
)


def closing_deltas(
    monthly: dict[tuple[Any, ...], dict[str, int]],
) -> dict[tuple[str, str, date], tuple[int, int]]:
    """The monthly movement delta ((branch, month, sku, kind) -> amounts) summed per
    (branch, sku, month): what the batch adds to that month's closing (qty, value)."""
    out: dict[tuple[str, str, date], tuple[int, int]] = {}
    for (branch, month, sku, _kind), amounts in monthly.items():
        key = (branch, sku, month)
        qty, value = out.get(key, (0, 0))
        out[key] = (qty + amounts.get("qty_milli", 0), value + amounts.get("cost_value", 0))
    return out


def write_closing(
    session: Session,
    deltas: dict[tuple[str, str, date], tuple[int, int]] | None,
    *,
    upto: int = 0,
) -> None:
    """Add a batch's movements to the monthly closing stock (see the note above):
    ``deltas`` per (branch, sku, month), or None (PostgreSQL) for the backlog's rows
    with ids up to ``upto`` summed per (branch, sku, month) in the database."""
    if deltas is None:
        _CLOSING_STAGE.clear_sync(session)
        session.execute(_PG_CLOSING_FROM_SUMMARY, {"upto": upto})
    elif not deltas:
        return
    elif session.get_bind().dialect.name == "postgresql":
        _CLOSING_STAGE.fill_sync(session, [(*k, *deltas[k]) for k in sorted(deltas)])
    else:
        _write_closing_sqlite(session, deltas)
        return
    session.execute(_PG_CLOSING_UPSERT_STAGED)
    session.execute(_PG_CLOSING_LATER_STAGED)


def _write_closing_sqlite(
    session: Session, deltas: dict[tuple[str, str, date], tuple[int, int]]
) -> None:
    keys = sorted(deltas)
    rows = [
        {"branch": k[0], "sku": k[1], "month": k[2], "dq": deltas[k][0], "dv": deltas[k][1]}
        for k in keys
    ]
    session.execute(_SQLITE_CLOSING_LATER, rows)
    session.execute(_SQLITE_CLOSING_UPSERT, rows)
