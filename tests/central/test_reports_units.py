"""Exact arithmetic and CSV text of the reports (no database)."""

from __future__ import annotations

import csv
import io
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from central.reports.csv_out import report_csv
from central.reports.money import ratio_text, rounded_div, vat_of
from central.reports.projections import cash_net_of_change
from central.reports.schemas import SalesFigures, SalesRow, ShiftDifference, ShiftRow
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
    text = report_csv([SalesRow(branch="B1", local_date=date(2026, 11, 2), figures=figures)])
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
    rows = list(csv.DictReader(io.StringIO(report_csv([row]).decode())))
    assert rows[0]["recorded_sales"] == "10.99"
    assert rows[0]["differences"] == (
        "field=receipts source=agent recorded=3 reported=4 difference=1; "
        "field=sales source=agent recorded=10.99 reported=10.00 difference=-0.99; "
        "field=returns source=fiscal_printer recorded=4.50 reported=0.00 difference=-4.50; "
        "field=payment:card source=agent recorded= reported=0.05 difference="
    )
