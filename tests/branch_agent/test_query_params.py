"""The till and manager API refuse a query parameter a route does not declare (a
misspelt one), or a single-valued one given twice, with a 400 problem naming it and
nothing recorded, as central's API does; a list parameter (``sku`` of the stock
balances) is still given once per value."""

from __future__ import annotations

from typing import Any

from tests.branch_agent.conftest import MANAGER, TILL, Store
from tests.branch_agent.test_input_limits import _counts, _sale


def fields(response: Any) -> list[str]:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert (problem["status"], problem["title"]) == (400, "Bad request")
    return [e["field"] for e in problem["errors"]]


async def test_an_unknown_or_repeated_parameter_is_refused_by_name(store: Store) -> None:
    client = store.client
    found = await client.get("/api/v1/products", params={"q": "milk", "limit": 5}, headers=TILL)
    assert found.status_code == 200, found.text
    r = await client.get("/api/v1/products?q=milk&limt=5", headers=TILL)
    (error,) = r.json()["errors"]
    assert fields(r) == ["limt"]
    assert error["message"] == "not a query parameter of this route (it takes: limit, q)"
    r = await client.get("/api/v1/products?q=milk&q=tea", headers=TILL)
    assert fields(r) == ["q"]
    r = await client.get("/api/v1/devices/scanner/next?wait=1", headers=TILL)
    assert fields(r) == ["wait"]
    assert fields(await client.get("/health?verbose=1")) == ["verbose"]


async def test_a_refused_sale_records_nothing(store: Store) -> None:
    await store.open_shift()
    before = await _counts(store)
    r = await store.client.post("/api/v1/sales?print=0", json=_sale("q1"), headers=TILL)
    assert fields(r) == ["print"]
    assert await _counts(store) == before
    r = await store.client.post("/api/v1/sales", json=_sale("q1"), headers=TILL)
    assert r.status_code == 201, r.text


async def test_the_stock_balances_take_several_skus(store: Store) -> None:
    for n, sku in enumerate(("MILK-1L", "BREAD-500", "COFFEE-250")):
        document = {
            "document_id": f"gr-{n}",
            "doc_type": "goods_receipt",
            "supplier": "DAIRY",
            "lines": [{"sku": sku, "quantity": "2", "unit_cost": 70}],
        }
        posted = await store.client.post("/api/v1/stock/documents", json=document, headers=MANAGER)
        assert posted.status_code == 201, posted.text
    r = await store.client.get("/api/v1/stock/balances?sku=MILK-1L&sku=BREAD-500", headers=MANAGER)
    assert r.status_code == 200, r.text
    assert [b["sku"] for b in r.json()] == ["BREAD-500", "MILK-1L"]
    r = await store.client.get("/api/v1/stock/balances?skus=MILK-1L", headers=MANAGER)
    assert fields(r) == ["skus"]


async def test_the_till_api_document_says_so(store: Store) -> None:
    schema = (await store.client.get("/docs/openapi.json")).json()
    operations = [op for ops in schema["paths"].values() for op in ops.values()]
    assert len(operations) >= 25
    for operation in operations:
        assert operation["responses"]["400"]["content"] == {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }, operation["operationId"]
