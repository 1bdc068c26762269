"""A moment without a time zone given to the head-office API (query or body) is a 422
problem naming its parameter, never a 500: one check (``central.errors.check_aware``)
for every datetime the API takes."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from central.models import AuditEntry, MasterDataOutbox
from tests.conftest import register_branch

NAIVE = "2026-11-29T10:00:00"


def _field(response: Any) -> str:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    field: str = response.json()["errors"][0]["field"]
    return field


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/prices/branches/B1/products/MILK", {"at": NAIVE}, "at"),
        ("/api/v1/audit", {"since": NAIVE}, "since"),
        ("/api/v1/audit", {"until": NAIVE}, "until"),
        ("/api/v1/audit", {"since": NAIVE + "Z", "until": NAIVE}, "until"),
        ("/api/v1/price-tags/B1", {"since": NAIVE}, "since"),
        ("/api/v1/price-tags/B1", {"since": NAIVE + "Z", "until": NAIVE}, "until"),
    ],
)
async def test_a_naive_query_moment_is_a_problem_naming_it(
    central: Any, central_client: Any, path: str, params: dict[str, str], field: str
) -> None:
    client = central_client
    await register_branch(central, "B1")
    r = await client.post("/api/v1/products", json={"sku": "MILK", "name": "M", "vat_rate_bp": 0})
    assert r.status_code == 201, r.text
    assert _field(await client.get(path, params=params)) == field
    # With a zone the same moment is answered.
    aware = {k: v if v.endswith("Z") else v + "Z" for k, v in params.items()}
    assert (await client.get(path, params=aware)).status_code == 200


async def test_a_naive_body_moment_is_a_problem_naming_it(
    central: Any, central_client: Any
) -> None:
    client = central_client
    r = await client.post("/api/v1/products", json={"sku": "MILK", "name": "M", "vat_rate_bp": 0})
    assert r.status_code == 201, r.text
    async with central.sessionmaker() as s:
        before = (
            await s.scalar(select(func.count()).select_from(AuditEntry)),
            await s.scalar(select(func.count()).select_from(MasterDataOutbox)),
        )
    r = await client.post(
        "/api/v1/prices", json={"sku": "MILK", "price": 100, "effective_at": "2099-01-01T06:00:00"}
    )
    assert _field(r) == "effective_at"
    promotion = {
        "promotion_id": "P1",
        "type": "percent",
        "percent_bp": 1000,
        "skus": ["MILK"],
        "starts_at": "2099-01-01T00:00:00Z",
        "ends_at": "2099-02-01T00:00:00",
    }
    assert _field(await client.post("/api/v1/promotions", json=promotion)) == "ends_at"
    async with central.sessionmaker() as s:
        after = (
            await s.scalar(select(func.count()).select_from(AuditEntry)),
            await s.scalar(select(func.count()).select_from(MasterDataOutbox)),
        )
    assert after == before
