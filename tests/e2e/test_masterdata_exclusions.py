"""A product one branch of a format excludes reaches the format's other branches at
branch scope (``product_targets``): a branch registered into the format later, and
the mates of a branch that moves out of it, must still hold exactly what central
says they carry. Through a real nats-server and real agents."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from branch_agent.catalog import find_product
from central.embedded_nats import EmbeddedNats
from tests.conftest import wait_until


async def _ok(response: Any, status: int = 201) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def _till_price(agent: Any, sku: str) -> int | None:
    async with agent.sessionmaker() as s:
        item = await find_product(s, sku=sku, at=datetime.now(UTC))
    return item.price if item else None


async def _format_with_exclusion(client: Any) -> None:
    """Format ``mini`` with A and B at chain prices; B1 and B2 in it, B1 excludes A."""
    await _ok(await client.post("/api/v1/formats", json={"code": "mini", "name": "mini"}))
    await _ok(await client.post("/api/v1/formats", json={"code": "hyper", "name": "hyper"}))
    for sku, price in (("A", 100), ("B", 200)):
        await _ok(
            await client.post(
                "/api/v1/products", json={"sku": sku, "name": sku, "vat_rate_bp": 2000}
            )
        )
        await _ok(await client.post("/api/v1/prices", json={"sku": sku, "price": price}))
    await _ok(
        await client.post("/api/v1/formats/mini/products", json={"add": ["A", "B"]}), status=200
    )
    for code in ("B1", "B2"):
        await _ok(await client.post("/api/v1/branches", json={"code": code, "format_code": "mini"}))
    await _ok(
        await client.put(
            "/api/v1/assortment/branches/B1/exceptions", json={"sku": "A", "include": False}
        ),
        status=200,
    )


async def test_a_branch_registered_into_a_format_with_an_exclusion_gets_the_excluded_product(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, central_client: Any
) -> None:
    client = central_client
    await _format_with_exclusion(client)
    await _ok(await client.post("/api/v1/branches", json={"code": "B3", "format_code": "mini"}))
    carried = await _ok(await client.get("/api/v1/prices/branches/B3/products/A"), status=200)
    assert carried["in_assortment"] is True
    agent = await make_agent("B3", nats_server.url, demo_catalog=False)
    excluding = await make_agent("B1", nats_server.url, demo_catalog=False)

    async def sells(target: Any, sku: str, price: int | None) -> bool:
        return await _till_price(target, sku) == price

    await wait_until(lambda: sells(agent, "B", 200), timeout=30)
    # A reaches B3 at branch scope (B1's exclusion keeps it out of the format's bucket).
    await wait_until(lambda: sells(agent, "A", 100), timeout=15)
    await wait_until(lambda: sells(excluding, "B", 200), timeout=30)
    assert await _till_price(excluding, "A") is None

    async def up_to_date() -> bool:
        response = await client.get("/api/v1/prices/branches")
        rows = {r["branch"]: r for r in response.json()}
        return bool(rows["B3"]["up_to_date"])

    await wait_until(up_to_date, timeout=15)
    assert await _till_price(agent, "A") == 100


async def test_the_mates_of_a_branch_that_left_the_format_follow_its_assortment(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, central_client: Any
) -> None:
    client = central_client
    await _format_with_exclusion(client)
    mate = await make_agent("B2", nats_server.url, demo_catalog=False)

    async def sells(sku: str, price: int | None) -> bool:
        return await _till_price(mate, sku) == price

    await wait_until(lambda: sells("A", 100), timeout=30)
    # B1, which excluded A, moves to the hypermarkets: A is no longer excluded in mini.
    await _ok(await client.patch("/api/v1/branches/B1", json={"format_code": "hyper"}), status=200)
    # Head office then takes A out of mini: B2 must stop selling it.
    await _ok(
        await client.post("/api/v1/formats/mini/products", json={"remove": ["A"]}), status=200
    )
    carried = await _ok(await client.get("/api/v1/prices/branches/B2/products/A"), status=200)
    assert carried["in_assortment"] is False
    await wait_until(lambda: sells("A", None), timeout=15)
    assert await _till_price(mate, "B") == 200


async def test_removing_the_last_exclusion_of_a_product_keeps_the_mates_in_step(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, central_client: Any
) -> None:
    client = central_client
    await _format_with_exclusion(client)
    excluding = await make_agent("B1", nats_server.url, demo_catalog=False)
    mate = await make_agent("B2", nats_server.url, demo_catalog=False)

    async def sells(target: Any, sku: str, price: int | None) -> bool:
        return await _till_price(target, sku) == price

    await wait_until(lambda: sells(mate, "A", 100), timeout=30)
    await wait_until(lambda: sells(excluding, "B", 200), timeout=30)
    assert await _till_price(excluding, "A") is None
    # B1's exclusion, the only one of A, goes: A is back in the format's bucket for both.
    r = await client.delete("/api/v1/assortment/branches/B1/exceptions/A")
    assert r.status_code == 204, r.text
    await wait_until(lambda: sells(excluding, "A", 100), timeout=15)
    # Then A leaves the format: no branch keeps a stale copy of it at its own scope.
    await _ok(
        await client.post("/api/v1/formats/mini/products", json={"remove": ["A"]}), status=200
    )
    await wait_until(lambda: sells(mate, "A", None), timeout=15)
    await wait_until(lambda: sells(excluding, "A", None), timeout=15)
    assert await _till_price(mate, "B") == 200
