"""A shelf tag says from when its price is in force at the branch: for a price already
in force, the moment it took effect (it said the moment the tag was printed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import update

from central.models import PriceEntryRow
from central.services.price_tags import price_tag_items
from tests.central.test_catalog_api import _setup
from tests.central.test_repricing_per_branch import _post
from tests.conftest import register_branch


async def _berlin(central: Any, client: Any, *codes: str) -> None:
    """Branches in Berlin of format mini, which carries MILK-1L."""
    await _setup(client)
    await _post(client, "/api/v1/formats", {"code": "mini", "name": "Mini"})
    for code in codes:
        await register_branch(central, code, timezone="Europe/Berlin", format_code="mini")
    r = await client.post("/api/v1/formats/mini/products", json={"add": ["MILK-1L"]})
    assert r.status_code == 200, r.text


async def test_a_tag_shows_when_its_price_took_effect(central: Any, central_client: Any) -> None:
    client = central_client
    await _berlin(central, client, "B1")
    await _post(client, "/api/v1/prices", {"sku": "MILK-1L", "price": 119})
    # The price was set three hours ago (simulated in the stored entry).
    took_effect = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)
    async with central.sessionmaker() as session, session.begin():
        await session.execute(
            update(PriceEntryRow)
            .where(PriceEntryRow.sku == "MILK-1L")
            .values(effective_at=took_effect)
        )
    berlin = took_effect.astimezone(ZoneInfo("Europe/Berlin"))
    r = await client.get("/api/v1/price-tags/B1")
    assert r.status_code == 200, r.text
    assert "1.19" in r.text
    assert f"from {berlin:%Y-%m-%d %H:%M %Z}" in r.text
    async with central.sessionmaker() as session:
        (item,) = await price_tag_items(session, "B1")
    assert item["valid_from"] == berlin
    # A scheduled price: its tag is from the moment it will take effect.
    later = (datetime.now(UTC) + timedelta(hours=5)).replace(microsecond=0)
    await _post(
        client,
        "/api/v1/prices",
        {"sku": "MILK-1L", "price": 129, "effective_at": later.isoformat()},
    )
    async with central.sessionmaker() as session:
        (item,) = await price_tag_items(session, "B1")
    assert (item["price"], item["valid_from"]) == (129, later.astimezone(ZoneInfo("Europe/Berlin")))


async def test_a_tag_shows_the_promotion_in_force_and_its_end(
    central: Any, central_client: Any
) -> None:
    client = central_client
    await _berlin(central, client, "B1", "B2")
    await _post(client, "/api/v1/prices", {"sku": "MILK-1L", "price": 119})
    ends = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    await _post(
        client,
        "/api/v1/promotions",
        {
            "promotion_id": "MILK10",
            "type": "percent",
            "percent_bp": 1000,
            "skus": ["MILK-1L"],
            "branches": ["B1"],
            "starts_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
            "ends_at": ends.isoformat(),
        },
    )
    until = ends.astimezone(ZoneInfo("Europe/Berlin"))
    # 10 % off 1.19 at the till: 1.07 (half-up), until the promotion's end.
    r = await client.get("/api/v1/price-tags/B1")
    assert r.status_code == 200, r.text
    assert f"promotion: 1.07 until {until:%Y-%m-%d %H:%M %Z}" in r.text
    async with central.sessionmaker() as session:
        (item,) = await price_tag_items(session, "B1")
        assert (item["price"], item["promo_price"], item["promo_until"]) == (119, 107, until)
        # B2 has no promotion: its tag shows none.
        (item,) = await price_tag_items(session, "B2")
        assert (item["price"], item["promo_price"]) == (119, None)
    r = await client.get("/api/v1/price-tags/B2")
    assert "promotion:" not in r.text
