"""Overlapping promotions of one product are refused, categories included: a category
promotion reaches its whole subtree (``protocol.promotions``), so it overlaps promotions
of its products, of itself, of its ancestors and of its descendants."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from central.models import AuditEntry, MasterDataOutbox
from central.services.catalog_import import import_products
from tests.conftest import register_branch

NOW = datetime.now(UTC) + timedelta(hours=1)


def _promo(promotion_id: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "promotion_id": promotion_id,
        "type": "percent",
        "percent_bp": 1000,
        "branches": ["B002"],
        "starts_at": NOW.isoformat(),
        "ends_at": (NOW + timedelta(days=7)).isoformat(),
    }
    body.update(fields)
    return body


async def _setup(central: Any, client: Any) -> None:
    # FOOD > DAIRY (MILK-1L, CHEESE-KG), FOOD > BAKERY (BREAD); TOYS (BALL).
    for code, parent in (("FOOD", None), ("DAIRY", "FOOD"), ("BAKERY", "FOOD"), ("TOYS", None)):
        r = await client.post(
            "/api/v1/categories", json={"code": code, "name": code, "parent": parent}
        )
        assert r.status_code == 201, r.text
    for sku, category in (
        ("MILK-1L", "DAIRY"),
        ("CHEESE-KG", "DAIRY"),
        ("BREAD", "BAKERY"),
        ("BALL", "TOYS"),
    ):
        r = await client.post(
            "/api/v1/products",
            json={"sku": sku, "name": sku, "category": category, "vat_rate_bp": 1000},
        )
        assert r.status_code == 201, r.text
    for code in ("B001", "B002"):
        await register_branch(central, code)


async def _refused(client: Any, body: dict[str, Any], field: str) -> None:
    r = await client.post("/api/v1/promotions", json=body)
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == field
    listed = await client.get(f"/api/v1/promotions/{body['promotion_id']}")
    assert listed.status_code == 404


async def _accepted(client: Any, body: dict[str, Any]) -> None:
    r = await client.post("/api/v1/promotions", json=body)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_promo("P-MILK", skus=["MILK-1L"]), "skus[0]"),
        (_promo("P-CHEESE", skus=["BALL", "CHEESE-KG"]), "skus[1]"),
        (_promo("P-FOOD", categories=["FOOD"]), "categories[0]"),  # an ancestor
        (_promo("P-DAIRY5", categories=["TOYS", "DAIRY"]), "categories[1]"),  # the same
        # The whole chain includes B002.
        (_promo("P-MILK-ALL", skus=["MILK-1L"], branches=[]), "skus[0]"),
    ],
)
async def test_a_category_promotion_overlaps_its_products_and_related_categories(
    central: Any, central_client: Any, body: dict[str, Any], field: str
) -> None:
    await _setup(central, central_client)
    await _accepted(central_client, _promo("P-DAIRY10", categories=["DAIRY"]))
    await _refused(central_client, body, field)


async def test_a_product_or_subcategory_promotion_blocks_a_category_promotion(
    central: Any, central_client: Any
) -> None:
    await _setup(central, central_client)
    await _accepted(central_client, _promo("P-MILK", skus=["MILK-1L"]))
    # DAIRY and its ancestor FOOD hold MILK-1L.
    await _refused(central_client, _promo("P-DAIRY10", categories=["DAIRY"]), "categories[0]")
    await _refused(central_client, _promo("P-FOOD", categories=["TOYS", "FOOD"]), "categories[1]")
    await _accepted(central_client, _promo("P-BAKERY", categories=["BAKERY"]))
    # FOOD is an ancestor of BAKERY (P-BAKERY) too.
    r = await central_client.post("/api/v1/promotions/P-MILK/withdraw")
    assert r.status_code == 200, r.text
    await _refused(central_client, _promo("P-FOOD", categories=["FOOD"]), "categories[0]")


async def test_no_overlap_in_other_branches_periods_or_categories(
    central: Any, central_client: Any
) -> None:
    await _setup(central, central_client)
    await _accepted(central_client, _promo("P-DAIRY10", categories=["DAIRY"]))
    # Another branch, the week after, a sibling category, a product outside DAIRY.
    await _accepted(central_client, _promo("P-B1", categories=["FOOD"], branches=["B001"]))
    later = NOW + timedelta(days=7)
    await _accepted(
        central_client,
        _promo(
            "P-LATER",
            skus=["MILK-1L"],
            starts_at=later.isoformat(),
            ends_at=(later + timedelta(days=1)).isoformat(),
        ),
    )
    await _accepted(central_client, _promo("P-BAKERY", categories=["BAKERY"]))
    await _accepted(central_client, _promo("P-BALL", skus=["BALL"]))
    # Withdrawn: no longer in the way.
    r = await central_client.post("/api/v1/promotions/P-DAIRY10/withdraw")
    assert r.status_code == 200, r.text
    await _accepted(central_client, _promo("P-CHEESE", skus=["CHEESE-KG"]))


async def test_moving_a_product_into_a_promoted_category_is_refused_as_an_overlap(
    central: Any, central_client: Any
) -> None:
    """The overlap creating either promotion would refuse cannot be made by moving the
    product afterwards (PATCH category): 409 naming category, nothing changed."""
    client = central_client
    await _setup(central, client)
    await _accepted(client, _promo("P-TOYS", categories=["TOYS"]))
    await _accepted(client, _promo("P-MILK", skus=["MILK-1L"]))
    async with central.sessionmaker() as s:
        before = (
            await s.scalar(select(func.count()).select_from(AuditEntry)),
            await s.scalar(select(func.count()).select_from(MasterDataOutbox)),
        )
    r = await client.patch("/api/v1/products/MILK-1L", json={"category": "TOYS"})
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == "category"
    assert (await client.get("/api/v1/products/MILK-1L")).json()["category"] == "DAIRY"
    async with central.sessionmaker() as s:
        after = (
            await s.scalar(select(func.count()).select_from(AuditEntry)),
            await s.scalar(select(func.count()).select_from(MasterDataOutbox)),
        )
    assert after == before
    # No overlap: into a category without a promotion, or a product without its own.
    r = await client.patch("/api/v1/products/MILK-1L", json={"category": "BAKERY"})
    assert r.status_code == 200, r.text
    r = await client.patch("/api/v1/products/CHEESE-KG", json={"category": "TOYS"})
    assert r.status_code == 200, r.text


async def test_the_products_import_refuses_the_same_move(central: Any, central_client: Any) -> None:
    """The products CSV changes categories too: the same check, reported on its line."""
    client = central_client
    await _setup(central, client)
    await _accepted(client, _promo("P-TOYS", categories=["TOYS"]))
    await _accepted(client, _promo("P-MILK", skus=["MILK-1L"]))
    rows = (
        "sku,name,unit,category,vat_rate_bp\n"
        "BREAD,BREAD,pcs,TOYS,1000\n"
        "MILK-1L,MILK-1L,pcs,TOYS,1000\n"
    )
    for dry_run in (True, False):
        async with central.sessionmaker() as s:
            report = await import_products(s, io.StringIO(rows), dry_run=dry_run)
        assert [(e.line, e.field) for e in report.errors] == [(3, "category")]
        assert not report.applied
    assert (await client.get("/api/v1/products/MILK-1L")).json()["category"] == "DAIRY"
