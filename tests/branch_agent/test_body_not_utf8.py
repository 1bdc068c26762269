"""A request body whose JSON string holds bytes that are not UTF-8 is the till's
error (400 problem naming the body), not the agent's (it was a 500), and records nothing."""

from __future__ import annotations

import pytest

from tests.branch_agent.conftest import MANAGER, TILL, Store
from tests.branch_agent.test_input_limits import _counts

_BODIES = {
    "/api/v1/sales": (
        TILL,
        b'{"sale_id": "s-\xff\xfe", "cashier": "anna", "lines": [{"sku": "MILK-1L", '
        b'"quantity": "1"}], "payments": [{"type": "cash", "amount": 200}]}',
    ),
    "/api/v1/stock/documents": (
        MANAGER,
        b'{"document_id": "gr-1", "doc_type": "goods_receipt", "supplier": "DA\xff\xfeRY", '
        b'"lines": [{"sku": "MILK-1L", "quantity": "2", "unit_cost": 70}]}',
    ),
}


@pytest.mark.parametrize("route", list(_BODIES))
async def test_a_body_that_is_not_utf8_is_a_400_problem_and_records_nothing(
    store: Store, route: str
) -> None:
    headers, body = _BODIES[route]
    opened = await store.client.post("/api/v1/shifts", json={}, headers=TILL)
    assert opened.status_code == 201, opened.text
    before = await _counts(store)
    response = await store.client.post(
        route, content=body, headers=headers | {"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["detail"] == "request body is not valid UTF-8 JSON"
    assert [e["field"] for e in problem["errors"]] == ["body"]
    assert await _counts(store) == before
