"""A branch moved to another price zone or format (``PATCH /api/v1/branches/{code}``)
ends with exactly its new scopes' master data, through a real nats-server and agent."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from branch_agent.catalog import find_product
from central.embedded_nats import EmbeddedNats
from central.models import MasterDataOutbox
from protocol.masterdata import KIND_SNAPSHOT
from tests.conftest import wait_until


async def _till_price(agent: Any, sku: str) -> int | None:
    async with agent.sessionmaker() as s:
        item = await find_product(s, sku=sku, at=datetime.now(UTC))
    return item.price if item else None


async def _ok(response: Any, status: int = 201) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def test_a_branch_moved_to_another_zone_and_format_sells_at_its_new_prices(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, central_client: Any
) -> None:
    client = central_client
    for fmt in ("mini", "hyper"):
        await _ok(await client.post("/api/v1/formats", json={"code": fmt, "name": fmt}))
    for zone in ("north", "south"):
        await _ok(await client.post("/api/v1/zones", json={"code": zone, "name": zone}))
    for sku in ("MILK", "TV"):
        await _ok(
            await client.post(
                "/api/v1/products", json={"sku": sku, "name": sku, "vat_rate_bp": 2000}
            )
        )
    await _ok(
        await client.post("/api/v1/formats/mini/products", json={"add": ["MILK"]}), status=200
    )
    await _ok(
        await client.post("/api/v1/formats/hyper/products", json={"add": ["MILK", "TV"]}),
        status=200,
    )
    for sku, price, scope in (
        ("MILK", 100, {}),
        ("TV", 50000, {}),
        ("MILK", 110, {"scope": "zone", "scope_id": "north"}),
        ("MILK", 90, {"scope": "zone", "scope_id": "south"}),
    ):
        await _ok(await client.post("/api/v1/prices", json={"sku": sku, "price": price, **scope}))
    await _ok(
        await client.post(
            "/api/v1/branches", json={"code": "B1", "format_code": "mini", "price_zone": "north"}
        )
    )
    agent = await make_agent("B1", nats_server.url, demo_catalog=False)
    await wait_until(lambda: _till_price(agent, "MILK"), timeout=30)
    assert await _till_price(agent, "MILK") == 110
    assert await _till_price(agent, "TV") is None  # not in the minimarkets' assortment

    # Moved to the south zone: the south price at the till, the north one gone.
    moved = await _ok(
        await client.patch("/api/v1/branches/B1", json={"price_zone": "south"}), status=200
    )
    assert (moved["format_code"], moved["price_zone"]) == ("mini", "south")

    async def till_at(sku: str, price: int | None) -> bool:
        return await _till_price(agent, sku) == price

    await wait_until(lambda: till_at("MILK", 90), timeout=30)
    # The consumer now reads the south zone: a later south change reaches the till,
    # a north one does not.
    await _ok(
        await client.post(
            "/api/v1/prices",
            json={"sku": "MILK", "price": 111, "scope": "zone", "scope_id": "north"},
        )
    )
    await _ok(
        await client.post(
            "/api/v1/prices",
            json={"sku": "MILK", "price": 95, "scope": "zone", "scope_id": "south"},
        )
    )
    await wait_until(lambda: till_at("MILK", 95), timeout=30)

    # Moved to the hypermarkets and out of any zone: their assortment, the chain prices.
    await _ok(
        await client.patch(
            "/api/v1/branches/B1", json={"format_code": "hyper", "price_zone": None}
        ),
        status=200,
    )
    await wait_until(lambda: till_at("TV", 50000), timeout=30)
    await wait_until(lambda: till_at("MILK", 100), timeout=30)
    async with central.sessionmaker() as s:
        snapshots = (
            await s.scalars(select(MasterDataOutbox).where(MasterDataOutbox.kind == KIND_SNAPSHOT))
        ).all()
    assert len(snapshots) == 2

    # Only the name changed: no snapshot.
    await _ok(await client.patch("/api/v1/branches/B1", json={"name": "Harbour"}), status=200)
    async with central.sessionmaker() as s:
        count = len(
            (
                await s.scalars(
                    select(MasterDataOutbox).where(MasterDataOutbox.kind == KIND_SNAPSHOT)
                )
            ).all()
        )
    assert count == 2
