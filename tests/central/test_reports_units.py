"""Exact arithmetic and CSV text of the reports (no database)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal

import msgspec
import pytest

from central.reports import schemas
from central.reports.csv_out import COUNT_FIELDS, report_csv, report_filename
from central.reports.money import ratio_text, rounded_div, vat_of
from central.reports.projections import cash_net_of_change
from central.reports.schemas import (
    SalesFigures,
    SalesReport,
    SalesRow,
    ShiftDifference,
    ShiftReconciliationReport,
    ShiftRow,
    SyncHealthReport,
    SyncHealthRow,
    WriteOffReport,
    WriteOffRow,
)
from protocol.events import Payment


def test_vat_is_half_up_per_line_against_decimal() -> None:
    for rate in (0, 500, 700, 1000, 1900, 2000, 2100, 2500):
        for total in range(0, 3000, 7):
            exact = Decimal(total) * rate / (10000 + rate)
            assert vat_of(total, rate) == int(exact.quantize(Decimal(1), ROUND_HALF_UP))
    assert vat_of(537, 2000) == 90  # 89.5 rounds up
    assert vat_of(249, 2000) == 42  # 41.5 rounds up


def test_rounded_div_rounds_half_away_from_zero() -> None:
    assert [rounded_div(n, 2) for n in (-3, -1, 1, 3)] == [-2, -1, 1, 2]
    assert rounded_div(-1_500, 1000) == -2
    assert rounded_div(7, 0) == 0
    assert ratio_text(90200, 2321) == "38.86"
    assert ratio_text(1, 0) is None


def test_change_comes_off_cash_else_the_last_payment() -> None:
    cash = (Payment(type="credit_card", amount=500), Payment(type="cash", amount=1000))
    assert cash_net_of_change(cash, 100) == {"credit_card": 500, "cash": 900}
    card = (Payment(type="voucher", amount=500), Payment(type="credit_card", amount=600))
    assert cash_net_of_change(card, 100) == {"voucher": 500, "credit_card": 500}
    assert cash_net_of_change((), 0) == {}


def sales_report(
    rows: list[SalesRow], group_by: list[str], *, compared: bool = False
) -> SalesReport:
    zero = SalesFigures(
        receipts=0,
        avg_basket=0,
        qty_milli=0,
        revenue=0,
        vat=0,
        net_of_vat=0,
        discounts=0,
        returns=0,
        returns_amount=0,
        returns_vat=0,
        net_sales=0,
    )
    return SalesReport(
        date_from=date(2026, 11, 2),
        date_to=date(2026, 11, 2),
        previous_from=date(2026, 11, 1) if compared else None,
        previous_to=date(2026, 11, 1) if compared else None,
        branch=None,
        group_by=group_by,
        rows=rows,
        totals=zero,
        previous_totals=zero if compared else None,
    )


def test_csv_money_and_quantities_are_exact_decimal_text() -> None:
    figures = SalesFigures(
        receipts=3,
        avg_basket=1022,
        qty_milli=7754,
        revenue=3065,
        vat=335,
        net_of_vat=2730,
        discounts=60,
        returns=1,
        returns_amount=450,
        returns_vat=41,
        net_sales=2615,
    )
    text = report_csv(
        sales_report(
            [SalesRow(branch="B1", local_date=date(2026, 11, 2), figures=figures)],
            ["branch", "day"],
        )
    )
    header, row = text.decode().splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert values["local_date"] == "2026-11-02"
    assert (values["receipts"], values["qty"], values["revenue"], values["avg_basket"]) == (
        "3",
        "7.754",
        "30.65",
        "10.22",
    )
    assert "previous_revenue" not in values
    assert "hour" not in values


def test_csv_shift_differences_show_money_as_decimal_text_and_counts_as_counts() -> None:
    row = ShiftRow(
        branch="B1",
        shift_id="S1",
        till="T1",
        cashier="ann",
        local_date=date(2026, 11, 2),
        closed=True,
        z_report_number=7,
        recorded_receipts=3,
        recorded_sales=1099,
        recorded_returns_total=0,
        reported_receipts=4,
        reported_sales=1000,
        reported_returns_total=0,
        z_receipts=None,
        z_turnover=None,
        z_storno=None,
        differences=[
            ShiftDifference(field="receipts", source="agent", recorded=3, reported=4, difference=1),
            ShiftDifference(
                field="sales", source="agent", recorded=1099, reported=1000, difference=-99
            ),
            ShiftDifference(
                field="returns", source="fiscal_printer", recorded=450, reported=0, difference=-450
            ),
            ShiftDifference(
                field="payment:card", source="agent", recorded=None, reported=5, difference=None
            ),
        ],
    )
    report = ShiftReconciliationReport(
        date_from=date(2026, 11, 2),
        date_to=date(2026, 11, 2),
        branch="B1",
        shifts=1,
        shifts_with_differences=1,
        rows=[row],
    )
    rows = list(csv.DictReader(io.StringIO(report_csv(report).decode())))
    assert rows[0]["recorded_sales"] == "10.99"
    assert rows[0]["differences"] == (
        "field=receipts source=agent recorded=3 reported=4 difference=1; "
        "field=sales source=agent recorded=10.99 reported=10.00 difference=-0.99; "
        "field=returns source=fiscal_printer recorded=4.50 reported=0.00 difference=-4.50; "
        "field=payment:card source=agent recorded= reported=0.05 difference="
    )


def header_of(report: object) -> list[str]:
    return report_csv(report).decode().splitlines()[0].split(",")


def test_csv_columns_follow_the_request_not_the_data() -> None:
    """A spreadsheet import reads every day's file: the columns do not change with what
    sold (a payment type's empty figures, a comparison whose previous period had
    nothing), and an empty report still has its header."""
    card = SalesRow(
        payment_type="card",
        figures=SalesFigures(
            receipts=None,
            avg_basket=None,
            qty_milli=None,
            revenue=500,
            vat=None,
            net_of_vat=None,
            discounts=None,
            returns=0,
            returns_amount=0,
            returns_vat=None,
            net_sales=500,
        ),
    )
    empty = sales_report([], ["payment_type"], compared=True)
    full = sales_report([card], ["payment_type"], compared=True)
    assert header_of(empty) == header_of(full)
    assert report_csv(empty).decode().count("\n") == 1
    header = header_of(full)
    assert header[0] == "payment_type"
    assert {"qty", "vat", "discounts", "previous_revenue", "previous_net_sales"} <= set(header)
    assert not {"branch", "local_date"} & set(header)
    (line,) = list(csv.DictReader(io.StringIO(report_csv(full).decode())))
    assert (line["revenue"], line["vat"], line["previous_revenue"]) == ("5.00", "", "")
    # Without a comparison there are no previous_* columns at all.
    assert not [c for c in header_of(sales_report([card], ["payment_type"])) if "previous" in c]


def test_csv_of_an_empty_grouped_report_names_its_grouping_columns() -> None:
    zero = WriteOffRow(qty_milli=0, value=0)
    report = WriteOffReport(
        date_from=date(2025, 1, 1),
        date_to=date(2025, 1, 2),
        branch=None,
        group_by=["reason", "branch"],
        rows=[],
        totals=zero,
    )
    assert header_of(report) == ["branch", "reason", "qty", "value"]


def test_csv_file_names_carry_the_period_and_branch() -> None:
    report = sales_report([], ["branch"])
    assert report_filename(report, "sales") == "sales_2026-11-02.csv"
    report.date_to = date(2026, 11, 30)
    report.branch = "B001"
    assert report_filename(report, "sales") == "sales_2026-11-02_2026-11-30_B001.csv"
    health = SyncHealthReport(generated_at=datetime(2026, 11, 2, tzinfo=UTC), rows=[])
    assert report_filename(health, "sync-health") == "sync-health.csv"


def test_csv_versions_are_counts_not_money() -> None:
    row = SyncHealthRow(
        branch="B1",
        name="One",
        active=True,
        last_event_at=None,
        last_received_at=None,
        receive_age_s=None,
        contiguous_seq=5,
        max_seq=5,
        seq_lag=0,
        heartbeat_at=None,
        heartbeat_age_s=None,
        outbox_backlog=0,
        applied_version=13,
        agent_version=None,
        open_dead_letters=0,
        published_version=13,
    )
    report = SyncHealthReport(generated_at=datetime(2026, 11, 2, tzinfo=UTC), rows=[row])
    (line,) = list(csv.DictReader(io.StringIO(report_csv(report).decode())))
    assert (line["applied_version"], line["published_version"]) == ("13", "13")


# Integer fields of report rows that are money (minor units, shown as "12.34").
MONEY_FIELDS = {
    "avg_basket",
    "revenue",
    "vat",
    "net_of_vat",
    "discounts",
    "returns_amount",
    "returns_vat",
    "net_sales",
    "value_at_cost",
    "value_at_retail",
    "unit_price",
    "unpriced_value_at_cost",
    "cost_of_goods_sold",
    "margin",
    "cost_corrections",
    "value",
    "total",
    "loss_value",
    "gain_value",
    "net_value",
    "recorded",
    "reported",
    "difference",
    "recorded_sales",
    "recorded_returns_total",
    "reported_sales",
    "reported_returns_total",
    "z_turnover",
    "z_storno",
    "manual_discount_amount",
    "recorded_no_receipt_returns_total",
    "expected_cash",
    "counted_cash",
    "cash_difference",
}


@pytest.mark.parametrize(
    "struct",
    [
        t
        for t in vars(schemas).values()
        if isinstance(t, type)
        and issubclass(t, msgspec.Struct)
        and t.__name__.endswith(("Row", "Figures", "Difference"))
    ],
)
def test_every_integer_column_is_known_as_money_or_a_count(struct: type[msgspec.Struct]) -> None:
    """A new integer field must be put in COUNT_FIELDS or here: else the CSV shows a count
    as money (published_version 13 came out as 0.13)."""
    for field in msgspec.structs.fields(struct):
        if field.type not in (int, int | None) or field.name.endswith("_milli"):
            continue
        if field.name.endswith("_value") or field.name in MONEY_FIELDS:
            assert field.name not in COUNT_FIELDS, field.name
        else:
            assert field.name in COUNT_FIELDS, f"{struct.__name__}.{field.name}"
