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


async def test_a_tag_shows_when_its_price_took_effect(central: Any, central_client: Any) -> None:
    client = central_client
    await _setup(client)
    await _post(client, "/api/v1/formats", {"code": "mini", "name": "Mini"})
    await register_branch(central, "B1", timezone="Europe/Berlin", format_code="mini")
    r = await client.post("/api/v1/formats/mini/products", json={"add": ["MILK-1L"]})
    assert r.status_code == 200, r.text
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
