"""``PUT /api/v1/assortment/branches/{branch}/exceptions`` with a list: many
exceptions at once, all or nothing, one master-data version and publication."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from central.models import AssortmentException, AuditEntry, MasterDataOutbox
from central.services.masterdata_publisher import current_version
from tests.conftest import register_branch

SKUS = [f"P{i:03d}" for i in range(100)]


async def _catalog(central: Any, client: Any) -> None:
    r = await client.post("/api/v1/formats", json={"code": "mini", "name": "Minimarket"})
    assert r.status_code == 201, r.text
    for sku in [*SKUS, "EXTRA"]:
        r = await client.post(
            "/api/v1/products", json={"sku": sku, "name": sku, "vat_rate_bp": 2000}
        )
        assert r.status_code == 201, r.text
    r = await client.post("/api/v1/formats/mini/products", json={"add": SKUS})
    assert r.status_code == 200, r.text
    for code in ("B1", "B2"):
        await register_branch(central, code, format_code="mini")


async def _state(central: Any) -> tuple[int, int, int, int]:
    """(version, outbox rows, exception rows, audit rows)."""
    async with central.sessionmaker() as s:
        counts = [
            int(await s.scalar(select(func.count()).select_from(model)) or 0)
            for model in (MasterDataOutbox, AssortmentException, AuditEntry)
        ]
        return (await current_version(s), *counts)  # type: ignore[return-value]


async def test_a_list_of_exceptions_is_set_at_once(central: Any, central_client: Any) -> None:
    client = central_client
    await _catalog(central, client)
    r = await client.put(
        "/api/v1/assortment/branches/B1/exceptions", json={"sku": "P000", "include": False}
    )
    assert r.status_code == 200, r.text
    version, outbox, _, _ = await _state(central)
    body = [{"sku": sku, "include": False} for sku in SKUS[:60]]
    body += [{"sku": "EXTRA", "include": True}]
    r = await client.put("/api/v1/assortment/branches/B1/exceptions", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == body
    assortment = (await client.get("/api/v1/assortment/branches/B1")).json()
    assert assortment == sorted([*SKUS[60:], "EXTRA"])
    assert (await client.get("/api/v1/assortment/branches/B2")).json() == SKUS
    async with central.sessionmaker() as s:
        versions = set(
            await s.scalars(select(MasterDataOutbox.version).where(MasterDataOutbox.id > outbox))
        )
        audit = (
            await s.scalars(
                select(AuditEntry).where(AuditEntry.action == "assortment.set_exceptions")
            )
        ).all()
    # One version for the whole list, one audit record.
    assert versions == {version + 1}
    assert len(audit) == 1
    # Set again with include flipped for one: it changes, the others stay.
    r = await client.put(
        "/api/v1/assortment/branches/B1/exceptions",
        json=[{"sku": "P001", "include": True}, {"sku": "P002", "include": False}],
    )
    assert r.status_code == 200, r.text
    assortment = (await client.get("/api/v1/assortment/branches/B1")).json()
    assert "P001" in assortment
    assert "P002" not in assortment


async def test_a_list_with_one_bad_item_changes_nothing(central: Any, central_client: Any) -> None:
    client = central_client
    await _catalog(central, client)
    before = await _state(central)
    good = [{"sku": sku, "include": False} for sku in SKUS[:5]]
    cases: list[tuple[Any, str]] = [
        ([*good, {"sku": "NOPE", "include": False}], "[5].sku"),
        ([*good, {"sku": "P001", "include": True}], "[5].sku"),
        ([*good, {"sku": "P010", "include": "no"}], "[5].include"),
        ([*good, {"sku": "P010"}], "[5].include"),
        ([], "body"),
    ]
    for body, field in cases:
        r = await client.put("/api/v1/assortment/branches/B1/exceptions", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in r.json()["errors"]] == [field], r.text
    r = await client.put("/api/v1/assortment/branches/NOPE/exceptions", json=good)
    assert r.status_code == 404, r.text
    assert await _state(central) == before
