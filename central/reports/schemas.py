"""Bodies of the report routes (msgspec Structs, shown in the OpenAPI schema).

Money in integer minor units, quantities in integer thousandths (``*_milli``),
percentages as decimal text. The CSV form of each report has the same columns.
"""

from __future__ import annotations

from datetime import date, datetime

import msgspec

__all__ = [
    "AbcReport",
    "AbcRow",
    "LossPreventionReport",
    "LossPreventionRow",
    "MarginFigures",
    "MarginReport",
    "MarginRow",
    "SalesFigures",
    "SalesReport",
    "SalesRow",
    "ShiftDifference",
    "ShiftReconciliationReport",
    "ShiftRow",
    "ShrinkageReport",
    "ShrinkageRow",
    "StockMovementReport",
    "StockMovementRow",
    "StockOnHandReport",
    "StockOnHandRow",
    "SyncHealthReport",
    "SyncHealthRow",
    "WriteOffReport",
    "WriteOffRow",
]


class SalesFigures(msgspec.Struct, kw_only=True):
    # Receipts of the group; for a product: receipts holding it. None where it cannot
    # be told from the group (a category, a payment type's goods).
    receipts: int | None
    # revenue / receipts, half-up.
    avg_basket: int | None
    qty_milli: int | None
    # Line totals including VAT, after discounts.
    revenue: int
    vat: int | None
    # revenue - vat
    net_of_vat: int | None
    discounts: int | None
    returns: int
    returns_amount: int
    returns_vat: int | None
    # revenue - returns_amount
    net_sales: int


class SalesRow(msgspec.Struct, kw_only=True):
    branch: str | None = None
    local_date: date | None = None
    hour: int | None = None
    cashier: str | None = None
    sku: str | None = None
    category: str | None = None
    payment_type: str | None = None
    figures: SalesFigures
    # The same group in the previous period (same length, immediately before).
    previous: SalesFigures | None = None


class SalesReport(msgspec.Struct, kw_only=True):
    date_from: date
    date_to: date
    previous_from: date | None
    previous_to: date | None
    branch: str | None
    group_by: list[str]
    rows: list[SalesRow]
    totals: SalesFigures
    previous_totals: SalesFigures | None


class StockOnHandRow(msgspec.Struct, kw_only=True):
    branch: str | None = None
    sku: str | None = None
    qty_milli: int
    value_at_cost: int
    # qty x the retail unit price, half-up per branch and product.
    value_at_retail: int
    # The retail unit price of a row holding one balance (one product at one branch,
    # whatever the grouping); None on a row summing several, and without a price.
    unit_price: int | None = None
    # head_office: head office's selling price in force for the branch; last_sale: the
    # branch's last selling price (head office has none); mixed: both, over the rows
    # summed here; None: no price known.
    retail_price_source: str | None = None
    # Of qty_milli and value_at_cost, what has no retail price at all (neither head
    # office's nor a last sale's): counted at 0 in value_at_retail, so a person can tell
    # "worth nothing at retail" from "not priced".
    unpriced_qty_milli: int = 0
    unpriced_value_at_cost: int = 0


class StockOnHandReport(msgspec.Struct, kw_only=True):
    branch: str | None
    group_by: list[str]
    rows: list[StockOnHandRow]
    totals: StockOnHandRow


class StockMovementRow(msgspec.Struct):
    """opening + goods_received + transfers_in + customer_returns - transfers_out - sales
    - supplier_returns - write_offs + stocktake_difference + cost_corrections + other =
    closing. Cost corrections change only values (their quantity is always 0): units sold
    while stock was negative, revalued at the cost of the goods that later covered them.

    Positional (not keyword-only) so the report builds its thousands of rows straight
    from the query's; ``branch`` or ``sku`` is null when the report is not grouped by it.
    """

    branch: str | None
    sku: str | None
    opening_milli: int
    goods_received_milli: int
    transfers_in_milli: int
    customer_returns_milli: int
    transfers_out_milli: int
    sales_milli: int
    supplier_returns_milli: int
    write_offs_milli: int
    stocktake_difference_milli: int
    cost_corrections_milli: int
    other_milli: int
    closing_milli: int
    opening_value: int
    goods_received_value: int
    transfers_in_value: int
    customer_returns_value: int
    transfers_out_value: int
    sales_value: int
    supplier_returns_value: int
    write_offs_value: int
    stocktake_difference_value: int
    cost_corrections_value: int
    other_value: int
    closing_value: int


