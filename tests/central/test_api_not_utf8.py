"""A request body whose JSON string holds bytes that are not UTF-8 is the client's
error (400 problem naming the body), not central's (it was a 500), and changes nothing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from central.models import AuditEntry, Product


async def test_a_body_that_is_not_utf8_is_a_400_problem_and_changes_nothing(
    central: Any, central_client: Any
) -> None:
    async with central.sessionmaker() as session:
        audited = await session.scalar(select(func.count()).select_from(AuditEntry))
    body = (
        b'{"sku": "MILK-1L", "name": "Milk \xff\xfe", "unit": "pcs", "vat_rate_bp": 1000, '
        b'"vat_group": "B"}'
    )
    response = await central_client.post(
        "/api/v1/products", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["detail"] == "request body is not valid UTF-8 JSON"
    assert [e["field"] for e in problem["errors"]] == ["body"]
    async with central.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Product)) == 0
        assert await session.scalar(select(func.count()).select_from(AuditEntry)) == audited
