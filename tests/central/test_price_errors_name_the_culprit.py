"""Errors name what is at fault: a local time already past names the branch, its time
zone and the moment; an amount off above a price names the scope that price is set
at (they named neither)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tests.central import test_promotion_rules as promotions
from tests.central.test_catalog_api import _counts, _setup
from tests.conftest import register_branch


async def test_a_past_local_time_names_the_branch_and_its_zone(
    central: Any, central_client: Any
) -> None:
    client = central_client
    await _setup(client)
    await register_branch(central, "B004", timezone="America/New_York")
    await register_branch(central, "B007", timezone="Asia/Tokyo")
    # An hour ahead in New York is many hours past in Tokyo.
    wall = (datetime.now(UTC) + timedelta(hours=1)).astimezone(ZoneInfo("America/New_York"))
    text = wall.replace(tzinfo=None, microsecond=0).isoformat()
    tokyo = datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Asia/Tokyo")).astimezone(UTC)
    before = await _counts(central)
    for path, body in (
        ("/api/v1/prices", {"sku": "MILK-1L", "price": 119, "effective_local": text}),
        (
            "/api/v1/repricing",
            {"effective_local": text, "lines": [{"sku": "MILK-1L", "new_price": 119}]},
        ),
    ):
        r = await client.post(path, json=body)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        problem = r.json()
        assert problem["errors"][0]["field"] == "effective_local"
        assert problem["detail"] == (
            f"a price change cannot take effect in the past: {text} local time in branch "
            f"B007 (Asia/Tokyo) was {tokyo:%Y-%m-%d %H:%M:%S}Z"
        )
    assert await _counts(central) == before
    # A UTC moment in the past names it.
    past = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    r = await client.post(
        "/api/v1/prices",
        json={"sku": "MILK-1L", "price": 119, "effective_at": past.isoformat()},
    )
    assert r.status_code == 422, r.text
    assert "2026-01-02 03:04:05Z" in r.json()["detail"]


async def test_an_amount_off_above_a_price_names_its_scope(
    central: Any, central_client: Any
) -> None:
    client = central_client
    await promotions._setup(central, client)
    before = await promotions._counts(central)
    for body, detail in (
        (
            promotions._promo("ZONE", amount=99, skus=["MILK"], branches=["B1"]),
            "amount off 0.99 is not below the price of MILK in force now "
            "(0.99, zone north's price)",
        ),
        (
            promotions._promo("CHAIN", amount=300, skus=["BREAD"]),
            "amount off 3.00 is not below the price of BREAD in force now "
            "(2.50, the chain's price)",
        ),
    ):
        r = await client.post("/api/v1/promotions", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "amount"
        assert r.json()["detail"] == detail
    assert await promotions._counts(central) == before
