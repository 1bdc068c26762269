"""What a promotion may be: an amount off below the price of every product it reaches,
checked at creation (the till never discounts a line by more than its price either:
``protocol.promotions``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from central.models import AuditEntry, MasterDataOutbox
from tests.conftest import register_branch

START = datetime.now(UTC) + timedelta(hours=1)


def _promo(promotion_id: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "promotion_id": promotion_id,
        "type": "amount",
        "starts_at": START.isoformat(),
        "ends_at": (START + timedelta(days=7)).isoformat(),
    }
    body.update(fields)
    return body


async def _counts(central: Any) -> tuple[int, int]:
    async with central.sessionmaker() as s:
        return (
            int(await s.scalar(select(func.count()).select_from(AuditEntry)) or 0),
            int(await s.scalar(select(func.count()).select_from(MasterDataOutbox)) or 0),
        )


async def _setup(central: Any, client: Any) -> None:
    # FOOD > DAIRY (MILK 1.29, chain; 0.99 at zone north), FOOD > BAKERY (BREAD 2.50).
    for code, parent in (("FOOD", None), ("DAIRY", "FOOD"), ("BAKERY", "FOOD")):
        r = await client.post(
            "/api/v1/categories", json={"code": code, "name": code, "parent": parent}
        )
        assert r.status_code == 201, r.text
    r = await client.post("/api/v1/zones", json={"code": "north", "name": "North"})
    assert r.status_code == 201, r.text
    await register_branch(central, "B1", price_zone="north")
    for sku, category, price in (("MILK", "DAIRY", 129), ("BREAD", "BAKERY", 250)):
        r = await client.post(
            "/api/v1/products",
            json={"sku": sku, "name": sku, "category": category, "vat_rate_bp": 1000},
        )
        assert r.status_code == 201, r.text
        r = await client.post("/api/v1/prices", json={"sku": sku, "price": price})
        assert r.status_code == 201, r.text
    r = await client.post(
        "/api/v1/prices", json={"sku": "MILK", "price": 99, "scope": "zone", "scope_id": "north"}
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/v1/products", json={"sku": "NOPRICE", "name": "N", "vat_rate_bp": 1000}
    )
    assert r.status_code == 201, r.text


async def test_an_amount_off_must_be_below_every_price_it_reaches(
    central: Any, central_client: Any
) -> None:
    client = central_client
    await _setup(central, client)
    before = await _counts(central)
    for body in (
        _promo("HUGE", amount=100_000, skus=["MILK", "BREAD"]),
        # Below the chain's 1.29 but not below zone north's 0.99.
        _promo("ZONE", amount=99, skus=["MILK"]),
        # A category reaches its subtree: FOOD holds MILK.
        _promo("CAT", amount=200, categories=["FOOD"]),
    ):
        r = await client.post("/api/v1/promotions", json=body)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["errors"][0]["field"] == "amount"
        assert "MILK" in r.json()["detail"]
    assert await _counts(central) == before
    for body in (
        _promo("OK", amount=98, skus=["MILK"]),
        _promo("OK-CAT", amount=200, categories=["BAKERY"]),
        _promo("OK-NOPRICE", amount=5000, skus=["NOPRICE"]),  # nothing to sell it at
        _promo(
            "OK-PCT",
            type="percent",
            percent_bp=10000,
            skus=["BREAD"],
            amount=0,
            starts_at=(START + timedelta(days=8)).isoformat(),
            ends_at=(START + timedelta(days=9)).isoformat(),
        ),
    ):
        r = await client.post("/api/v1/promotions", json=body)
        assert r.status_code == 201, r.text


async def test_withdrawing_a_withdrawn_promotion_changes_nothing(
    central: Any, central_client: Any
) -> None:
    """Idempotent: a retry after a lost answer gets the same state back; nothing is
    versioned or published again (the request itself is on file in the audit log)."""
    client = central_client
    await _setup(central, client)
    r = await client.post("/api/v1/promotions", json=_promo("P1", amount=10, skus=["MILK"]))
    assert r.status_code == 201, r.text
    first = await client.post("/api/v1/promotions/P1/withdraw")
    assert first.status_code == 200, first.text
    assert first.json()["active"] is False
    before = await _counts(central)
    again = await client.post("/api/v1/promotions/P1/withdraw")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()  # same version: nothing new for the branches
    audit_rows, outbox_rows = before
    assert await _counts(central) == (audit_rows + 1, outbox_rows)
    r = await client.get("/api/v1/audit", params={"target": "promotion:P1"})
    latest = r.json()["items"][0]
    assert latest["action"] == "promotion.withdraw"
    assert latest["before"] == latest["after"]
    assert (await client.post("/api/v1/promotions/NOPE/withdraw")).status_code == 404


async def test_an_amount_off_for_some_branches_is_checked_against_their_prices(
    central: Any, central_client: Any
) -> None:
    """Zone north sells MILK at 0.99: 0.99 off MILK in B2 (chain price 1.29, not in the
    zone) is fine; in B1 (north), or in both, it would give the milk away."""
    client = central_client
    await _setup(central, client)
    await register_branch(central, "B2")
    r = await client.post(
        "/api/v1/promotions", json=_promo("B2-ONLY", amount=99, skus=["MILK"], branches=["B2"])
    )
    assert r.status_code == 201, r.text
    later = {
        "starts_at": (START + timedelta(days=8)).isoformat(),
        "ends_at": (START + timedelta(days=9)).isoformat(),
    }
    for branches in (["B1"], ["B1", "B2"]):
        body = _promo("NORTH", amount=99, skus=["MILK"], branches=branches) | later
        r = await client.post("/api/v1/promotions", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "amount"
        assert "(0.99, zone north's price)" in r.json()["detail"]
    # A branch's own override counts for it alone.
    r = await client.post(
        "/api/v1/prices", json={"sku": "BREAD", "price": 150, "scope": "branch", "scope_id": "B2"}
    )
    assert r.status_code == 201, r.text
    body = _promo("BREAD-B1", amount=200, skus=["BREAD"], branches=["B1"]) | later
    assert (await client.post("/api/v1/promotions", json=body)).status_code == 201
    body = _promo("BREAD-B2", amount=200, skus=["BREAD"], branches=["B2"]) | later
    assert (await client.post("/api/v1/promotions", json=body)).status_code == 422
