"""A stocktake counted, then sales, then posted: central's record of it carries the
book at counting as expected, the count, and the difference booked, and central's
stock and shrinkage agree with the store (no phantom gain for what was sold since)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from branch_agent.stock import balances
from central.embedded_nats import EmbeddedNats
from central.models import IngestedEvent, StockBalance
from central.reports import service
from central.services.documents import get_document
from tests.conftest import asgi_client, register_branch, wait_until

MANAGER = {"Authorization": "Bearer boss"}
TILL = {"Authorization": "Bearer B1-till-1"}


async def test_central_records_the_difference_as_of_counting(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    await register_branch(central, "B1")
    agent = await make_agent("B1", nats_server.url, manager_token="boss")
    async with asgi_client(agent.app) as client:
        receipt = {
            "doc_type": "goods_receipt",
            "supplier": "ACME",
            "lines": [
                {"sku": "COFFEE-250", "quantity": "7", "unit_cost": 400},
                {"sku": "MILK-1L", "quantity": "24", "unit_cost": 70},
            ],
        }
        posted = await client.post("/api/v1/stock/documents", json=receipt, headers=MANAGER)
        assert posted.status_code == 201, posted.text
        opened = await client.post(
            "/api/v1/stock/stocktakes", json={"document_id": "st-1"}, headers=MANAGER
        )
        assert opened.status_code == 201, opened.text
        sheet = {
            "sheet": "shelf-1",
            "lines": [{"sku": "COFFEE-250", "counted": "7"}, {"sku": "MILK-1L", "counted": "20"}],
        }
        counted = await client.post(
            "/api/v1/stock/stocktakes/st-1/sheets", json=sheet, headers=MANAGER
        )
        assert counted.status_code == 200, counted.text
        # Sold at the till after the count, before posting.
        assert (await client.post("/api/v1/shifts", json={}, headers=TILL)).status_code == 201
        sale = {
            "sale_id": "s1",
            "lines": [
                {"sku": "COFFEE-250", "quantity": "1"},
                {"sku": "MILK-1L", "quantity": "2"},
            ],
            "payments": [{"type": "cash", "amount": 1000}],
        }
        sold = await client.post("/api/v1/sales", json=sale, headers=TILL)
        assert sold.status_code == 201, sold.text
        took = await client.post("/api/v1/stock/stocktakes/st-1/post", headers=MANAGER)
        assert took.status_code == 200, took.text
    async with agent.sessionmaker() as session:
        store_stock = {s: q for s, q in (await balances(session)).items() if q}
    assert store_stock == {"COFFEE-250": 6000, "MILK-1L": 18000}

    async def arrived() -> bool:
        async with central.sessionmaker() as session:
            n = await session.scalar(
                select(func.count()).select_from(IngestedEvent).where(IngestedEvent.branch == "B1")
            )
        return bool(n == 4)  # receipt, shift opened, sale, stocktake

    await wait_until(arrived, timeout=30)
    async with central.sessionmaker() as session:
        doc = await get_document(session, "B1", "st-1")
        central_stock = {
            b.sku: b.quantity_milli
            for b in await session.scalars(select(StockBalance).where(StockBalance.branch == "B1"))
            if b.quantity_milli
        }
        today = datetime.now(UTC).date()
        shrink = await service.shrinkage(
            session,
            date_from=today - timedelta(days=1),
            date_to=today + timedelta(days=1),
            branch="B1",
            group_by="product",
        )
    assert doc.doc_type == "stocktake"
    assert [(x.sku, x.expected_milli, x.counted_milli, x.quantity_milli) for x in doc.lines] == [
        ("COFFEE-250", 7000, 7000, 0),
        ("MILK-1L", 24000, 20000, -4000),
    ]
    assert central_stock == store_stock
    # Four milk missing at counting; no gain on the coffee sold since.
    assert sorted((r.sku, r.loss_milli, r.gain_milli, r.net_milli) for r in shrink.rows) == [
        ("COFFEE-250", 0, 0, 0),
        ("MILK-1L", 4000, 0, -4000),
    ]
    assert (shrink.totals.loss_milli, shrink.totals.gain_milli) == (4000, 0)
