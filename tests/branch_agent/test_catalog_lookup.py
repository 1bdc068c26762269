"""Looking up many SKUs at once (count sheets, stock documents) gives exactly what
looking each one up gives: the most specific scope's product, the price in force, and
nothing for products not sold here."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from branch_agent.catalog import CatalogItem, find_product, find_products
from branch_agent.db import create_sessionmaker
from branch_agent.masterdata_models import MdPrice, MdProduct
from branch_agent.models import Product, StockBalance
from branch_agent.stock import balances
from tests.conftest import asgi_client

T0 = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
AT = T0 + timedelta(days=1)
# Beyond two lookup chunks.
MANY = 1_200


def _product(scope: str, sku: str, name: str, *, weighed: bool = False) -> dict[str, object]:
    return {
        "scope": scope,
        "scope_id": "" if scope == "all" else "B1",
        "sku": sku,
        "bucket": 0,
        "name": name,
        "unit": "kg" if weighed else "pcs",
        "weighed": weighed,
        "vat_rate_bp": 2000,
        "vat_group": "A",
        "version": 1,
    }


def _price(scope: str, sku: str, price: int, at: datetime) -> dict[str, object]:
    return {
        "scope": scope,
        "scope_id": "" if scope == "all" else "B1",
        "bucket": 0,
        "sku": sku,
        "price": price,
        "effective_at": at,
        "version": 1,
    }


async def _one_by_one(engine: AsyncEngine, skus: list[str]) -> dict[str, CatalogItem]:
    async with create_sessionmaker(engine)() as session:
        found = {s: await find_product(session, sku=s, at=AT) for s in skus}
    return {s: item for s, item in found.items() if item is not None}


async def _at_once(engine: AsyncEngine, skus: list[str]) -> dict[str, CatalogItem]:
    async with create_sessionmaker(engine)() as session:
        return await find_products(session, skus, at=AT)


async def test_master_data_many_at_once_equal_one_by_one(
    agent_engine: Callable[..., AsyncEngine],
) -> None:
    engine = agent_engine()
    # Without the agent's direct reader: the same lookups through the session.
    plain = agent_engine(reader=False)
    async with create_sessionmaker(engine)() as session, session.begin():
        products = [
            _product("all", "A", "apples"),
            # The branch's own record of A wins over the chain's.
            _product("branch", "A", "apples (local)", weighed=True),
            _product("all", "B", "bread"),
            _product("all", "C", "coffee"),  # priced only from next week
            _product("all", "D", "dates"),  # never priced
            *(_product("all", f"N{n:04d}", f"item {n}") for n in range(MANY)),
        ]
        await session.execute(insert(MdProduct), products)
        prices = [
            _price("all", "A", 300, T0),
            _price("branch", "A", 280, T0),
            _price("all", "B", 250, T0),
            _price("all", "B", 260, AT + timedelta(hours=1)),
            _price("all", "C", 700, T0 + timedelta(days=7)),
            *(_price("all", f"N{n:04d}", 100 + n, T0) for n in range(MANY)),
        ]
        await session.execute(insert(MdPrice), prices)
    asked = ["A", "B", "C", "D", "UNKNOWN", "A", *(f"N{n:04d}" for n in range(MANY))]
    expected = await _one_by_one(engine, sorted(set(asked)))
    assert set(expected) == {"A", "B"} | {f"N{n:04d}" for n in range(MANY)}
    assert (expected["A"].name, expected["A"].weighed) == ("apples (local)", True)
    assert (expected["A"].price, expected["B"].price) == (280, 250)
    assert await _at_once(engine, asked) == expected
    assert await _at_once(plain, asked) == expected
    # For stock (goods arrive and are counted before they go on sale): the branch's
    # assortment, priced or not.
    async with create_sessionmaker(engine)() as session:
        stock = await find_products(session, asked, at=AT, priced=False)
    assert set(stock) == set(expected) | {"C", "D"}
    assert (stock["C"].price, stock["D"].price, stock["A"]) == (0, 0, expected["A"])


async def test_demo_catalog_many_at_once_equal_one_by_one(
    agent_engine: Callable[..., AsyncEngine],
) -> None:
    engine = agent_engine()
    async with create_sessionmaker(engine)() as session, session.begin():
        await session.execute(
            insert(Product),
            [
                {"sku": f"P{n:04d}", "name": f"p{n}", "vat_rate_bp": 0, "price": n + 1}
                | ({"active": False} if n % 10 == 0 else {})
                for n in range(MANY)
            ],
        )
    asked = [f"P{n:04d}" for n in range(MANY)] + ["NOPE"]
    expected = await _one_by_one(engine, asked)
    assert len(expected) == MANY - MANY // 10
    assert await _at_once(engine, asked) == expected


async def test_goods_of_a_product_not_priced_yet_are_received_but_not_sold(
    make_agent: Any,
) -> None:
    agent = await make_agent("B1", "nats://127.0.0.1:9", demo_catalog=False, manager_token="m")
    async with agent.sessionmaker() as session, session.begin():
        await session.execute(insert(MdProduct), [_product("all", "NEW", "new in range")])
        # On sale from next week.
        next_week = datetime.now(UTC) + timedelta(days=7)
        await session.execute(insert(MdPrice), [_price("all", "NEW", 990, next_week)])
    manager = {"Authorization": "Bearer m"}
    till = {"Authorization": "Bearer B1-till-1"}
    receipt = {
        "doc_type": "goods_receipt",
        "supplier": "ACME",
        "lines": [{"sku": "NEW", "quantity": "24", "unit_cost": 500}],
    }
    async with asgi_client(agent.app) as client:
        received = await client.post("/api/v1/stock/documents", json=receipt, headers=manager)
        assert received.status_code == 201, received.text
        unknown = receipt | {"lines": [{"sku": "NOT-LISTED", "quantity": "1", "unit_cost": 1}]}
        refused = await client.post("/api/v1/stock/documents", json=unknown, headers=manager)
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["field"] == "lines[0].sku"
        assert (await client.post("/api/v1/shifts", json={}, headers=till)).status_code == 201
        sale = {
            "sale_id": "s1",
            "lines": [{"sku": "NEW", "quantity": "1"}],
            "payments": [{"type": "cash", "amount": 1000}],
        }
        not_yet = await client.post("/api/v1/sales", json=sale, headers=till)
        assert not_yet.status_code == 422, not_yet.text
        stock = await client.get("/api/v1/stock/balances", headers=manager)
    assert {b["sku"]: b["quantity_milli"] for b in stock.json()} == {"NEW": 24000}


async def test_lookups_of_a_whole_store_fit_any_sqlite_bind_limit(
    agent_engine: Callable[..., AsyncEngine],
) -> None:
    """SQLite's default build binds at most 32,766 parameters (Debian's 250,000): a
    stocktake counting more products must not put them all in one IN list. Here the
    limit is lowered to 999 on the agent's connections, and 3,000 SKUs are asked."""
    engine = agent_engine(inline=True)

    @event.listens_for(engine.sync_engine, "connect")
    def low_limit(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection.sqlite.setlimit(
            sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999
        )

    skus = [f"S{n:05d}" for n in range(3000)]
    async with create_sessionmaker(engine)() as session, session.begin():
        await session.execute(
            insert(StockBalance), [{"sku": s, "quantity_milli": 1000} for s in skus[::2]]
        )
        await session.execute(
            insert(Product), [{"sku": s, "name": s, "vat_rate_bp": 0, "price": 1} for s in skus]
        )
        with pytest.raises(OperationalError, match="too many SQL variables"):
            await session.execute(select(Product.sku).where(Product.sku.in_(skus)))
    async with create_sessionmaker(engine)() as session:
        assert await balances(session, skus) == {s: 1000 for s in skus[::2]}
        assert set(await find_products(session, skus, at=AT, priced=False)) == set(skus)
