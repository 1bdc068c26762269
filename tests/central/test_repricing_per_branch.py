"""A repricing revalues only the stock whose selling price it changes, each branch's at
that branch's own old price (a chain repricing revalued a branch whose own override
stayed in force, and at the chain's old price); stock without an old price gains a
retail value, listed apart, not counted as revaluation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from central.ingest.worker import IngestWorker
from tests.central.chain_events import BranchBooks, message
from tests.central.test_catalog_api import _setup
from tests.conftest import register_branch


async def _post(client: Any, path: str, body: dict[str, Any], status: int = 201) -> Any:
    r = await client.post(path, json=body)
    assert r.status_code == status, r.text
    return r.json()


async def _stock(central: Any, stock: dict[str, list[tuple[str, int]]]) -> None:
    events = []
    for code, items in stock.items():
        books = BranchBooks(code)
        books.document("goods_receipt", [(sku, qty, 70) for sku, qty in items])
        events.extend(books.events)
    await IngestWorker(central.sessionmaker).process([message(e) for e in events])


def _branches(line: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {
        b["branch"]: (
            b["status"],
            b["stock_milli"],
            b["old_price"],
            b["new_price"],
            b["old_value"],
            b["new_value"],
            b["revaluation"],
        )
        for b in line["branches"]
    }


def _split(line: dict[str, Any]) -> tuple[Any, ...]:
    return (
        line["old_price"],
        line["stock_milli"],
        line["revalued_stock_milli"],
        line["old_value"],
        line["new_value"],
        line["revaluation"],
        line["unaffected_stock_milli"],
        line["unpriced_stock_milli"],
        line["unpriced_value"],
    )


async def test_a_chain_repricing_leaves_a_branch_override_and_unpriced_stock_unrevalued(
    central: Any, central_client: Any
) -> None:
    client = central_client
    await _setup(client)
    await _post(
        client,
        "/api/v1/products",
        {"sku": "TEA-100", "name": "Tea", "unit": "pcs", "category": "food", "vat_rate_bp": 1000},
    )
    for code in ("B001", "B002", "B003", "B004"):
        await register_branch(central, code)
    await _post(client, "/api/v1/prices", {"sku": "MILK-1L", "price": 119})
    # TEA-100 had only a branch price at B001, withdrawn: no price anywhere now.
    await _post(
        client,
        "/api/v1/prices",
        {"sku": "TEA-100", "price": 300, "scope": "branch", "scope_id": "B001"},
    )
    r = await client.post(
        "/api/v1/prices/withdraw", params={"scope": "branch", "scope_id": "B001", "sku": "TEA-100"}
    )
    assert r.status_code == 200, r.text
    await _stock(
        central,
        {
            "B001": [("MILK-1L", 19_000), ("TEA-100", 7_000)],
            "B002": [("MILK-1L", 22_000)],
            "B003": [("MILK-1L", 24_000)],
            "B004": [("MILK-1L", 44_000)],
        },
    )
    draft = await _post(
        client,
        "/api/v1/repricing",
        {
            "scope": "all",
            "lines": [
                {"sku": "MILK-1L", "new_price": 129},
                {"sku": "TEA-100", "new_price": 350},
            ],
            "effective_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        },
    )
    milk, tea = draft["lines"]
    assert milk["stock_milli"] == 109_000
    assert [(b["branch"], b["stock_milli"], b["status"]) for b in milk["branches"]] == [
        ("B001", 19_000, "draft"),
        ("B002", 22_000, "draft"),
        ("B003", 24_000, "draft"),
        ("B004", 44_000, "draft"),
    ]
    assert tea["stock_milli"] == 7_000
    # Between the draft and its approval B003 gets its own price: it stays in force there.
    await _post(
        client,
        "/api/v1/prices",
        {"sku": "MILK-1L", "price": 109, "scope": "branch", "scope_id": "B003"},
    )
    doc = await _post(client, f"/api/v1/repricing/{draft['id']}/approve", {}, status=200)
    milk, tea = doc["lines"]
    assert _split(milk) == (119, 109_000, 85_000, 10115, 10965, 850, 24_000, 0, 0)
    assert _branches(milk) == {
        "B001": ("revalued", 19_000, 119, 129, 2261, 2451, 190),
        "B002": ("revalued", 22_000, 119, 129, 2618, 2838, 220),
        "B003": ("unaffected", 24_000, 109, 109, 0, 0, 0),
        "B004": ("revalued", 44_000, 119, 129, 5236, 5676, 440),
    }
    assert _split(tea) == (None, 7_000, 0, 0, 0, 0, 0, 7_000, 2450)
    assert _branches(tea) == {"B001": ("unpriced", 7_000, None, 350, 0, 2450, 0)}
    assert (doc["total_revaluation"], doc["total_unpriced_value"]) == (850, 2450)
    assert doc == (await client.get(f"/api/v1/repricing/{draft['id']}")).json()


async def test_each_branch_is_revalued_at_its_own_price_at_the_documents_moment(
    central: Any, central_client: Any
) -> None:
    client = central_client
    await _setup(client)
    await _post(client, "/api/v1/zones", {"code": "north", "name": "North"})
    await _post(client, "/api/v1/formats", {"code": "mini", "name": "Mini"})
    await register_branch(central, "B1", price_zone="north")
    await register_branch(central, "B2", format_code="mini")
    await register_branch(central, "B3")
    await register_branch(central, "B4")
    r = await client.post("/api/v1/formats/mini/products", json={"add": ["MILK-1L"]})
    assert r.status_code == 200, r.text
    now = datetime.now(UTC)
    await _post(client, "/api/v1/prices", {"sku": "MILK-1L", "price": 119})
    await _post(
        client,
        "/api/v1/prices",
        {"sku": "MILK-1L", "price": 109, "scope": "zone", "scope_id": "north"},
    )
    await _stock(
        central,
        {
            "B1": [("MILK-1L", 10_000)],
            "B2": [("MILK-1L", 4_000)],
            "B3": [("MILK-1L", 2_500)],
            "B4": [("MILK-1L", 3_000)],
        },
    )
    moment = now + timedelta(hours=2)
    # B1 (zone north): a branch repricing revalues at the zone's price it replaces, not
    # the chain's.
    draft = await _post(
        client,
        "/api/v1/repricing",
        {"scope": "branch", "scope_id": "B1", "lines": [{"sku": "MILK-1L", "new_price": 129}]},
    )
    doc = await _post(client, f"/api/v1/repricing/{draft['id']}/approve", {}, status=200)
    line = doc["lines"][0]
    assert _split(line) == (109, 10_000, 10_000, 1090, 1290, 200, 0, 0, 0)
    # Prices set after the draft count as they stand at the document's moment: a chain
    # price scheduled before it is B4's old price; a format price scheduled before it
    # and a B3 override scheduled at it stay in force over the chain's (unaffected), as
    # does B1's own price (129 now).
    draft = await _post(
        client,
        "/api/v1/repricing",
        {"lines": [{"sku": "MILK-1L", "new_price": 139}], "effective_at": moment.isoformat()},
    )
    await _post(
        client,
        "/api/v1/prices",
        {
            "sku": "MILK-1L",
            "price": 121,
            "effective_at": (moment - timedelta(minutes=30)).isoformat(),
        },
    )
    await _post(
        client,
        "/api/v1/prices",
        {
            "sku": "MILK-1L",
            "price": 125,
            "scope": "format",
            "scope_id": "mini",
            "effective_at": (moment - timedelta(minutes=30)).isoformat(),
        },
    )
    await _post(
        client,
        "/api/v1/prices",
        {
            "sku": "MILK-1L",
            "price": 99,
            "scope": "branch",
            "scope_id": "B3",
            "effective_at": moment.isoformat(),
        },
    )
    doc = await _post(client, f"/api/v1/repricing/{draft['id']}/approve", {}, status=200)
    assert doc["status"] == "approved"
    line = doc["lines"][0]
    assert _split(line) == (121, 19_500, 3_000, 363, 417, 54, 16_500, 0, 0)
    assert _branches(line) == {
        "B1": ("unaffected", 10_000, 129, 129, 0, 0, 0),
        "B2": ("unaffected", 4_000, 125, 125, 0, 0, 0),
        "B3": ("unaffected", 2_500, 121, 99, 0, 0, 0),
        "B4": ("revalued", 3_000, 121, 139, 363, 417, 54),
    }
    # A stock given for one branch is that branch's.
    draft = await _post(
        client,
        "/api/v1/repricing",
        {
            "scope": "branch",
            "scope_id": "B3",
            "lines": [{"sku": "MILK-1L", "new_price": 149, "stock_milli": 1_000}],
        },
    )
    doc = await _post(client, f"/api/v1/repricing/{draft['id']}/approve", {}, status=200)
    assert _branches(doc["lines"][0]) == {"B3": ("revalued", 1_000, 119, 149, 119, 149, 30)}
