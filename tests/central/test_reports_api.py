"""The report routes: JSON and CSV, roles, and RFC 9457 problems for bad parameters."""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from typing import Any

from central.ingest.worker import IngestWorker
from central.services.branches import add_branch
from tests.central.reports_history import build_history

PERIOD = "date_from=2026-11-02&date_to=2026-11-03"


async def _load(central: Any) -> None:
    async with central.sessionmaker() as session, session.begin():
        await add_branch(session, code="B1", name="Harbour", timezone="Europe/Berlin")
        await add_branch(session, code="B2", name="Station")
    stats = await IngestWorker(central.sessionmaker).process(build_history().messages())
    assert stats.dead_letters == 0


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_reports_as_json_and_csv_for_an_analyst(
    central: Any, client_as: Callable[[str | None], Awaitable[Any]]
) -> None:
    await _load(central)
    analyst = await client_as("analyst")
    response = await analyst.get(f"/api/v1/reports/sales?{PERIOD}")
    assert response.status_code == 200
    body = response.json()
    assert body["totals"]["revenue"] == 3314
    assert {r["branch"]: r["figures"]["vat"] for r in body["rows"]} == {"B1": 335, "B2": 42}

    as_csv = await analyst.get(f"/api/v1/reports/sales?{PERIOD}&format=csv")
    assert as_csv.status_code == 200
    # One charset (Litestar adds it to text/csv; naming it too gave it twice).
    assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    rows = {r["branch"]: r for r in _rows(as_csv.text)}
    b1 = rows["B1"]
    assert (b1["receipts"], b1["revenue"], b1["vat"], b1["qty"], b1["avg_basket"]) == (
        "3",
        "30.65",
        "3.35",
        "7.754",
        "10.22",
    )
    assert (b1["previous_revenue"], rows["B2"]["previous_revenue"]) == ("3.98", "")
    assert "hour" not in b1  # a grouping nobody asked for is not a column

    by_accept = await analyst.get(
        f"/api/v1/reports/stock-movement?{PERIOD}&branch=B1", headers={"Accept": "text/csv"}
    )
    assert by_accept.status_code == 200
    movement = {r["sku"]: r for r in _rows(by_accept.text)}
    assert (movement["W"]["opening_qty"], movement["W"]["closing_qty"]) == ("2.000", "1.246")
    assert movement["W"]["closing_value"] == "5.61"

    for path in (
        "stock-on-hand?branch=B1",
        f"gross-margin?{PERIOD}&group_by=product",
        f"abc?{PERIOD}&measure=margin",
        f"write-offs?{PERIOD}",
        f"shrinkage?{PERIOD}",
        f"shifts?{PERIOD}&only_differences=true",
        f"loss-prevention?{PERIOD}",
        "sync-health",
    ):
        for suffix in ("", "&format=csv" if "?" in path else "?format=csv"):
            got = await analyst.get(f"/api/v1/reports/{path}{suffix}")
            assert got.status_code == 200, (path, suffix, got.text)
    on_hand = await analyst.get("/api/v1/reports/stock-on-hand?branch=B1&format=csv")
    hand = {r["sku"]: r for r in _rows(on_hand.text)}
    assert (hand["W"]["value_at_retail"], hand["W"]["retail_price_source"]) == (
        "16.19",
        "last_sale",
    )
    shifts = await analyst.get(f"/api/v1/reports/shifts?{PERIOD}&only_differences=true")
    assert [r["shift_id"] for r in shifts.json()["rows"]] == ["S3"]


async def test_bad_parameters_are_problems_naming_the_field(
    central: Any, client_as: Callable[[str | None], Awaitable[Any]]
) -> None:
    await _load(central)
    client = await client_as("merchandiser")
    cases = [
        (f"/api/v1/reports/sales?{PERIOD}&branch=NOPE", 404, "branch"),
        ("/api/v1/reports/sales?date_from=2026-11-03&date_to=2026-11-02", 422, "date_from"),
        ("/api/v1/reports/sales?date_from=2025-01-01&date_to=2026-11-02", 422, "date_to"),
        (f"/api/v1/reports/sales?{PERIOD}&group_by=weather", 422, "group_by"),
        (f"/api/v1/reports/gross-margin?{PERIOD}&group_by=hour", 422, "group_by"),
        (f"/api/v1/reports/sales?{PERIOD}&format=xml", 422, "format"),
        ("/api/v1/reports/sales?date_to=2026-11-02", 422, "date_from"),
        (f"/api/v1/reports/abc?{PERIOD}&measure=weight", 422, "measure"),
        ("/api/v1/reports/stock-on-hand?branch=NOPE", 404, "branch"),
    ]
    for url, status, field in cases:
        response = await client.get(url)
        assert response.status_code == status, (url, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["status"] == status
        assert [e["field"] for e in problem["errors"]] == [field], url
    malformed = await client.get("/api/v1/reports/sales?date_from=yesterday&date_to=2026-11-02")
    assert malformed.status_code in (400, 422)
    assert malformed.headers["content-type"].startswith("application/problem+json")
    anonymous = await client_as(None)
    assert (await anonymous.get(f"/api/v1/reports/sales?{PERIOD}")).status_code == 401
