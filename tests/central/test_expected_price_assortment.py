"""``GET /api/v1/prices/branches/{code}/products/{sku}`` says whether the branch carries
the product: a branch without a format carries only its inclusions (products reach a
branch at its format's or its own scope), so its agent has no record of the others and
its tills cannot sell them, whatever price head office's rules give."""

from __future__ import annotations

from typing import Any

from tests.conftest import register_branch


async def _expected(client: Any, branch: str, sku: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/prices/branches/{branch}/products/{sku}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_the_expected_price_says_whether_the_branch_carries_the_product(
    central: Any, central_client: Any
) -> None:
    client = central_client
    r = await client.post("/api/v1/formats", json={"code": "mini", "name": "Minimarket"})
    assert r.status_code == 201, r.text
    for sku in ("MILK", "TV"):
        r = await client.post(
            "/api/v1/products", json={"sku": sku, "name": sku, "vat_rate_bp": 2000}
        )
        assert r.status_code == 201, r.text
        r = await client.post("/api/v1/prices", json={"sku": sku, "price": 100})
        assert r.status_code == 201, r.text
    r = await client.post("/api/v1/formats/mini/products", json={"add": ["MILK"]})
    assert r.status_code == 200, r.text
    await register_branch(central, "FMT", format_code="mini")
    await register_branch(central, "NOFMT")

    async def carried(branch: str, sku: str) -> bool:
        body = await _expected(client, branch, sku)
        assert body["price"] == 100  # the rules' price either way
        flag: bool = body["in_assortment"]
        return flag

    assert await carried("FMT", "MILK")
    assert not await carried("FMT", "TV")
    # No format: an empty assortment (as GET /api/v1/assortment/branches/NOFMT says).
    assert not await carried("NOFMT", "MILK")
    assert (await client.get("/api/v1/assortment/branches/NOFMT")).json() == []
    # Exceptions: NOFMT includes TV, FMT excludes MILK.
    for branch, sku, include in (("NOFMT", "TV", True), ("FMT", "MILK", False)):
        r = await client.put(
            f"/api/v1/assortment/branches/{branch}/exceptions",
            json={"sku": sku, "include": include},
        )
        assert r.status_code == 200, r.text
    assert await carried("NOFMT", "TV")
    assert not await carried("FMT", "MILK")
    # Archived: carried nowhere.
    r = await client.post("/api/v1/products/TV/archive")
    assert r.status_code == 200, r.text
    assert not (await _expected(client, "NOFMT", "TV"))["in_assortment"]
