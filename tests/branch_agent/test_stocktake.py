"""A stocktake compares each count with the books at counting, not at posting: the
difference (counted - book when the product's first sheet was recorded) is added to
the stock of the moment of posting, so sales, receipts and write-offs between
counting and posting are kept."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import select, text

import migrations
from branch_agent.agent import Agent
from branch_agent.db import create_engine, database_url
from branch_agent.models import StockMove, StocktakeCount
from branch_agent.settings import AgentSettings, TillConfig
from protocol.events import StockDocumentPosted
from tests.branch_agent.conftest import MANAGER, TILL2, Store
from tests.conftest import asgi_client

COFFEE = "COFFEE-250"  # 6.99 a piece
MILK = "MILK-1L"  # 1.19 a piece
CHEESE = "CHEESE-KG"  # 12.90 a kilogram, weighed


async def receive(store: Store, sku: str, quantity: str, unit_cost: int = 100) -> None:
    body = {
        "doc_type": "goods_receipt",
        "supplier": "ACME",
        "lines": [{"sku": sku, "quantity": quantity, "unit_cost": unit_cost}],
    }
    posted = await store.client.post("/api/v1/stock/documents", json=body, headers=MANAGER)
    assert posted.status_code == 201, posted.text


async def sell(store: Store, sale_id: str, sku: str, quantity: str, cash: int) -> None:
    body = {
        "sale_id": sale_id,
        "lines": [{"sku": sku, "quantity": quantity}],
        "payments": [{"type": "cash", "amount": cash}],
    }
    sold = await store.sale(body)
    assert sold.status_code in (200, 201), sold.text


async def open_take(client: Any, document_id: str) -> None:
    opened = await client.post(
        "/api/v1/stock/stocktakes", json={"document_id": document_id}, headers=MANAGER
    )
    assert opened.status_code == 201, opened.text


async def count(client: Any, document_id: str, sheet: str, **counted: str) -> Any:
    lines = [{"sku": sku.replace("_", "-"), "counted": q} for sku, q in counted.items()]
    return await client.post(
        f"/api/v1/stock/stocktakes/{document_id}/sheets",
        json={"sheet": sheet, "lines": lines},
        headers=MANAGER,
    )


async def post_take(client: Any, document_id: str) -> Any:
    return await client.post(f"/api/v1/stock/stocktakes/{document_id}/post", headers=MANAGER)


async def stock(client: Any) -> dict[str, int]:
    found = await client.get("/api/v1/stock/balances", headers=MANAGER)
    return {b["sku"]: b["quantity_milli"] for b in found.json()}


def line_figures(lines: list[dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    """sku -> (expected, counted, difference booked)."""
    return {x["sku"]: (x["expected_milli"], x["counted_milli"], x["quantity_milli"]) for x in lines}


async def stocktake_events(store: Store) -> list[StockDocumentPosted]:
    bodies = [e.body for e in await store.events("stock_document_posted")]
    return [b for b in bodies if isinstance(b, StockDocumentPosted) and b.doc_type == "stocktake"]


async def test_a_sale_between_counting_and_posting_is_kept(store: Store) -> None:
    """The tester's case: coffee counted 7 with 7 on the books, one sold at the till,
    then posted: no difference, 6 on the books, no phantom gain going up."""
    await receive(store, COFFEE, "7")
    await receive(store, MILK, "24")
    await receive(store, "WATER-15", "6")
    await open_take(store.client, "st-1")
    counted = await count(store.client, "st-1", "shelf-1", COFFEE_250="7", WATER_15="0")
    assert counted.status_code == 200, counted.text
    await sell(store, "s1", COFFEE, "1", 699)

    posted = await post_take(store.client, "st-1")
    assert posted.status_code == 200, posted.text
    assert line_figures(posted.json()["lines"]) == {
        COFFEE: (7000, 7000, 0),
        # Counted 0: booked empty. Milk, on no sheet, is not in the stocktake.
        "WATER-15": (6000, 0, -6000),
    }
    assert await stock(store.client) == {COFFEE: 6000, MILK: 24000, "WATER-15": 0}
    (event,) = await stocktake_events(store)
    assert [(x.sku, x.expected_milli, x.counted_milli, x.quantity_milli) for x in event.lines] == [
        (COFFEE, 7000, 7000, 0),
        ("WATER-15", 6000, 0, -6000),
    ]
    async with store.agent.sessionmaker() as session:
        moves = (
            await session.execute(
                select(StockMove.sku, StockMove.quantity_milli).where(
                    StockMove.source == "stocktake"
                )
            )
        ).all()
    assert moves == [("WATER-15", -6000)]  # no ledger row for a difference of 0

    # Posted once: posting again (a retry whose answer was lost) gives the posted
    # stocktake and books nothing; counting more is refused; nothing changes.
    again = await post_take(store.client, "st-1")
    assert again.status_code == 200, again.text
    assert again.json() == posted.json()
    late = await count(store.client, "st-1", "shelf-2", COFFEE_250="9")
    assert late.status_code == 409, late.text
    assert late.json()["errors"][0]["field"] == "sheet"
    assert "is already posted" in late.json()["detail"]
    assert await stock(store.client) == {COFFEE: 6000, MILK: 24000, "WATER-15": 0}
    assert len(await stocktake_events(store)) == 1


async def test_a_receipt_between_counting_and_posting_is_kept(store: Store) -> None:
    await receive(store, COFFEE, "7")
    await open_take(store.client, "st-2")
    assert (await count(store.client, "st-2", "shelf-1", COFFEE_250="5")).status_code == 200
    await receive(store, COFFEE, "10")  # delivered after the count, kept apart
    posted = await post_take(store.client, "st-2")
    assert posted.status_code == 200, posted.text
    # Two were missing at counting; the ten delivered since stay on the books.
    assert line_figures(posted.json()["lines"]) == {COFFEE: (7000, 5000, -2000)}
    assert await stock(store.client) == {COFFEE: 15000}


async def test_a_product_on_two_sheets_with_a_sale_between_them(store: Store) -> None:
    """Its book at counting is the book of its first sheet; the sale after that sheet
    is kept like any movement after counting (sold off the counted shelf)."""
    await receive(store, MILK, "24")
    await open_take(store.client, "st-3")
    assert (await count(store.client, "st-3", "shelf", MILK_1L="10")).status_code == 200
    await sell(store, "s1", MILK, "1", 119)
    assert (await count(store.client, "st-3", "back", MILK_1L="14")).status_code == 200
    async with store.agent.sessionmaker() as session:
        rows = (
            await session.execute(
                select(StocktakeCount.sheet, StocktakeCount.book_milli)
                .where(StocktakeCount.document_id == "st-3")
                .order_by(StocktakeCount.id)
            )
        ).all()
    # Each sheet line keeps the book of its own moment.
    assert rows == [("shelf", 24000), ("back", 23000)]
    posted = await post_take(store.client, "st-3")
    assert posted.status_code == 200, posted.text
    assert line_figures(posted.json()["lines"]) == {MILK: (24000, 24000, 0)}
    assert await stock(store.client) == {MILK: 23000}


async def test_a_product_twice_on_one_sheet_adds_up(store: Store) -> None:
    """Two places on one shelf, two lines of one sheet: counted once, as their sum."""
    await receive(store, MILK, "24")
    await open_take(store.client, "st-9")
    sheet = {
        "sheet": "shelf",
        "lines": [{"sku": MILK, "counted": "10"}, {"sku": MILK, "counted": "4"}],
    }
    counted = await store.client.post(
        "/api/v1/stock/stocktakes/st-9/sheets", json=sheet, headers=MANAGER
    )
    assert counted.status_code == 200, counted.text
    assert counted.json() == {"products": 1}
    posted = await post_take(store.client, "st-9")
    assert line_figures(posted.json()["lines"]) == {MILK: (24000, 14000, -10000)}
    assert await stock(store.client) == {MILK: 14000}


async def test_a_sheet_sent_again_counts_from_its_new_moment(store: Store) -> None:
    """Recounting a sheet replaces it: its lines take the book of the recount, and the
    product's first sheet is then the earliest one still recorded."""
    await receive(store, MILK, "24")
    await open_take(store.client, "st-4")
    assert (await count(store.client, "st-4", "shelf", MILK_1L="10")).status_code == 200
    assert (await count(store.client, "st-4", "back", MILK_1L="14")).status_code == 200
    await sell(store, "s1", MILK, "2", 238)
    # Both sheets counted again after the sale: 8 on the shelf, 14 in the back room.
    assert (await count(store.client, "st-4", "shelf", MILK_1L="8")).status_code == 200
    assert (await count(store.client, "st-4", "back", MILK_1L="14")).status_code == 200
    posted = await post_take(store.client, "st-4")
    assert posted.status_code == 200, posted.text
    assert line_figures(posted.json()["lines"]) == {MILK: (22000, 22000, 0)}
    assert await stock(store.client) == {MILK: 22000}


