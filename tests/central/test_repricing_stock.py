"""A repricing line without stock revalues the stock central holds in the document's
scope (it took 0, so every such document revalued nothing)."""

from __future__ import annotations

from typing import Any

from central.ingest.worker import IngestWorker
from tests.central.chain_events import BranchBooks, message
from tests.central.test_catalog_api import _setup
from tests.conftest import register_branch


async def test_a_line_without_stock_takes_centrals_stock_in_the_scope(
    central: Any, central_client: Any
) -> None:
    client = central_client
    await _setup(client)
    await client.post("/api/v1/zones", json={"code": "north", "name": "North"})
    await register_branch(central, "B1", price_zone="north")
    await register_branch(central, "B2")
    r = await client.post("/api/v1/prices", json={"sku": "MILK-1L", "price": 119})
    assert r.status_code == 201, r.text
    b1, b2 = BranchBooks("B1"), BranchBooks("B2")
    b1.document("goods_receipt", [("MILK-1L", 10_000, 70)])
    b2.document("goods_receipt", [("MILK-1L", 4_000, 70)])
    await IngestWorker(central.sessionmaker).process([message(e) for e in (*b1.events, *b2.events)])

    async def reprice(body: dict[str, Any]) -> dict[str, Any]:
        r = await client.post("/api/v1/repricing", json=body)
        assert r.status_code == 201, r.text
        draft: dict[str, Any] = r.json()
        r = await client.post(f"/api/v1/repricing/{draft['id']}/approve")
        assert r.status_code == 200, r.text
        approved: dict[str, Any] = r.json()
        assert approved["lines"][0]["stock_milli"] == draft["lines"][0]["stock_milli"]
        return approved

    # One branch: its own balance.
    doc = await reprice(
        {"scope": "branch", "scope_id": "B1", "lines": [{"sku": "MILK-1L", "new_price": 129}]}
    )
    line = doc["lines"][0]
    assert (line["stock_milli"], line["old_value"], line["new_value"]) == (10_000, 1190, 1290)
    assert (line["revaluation"], doc["total_revaluation"]) == (100, 100)
    # The zone reaches B1 only; the chain both branches.
    doc = await reprice(
        {"scope": "zone", "scope_id": "north", "lines": [{"sku": "MILK-1L", "new_price": 139}]}
    )
    assert doc["lines"][0]["stock_milli"] == 10_000
    doc = await reprice({"lines": [{"sku": "MILK-1L", "new_price": 149}]})
    assert doc["lines"][0]["stock_milli"] == 14_000
    # B1 keeps the zone's 139 (in force over the chain's): only B2's stock is revalued.
    assert doc["lines"][0]["revalued_stock_milli"] == 4_000
    assert doc["total_revaluation"] == 4 * (149 - 119)
    # A stock given on the line is taken as given, zero included.
    doc = await reprice({"lines": [{"sku": "MILK-1L", "new_price": 159, "stock_milli": 0}]})
    assert (doc["lines"][0]["stock_milli"], doc["total_revaluation"]) == (0, 0)
