"""A body field a central route does not take (a misspelt one) is refused with a 422
naming it, and nothing changes: before, most routes ignored it and answered 2xx with
the field's change silently left out."""

from __future__ import annotations

import re
from typing import Any

from central.app import create_app
from tests.central.test_catalog_api import _setup
from tests.conftest import table_row_counts


def _refused(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert [e["field"] for e in problem["errors"]] == [field], problem
    assert f"unknown field `{field.rsplit('.', 1)[-1]}`" in problem["detail"]


async def test_a_misspelt_field_changes_nothing(central: Any, central_client: Any) -> None:
    client = central_client
    await _setup(client)
    before = await table_row_counts(central)
    # vat_rate for vat_rate_bp: the product kept its old rate, and the answer was 200.
    r = await client.patch("/api/v1/products/MILK-1L", json={"name": "Milk", "vat_rate": 2000})
    _refused(r, "vat_rate")
    # efective_at: the price took effect now instead of next month.
    r = await client.post(
        "/api/v1/prices",
        json={"sku": "MILK-1L", "price": 129, "efective_at": "2027-01-01T00:00:00Z"},
    )
    _refused(r, "efective_at")
    # Inside a list: a repricing line's stock under another name.
    r = await client.post(
        "/api/v1/repricing",
        json={"lines": [{"sku": "MILK-1L", "new_price": 99, "stock": 5000}]},
    )
    _refused(r, "lines[0].stock")
    assert await table_row_counts(central) == before
    r = await client.get("/api/v1/products/MILK-1L")
    assert (r.json()["name"], r.json()["vat_rate_bp"]) == ("Milk 1L", 1000)


def _refs(node: Any) -> list[str]:
    """The component schemas a schema names, at any depth."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        own = [ref.rsplit("/", 1)[-1]] if isinstance(ref, str) else []
        return own + [name for value in node.values() for name in _refs(value)]
    if isinstance(node, list):
        return [name for value in node for name in _refs(value)]
    return []


async def test_every_body_route_refuses_an_unknown_field(central: Any, central_client: Any) -> None:
    """Every route taking a JSON body, and its OpenAPI schema, which says so
    (``additionalProperties: false``, on nested objects too) for clients made from it."""
    app = create_app(central.settings, runtime=central)
    body_routes = sum(
        "data" in handler.parsed_fn_signature.parameters
        for route in app.routes
        for handler in getattr(route, "route_handlers", ())
    )
    schema = (await central_client.get("/docs/openapi.json")).json()
    components = schema["components"]["schemas"]
    before = await table_row_counts(central)
    checked = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if "requestBody" not in operation:
                continue
            names = _refs(operation["requestBody"])
            while names:
                name = names.pop()
                assert components[name].get("additionalProperties") is False, (path, name)
                names += _refs(components[name])
            r = await central_client.request(
                method, re.sub(r"\{[^}]+\}", "B1", path), json={"zz_unknown": 1}
            )
            _refused(r, "zz_unknown")
            checked.append((method, path))
    assert len(checked) == body_routes >= 15, checked
    assert await table_row_counts(central) == before
