"""A repricing document approved after its moment never backdates a price: each
branch's moment is its own (local) moment or the approval, whichever is later, and the
document shows the moments used. A draft whose moment (or some zone's) has passed can
still be approved: it takes effect at approval there (it was refused, or backdated)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import update

from central.ingest.worker import IngestWorker
from central.models import RepricingDocument
from tests.central.chain_events import BranchBooks, message
from tests.central.test_catalog_api import _setup
from tests.central.test_price_history import _mismatches, _Tills
from tests.central.test_repricing_per_branch import _post
from tests.conftest import register_branch

ZONES = {"BNY": "America/New_York", "BBER": "Europe/Berlin", "BTOK": "Asia/Tokyo"}


async def _chain(central: Any, client: Any) -> _Tills:
    """Three branches in three zones holding 10 MILK-1L at 779; their tills."""
    await _setup(client)
    for code, tz in ZONES.items():
        await register_branch(central, code, timezone=tz)
    await _post(client, "/api/v1/prices", {"sku": "MILK-1L", "price": 779})
    tills = _Tills(central)
    events = []
    for code in ZONES:
        books = tills.books[code] = BranchBooks(code)
        events.append(books.document("goods_receipt", [("MILK-1L", 10_000, 500)]))
    await IngestWorker(central.sessionmaker).process([message(e) for e in events])
    return tills


async def _price(client: Any, branch: str, at: datetime) -> int:
    r = await client.get(
        f"/api/v1/prices/branches/{branch}/products/MILK-1L", params={"at": at.isoformat()}
    )
    assert r.status_code == 200, r.text
    price: int = r.json()["price"]
    return price


def _wall(tz: str, at: datetime) -> str:
    return at.astimezone(ZoneInfo(tz)).replace(tzinfo=None, microsecond=0).isoformat()


async def test_a_local_time_document_approved_late_is_not_backdated(
    central: Any, central_client: Any
) -> None:
    client = central_client
    tills = await _chain(central, client)
    planned = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    draft = await _post(
        client,
        "/api/v1/repricing",
        {
            "scope": "branch",
            "scope_id": "BNY",
            "effective_local": _wall("America/New_York", planned),
            "lines": [{"sku": "MILK-1L", "new_price": 789}],
        },
    )
    await asyncio.sleep((planned - datetime.now(UTC)).total_seconds() + 1)
    # A till selling between the planned moment and the approval charged 779: right.
    sold_at = await tills.sell("BNY", "MILK-1L", 779)
    assert sold_at > planned
    doc = await _post(client, f"/api/v1/repricing/{draft['id']}/approve", {}, status=200)
    approved = datetime.fromisoformat(doc["approved_at"])
    assert approved > sold_at
    assert await _price(client, "BNY", sold_at) == 779
    assert await _mismatches(client, "BNY") == []
    assert await _price(client, "BNY", approved) == 789
    entries = (await client.get("/api/v1/prices", params={"sku": "MILK-1L"})).json()["items"]
    mine = [e for e in entries if e["document_id"] == doc["id"]]
    assert len(mine) == 1
    assert datetime.fromisoformat(mine[0]["effective_at"]) == approved
    # The document shows the moment used, not the one planned.
    assert datetime.fromisoformat(doc["effective_at"]) == approved
    assert [(m["timezone"], m["effective_at"]) for m in doc["moments"]] == [
        ("America/New_York", doc["effective_at"])
    ]
    line = doc["lines"][0]
    assert (line["old_price"], line["revaluation"]) == (779, 100)


async def test_a_chain_local_document_is_approved_after_its_first_zones_moment(
    central: Any, central_client: Any
) -> None:
    client = central_client
    await _chain(central, client)
    later = datetime.now(UTC) + timedelta(days=2)
    draft = await _post(
        client,
        "/api/v1/repricing",
        {
            "effective_local": _wall("UTC", later),
            "lines": [{"sku": "MILK-1L", "new_price": 789}],
        },
    )
    # Time passes (simulated in the stored draft): one hour from now on Berlin's wall
    # clock is hours past in Tokyo, hours ahead in New York.
    wall = _wall("Europe/Berlin", datetime.now(UTC) + timedelta(hours=1))
    berlin = datetime.fromisoformat(wall).replace(tzinfo=ZoneInfo("Europe/Berlin"))
    tokyo = datetime.fromisoformat(wall).replace(tzinfo=ZoneInfo("Asia/Tokyo"))
    new_york = datetime.fromisoformat(wall).replace(tzinfo=ZoneInfo("America/New_York"))
    assert tokyo < datetime.now(UTC) - timedelta(hours=5)
    async with central.sessionmaker() as session, session.begin():
        await session.execute(
            update(RepricingDocument)
            .where(RepricingDocument.id == draft["id"])
            .values(effective_local=wall, effective_at=tokyo.astimezone(UTC))
        )
    doc = await _post(client, f"/api/v1/repricing/{draft['id']}/approve", {}, status=200)
    approved = datetime.fromisoformat(doc["approved_at"])
    used = {m["timezone"]: datetime.fromisoformat(m["effective_at"]) for m in doc["moments"]}
    assert used == {
        "America/New_York": new_york,
        "Asia/Tokyo": approved,
        "Europe/Berlin": berlin,
    }
    assert datetime.fromisoformat(doc["effective_at"]) == approved
    second = timedelta(seconds=1)
    assert await _price(client, "BTOK", approved - timedelta(microseconds=1)) == 779
    assert await _price(client, "BTOK", approved) == 789
    assert await _price(client, "BBER", berlin - second) == 779
    assert await _price(client, "BBER", berlin) == 789
    assert await _price(client, "BNY", new_york - second) == 779
    assert await _price(client, "BNY", new_york) == 789
    # Every branch's stock revalued at the price it replaces there.
    line = doc["lines"][0]
    assert {b["branch"]: (b["status"], b["old_price"]) for b in line["branches"]} == {
        code: ("revalued", 779) for code in ZONES
    }
    assert line["revaluation"] == 300


async def test_a_document_approved_minutes_late_takes_effect_at_approval(
    central: Any, central_client: Any
) -> None:
    client = central_client
    await _chain(central, client)
    draft = await _post(
        client,
        "/api/v1/repricing",
        {
            "effective_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
            "lines": [{"sku": "MILK-1L", "new_price": 789}],
        },
    )
    planned = datetime.now(UTC) - timedelta(minutes=10)
    async with central.sessionmaker() as session, session.begin():
        await session.execute(
            update(RepricingDocument)
            .where(RepricingDocument.id == draft["id"])
            .values(effective_at=planned)
        )
    doc = await _post(client, f"/api/v1/repricing/{draft['id']}/approve", {}, status=200)
    approved = datetime.fromisoformat(doc["approved_at"])
    assert datetime.fromisoformat(doc["effective_at"]) == approved
    assert doc["status"] == "effective"
    # The draft's stock is revalued (not taken again).
    assert doc["lines"][0]["revalued_stock_milli"] == 30_000
    for code in ZONES:
        assert await _price(client, code, approved - timedelta(microseconds=1)) == 779
        assert await _price(client, code, approved) == 789