async def test_a_weighed_item_counted_then_sold(store: Store) -> None:
    await receive(store, CHEESE, "5.250", unit_cost=800)
    await open_take(store.client, "st-5")
    assert (await count(store.client, "st-5", "deli", CHEESE_KG="5.100")).status_code == 200
    await sell(store, "s1", CHEESE, "0.754", 1000)  # 9.73 in cash
    posted = await post_take(store.client, "st-5")
    assert posted.status_code == 200, posted.text
    (line,) = posted.json()["lines"]
    assert (line["expected_milli"], line["counted_milli"], line["quantity_milli"]) == (
        5250,
        5100,
        -150,
    )
    assert line["quantity"] == "-0.150"
    # 150 g missing at counting; the 754 g sold since are gone too.
    assert await stock(store.client) == {CHEESE: 4346}


# A store's server upgraded while a stocktake was being counted -----------------------


def _upgrade_to(path: Path, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent / "agent"))
    config.set_main_option("sqlalchemy.url", database_url(path))
    command.upgrade(config, revision)


async def test_a_draft_counted_before_the_upgrade_is_compared_with_the_book_at_the_upgrade(
    tmp_path: Path,
) -> None:
    """Counts recorded by the release before (no book with them) take the book at the
    upgrade: a sale after the upgrade is kept; a posted stocktake's counts stay as
    they were."""
    data_dir = tmp_path / "agent"
    path = data_dir / "agent.db"
    data_dir.mkdir()
    await asyncio.to_thread(_upgrade_to, path, "a1701")
    engine = create_engine(path)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO stock_documents (document_id, doc_type, number, status, "
                    "author, created_at, lines) VALUES "
                    "('old-draft', 'stocktake', 'B1-ST-1', 'draft', '', :at, '[]'), "
                    "('old-posted', 'stocktake', 'B1-ST-0', 'posted', '', :at, '[]')"
                ),
                {"at": "2026-12-01 08:00:00"},
            )
            await connection.execute(
                text(
                    "INSERT INTO stocktake_counts (document_id, sheet, sku, counted_milli) "
                    "VALUES ('old-draft', 'shelf-1', 'COFFEE-250', 7000), "
                    "('old-posted', 'shelf-1', 'COFFEE-250', 3000)"
                )
            )
            await connection.execute(
                text(
                    "INSERT INTO stock_ledger (sku, quantity_milli, unit_cost, source, "
                    "source_id, created_at) VALUES "
                    "('COFFEE-250', 7000, 300, 'goods_receipt', 'gr-0', :at)"
                ),
                {"at": "2026-12-01 07:00:00"},
            )
            await connection.execute(
                text("INSERT INTO stock_balances (sku, quantity_milli) VALUES ('COFFEE-250', 7000)")
            )
    finally:
        await engine.dispose()

    settings = AgentSettings(
        branch="B1",
        data_dir=str(data_dir),
        nats_url="nats://127.0.0.1:9",
        demo_catalog=True,
        manager_token="manager-secret",
        timezone="Europe/Berlin",
        tills=(TillConfig(id="T2", token="till-2-secret"),),
    )
    agent = Agent(settings)
    try:
        await agent.start()  # migrates the database
        async with agent.sessionmaker() as session:
            rows = (
                await session.execute(
                    select(
                        StocktakeCount.document_id,
                        StocktakeCount.book_milli,
                        StocktakeCount.recorded_at,
                    ).order_by(StocktakeCount.document_id)
                )
            ).all()
        assert rows == [("old-draft", 7000, None), ("old-posted", None, None)]
        async with asgi_client(agent.app) as client:
            opened = await client.post("/api/v1/shifts", json={}, headers=TILL2)
            assert opened.status_code == 201, opened.text
            sale = {
                "sale_id": "s1",
                "lines": [{"sku": COFFEE, "quantity": "1"}],
                "payments": [{"type": "cash", "amount": 699}],
            }
            sold = await client.post("/api/v1/sales", json=sale, headers=TILL2)
            assert sold.status_code == 201, sold.text
            posted = await post_take(client, "old-draft")
            assert posted.status_code == 200, posted.text
            assert line_figures(posted.json()["lines"]) == {COFFEE: (7000, 7000, 0)}
            assert await stock(client) == {COFFEE: 6000}
    finally:
        await agent.stop()
