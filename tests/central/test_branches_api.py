"""Branch administration through the web API: registration checks its scopes."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from central.models import Branch


def _problem_field(response: Any) -> str:
    assert response.headers["content-type"].startswith("application/problem+json")
    errors = response.json()["errors"]
    field: str = errors[0]["field"]
    return field


async def _scopes(client: Any) -> None:
    r = await client.post("/api/v1/formats", json={"code": "mini", "name": "Minimarket"})
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/zones", json={"code": "north", "name": "North"})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"code": "B1", "price_zone": "NOPE"}, "price_zone"),
        ({"code": "B1", "format_code": "NOPEFMT"}, "format_code"),
        ({"code": "B1", "format_code": "mini", "price_zone": "NOPE"}, "price_zone"),
        ({"code": "B1", "format_code": "", "price_zone": "north"}, "format_code"),
    ],
)
async def test_registration_refuses_an_unknown_format_or_price_zone(
    central: Any, central_client: Any, body: dict[str, str], field: str
) -> None:
    await _scopes(central_client)
    r = await central_client.post("/api/v1/branches", json=body)
    assert r.status_code == 422, r.text
    assert _problem_field(r) == field
    async with central.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Branch)) == 0


async def test_registration_with_existing_scopes(central: Any, central_client: Any) -> None:
    await _scopes(central_client)
    r = await central_client.post(
        "/api/v1/branches", json={"code": "B1", "format_code": "mini", "price_zone": "north"}
    )
    assert r.status_code == 201, r.text
    listed = (await central_client.get("/api/v1/branches")).json()["items"]
    assert [(b["format_code"], b["price_zone"]) for b in listed] == [("mini", "north")]
