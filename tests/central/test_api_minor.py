"""Small API behaviours: reversed time ranges, literal product search, unknown branches
in the records lists, price tags in the branch's local time, promotion messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tests.central.test_catalog_api import _promotion, _setup
from tests.conftest import register_branch


def _fields(response: Any, status: int) -> list[str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return [e["field"] for e in response.json()["errors"]]


async def test_reversed_ranges_of_price_tags_and_audit_are_refused(
    central: Any, central_client: Any
) -> None:
    await register_branch(central, "B1")
    later, earlier = "2026-11-10T00:00:00Z", "2026-11-01T00:00:00Z"
    r = await central_client.get("/api/v1/price-tags/B1", params={"since": later, "until": earlier})
    assert _fields(r, 422) == ["since"]
    r = await central_client.get("/api/v1/audit", params={"since": later, "until": earlier})
    assert _fields(r, 422) == ["since"]
    r = await central_client.get("/api/v1/audit", params={"since": earlier, "until": later})
    assert r.status_code == 200, r.text


async def test_product_search_takes_like_wildcards_literally(
    central: Any, central_client: Any
) -> None:
    client = central_client
    await _setup(client)
    r = await client.post(
        "/api/v1/products",
        json={"sku": "SALE_1", "name": "Butter 50% fat", "unit": "pcs", "vat_rate_bp": 1000},
    )
    assert r.status_code == 201, r.text

    async def found(q: str) -> list[str]:
        r = await client.get("/api/v1/products", params={"q": q})
        assert r.status_code == 200, r.text
        return [p["sku"] for p in r.json()["items"]]

    assert await found("%") == ["SALE_1"]
    assert await found("_") == ["SALE_1"]
    assert await found("50%") == ["SALE_1"]
    assert await found("m_lk") == []
    assert await found("milk") == ["MILK-1L"]


async def test_records_lists_answer_404_for_an_unknown_branch(
    central: Any, central_client: Any
) -> None:
    await register_branch(central, "B1")
    for route in (
        "/api/v1/receipts",
        "/api/v1/customer-returns",
        "/api/v1/documents",
        "/api/v1/stock/balances",
        "/api/v1/stock/ledger",
        "/api/v1/stock/transfers",
        "/api/v1/shifts",
        "/api/v1/shifts/closed-days",
    ):
        # The ledger is of one product: sku is required there.
        sku = {"sku": "MILK-1L"} if route == "/api/v1/stock/ledger" else {}
        r = await central_client.get(route, params={"branch": "NOPE", **sku})
        assert _fields(r, 404) == ["branch"], route
        r = await central_client.get(route, params={"branch": "B1", **sku})
        assert r.status_code == 200, (route, r.text)


async def test_price_tags_show_the_branchs_local_time(central: Any, central_client: Any) -> None:
    client = central_client
    await _setup(client)
    await client.post("/api/v1/formats", json={"code": "mini", "name": "Minimarket"})
    await register_branch(central, "B1", timezone="Europe/Berlin", format_code="mini")
    r = await client.post("/api/v1/formats/mini/products", json={"add": ["MILK-1L"]})
    assert r.status_code == 200, r.text
    at = (datetime.now(UTC) + timedelta(hours=3)).replace(second=0, microsecond=0)
    r = await client.post(
        "/api/v1/prices", json={"sku": "MILK-1L", "price": 119, "effective_at": at.isoformat()}
    )
    assert r.status_code == 201, r.text
    r = await client.get("/api/v1/price-tags/B1")
    assert r.status_code == 200, r.text
    local = at.astimezone(ZoneInfo("Europe/Berlin"))
    assert f"from {local:%Y-%m-%d %H:%M %Z}" in r.text
    assert local.tzname() in ("CET", "CEST")
    assert "UTC" not in r.text


async def test_an_unknown_branch_of_a_promotion_is_named_in_plain_words(
    central: Any, central_client: Any
) -> None:
    await _setup(central_client)
    body = _promotion(datetime.now(UTC)) | {"branches": ["NOPE"]}
    r = await central_client.post("/api/v1/promotions", json=body)
    assert _fields(r, 422) == ["branches[0]"]
    assert r.json()["detail"] == "unknown branch 'NOPE'"


async def test_an_unknown_field_is_named_by_itself(central: Any, central_client: Any) -> None:
    """A body with a field the route does not take names that field (the framework
    calls the top-level object "data"); nothing is registered."""
    r = await central_client.post("/api/v1/branches", json={"code": "B7", "format": "city"})
    assert _fields(r, 422) == ["format"]
    assert "unknown field `format`" in r.json()["detail"]
    r = await central_client.get("/api/v1/branches")
    assert r.status_code == 200, r.text
    assert [b["code"] for b in r.json()["items"]] == []


async def test_a_missing_body_field_is_named(central: Any, central_client: Any) -> None:
    # Named by itself, not "data" (the framework's name for the whole body).
    r = await central_client.post("/api/v1/prices", json={"price": 129})
    assert _fields(r, 422) == ["sku"]


async def test_a_number_or_boolean_sent_as_text_is_refused(
    central: Any, central_client: Any
) -> None:
    """A price sent as "129.00" (meant as euros) was taken as 129 cents: text is never a
    number here (nor "true" a boolean); the field is named, nothing is recorded."""
    await _setup(central_client)
    r = await central_client.post("/api/v1/prices", json={"sku": "MILK-1L", "price": "129.00"})
    assert _fields(r, 422) == ["price"]
    assert "not as text" in r.json()["errors"][0]["message"]
    body = _promotion(datetime.now(UTC)) | {"percent_bp": "1000"}
    r = await central_client.post("/api/v1/promotions", json=body)
    assert _fields(r, 422) == ["percent_bp"]
    r = await central_client.get("/api/v1/prices", params={"sku": "MILK-1L"})
    assert r.status_code == 200, r.text
    assert r.json()["items"] == []
    r = await central_client.post("/api/v1/prices", json={"sku": "MILK-1L", "price": 129})
    assert r.status_code == 201, r.text
