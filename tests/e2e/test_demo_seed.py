"""``make run``'s head office: ``python -m central seed-demo`` gives a fresh central the
demo catalog the demo agents start with, the demo branches get it with its prices
through NATS, and a price head office changes reaches their tills."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from branch_agent.catalog import find_product
from central.embedded_nats import EmbeddedNats
from central.models import AuditEntry, MasterDataOutbox
from central.services.catalog_import import export_prices_csv, export_products_csv
from central.services.masterdata_publisher import current_version, published_version
from protocol.demo_catalog import DEMO_CATEGORIES, DEMO_PRODUCTS
from tests.conftest import asgi_client, central_cli, register_branch, wait_until

SEED = ("seed-demo", "--branch", "B1", "--branch", "B2")


async def _central_state(central: Any) -> tuple[object, ...]:
    """Everything a seeding could change: the catalog and prices as exported, the
    master-data version and outbox, the audit log, the branches' scopes."""
    async with central.sessionmaker() as s:
        return (
            await export_products_csv(s),
            await export_prices_csv(s, history=True),
            await current_version(s),
            await s.scalar(select(func.count()).select_from(MasterDataOutbox)),
            await s.scalar(select(func.count()).select_from(AuditEntry)),
        )


async def till_lookup(agent: Any, code: str) -> dict[str, Any] | None:
    """What a till of the agent gets for a barcode (None: unknown barcode)."""
    async with asgi_client(
        agent.app, headers={"Authorization": f"Bearer {agent.settings.tills[0].token}"}
    ) as client:
        response = await client.get(f"/api/v1/products/by-barcode/{code}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_seeded_central_feeds_the_demo_tills_and_a_price_change_reaches_them(
    central: Any,
    central_client: Any,
    db_url: str,
    tmp_path: Path,
    nats_server: EmbeddedNats,
    make_agent: Any,
) -> None:
    # B2 was registered by an older `make run`, before the demo had a format.
    await register_branch(central, "B2")
    first = central_cli(db_url, tmp_path, *SEED)
    assert first["changed"] is True
    assert first["products"] == [p.sku for p in DEMO_PRODUCTS]
    assert first["prices"] == [p.sku for p in DEMO_PRODUCTS]
    assert first["assortment_added"] == [p.sku for p in DEMO_PRODUCTS]
    assert first["categories"] == [code for code, _ in DEMO_CATEGORIES]
    assert first["format_created"] is True
    assert first["branches"] == ["B2"]
    assert first["vat_groups"] == {"A": 2000, "B": 1000}
    # B1 is new: registered in the demo format, as `make run` does.
    added = central_cli(
        db_url, tmp_path, "branches", "add", "B1", "--name", "Downtown", "--format", "demo"
    )
    assert added["branch"] == "B1"

    # Central lists the demo products as the agents know them, with their prices.
    products = (await central_client.get("/api/v1/products", params={"limit": 100})).json()
    by_sku = {p["sku"]: p for p in products["items"]}
    assert sorted(by_sku) == sorted(p.sku for p in DEMO_PRODUCTS)
    for p in DEMO_PRODUCTS:
        got = by_sku[p.sku]
        assert (got["name"], got["unit"], got["weighed"], got["scale_plu"]) == (
            p.name,
            p.unit,
            p.weighed,
            p.scale_plu,
        )
        assert (got["category"], got["vat_rate_bp"], got["vat_group"]) == (
            p.category,
            p.vat_rate_bp,
            p.vat_group,
        )
        assert [b["code"] for b in got["barcodes"]] == [p.barcode]
        prices = (await central_client.get("/api/v1/prices", params={"sku": p.sku})).json()
        assert [(e["scope"], e["price"]) for e in prices["items"]] == [("all", p.price)]
        for branch in ("B1", "B2"):
            expected = (
                await central_client.get(f"/api/v1/prices/branches/{branch}/products/{p.sku}")
            ).json()
            assert (expected["price"], expected["in_assortment"]) == (p.price, True)
    branches = (await central_client.get("/api/v1/branches")).json()["items"]
    assert {b["code"]: b["format_code"] for b in branches} == {"B1": "demo", "B2": "demo"}

    # A second run (the next `make run` on the same data) changes nothing.
    before = await _central_state(central)
    again = central_cli(db_url, tmp_path, *SEED)
    assert again == {
        "categories": [],
        "products": [],
        "format_created": False,
        "assortment_added": [],
        "prices": [],
        "branches": [],
        "branches_left": {},  # both in format demo already
        "vat_groups": {},
        "changed": False,
    }
    assert await _central_state(central) == before

    # A demo agent (local demo catalog on, as in `make run`) ends with central's catalog:
    # the same products, barcodes and prices, now from master data.
    agent = await make_agent("B1", nats_server.url)
    async with central.sessionmaker() as s:
        target = await published_version(s)

    async def applied() -> bool:
        return bool(agent.masterdata.applied_version >= target)

    await wait_until(applied, timeout=30)
    for p in DEMO_PRODUCTS:
        async with agent.sessionmaker() as s:
            item = await find_product(s, barcode=p.barcode, at=datetime.now(UTC))
        assert item is not None, p.sku
        assert item.price_version > 0, f"{p.sku} still from the local demo seed"
        assert (item.sku, item.price, item.scale_plu, item.category) == (
            p.sku,
            p.price,
            p.scale_plu,
            p.category,
        )
        found = await till_lookup(agent, p.barcode)
        assert found is not None
        assert (found["sku"], found["price"]) == (p.sku, p.price)
    # A label scale's code for 754 g of apples: PLU 101, the weight and its amount.
    label = await till_lookup(agent, "2000101007548")
    assert label is not None
    assert (label["sku"], label["quantity"], label["amount"]) == ("APPLE-KG", "0.754", 225)

    # Head office changes a price through the API: the till sells at it.
    response = await central_client.post("/api/v1/prices", json={"sku": "MILK-1L", "price": 129})
    assert response.status_code == 201, response.text

    async def milk_at_129() -> bool:
        found = await till_lookup(agent, "4006381333931")
        return found is not None and found["price"] == 129

    await wait_until(milk_at_129, timeout=30)

    # The next `make run` leaves head office's price alone.
    assert central_cli(db_url, tmp_path, *SEED)["changed"] is False
    expected = (await central_client.get("/api/v1/prices/branches/B1/products/MILK-1L")).json()
    assert expected["price"] == 129
