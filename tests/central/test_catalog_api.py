"""Head-office catalog, prices, assortment and promotions through the web API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from central.models import MasterDataOutbox, PriceEntryRow, Product
from central.services.price_tags import price_tag_items
from tests.conftest import counted_statements, register_branch


async def _setup(client: Any) -> None:
    r = await client.post("/api/v1/categories", json={"code": "food", "name": "Food"})
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/v1/categories", json={"code": "dairy", "name": "Dairy", "parent": "food"}
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/v1/products",
        json={
            "sku": "MILK-1L",
            "name": "Milk 1L",
            "unit": "pcs",
            "barcodes": [{"code": "4006381333931"}, {"code": "INT-1", "kind": "internal"}],
            "category": "dairy",
            "vat_rate_bp": 1000,
            "vat_group": "B",
        },
    )
    assert r.status_code == 201, r.text


def _problem_field(response: Any) -> str:
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["errors"], body
    field: str = body["errors"][0]["field"]
    return field


async def _counts(central: Any) -> tuple[int, int, int]:
    async with central.sessionmaker() as s:
        return (
            int(await s.scalar(select(func.count()).select_from(Product)) or 0),
            int(await s.scalar(select(func.count()).select_from(PriceEntryRow)) or 0),
            int(await s.scalar(select(func.count()).select_from(MasterDataOutbox)) or 0),
        )


async def test_product_crud_search_and_archive(central: Any, central_client: Any) -> None:
    client = central_client
    await _setup(client)
    r = await client.get("/api/v1/products", params={"q": "milk"})
    assert [p["sku"] for p in r.json()["items"]] == ["MILK-1L"]
    r = await client.get("/api/v1/products", params={"q": "4006381333931"})
    assert r.json()["total"] == 1
    r = await client.get("/api/v1/products", params={"barcode": "INT-1"})
    assert r.json()["items"][0]["barcodes"] == [
        {"code": "4006381333931", "kind": "ean13"},
        {"code": "INT-1", "kind": "internal"},
    ]
    r = await client.patch("/api/v1/products/MILK-1L", json={"name": "Whole milk 1L"})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Whole milk 1L"
    version = r.json()["version"]
    r = await client.post("/api/v1/products/MILK-1L/archive")
    assert r.status_code == 200
    assert r.json()["active"] is False
    assert r.json()["version"] > version
    r = await client.get("/api/v1/products", params={"active": "true"})
    assert r.json()["total"] == 0
    r = await client.get("/api/v1/products/NOPE")
    assert r.status_code == 404


async def test_bad_input_names_the_field_and_changes_nothing(
    central: Any, central_client: Any
) -> None:
    client = central_client
    await _setup(client)
    await register_branch(central, "B1")
    before = await _counts(central)
    cases = [
        (
            "/api/v1/products",
            {"sku": "X", "name": "X", "vat_rate_bp": 0, "barcodes": [{"code": "4006381333932"}]},
            "barcodes[0].code",
        ),
        (
            "/api/v1/products",
            {
                "sku": "Y",
                "name": "Y",
                "vat_rate_bp": 0,
                "unit": "kg",
                "weighed": True,
                "scale_plu": 999999,
            },
            "scale_plu",
        ),
        (
            "/api/v1/products",
            {
                "sku": "Y",
                "name": "Y",
                "vat_rate_bp": 0,
                "unit": "kg",
                "weighed": True,
                "scale_plu": 100000,
            },
            "scale_plu",
        ),
        ("/api/v1/prices", {"sku": "NOPE", "price": 100}, "sku"),
        ("/api/v1/prices", {"sku": "MILK-1L", "price": -1}, "price"),
        ("/api/v1/prices", {"sku": "MILK-1L", "price": 0}, "price"),
        (
            "/api/v1/repricing",
            {"lines": [{"sku": "MILK-1L", "new_price": 0, "stock_milli": 0}]},
            "lines[0].new_price",
        ),
        (
            "/api/v1/prices",
            {
                "sku": "MILK-1L",
                "price": 100,
                "effective_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
            },
            "effective_at",
        ),
        (
            "/api/v1/prices",
            {"sku": "MILK-1L", "price": 100, "effective_local": "2001-01-01T06:00:00"},
            "effective_local",
        ),
        (
            "/api/v1/prices",
            {"sku": "MILK-1L", "price": 100, "scope": "zone", "scope_id": "x"},
            "scope_id",
        ),
    ]
    for path, body, field in cases:
        r = await client.post(path, json=body)
        assert r.status_code in (409, 422), (path, body, r.text)
        assert _problem_field(r) == field
    assert await _counts(central) == before


def _promotion(now: datetime) -> dict[str, Any]:
    """Ten percent off MILK-1L for a week from ``now``."""
    return {
        "promotion_id": "P1",
        "type": "percent",
        "percent_bp": 1000,
        "skus": ["MILK-1L"],
        "starts_at": now.isoformat(),
        "ends_at": (now + timedelta(days=7)).isoformat(),
    }


async def test_overlapping_promotions_are_refused(central: Any, central_client: Any) -> None:
    client = central_client
    await _setup(client)
    now = datetime.now(UTC)
    body = _promotion(now)
    r = await client.post("/api/v1/promotions", json=body)
    assert r.status_code == 201, r.text
    before = await _counts(central)
    overlapping = body | {
        "promotion_id": "P2",
        "type": "n_for_m",
        "n": 3,
        "m": 2,
        "starts_at": (now + timedelta(days=6)).isoformat(),
        "ends_at": (now + timedelta(days=8)).isoformat(),
    }
    r = await client.post("/api/v1/promotions", json=overlapping)
    assert r.status_code == 409
    assert _problem_field(r) == "skus[0]"
    assert await _counts(central) == before
    # Right after the first one ends, it is fine.
    later = overlapping | {
        "starts_at": (now + timedelta(days=7)).isoformat(),
        "ends_at": (now + timedelta(days=9)).isoformat(),
    }
    r = await client.post("/api/v1/promotions", json=later)
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/promotions/P1/withdraw")
    assert r.json()["active"] is False


async def test_price_precedence_schedule_and_repricing(central: Any, central_client: Any) -> None:
    client = central_client
    await _setup(client)
    assert (
        await client.post("/api/v1/zones", json={"code": "north", "name": "North"})
    ).status_code == 201
    await register_branch(central, "B1", price_zone="north", timezone="Europe/Berlin")
    await register_branch(central, "B2")
    assert (
        await client.post("/api/v1/prices", json={"sku": "MILK-1L", "price": 119})
    ).status_code == 201
    r = await client.post(
        "/api/v1/prices",
        json={"sku": "MILK-1L", "price": 109, "scope": "zone", "scope_id": "north"},
    )
    assert r.status_code == 201, r.text
    soon = datetime.now(UTC) + timedelta(hours=2)
    r = await client.post(
        "/api/v1/prices",
        json={
            "sku": "MILK-1L",
            "price": 99,
            "scope": "branch",
            "scope_id": "B1",
            "effective_at": soon.isoformat(),
        },
    )
    assert r.status_code == 201, r.text

    async def expected(branch: str, at: datetime | None = None) -> int:
        params = {"at": at.isoformat()} if at else {}
        r = await client.get(f"/api/v1/prices/branches/{branch}/products/MILK-1L", params=params)
        assert r.status_code == 200, r.text
        price: int = r.json()["price"]
        return price

    assert await expected("B1") == 109
    assert await expected("B2") == 119
    assert await expected("B1", soon + timedelta(seconds=1)) == 99
    # Withdrawing the zone price: B1 falls back to the chain price (until its override).
    r = await client.post(
        "/api/v1/prices/withdraw", params={"scope": "zone", "scope_id": "north", "sku": "MILK-1L"}
    )
    assert r.status_code == 200, r.text
    assert await expected("B1") == 119

    # A repricing document: draft -> approved -> effective, with the stock revaluation.
    r = await client.post(
        "/api/v1/repricing",
        json={
            "lines": [{"sku": "MILK-1L", "new_price": 129, "stock_milli": 10000}],
            "note": "dairy",
        },
    )
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["status"] == "draft"
    assert await expected("B2") == 119
    r = await client.post(f"/api/v1/repricing/{doc['id']}/approve")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["status"] == "effective"
    assert doc["lines"][0]["old_price"] == 119
    assert doc["lines"][0]["old_value"] == 1190
    assert doc["lines"][0]["new_value"] == 1290
    assert doc["total_revaluation"] == 100
    assert await expected("B2") == 129
    r = await client.post(f"/api/v1/repricing/{doc['id']}/approve")
    assert r.status_code == 409


async def test_price_tags_html(central: Any, central_client: Any) -> None:
    client = central_client
    await _setup(client)
    await client.post("/api/v1/formats", json={"code": "mini", "name": "Minimarket"})
    await register_branch(central, "B1", format_code="mini")
    r = await client.post("/api/v1/formats/mini/products", json={"add": ["MILK-1L"]})
    assert r.status_code == 200, r.text
    await client.post("/api/v1/prices", json={"sku": "MILK-1L", "price": 119})
    r = await client.get("/api/v1/price-tags/B1")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "Whole" not in r.text
    assert "Milk 1L" in r.text
    assert "1.19" in r.text
    assert "<svg" in r.text
    assert 'aria-label="4006381333931"' in r.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("promotion_id", "P" * 65),
        ("name", "n" * 201),
        ("skus", ["S" * 65]),
        ("categories", ["c" * 33]),
        ("branches", ["B" * 33]),
    ],
)
async def test_a_promotion_field_beyond_its_column_is_refused(
    central: Any, central_client: Any, field: str, value: Any
) -> None:
    # The agents decode promotions with the wire limits: one they would refuse is
    # refused here, on SQLite too (PostgreSQL would fail storing it).
    await _setup(central_client)
    now = datetime.now(UTC)
    body = _promotion(now)
    before = await _counts(central)
    r = await central_client.post("/api/v1/promotions", json=body | {field: value})
    assert r.status_code in (400, 422), r.text
    assert field in r.text
    assert await _counts(central) == before


_PRODUCT = {"sku": "X-1", "name": "X", "category": "dairy", "vat_rate_bp": 1000, "vat_group": "B"}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/categories", {"code": "c" * 33, "name": "C"}, "code"),
        ("/api/v1/categories", {"code": "cc", "name": "n" * 201}, "name"),
        ("/api/v1/categories", {"code": "cd", "name": "N", "parent": "p" * 33}, "parent"),
        ("/api/v1/products", _PRODUCT | {"sku": "S" * 65}, "sku"),
        ("/api/v1/products", _PRODUCT | {"unit": "u" * 17}, "unit"),
        ("/api/v1/zones", {"code": "z" * 33, "name": "Z"}, "code"),
        ("/api/v1/zones", {"code": "zz", "name": "n" * 201}, "name"),
        ("/api/v1/zones", {"code": "zy", "name": "N", "timezone": "t" * 65}, "timezone"),
        ("/api/v1/formats", {"code": "f" * 33, "name": "F"}, "code"),
        ("/api/v1/formats", {"code": "ff", "name": "n" * 201}, "name"),
        (
            "/api/v1/repricing",
            {"note": "n" * 501, "lines": [{"sku": "MILK-1L", "new_price": 5}]},
            "note",
        ),
    ],
)
async def test_master_data_beyond_its_columns_is_refused(
    central: Any, central_client: Any, path: str, body: dict[str, Any], field: str
) -> None:
    # Names, notes and codes longer than their columns were 500s (and on SQLite some
    # were stored, then refused by every agent).
    await _setup(central_client)
    before = await _counts(central)
    r = await central_client.post(path, json=body)
    assert r.status_code in (400, 422), r.text
    assert field in r.text
    assert await _counts(central) == before
    listed = await central_client.get(path.replace("/repricing", "/prices"))
    assert body.get("code", body.get("sku", "?")) not in listed.text


async def test_price_tags_of_a_whole_price_list_in_a_few_queries(
    central: Any, central_client: Any, db_url: str
) -> None:
    """A new price list changes every tag: each active product of the branch gets its
    tag (price, EAN-13 preferred over other codes), an archived one none, and the
    statements do not grow with the number of products (they were three per tag)."""
    client = central_client
    await client.post("/api/v1/formats", json={"code": "mini", "name": "Minimarket"})
    await register_branch(central, "B1", format_code="mini")
    skus = [f"P{n:02}" for n in range(25)]
    ean13 = {sku: _ean13(f"{400638133000 + n:012}") for n, sku in enumerate(skus)}
    for n, sku in enumerate(skus):
        # An EAN-8 and an internal code listed first: the tag still shows the EAN-13.
        barcodes = [{"code": f"INT-{n}", "kind": "internal"}] if n < 3 else []
        barcodes += [{"code": "96385074"}] if n == 3 else []
        barcodes.append({"code": ean13[sku]})
        body = {"sku": sku, "name": f"Item {n}", "vat_rate_bp": 1000, "barcodes": barcodes}
        r = await client.post("/api/v1/products", json=body)
        assert r.status_code == 201, r.text
        r = await client.post("/api/v1/prices", json={"sku": sku, "price": 100 + n})
        assert r.status_code == 201, r.text
    r = await client.post("/api/v1/formats/mini/products", json={"add": skus})
    assert r.status_code == 200, r.text
    r = await client.post("/api/v1/products/P05/archive")
    assert r.status_code == 200, r.text

    async with counted_statements(db_url) as (sessionmaker, statements), sessionmaker() as s:
        tags = await price_tag_items(s, "B1")
    assert [(t["sku"], t["price"], t["barcode"]) for t in tags] == [
        (sku, 100 + n, ean13[sku]) for n, sku in enumerate(skus) if sku != "P05"
    ]
    # branch, assortment (format, exceptions, active products), changed entries, scope
    # history, entries, products, barcodes
    assert len(statements) <= 10, statements


async def test_a_page_of_products_answers_each_ones_barcodes_in_a_few_queries(
    central: Any, central_client: Any, db_url: str
) -> None:
    """Each product of a page carries its own barcodes, ordered, and a page of many
    products costs the statements of one (its barcodes were a query per product)."""
    from central.services.catalog import list_products

    client = central_client
    for n in range(30):
        codes = [_ean13(f"{400638134000 + n:012}")] + (
            [{"code": f"INT-{n}", "kind": "internal"}] if n % 3 == 0 else []
        )
        barcodes = [c if isinstance(c, dict) else {"code": c} for c in codes]
        body = {"sku": f"Q{n:02}", "name": f"Item {n}", "vat_rate_bp": 1000, "barcodes": barcodes}
        r = await client.post("/api/v1/products", json=body)
        assert r.status_code == 201, r.text
    await client.post("/api/v1/products", json={"sku": "Q99", "name": "No code", "vat_rate_bp": 0})

    async with counted_statements(db_url) as (sessionmaker, statements), sessionmaker() as s:
        page = await list_products(s, limit=1000)
    assert page.total == 31
    for n in range(30):
        item = page.items[n]
        assert item.sku == f"Q{n:02}"
        expected = sorted(
            [_ean13(f"{400638134000 + n:012}")] + ([f"INT-{n}"] if n % 3 == 0 else [])
        )
        assert [b.code for b in item.barcodes] == expected
    assert page.items[30].sku == "Q99"
    assert page.items[30].barcodes == []
    # count, page, barcodes
    assert len(statements) <= 4, statements

    r = await client.get("/api/v1/products", params={"limit": 2, "offset": 29})
    assert [(p["sku"], len(p["barcodes"])) for p in r.json()["items"]] == [("Q29", 1), ("Q99", 0)]


def _ean13(first12: str) -> str:
    odd, even = sum(map(int, first12[0::2])), sum(map(int, first12[1::2]))
    return first12 + str((10 - (odd + 3 * even) % 10) % 10)
