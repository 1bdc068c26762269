"""The till and manager API name a missing body field by its path and refuse a field
they do not know (a misspelt "refund_typ" was dropped: a card refund paid in cash),
422, nothing recorded."""

from __future__ import annotations

from typing import Any

import pytest

from tests.branch_agent.conftest import MANAGER, TILL, Store
from tests.branch_agent.test_input_limits import _RECEIPT, _counts, _return, _sale

CASES = [
    ("/api/v1/sales", TILL, {**_sale("s1"), "bar": 2}, "bar"),
    ("/api/v1/sales", TILL, _sale("s2", lines=[{"sku": "MILK-1L", "qty": "1"}]), "lines[0].qty"),
    ("/api/v1/returns", TILL, {**_return(), "refund_typ": "credit_card"}, "refund_typ"),
    ("/api/v1/shifts", TILL, {"cashier": "anna", "float": 100}, "float"),
    ("/api/v1/stock/documents", MANAGER, {**_RECEIPT, "suplier": "DAIRY"}, "suplier"),
]


async def _post(store: Store, route: str, headers: dict[str, str], body: Any) -> Any:
    if route == "/api/v1/returns":
        original = await store.sale(_sale("orig"))
        assert original.status_code == 201, original.text
    if route == "/api/v1/sales":
        opened = await store.client.post("/api/v1/shifts", json={}, headers=headers)
        assert opened.status_code == 201, opened.text
    before = await _counts(store)
    response = await store.client.post(route, json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await _counts(store) == before
    return response.json()


@pytest.mark.parametrize(
    ("route", "headers", "body", "field"), CASES, ids=[f"{r}:{f}" for r, _, _, f in CASES]
)
async def test_an_unknown_body_field_is_refused_by_name(
    store: Store, route: str, headers: dict[str, str], body: dict[str, Any], field: str
) -> None:
    problem = await _post(store, route, headers, body)
    assert [e["field"] for e in problem["errors"]] == [field]
    assert "unknown field" in problem["errors"][0]["message"]


async def test_a_missing_body_field_is_named_by_its_path(store: Store) -> None:
    body = _sale("s3")
    del body["payments"]
    problem = await _post(store, "/api/v1/sales", TILL, body)
    assert [e["field"] for e in problem["errors"]] == ["payments"]
    problem = await _post(
        store, "/api/v1/stock/documents", MANAGER, {**_RECEIPT, "lines": [{"quantity": "1"}]}
    )
    assert [e["field"] for e in problem["errors"]] == ["lines[0].sku"]
