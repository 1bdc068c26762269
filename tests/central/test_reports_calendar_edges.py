"""Periods at the ends of the calendar (year 1, year 9999) were 500s: the previous
period, the month after a period's last, a day's local moments ran past date.min or
date.max. Every report route answers them: 200 with what there is, or a 422 naming
the date."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tests.central.test_reports_api import _load

ROUTES: dict[str, list[str]] = {
    "sales": [
        "",
        "&group_by=branch,day",
        "&group_by=day,hour",
        "&group_by=cashier",
        "&group_by=product",
        "&group_by=category",
        "&group_by=payment_type",
        "&compare=false",
    ],
    "stock-on-hand": [""],
    "stock-movement": ["", "&group_by=branch", "&group_by=product", "&branch=B1", "&sku=MILK-1L"],
    "gross-margin": ["", "&group_by=category", "&group_by=product"],
    "abc": ["", "&measure=margin", "&branch=B1"],
    "write-offs": ["", "&group_by=branch", "&group_by=product"],
    "shrinkage": ["", "&group_by=product"],
    "shifts": ["", "&only_differences=true"],
    "loss-prevention": [""],
    "sync-health": [""],
}

# Reports of now take no period (one given to them is refused, a 400): asked once each.
NOW = ("stock-on-hand", "sync-health")

PERIODS = [
    ("0001-01-01", "0001-01-01"),
    ("0001-01-01", "0001-01-31"),
    ("0001-01-01", "0001-12-31"),
    ("0001-12-31", "0002-01-01"),
    ("9999-12-31", "9999-12-31"),
    ("9999-12-01", "9999-12-31"),
    ("9999-01-01", "9999-12-31"),
    ("9998-12-31", "9999-01-01"),
]


async def test_every_report_answers_the_first_and_last_days_of_the_calendar(
    central: Any, client_as: Callable[[str | None], Awaitable[Any]]
) -> None:
    await _load(central)
    client = await client_as("analyst")
    failures = []
    for route, variants in ROUTES.items():
        periods = [""] if route in NOW else [f"date_from={f}&date_to={t}" for f, t in PERIODS]
        for extra in variants:
            for period in periods:
                for fmt in ("", "&format=csv"):
                    url = f"/api/v1/reports/{route}?{period}{extra}{fmt}".replace("?&", "?")
                    response = await client.get(url)
                    if response.status_code != 200:
                        failures.append((url, response.status_code, response.text[:300]))
    assert failures == []


async def test_the_calendar_edges_answer_what_there_is(
    central: Any, client_as: Callable[[str | None], Awaitable[Any]]
) -> None:
    await _load(central)
    client = await client_as("analyst")

    async def get(url: str, status: int = 200) -> Any:
        response = await client.get(f"/api/v1/reports/{url}")
        assert response.status_code == status, (url, response.text)
        return response.json()

    # The first day has no previous period: compared with an empty one, no dates.
    sales = await get("sales?date_from=0001-01-01&date_to=0001-01-01&group_by=day")
    nothing = {
        "receipts": 0,
        "avg_basket": None,
        "qty_milli": 0,
        "revenue": 0,
        "vat": 0,
        "net_of_vat": 0,
        "discounts": 0,
        "returns": 0,
        "returns_amount": 0,
        "returns_vat": 0,
        "net_sales": 0,
    }
    assert (sales["previous_from"], sales["previous_to"], sales["rows"]) == (None, None, [])
    assert sales["totals"] == sales["previous_totals"] == nothing
    # Ten days from the 5th: their previous ten would begin before the calendar.
    sales = await get("sales?date_from=0001-01-05&date_to=0001-01-14")
    assert (sales["previous_from"], sales["previous_totals"]) == (None, nothing)
    sales = await get("sales?date_from=0001-01-02&date_to=0001-01-02")
    assert (sales["previous_from"], sales["previous_to"]) == ("0001-01-01", "0001-01-01")
    # Without a comparison, no previous figures at all.
    sales = await get("sales?date_from=0001-01-01&date_to=0001-01-01&compare=false")
    assert sales["previous_totals"] is None
    # January of year 1: nothing on hand yet; December 9999: today's stock, unmoved.
    january = await get("stock-movement?date_from=0001-01-01&date_to=0001-01-31&branch=B1")
    assert january["rows"] == []
    assert (january["totals"]["opening_value"], january["totals"]["closing_value"]) == (0, 0)
    now = await get("stock-movement?date_from=2026-11-01&date_to=2026-11-30&branch=B1")
    last = await get("stock-movement?date_from=9999-12-01&date_to=9999-12-31&branch=B1")
    closing = {r["sku"]: (r["closing_milli"], r["closing_value"]) for r in now["rows"]}
    assert closing
    assert {r["sku"]: (r["opening_milli"], r["opening_value"]) for r in last["rows"]} == closing
    assert {r["sku"]: (r["closing_milli"], r["closing_value"]) for r in last["rows"]} == closing
    # The whole calendar is still a period too long.
    problem = await get("sales?date_from=0001-01-01&date_to=9999-12-31", status=422)
    assert [e["field"] for e in problem["errors"]] == ["date_to"]
