"""Product names outside the fiscal printer's code page print transliterated, and the
sale is fiscalized (a name used to leave the sale pending and the till's queue blocked)."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import update

from branch_agent.models import Product
from devices.fiscal_datecs import CMD_SALE
from tests.branch_agent.conftest import Store
from tests.branch_agent.test_sales_and_fiscal import basket


async def _rename(store: Store, names: dict[str, str]) -> None:
    async with store.agent.sessionmaker() as session, session.begin():
        for sku, name in names.items():
            await session.execute(update(Product).where(Product.sku == sku).values(name=name))


async def test_names_outside_the_printers_code_page_print_and_are_fiscalized(
    store: Store,
) -> None:
    await _rename(store, {"MILK-1L": "Käse Müsli 🧀", "APPLE-KG": "牛奶 Straße"})
    # an answer lost on the first line: replayed with the same SEQ, printed once
    store.fiscal.sim.lose_answers(CMD_SALE, count=1)
    response = await store.sale(basket("s-umlaut"))
    assert response.status_code == 201, response.text
    sale = response.json()
    assert sale["status"] == "fiscalized", sale
    (printed,) = store.fiscal.sim.receipts
    assert str(printed.number) == sale["fiscal_number"]
    assert [line.name for line in printed.lines] == ["Kase Musli ?", "?? Strasse"]
    assert printed.amount == Decimal("4.63")
    # the names the agent records and sends up are the catalog's, untouched
    assert [line["name"] for line in sale["lines"]] == ["Käse Müsli 🧀", "牛奶 Straße"]
    (event,) = await store.events("receipt_recorded")
    assert event.body.fiscal_number == sale["fiscal_number"]  # type: ignore[union-attr]
    # the till's next sale is not queued behind anything
    assert (await store.sale(basket("s-next"))).json()["status"] == "fiscalized"
