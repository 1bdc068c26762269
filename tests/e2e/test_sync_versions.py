"""What central shows of each branch's master-data version against its own
(``up_to_date``), with a real nats-server and agent."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from central.embedded_nats import EmbeddedNats
from central.models import MasterDataOutbox
from tests.conftest import wait_until


async def _ok(response: Any, status: int = 201) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def _pending(central: Any) -> int:
    async with central.sessionmaker() as s:
        return int(
            await s.scalar(
                select(func.count())
                .select_from(MasterDataOutbox)
                .where(MasterDataOutbox.published_at.is_(None))
            )
            or 0
        )


async def _synced_branch(client: Any, central: Any, make_agent: Any, url: str) -> Any:
    """Format ``mini`` with MILK priced, branch B1 in it, its agent having applied it all."""
    await _ok(await client.post("/api/v1/formats", json={"code": "mini", "name": "mini"}))
    await _ok(
        await client.post(
            "/api/v1/products", json={"sku": "MILK", "name": "Milk", "vat_rate_bp": 2000}
        )
    )
    await _ok(await client.post("/api/v1/prices", json={"sku": "MILK", "price": 100}))
    await _ok(
        await client.post("/api/v1/formats/mini/products", json={"add": ["MILK"]}), status=200
    )
    await _ok(await client.post("/api/v1/branches", json={"code": "B1", "format_code": "mini"}))
    agent = await make_agent("B1", url, demo_catalog=False)

    async def synced() -> bool:
        if await _pending(central):
            return False
        rows = (await client.get("/api/v1/prices/branches")).json()
        return bool(rows[0]["up_to_date"]) and rows[0]["applied_version"] > 0

    await wait_until(synced, timeout=30)
    return agent


async def test_a_product_in_no_assortment_leaves_the_branches_up_to_date(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, central_client: Any
) -> None:
    client = central_client
    await _synced_branch(client, central, make_agent, nats_server.url)
    before = (await client.get("/api/v1/prices/branches")).json()[0]
    # Not in any format nor branch: no branch receives anything of it.
    await _ok(
        await client.post(
            "/api/v1/products", json={"sku": "LONELY", "name": "Lonely", "vat_rate_bp": 2000}
        )
    )
    assert await _pending(central) == 0
    row = (await client.get("/api/v1/prices/branches")).json()[0]
    assert row["central_version"] == before["central_version"] + 1
    assert row["published_version"] == before["published_version"]
    assert row["applied_version"] == row["published_version"]
    assert row["up_to_date"] is True
    # A change the branch does receive: not up to date until its agent applied it.
    await _ok(await client.post("/api/v1/prices", json={"sku": "MILK", "price": 120}))

    async def applied_again() -> bool:
        r = (await client.get("/api/v1/prices/branches")).json()[0]
        return bool(
            r["up_to_date"]
            and r["applied_version"] == r["central_version"] > row["central_version"]
        )

    await wait_until(applied_again, timeout=30)


async def test_the_sync_views_show_the_published_version_and_whether_it_was_applied(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, central_client: Any
) -> None:
    client = central_client
    await _synced_branch(client, central, make_agent, nats_server.url)
    # B2 has no agent: it applied nothing of what was published.
    await _ok(await client.post("/api/v1/branches", json={"code": "B2", "format_code": "mini"}))

    async def published() -> bool:
        return await _pending(central) == 0

    await wait_until(published, timeout=30)
    prices = {r["branch"]: r for r in (await client.get("/api/v1/prices/branches")).json()}
    page = (await client.get("/api/v1/sync/branches")).json()
    sync = {r["branch"]: r for r in page["items"]}
    health_rows = (await client.get("/api/v1/reports/sync-health")).json()["rows"]
    health = {r["branch"]: r for r in health_rows}
    one = (await client.get("/api/v1/sync/branches/B1")).json()
    target = prices["B1"]["published_version"]
    assert target > 0
    for view in (sync, health, {"B1": one}):
        row = view["B1"]
        assert (row["published_version"], row["up_to_date"]) == (target, True), row
        assert row["applied_version"] == prices["B1"]["applied_version"] >= target
    for view in (sync, health):
        row = view["B2"]
        assert (row["applied_version"], row["published_version"]) == (None, target), row
        assert row["up_to_date"] is False
    assert prices["B2"]["up_to_date"] is False