class StockMovementReport(msgspec.Struct, kw_only=True):
    date_from: date
    date_to: date
    branch: str | None
    group_by: list[str]
    rows: list[StockMovementRow]
    totals: StockMovementRow


class MarginFigures(msgspec.Struct, kw_only=True):
    # Sales net of VAT and of customer returns.
    net_sales: int
    # Cost of goods sold at moving average cost, net of returned goods, plus the cost
    # corrections below.
    cost_of_goods_sold: int
    margin: int
    # margin / net_sales x 100, two decimals.
    margin_pct: str | None
    # Part of cost_of_goods_sold: goods sold while stock was negative (at the average
    # of the time, 0 if none), revalued at the cost of the goods received after them.
    cost_corrections: int = 0


class MarginRow(msgspec.Struct, kw_only=True):
    branch: str | None = None
    category: str | None = None
    sku: str | None = None
    figures: MarginFigures


class MarginReport(msgspec.Struct, kw_only=True):
    date_from: date
    date_to: date
    branch: str | None
    group_by: list[str]
    rows: list[MarginRow]
    totals: MarginFigures


class AbcRow(msgspec.Struct, kw_only=True):
    sku: str
    value: int
    share_pct: str | None
    cumulative_pct: str | None
    abc_class: str


class AbcReport(msgspec.Struct, kw_only=True):
    date_from: date
    date_to: date
    branch: str | None
    measure: str
    a_pct: int
    b_pct: int
    total: int
    rows: list[AbcRow]


class WriteOffRow(msgspec.Struct, kw_only=True):
    branch: str | None = None
    reason: str | None = None
    sku: str | None = None
    qty_milli: int
    value: int


class WriteOffReport(msgspec.Struct, kw_only=True):
    date_from: date
    date_to: date
    branch: str | None
    group_by: list[str]
    rows: list[WriteOffRow]
    totals: WriteOffRow


class ShrinkageRow(msgspec.Struct, kw_only=True):
    branch: str | None = None
    sku: str | None = None
    # Counted below the books (positive numbers), counted above, and the net.
    loss_milli: int
    loss_value: int
    gain_milli: int
    gain_value: int
    net_milli: int
    net_value: int


class ShrinkageReport(msgspec.Struct, kw_only=True):
    date_from: date
    date_to: date
    branch: str | None
    group_by: list[str]
    rows: list[ShrinkageRow]
    totals: ShrinkageRow


class ShiftDifference(msgspec.Struct, kw_only=True):
    # receipts, sales, returns, payment:<type>; id_conflicts (openings and closings
    # sent under the shift's id that central filed apart: recorded 0, reported their number)
    field: str
    # agent (the till's closing count) or fiscal_printer (the Z report); central
    source: str
    recorded: int | None
    reported: int | None
    # reported - recorded
    difference: int | None


class ShiftRow(msgspec.Struct, kw_only=True):
    branch: str
    shift_id: str
    till: str
    cashier: str
    local_date: date | None
    closed: bool
    z_report_number: int | None
    recorded_receipts: int
    recorded_sales: int
    recorded_returns_total: int
    reported_receipts: int | None
    reported_sales: int | None
    reported_returns_total: int | None
    z_receipts: int | None
    z_turnover: int | None
    z_storno: int | None
    differences: list[ShiftDifference]
    # Openings and closings under this id not filed into the shift (another shift's, a
    # second closing): GET /api/v1/shifts lists them.
    id_conflicts: int = 0
    # Of recorded_returns_total, the returns without receipt: the printer prints no storno
    # for them, so the fiscal printer's storno is compared with the rest.
    recorded_no_receipt_returns_total: int = 0
    # The drawer at the close: the till's expected cash, the cashier's count, and counted
    # - expected (cash over > 0, short < 0); None when not counted.
    expected_cash: int | None = None
    counted_cash: int | None = None
    cash_difference: int | None = None
    # Closed without Z figures by the store manager's decision: whether a Z report was
    # printed at all (False: none; True: on the old printer, figures unread). None: the
    # close carries the Z, no fiscal printer, or an agent from before.
    z_printed: bool | None = None


