"""A repricing lists the branches whose balance is negative (they were left out of the
document without a word) apart, never revalued; a draft answers a preview of what
approving it now would record (it showed no old price nor revaluation)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from central.ingest.worker import IngestWorker
from tests.central.chain_events import BranchBooks, message
from tests.central.test_catalog_api import _setup
from tests.central.test_repricing_per_branch import _branches, _post, _split
from tests.conftest import register_branch


async def _water(central: Any, client: Any) -> dict[str, Any]:
    """WATER-15 at 50 in the chain; B1 holds 100, B2 and B3 sold 32 and 111 more than
    they booked in; a chain draft at 60."""
    await _setup(client)
    await _post(
        client,
        "/api/v1/products",
        {"sku": "WATER-15", "name": "Water", "unit": "pcs", "category": "food", "vat_rate_bp": 0},
    )
    for code in ("B1", "B2", "B3"):
        await register_branch(central, code)
    await _post(client, "/api/v1/prices", {"sku": "WATER-15", "price": 50})
    events = []
    for code, qty in (("B1", 100_000), ("B2", -32_000), ("B3", -111_000)):
        books = BranchBooks(code)
        if qty > 0:
            books.document("goods_receipt", [("WATER-15", qty, 20)])
        else:
            books.document("write_off", [("WATER-15", qty, None)])
        events.extend(books.events)
    await IngestWorker(central.sessionmaker).process([message(e) for e in events])
    draft: dict[str, Any] = await _post(
        client,
        "/api/v1/repricing",
        {
            "lines": [{"sku": "WATER-15", "new_price": 60}],
            "effective_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        },
    )
    return draft


async def test_negative_stock_is_listed_apart_and_not_revalued(
    central: Any, central_client: Any
) -> None:
    client = central_client
    draft = await _water(central, client)
    line = draft["lines"][0]
    assert (line["stock_milli"], line["negative_stock_milli"]) == (100_000, -143_000)
    assert [(b["branch"], b["stock_milli"], b["status"]) for b in line["branches"]] == [
        ("B1", 100_000, "draft"),
        ("B2", -32_000, "negative_stock"),
        ("B3", -111_000, "negative_stock"),
    ]
    doc = await _post(client, f"/api/v1/repricing/{draft['id']}/approve", {}, status=200)
    line = doc["lines"][0]
    assert _split(line) == (50, 100_000, 100_000, 5000, 6000, 1000, 0, 0, 0)
    assert line["negative_stock_milli"] == -143_000
    assert _branches(line) == {
        "B1": ("revalued", 100_000, 50, 60, 5000, 6000, 1000),
        "B2": ("negative_stock", -32_000, 50, 60, 0, 0, 0),
        "B3": ("negative_stock", -111_000, 50, 60, 0, 0, 0),
    }
    assert doc["total_revaluation"] == 1000
    assert doc["preview"] is None


async def test_a_draft_answers_a_preview_of_its_revaluation(
    central: Any, central_client: Any
) -> None:
    client = central_client
    draft = await _water(central, client)
    preview = draft["preview"]
    assert preview is not None
    line = preview["lines"][0]
    assert _split(line) == (50, 100_000, 100_000, 5000, 6000, 1000, 0, 0, 0)
    assert _branches(line)["B1"] == ("revalued", 100_000, 50, 60, 5000, 6000, 1000)
    assert preview["total_revaluation"] == 1000
    # The draft itself records nothing until approval.
    assert draft["lines"][0]["old_price"] is None
    assert draft["total_revaluation"] == 0
    # Read time: a price changed since counts in the next read's preview.
    await _post(client, "/api/v1/prices", {"sku": "WATER-15", "price": 55})
    again = (await client.get(f"/api/v1/repricing/{draft['id']}")).json()
    assert again["preview"]["total_revaluation"] == 500
    assert again["preview"]["computed_at"] > preview["computed_at"]
