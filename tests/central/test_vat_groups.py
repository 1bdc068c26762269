"""The chain's VAT groups tie each fiscal-printer tax group to its rate: a product
whose group carries another rate than its own (it would be fiscalized at the group's
rate while the receipt and the books use the product's) is refused with a 422 naming
vat_group, through the API and the CSV import, changing nothing; a product without a
group gets the group of its rate; the groups cannot be set so that an active product
contradicts them; the demo seed sets the demo printers' groups."""

from __future__ import annotations

import io
from typing import Any

from sqlalchemy import func, select

from central.db import create_engine, create_sessionmaker
from central.demo_seed import DEMO_VAT_GROUPS, seed_demo
from central.models import MasterDataOutbox, Product
from central.services.catalog_import import import_products
from central.services.vat_groups import VatGroupsIn, set_vat_groups
from protocol.demo_catalog import DEMO_PRODUCTS


def _product(sku: str, rate: int, group: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"sku": sku, "name": sku, "vat_rate_bp": rate}
    if group is not None:
        body["vat_group"] = group
    return body


def _problem(response: Any) -> tuple[int, str, str]:
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    return response.status_code, body["errors"][0]["field"], body["detail"]


async def _counts(central: Any) -> tuple[int, int]:
    async with central.sessionmaker() as s:
        return (
            int(await s.scalar(select(func.count()).select_from(Product)) or 0),
            int(await s.scalar(select(func.count()).select_from(MasterDataOutbox)) or 0),
        )


async def test_a_product_must_sit_in_the_group_of_its_rate(
    central: Any, central_client: Any
) -> None:
    client = central_client
    r = await client.put("/api/v1/vat-groups", json={"groups": {"A": 2000, "B": 1000}})
    assert r.status_code == 200, r.text
    assert (await client.get("/api/v1/vat-groups")).json() == {"groups": {"A": 2000, "B": 1000}}
    before = await _counts(central)

    # 10 % in the 20 % group: refused, nothing written.
    r = await client.post("/api/v1/products", json=_product("SOUP", 1000, "A"))
    status, field, detail = _problem(r)
    assert (status, field) == (422, "vat_group")
    assert "2000" in detail
    # A group the chain does not have; a rate no group carries.
    r = await client.post("/api/v1/products", json=_product("SOUP", 1000, "C"))
    assert _problem(r)[:2] == (422, "vat_group")
    r = await client.post("/api/v1/products", json=_product("SOUP", 700))
    assert _problem(r)[:2] == (422, "vat_rate_bp")
    assert await _counts(central) == before

    # No group given: the group of the rate.
    r = await client.post("/api/v1/products", json=_product("SOUP", 1000))
    assert r.status_code == 201, r.text
    assert r.json()["vat_group"] == "B"
    r = await client.post("/api/v1/products", json=_product("WINE", 2000, "A"))
    assert r.status_code == 201, r.text

    # A patch to a group of another rate is refused; a new rate alone moves the group.
    r = await client.patch("/api/v1/products/SOUP", json={"vat_group": "A"})
    assert _problem(r)[:2] == (422, "vat_group")
    r = await client.patch("/api/v1/products/SOUP", json={"vat_rate_bp": 2000, "vat_group": "B"})
    assert _problem(r)[:2] == (422, "vat_group")
    assert (await client.get("/api/v1/products/SOUP")).json()["vat_group"] == "B"
    r = await client.patch("/api/v1/products/SOUP", json={"vat_rate_bp": 2000})
    assert r.status_code == 200, r.text
    assert (r.json()["vat_rate_bp"], r.json()["vat_group"]) == (2000, "A")

    # The groups cannot be changed under the products in them.
    r = await client.put("/api/v1/vat-groups", json={"groups": {"A": 2100, "B": 1000}})
    status, field, detail = _problem(r)
    assert (status, field) == (422, "groups.A")
    assert "SOUP" in detail
    r = await client.put("/api/v1/vat-groups", json={"groups": {"A": 2000, "Z": 0}})
    assert _problem(r)[:2] == (422, "groups.Z")
    assert (await client.get("/api/v1/vat-groups")).json() == {"groups": {"A": 2000, "B": 1000}}


async def test_the_import_refuses_a_group_of_another_rate_and_derives_a_missing_one(
    db_url: str,
) -> None:
    engine = create_engine(db_url)
    sm = create_sessionmaker(engine)
    try:
        async with sm() as s:
            await set_vat_groups(s, VatGroupsIn(groups={"A": 2000, "B": 1000}))
            await s.commit()
        bad = (
            "sku,name,vat_rate_bp,vat_group\nMILK,Milk,1000,B\nSOUP,Soup,1000,A\nRICE,Rice,1000,\n"
        )
        for dry_run in (True, False):
            async with sm() as s:
                report = await import_products(s, io.StringIO(bad), dry_run=dry_run)
            assert [(e.line, e.field) for e in report.errors] == [(3, "vat_group")]
            assert not report.applied
        async with sm() as s:
            assert await s.scalar(select(func.count()).select_from(Product)) == 0
        good = "sku,name,vat_rate_bp\nMILK,Milk,1000\nCOFFEE,Coffee,2000\n"
        async with sm() as s:
            report = await import_products(s, io.StringIO(good), dry_run=False)
        assert report.applied, report.errors
        async with sm() as s:
            groups = dict((await s.execute(select(Product.sku, Product.vat_group))).all())
        assert groups == {"MILK": "B", "COFFEE": "A"}
    finally:
        await engine.dispose()


async def test_the_demo_seed_sets_the_demo_printers_groups(db_url: str) -> None:
    engine = create_engine(db_url)
    sm = create_sessionmaker(engine)
    try:
        async with sm() as s:
            report = await seed_demo(s)
        assert report.vat_groups == DEMO_VAT_GROUPS
        async with sm() as s:
            rows = (await s.execute(select(Product.sku, Product.vat_group))).all()
        assert dict(rows) == {p.sku: p.vat_group for p in DEMO_PRODUCTS}
        assert all(DEMO_VAT_GROUPS[p.vat_group] == p.vat_rate_bp for p in DEMO_PRODUCTS)
        async with sm() as s:
            again = await seed_demo(s)
        assert again.vat_groups == {}
        assert not again.changed
    finally:
        await engine.dispose()
