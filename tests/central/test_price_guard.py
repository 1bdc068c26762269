"""A price more than 10x above or below the one in force (cents typed where the CSV
wants euros, or the reverse) is refused by the CSV import (whole file, one error per
row naming SKU, old and new price) and by ``POST /api/v1/prices`` (422 naming
``price``) unless confirmed; a float price is answered with the unit to use."""

from __future__ import annotations

import io
from typing import Any

from sqlalchemy import func, select

from central.db import create_engine, create_sessionmaker
from central.models import PriceEntryRow
from central.services.branches import add_branch
from central.services.catalog import ProductIn, create_product
from central.services.catalog_import import import_prices
from central.services.pricing import PriceChangeIn, set_price


async def test_the_import_refuses_prices_ten_times_off_unless_allowed(db_url: str) -> None:
    engine = create_engine(db_url)
    sm = create_sessionmaker(engine)
    try:
        async with sm() as s:
            await add_branch(s, code="B003", name="Branch 3", timezone="Europe/Berlin")
            for sku in ("BREAD-500", "CAKE", "SALT", "NEW"):
                await create_product(s, ProductIn(sku=sku, name=sku, vat_rate_bp=1000))
            await s.commit()
        async with sm() as s:
            await set_price(s, PriceChangeIn(sku="BREAD-500", price=259))
            await set_price(s, PriceChangeIn(sku="CAKE", price=1500))
            await set_price(s, PriceChangeIn(sku="SALT", price=99))
            await s.commit()
        # The buyer's file: 259 meant as cents, read as 259.00 euros. CAKE 1.40 is
        # more than 10x below 15.00; SALT 9.90 exactly 10x is allowed; NEW has no price.
        text = (
            "sku,price,scope,scope_id\n"
            "BREAD-500,259,branch,B003\n"
            "SALT,9.90,all,\n"
            "CAKE,1.40,all,\n"
            "NEW,1000.00,all,\n"
        )
        for dry_run in (True, False):
            async with sm() as s:
                report = await import_prices(s, io.StringIO(text), dry_run=dry_run)
            assert [(e.line, e.field) for e in report.errors] == [(2, "price"), (4, "price")]
            bread, cake = (e.message for e in report.errors)
            assert "BREAD-500" in bread
            assert "259.00" in bread
            assert "2.59" in bread
            assert "branch B003" in bread
            assert "CAKE" in cake
            assert "1.40" in cake
            assert "15.00" in cake
            assert not report.applied
        async with sm() as s:
            assert await s.scalar(select(func.count()).select_from(PriceEntryRow)) == 3
        async with sm() as s:
            report = await import_prices(
                s, io.StringIO(text), dry_run=False, allow_large_changes=True
            )
        assert report.applied, report.errors
        async with sm() as s:
            assert await s.scalar(select(func.count()).select_from(PriceEntryRow)) == 7
            # Compared with the price in force at the scope now: B003's own 259.00.
            again = "sku,price,scope,scope_id\nBREAD-500,2.59,branch,B003\n"
            report = await import_prices(s, io.StringIO(again), dry_run=True)
        assert [(e.line, e.field) for e in report.errors] == [(2, "price")]
    finally:
        await engine.dispose()


async def test_the_api_refuses_prices_ten_times_off_unless_confirmed(
    central: Any, central_client: Any
) -> None:
    client = central_client
    r = await client.post(
        "/api/v1/products", json={"sku": "BREAD", "name": "Bread", "vat_rate_bp": 1000}
    )
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/prices", json={"sku": "BREAD", "price": 259})
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/prices", json={"sku": "BREAD", "price": 25900})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["errors"][0]["field"] == "price"
    assert "259.00" in body["detail"]
    assert "2.59" in body["detail"]
    assert "confirm_large_change" in body["detail"]
    r = await client.post("/api/v1/prices", json={"sku": "BREAD", "price": 25})
    assert r.status_code == 422, r.text
    async with central.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(PriceEntryRow)) == 1
    r = await client.post(
        "/api/v1/prices", json={"sku": "BREAD", "price": 25900, "confirm_large_change": True}
    )
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/prices", json={"sku": "BREAD", "price": 1.29})
    assert r.status_code == 422, r.text
    error = r.json()["errors"][0]
    assert error["field"] == "price"
    assert "cents" in error["message"], error
