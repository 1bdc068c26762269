"""Amounts a fiscal printer cannot take (vendor manual: 9,999,999.99 per payment, price
and line, 999,999.999 per quantity) are refused by the till API before anything is
recorded: committed first, they would be refused by the printer on every retry and hold
the till's queue. Real drivers against the simulators over ptys, real SQLite."""

from __future__ import annotations

from typing import Any

from branch_agent.stock import balances
from protocol.limits import FISCAL_AMOUNT_MAX, INT64_MAX
from tests.branch_agent.conftest import TILL, TILL2, Store
from tests.branch_agent.test_sales_and_fiscal import basket


def cheese(sale_id: str, *quantities: str, cash: int = 1000) -> dict[str, Any]:
    return {
        "sale_id": sale_id,
        "lines": [{"sku": "CHEESE-KG", "quantity": q} for q in quantities],
        "payments": [{"type": "cash", "amount": cash}],
    }


async def test_amounts_beyond_the_printer_are_refused_naming_the_field(store: Store) -> None:
    await store.open_shift()
    await store.open_shift(TILL2)
    cases = [
        (TILL, basket("b1", cash=INT64_MAX), "payments[0].amount"),
        (TILL, basket("b2", cash=FISCAL_AMOUNT_MAX + 1), "payments[0].amount"),
        # a till without printer keeps the same bound: one rule for a sale
        (TILL2, basket("b3", cash=FISCAL_AMOUNT_MAX + 1), "payments[0].amount"),
        # 12.90/kg x 999,999.999 kg = 12,899,999.99: beyond what a receipt line takes
        (TILL, cheese("b4", "999999.999"), "lines[0].quantity"),
        # each line fits, the receipt does not: 2 x 6,450,000.00
        (TILL, cheese("b5", "500000", "500000"), "lines"),
    ]
    details: dict[str, str] = {}
    for headers, body, field in cases:
        response = await store.client.post("/api/v1/sales", json=body, headers=headers)
        assert response.status_code == 422, (field, response.text)
        problem = response.json()
        assert [e["field"] for e in problem["errors"]] == [field], problem
        details[field] = problem["detail"]
    # In money, as a person reads it (they said "12899999999 above 999999999").
    assert details["lines[0].quantity"] == (
        "the line comes to 12899999.99, above 9999999.99, the most a fiscal receipt line takes"
    )
    assert details["lines"] == (
        "the sale comes to 12900000.00, above 9999999.99, the most a fiscal receipt takes: split it"
    )
    # nothing recorded, nothing printed, no stock taken
    assert await store.events("receipt_recorded") == []
    assert store.fiscal.sim.receipts == []
    assert store.fiscal.sim.open_receipt is None
    async with store.agent.sessionmaker() as session:
        assert await balances(session) == {}
    pending = await store.client.get("/api/v1/sales/pending", headers=TILL)
    assert pending.json() == []


async def test_the_largest_tender_the_printer_takes_is_sold_and_printed(store: Store) -> None:
    response = await store.sale(basket("max", cash=FISCAL_AMOUNT_MAX))
    assert response.status_code == 201, response.text
    sale = response.json()
    assert (sale["status"], sale["change"]) == ("fiscalized", FISCAL_AMOUNT_MAX - 463)
    (printed,) = store.fiscal.sim.receipts
    assert str(printed.number) == sale["fiscal_number"]