class ShiftReconciliationReport(msgspec.Struct, kw_only=True):
    date_from: date
    date_to: date
    branch: str | None
    shifts: int
    shifts_with_differences: int
    rows: list[ShiftRow]
    # Of the rows, the shifts whose cash was counted, and their cash over (> 0) or
    # short (< 0) summed: what the drawers held beyond what the tills expected.
    counted_shifts: int = 0
    cash_difference_total: int = 0


class LossPreventionRow(msgspec.Struct, kw_only=True):
    branch: str
    cashier: str
    receipts: int
    voided_lines: int
    returns: int
    returns_amount: int
    manual_discount_lines: int
    manual_discount_amount: int
    # Per 100 receipts, two decimals.
    voided_lines_rate: str | None
    returns_rate: str | None
    manual_discounts_rate: str | None
    # voided_lines, returns, manual_discounts, no_receipt_returns: the rates at least
    # factor x the median.
    flags: list[str]
    # Returns without receipt (counted in returns too): the classic fraud path.
    no_receipt_returns: int = 0
    no_receipt_returns_rate: str | None = None


class LossPreventionReport(msgspec.Struct, kw_only=True):
    date_from: date
    date_to: date
    branch: str | None
    factor: int
    min_count: int
    median_voided_lines_rate: str | None
    median_returns_rate: str | None
    median_manual_discounts_rate: str | None
    rows: list[LossPreventionRow]
    median_no_receipt_returns_rate: str | None = None


class SyncHealthRow(msgspec.Struct, kw_only=True):
    branch: str
    name: str
    active: bool
    last_event_at: datetime | None
    last_received_at: datetime | None
    # Seconds since central last stored an event of the branch.
    receive_age_s: int | None
    contiguous_seq: int
    max_seq: int
    # Events the branch has recorded that central has not stored in order yet.
    seq_lag: int | None
    heartbeat_at: datetime | None
    heartbeat_age_s: int | None
    outbox_backlog: int | None
    applied_version: int | None
    agent_version: str | None
    open_dead_letters: int
    # Of those, a till's retry recorded again by a restored agent database: the
    # customer may have been charged twice (README: A till's retry of a sale the
    # restore lost).
    recorded_again_open: int = 0
    # Events the branch holds because they are bigger than its NATS server's
    # max_payload (sequence numbers, from the heartbeat): raise the server's limit.
    outbox_held: list[int] = []
    # The branch's agent database was last replaced then (its server, its disk), or
    # restored from a backup (agent_restart_reason "new_database" or
    # "restored_database"), and this many events of the earlier one never reached
    # central (lost with it).
    agent_replaced_at: datetime | None = None
    lost_events: int = 0
    agent_restart_reason: str | None = None
    # The store server's clock ahead of central's (ms; negative: behind), as its agent
    # last measured it; clock_off: by more than a minute (its sales are dated by it).
    clock_offset_ms: int | None = None
    clock_off: bool = False
    # Another agent database of the branch asked to be numbered while one ran, last
    # then (within the last two minutes: it still waits, sending nothing); two servers
    # of one store running at once.
    agent_conflict_at: datetime | None = None
    # The version of central's last master-data publication, and whether the branch
    # applied every published change (applied_version >= published_version).
    published_version: int = 0
    up_to_date: bool = False
    # Central's record of the branch's time zone, the one its agent reported (None: not
    # said), and whether they differ (local-time prices and local days shifted).
    timezone: str = "UTC"
    agent_timezone: str | None = None
    timezone_mismatch: bool = False


class SyncHealthReport(msgspec.Struct, kw_only=True):
    generated_at: datetime
    rows: list[SyncHealthRow]
    # PostgreSQL: per-product summary rows stored by ingestion, not yet in the report
    # tables (applied every few seconds and before each report; 0 on SQLite).
    summary_backlog: int = 0
    # Backlog rows set aside because they could not be added (a sum beyond 64 bits):
    # their events are stored, the reports leave them out (rpt_summary_rejected).
    summary_rejected: int = 0
