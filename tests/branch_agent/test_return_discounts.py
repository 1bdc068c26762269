"""A return line carries its share of the original line's discount: unit_price x
quantity - discount = line_total on every return line, and the parts of a line
returned in several returns add up to the original line exactly. The agent with the
fiscal printer simulator over a pty (the storno it prints), real SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import insert

from branch_agent.masterdata_models import MdPromotion
from protocol.events import CustomerReturnRecorded, ReceiptLine
from protocol.masterdata import PromotionRecord, encode_masterdata
from protocol.units import line_amount
from tests.branch_agent.conftest import TILL2, Store
from tests.branch_agent.test_storno_cash_z import post_return, return_body


def sale_body(sale_id: str, *lines: dict[str, Any], cash: int = 5000) -> dict[str, Any]:
    return {
        "sale_id": sale_id,
        "cashier": "anna",
        "lines": list(lines),
        "payments": [{"type": "cash", "amount": cash}],
    }


def consistent(line: dict[str, Any] | ReceiptLine) -> bool:
    """unit_price x quantity (half-up to the cent) - discount = line_total."""
    if isinstance(line, ReceiptLine):
        quantity, unit_price = line.quantity_milli, line.unit_price
        discount, total = line.discount, line.line_total
    else:
        quantity = int(Decimal(line["quantity"]) * 1000)
        unit_price, discount, total = line["unit_price"], line["discount"], line["line_total"]
    return line_amount(unit_price, quantity) - discount == total


async def returned(store: Store, body: dict[str, Any]) -> dict[str, Any]:
    response = await post_return(store, body)
    assert response.status_code == 201, response.text
    ret: dict[str, Any] = response.json()
    assert ret["status"] == "fiscalized", ret
    return ret


async def return_events(store: Store) -> list[CustomerReturnRecorded]:
    bodies = [e.body for e in await store.events("customer_return_recorded")]
    assert all(isinstance(b, CustomerReturnRecorded) for b in bodies)
    return [b for b in bodies if isinstance(b, CustomerReturnRecorded)]


async def promotion(store: Store, record: PromotionRecord) -> None:
    async with store.agent.sessionmaker() as session, session.begin():
        await session.execute(
            insert(MdPromotion).values(
                scope="all",
                scope_id="",
                promotion_id=record.promotion_id,
                version=record.version,
                ends_at=datetime.now(UTC) + timedelta(days=1),
                body=encode_masterdata(record),
            )
        )


async def test_a_promoted_line_returned_whole_carries_its_discount_and_promotion(
    store: Store,
) -> None:
    await promotion(
        store,
        PromotionRecord(
            promotion_id="COFFEE-50", version=1, type="amount", amount=50, skus=("COFFEE-250",)
        ),
    )
    sale = (await store.sale(sale_body("s-1", {"sku": "COFFEE-250"}))).json()
    (sold,) = sale["lines"]
    assert (sold["unit_price"], sold["discount"], sold["line_total"]) == (699, 50, 649)
    assert sold["promotion_id"] == "COFFEE-50"
    ret = await returned(store, return_body("r-1", "s-1", (1, "1")))
    (line,) = ret["lines"]
    assert (line["unit_price"], line["discount"], line["line_total"]) == (699, 50, 649)
    assert line["promotion_id"] == "COFFEE-50"
    assert ret["total"] == 649
    (event,) = await return_events(store)
    (wire,) = event.lines
    assert (wire.unit_price, wire.discount, wire.line_total) == (699, 50, 649)
    assert wire.promotion_id == "COFFEE-50"
    assert not wire.manual_discount
    # The storno prints the price and the discount: its line comes to the refund.
    (storno,) = store.fiscal.sim.storno_receipts
    (printed,) = storno.lines
    assert (printed.price, printed.quantity, printed.amount) == (
        Decimal("6.99"),
        Decimal("1.000"),
        Decimal("6.49"),
    )
    assert storno.amount == Decimal("6.49")


async def test_a_discounted_line_returned_in_two_parts_adds_up_to_the_original(
    store: Store,
) -> None:
    # Two milks at 1.19 with 0.25 off the line: 2.13, an odd amount to halve.
    sale = (
        await store.sale(
            sale_body("s-2", {"sku": "MILK-1L", "quantity": "2", "manual_discount": 25})
        )
    ).json()
    (sold,) = sale["lines"]
    assert (sold["unit_price"], sold["discount"], sold["line_total"]) == (119, 25, 213)
    first = await returned(store, return_body("r-2a", "s-2", (1, "1")))
    second = await returned(store, return_body("r-2b", "s-2", (1, "1")))
    lines = [first["lines"][0], second["lines"][0]]
    assert [(x["unit_price"], x["discount"], x["line_total"]) for x in lines] == [
        (119, 12, 107),
        (119, 13, 106),
    ]
    assert all(consistent(x) for x in lines)
    assert sum(x["discount"] for x in lines) == 25
    assert sum(x["line_total"] for x in lines) == 213
    assert first["total"] + second["total"] == 213
    events = await return_events(store)
    assert [(e.lines[0].discount, e.lines[0].line_total) for e in events] == [(12, 107), (13, 106)]
    assert all(e.lines[0].manual_discount and e.lines[0].promotion_id is None for e in events)
    stornos = store.fiscal.sim.storno_receipts
    assert [s.amount for s in stornos] == [Decimal("1.07"), Decimal("1.06")]
    # Nothing is left of the line to return.
    more = await post_return(store, return_body("r-2c", "s-2", (1, "1")))
    assert more.status_code == 422
    assert more.json()["errors"][0]["field"] == "lines[0].quantity"
    # Said so, not "only 0.000 of line 1 can still be returned".
    assert more.json()["detail"] == "line 1 (MILK-1L) was returned in full already"


async def test_a_weighed_discounted_line_returned_in_part(store: Store) -> None:
    # 0.754 kg of cheese at 12.90/kg = 9.73, 1.00 off: 8.73.
    sale = (
        await store.sale(
            sale_body("s-3", {"sku": "CHEESE-KG", "quantity": "0.754", "manual_discount": 100})
        )
    ).json()
    (sold,) = sale["lines"]
    assert (sold["unit_price"], sold["discount"], sold["line_total"]) == (1290, 100, 873)
    ret = await returned(store, return_body("r-3", "s-3", (1, "0.300")))
    (line,) = ret["lines"]
    # 0.300 kg at 12.90 = 3.87; the paid share 873 x 300 / 754 = 347.3 -> 3.47.
    assert (line["quantity"], line["unit_price"], line["discount"], line["line_total"]) == (
        "0.300",
        1290,
        40,
        347,
    )
    assert consistent(line)
    (storno,) = store.fiscal.sim.storno_receipts
    assert [x.amount for x in storno.lines] == [Decimal("3.47")]
    # The rest of it: the two parts add up to the line's total.
    rest = await returned(store, return_body("r-3b", "s-3", (1, "0.454")))
    (last,) = rest["lines"]
    assert consistent(last)
    assert line["line_total"] + last["line_total"] == 873
    # 0.454 kg at 12.90 = 5.86 (5.8566); 3.87 + 5.86 = 9.73, the line's own amount,
    # so here the discounts add up to the original's too.
    assert line["discount"] + last["discount"] == 100
    assert all(consistent(e.lines[0]) for e in await return_events(store))


async def test_a_line_without_discount_is_returned_as_before(store: Store) -> None:
    sale = (
        await store.sale(
            sale_body(
                "s-4",
                {"sku": "MILK-1L", "quantity": "2"},
                {"sku": "BREAD-500", "manual_discount": 49},
            )
        )
    ).json()
    assert [x["discount"] for x in sale["lines"]] == [0, 49]
    ret = await returned(store, return_body("r-4", "s-4", (1, "1")))
    (line,) = ret["lines"]
    assert (line["unit_price"], line["discount"], line["line_total"]) == (119, 0, 119)
    assert line["promotion_id"] is None
    (event,) = await return_events(store)
    assert (event.lines[0].discount, event.lines[0].manual_discount) == (0, False)
    (storno,) = store.fiscal.sim.storno_receipts
    assert [(x.price, x.amount) for x in storno.lines] == [(Decimal("1.19"), Decimal("1.19"))]
    # Returned at a till without a printer: the same lines, no storno.
    await store.open_shift(TILL2)
    again = await store.client.post(
        "/api/v1/returns", json=return_body("r-4b", "s-4", (1, "1"), (2, "1")), headers=TILL2
    )
    assert again.status_code == 201, again.text
    assert again.json()["status"] == "recorded"
    milk, bread = again.json()["lines"]
    assert (milk["discount"], milk["line_total"]) == (0, 119)
    assert (bread["unit_price"], bread["discount"], bread["line_total"]) == (249, 49, 200)
    assert len(store.fiscal.sim.storno_receipts) == 1


async def test_weighed_parts_whose_rounding_falls_short_refund_what_was_paid(
    store: Store,
) -> None:
    """The one line that cannot hold the identity: 3 g of cheese at 12.90/kg (3.87 cents)
    sold for 0.04, returned a gram (1.29 cents, 0.01) at a time."""
    sale = (await store.sale(sale_body("s-5", {"sku": "CHEESE-KG", "quantity": "0.003"}))).json()
    assert sale["lines"][0]["line_total"] == 4
    parts = [
        (await returned(store, return_body(f"r-5{n}", "s-5", (1, "0.001"))))["lines"][0]
        for n in range(3)
    ]
    assert [(x["discount"], x["line_total"]) for x in parts] == [(0, 1), (0, 2), (0, 1)]
    assert [consistent(x) for x in parts] == [True, False, True]
    stornos = store.fiscal.sim.storno_receipts
    assert [s.amount for s in stornos] == [Decimal("0.01"), Decimal("0.02"), Decimal("0.01")]
