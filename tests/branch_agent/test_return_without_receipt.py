"""Customer returns without the original receipt: a manager approves them at the till
(the manager's token in X-Manager-Token, and ``approved_by`` naming who), each line at
the till's price now or lower, never higher; no storno on the fiscal printer (0x2B needs
the original document), recorded with their event in one transaction. The agent with
every device a simulator over a pty, real SQLite."""

from __future__ import annotations

from typing import Any

from devices.fiscal_datecs import CMD_OPEN_STORNO
from protocol.events import CustomerReturnRecorded
from tests.branch_agent.conftest import MANAGER, TILL, TILL2, Store, embedded_code
from tests.branch_agent.test_stock_documents import balances_of, refused

APPROVAL = {**TILL, "X-Manager-Token": "manager-secret"}
MILK, MILK_PRICE, COFFEE_PRICE = "4006381333931", 119, 699


def no_receipt(return_id: str, *lines: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "return_id": return_id,
        "without_receipt": True,
        "approved_by": "maria",
        "reason": "customer lost the receipt",
        "lines": list(lines) or [{"barcode": MILK, "quantity": "2"}],
        **extra,
    }


async def post(store: Store, body: dict[str, Any], headers: dict[str, str] = APPROVAL) -> Any:
    return await store.client.post("/api/v1/returns", json=body, headers=headers)


async def opened(store: Store, opening_float: int = 5000, headers: dict[str, str] = TILL) -> None:
    await store.open_shift(headers, cashier="anna", opening_float=opening_float)


async def returns_recorded(store: Store) -> list[CustomerReturnRecorded]:
    bodies = [e.body for e in await store.events("customer_return_recorded")]
    return [b for b in bodies if isinstance(b, CustomerReturnRecorded)]


async def test_a_return_without_receipt_is_recorded_at_the_price_now_and_stock_comes_back(
    store: Store,
) -> None:
    await opened(store)
    before = await balances_of(store)
    response = await post(
        store,
        no_receipt(
            "nr-1", {"barcode": MILK, "quantity": "2"}, {"sku": "COFFEE-250", "quantity": "1"}
        ),
    )
    assert response.status_code == 201, response.text
    ret = response.json()
    assert ret["without_receipt"] is True
    assert ret["approved_by"] == "maria"
    assert ret["original_sale_id"] is None
    # no storno: the printer cannot issue one without the original document
    assert ret["status"] == "recorded"
    assert ret["fiscal_number"] is None
    assert ret["total"] == 2 * MILK_PRICE + COFFEE_PRICE
    assert [(line["sku"], line["unit_price"], line["line_total"]) for line in ret["lines"]] == [
        ("MILK-1L", MILK_PRICE, 2 * MILK_PRICE),
        ("COFFEE-250", COFFEE_PRICE, COFFEE_PRICE),
    ]
    assert ret["refunds"] == [{"type": "cash", "amount": 2 * MILK_PRICE + COFFEE_PRICE}]
    sim = store.fiscal.sim
    assert CMD_OPEN_STORNO not in sim.executed
    assert sim.storno_receipts == []
    (event,) = await returns_recorded(store)
    assert event.without_receipt is True
    assert event.approved_by == "maria"
    assert event.original_sale_id is None
    assert event.original_till is None
    assert event.reason == "customer lost the receipt"
    assert event.cashier == "anna"  # the shift's cashier
    after = await balances_of(store)
    assert after.get("MILK-1L", 0) - before.get("MILK-1L", 0) == 2000
    assert after.get("COFFEE-250", 0) - before.get("COFFEE-250", 0) == 1000


async def test_the_manager_may_refund_less_than_the_price_now_never_more(store: Store) -> None:
    await opened(store)
    before = await balances_of(store)
    above = await post(
        store,
        no_receipt("nr-2", {"sku": "COFFEE-250", "quantity": "1", "unit_price": COFFEE_PRICE + 1}),
    )
    assert "at most" in refused(above, 422, "lines[0].unit_price")
    assert await returns_recorded(store) == []
    assert await balances_of(store) == before
    lower = await post(
        store, no_receipt("nr-2", {"sku": "COFFEE-250", "quantity": "1", "unit_price": 500})
    )
    assert lower.status_code == 201, lower.text
    (line,) = lower.json()["lines"]
    # the price now, less the manager's markdown: unit_price x quantity - discount = total
    assert (line["unit_price"], line["discount"], line["line_total"]) == (COFFEE_PRICE, 199, 500)
    (event,) = await returns_recorded(store)
    assert event.lines[0].manual_discount is True
    assert event.total == 500


async def test_without_the_managers_approval_nothing_is_recorded(store: Store) -> None:
    await opened(store)
    before = await balances_of(store)
    missing = await post(store, no_receipt("nr-3"), headers=TILL)
    assert "approval" in refused(missing, 403, "X-Manager-Token")
    wrong = await post(store, no_receipt("nr-3"), headers={**TILL, "X-Manager-Token": "guess"})
    refused(wrong, 403, "X-Manager-Token")
    # a till's own token is no manager's
    tills = await post(
        store, no_receipt("nr-3"), headers={**TILL, "X-Manager-Token": "till-1-secret"}
    )
    refused(tills, 403, "X-Manager-Token")
    nameless = await post(store, no_receipt("nr-3", approved_by=" "))
    refused(nameless, 422, "approved_by")
    no_reason = await post(store, no_receipt("nr-3", reason=""))
    refused(no_reason, 422, "reason")
    # the manager's token alone is not a till: the route is the till's
    assert (await post(store, no_receipt("nr-3"), headers=MANAGER)).status_code == 403
    assert await returns_recorded(store) == []
    assert await balances_of(store) == before


async def test_bad_shapes_are_refused_and_change_nothing(store: Store) -> None:
    await opened(store)
    before = await balances_of(store)
    by_line_no = await post(store, no_receipt("nr-4", {"line_no": 1, "quantity": "1"}))
    refused(by_line_no, 422, "lines[0].line_no")
    named = await post(store, no_receipt("nr-4", original_sale_id="s-1"))
    refused(named, 422, "original_sale_id")
    unknown = await post(store, no_receipt("nr-4", {"sku": "NO-SUCH", "quantity": "1"}))
    refused(unknown, 422, "lines[0].sku")
    half_milk = await post(store, no_receipt("nr-4", {"barcode": MILK, "quantity": "0.5"}))
    refused(half_milk, 422, "lines[0].quantity")
    # a return against a receipt still names it; the product comes from the receipt
    unnamed = await post(store, {"return_id": "r-5", "lines": [{"line_no": 1, "quantity": "1"}]})
    refused(unnamed, 422, "original_sale_id")
    priced = await post(
        store,
        {
            "return_id": "r-5",
            "original_sale_id": "s-1",
            "lines": [{"line_no": 1, "quantity": "1", "unit_price": 1}],
        },
    )
    refused(priced, 422, "lines[0].unit_price")
    assert await returns_recorded(store) == []
    assert await balances_of(store) == before


async def test_a_line_without_quantity_is_one_piece_or_its_labels_weight(store: Store) -> None:
    """Lines name the product as a sale line does: a scanned label carries its weight,
    a piece without quantity is one; a weighed product needs one or the other. (The
    quantity was required: a label scanned at the till was refused.)"""
    await opened(store)
    before = await balances_of(store)
    label = embedded_code(101, 754)  # apples, 0.754 kg at 2.99
    # (shared with the sale's lines, it said "in a sale")
    nothing = await post(store, no_receipt("nr-10", {"sku": "COFFEE-250", "quantity": "0"}))
    assert refused(nothing, 422, "lines[0].quantity") == "quantity must be positive"
    weighed = await post(store, no_receipt("nr-10", {"sku": "APPLE-KG"}))
    assert "is weighed" in refused(weighed, 422, "lines[0].quantity")
    contradicted = await post(store, no_receipt("nr-10", {"barcode": label, "quantity": "0.5"}))
    assert "the label says 0.754" in refused(contradicted, 422, "lines[0].quantity")
    # A return against a receipt says how much of the line comes back.
    unsaid = await post(
        store, {"return_id": "r-10", "original_sale_id": "s-1", "lines": [{"line_no": 1}]}
    )
    assert "line 1 is required" in refused(unsaid, 422, "lines[0].quantity")
    assert await returns_recorded(store) == []
    assert await balances_of(store) == before
    body = no_receipt("nr-10", {"barcode": label}, {"sku": "COFFEE-250"}, refund_type="voucher")
    first = await post(store, body)
    assert first.status_code == 201, first.text
    assert [
        (line["sku"], line["quantity"], line["line_total"]) for line in first.json()["lines"]
    ] == [
        ("APPLE-KG", "0.754", 225),
        ("COFFEE-250", "1.000", COFFEE_PRICE),
    ]
    after = await balances_of(store)
    assert after.get("APPLE-KG", 0) - before.get("APPLE-KG", 0) == 754
    # The same again is a retry, with or without the quantities it stood for.
    assert (await post(store, body)).status_code == 200
    said = no_receipt(
        "nr-10",
        {"barcode": label, "quantity": "0.754"},
        {"sku": "COFFEE-250", "quantity": "1"},
        refund_type="voucher",
    )
    assert (await post(store, said)).status_code == 200
    two = no_receipt(
        "nr-10", {"barcode": label}, {"sku": "COFFEE-250", "quantity": "2"}, refund_type="voucher"
    )
    refused(await post(store, two), 409, "return_id")
    assert len(await returns_recorded(store)) == 1


async def test_a_retry_gets_the_original_other_content_is_a_conflict(store: Store) -> None:
    await opened(store)
    body = no_receipt(
        "nr-6", {"barcode": MILK, "quantity": "2"}, {"sku": "COFFEE-250", "quantity": "1"}
    )
    first = await post(store, body)
    assert first.status_code == 201, first.text
    again = await post(store, {**body, "lines": [*body["lines"]]})
    assert again.status_code == 200, again.text
    # The original, but the drawer opened for the first request only.
    assert first.json()["drawer"] == "opened"
    assert again.json() == first.json() | {"drawer": None}
    other = await post(store, {**body, "approved_by": "tom"})
    assert "approved_by" in refused(other, 409, "return_id")
    more = await post(store, {**body, "lines": [{"barcode": MILK, "quantity": "3"}]})
    refused(more, 409, "return_id")
    with_receipt = await post(
        store,
        {"return_id": "nr-6", "original_sale_id": "x", "lines": [{"line_no": 1, "quantity": "1"}]},
    )
    refused(with_receipt, 409, "return_id")
    assert len(await returns_recorded(store)) == 1


async def test_a_cash_refund_must_be_in_the_drawer(store: Store) -> None:
    # T2 has no printer; its shift starts with 5.00 in the drawer
    await opened(store, 500, TILL2)
    approval2 = {**TILL2, "X-Manager-Token": "manager-secret"}
    before = await balances_of(store)
    too_much = await post(
        store, no_receipt("nr-7", {"sku": "COFFEE-250", "quantity": "1"}), approval2
    )
    # In money as the cashier counts it, as the printer's count is worded (not 500, 699)
    assert refused(too_much, 409, "refund_type") == (
        "not enough cash in the drawer: 5.00 by the shift's records, 6.99 to refund"
        " (refund another way, or put cash in first)"
    )
    assert await returns_recorded(store) == []
    assert await balances_of(store) == before
    # as a voucher (store credit) it needs no cash
    voucher = await post(
        store,
        no_receipt("nr-7", {"sku": "COFFEE-250", "quantity": "1"}, refund_type="voucher"),
        approval2,
    )
    assert voucher.status_code == 201, voucher.text
    # 5.00 in the drawer: two milks (2.38) fit, then only 2.62 is left
    cash = await post(store, no_receipt("nr-8"), approval2)
    assert cash.status_code == 201, cash.text
    rest = await post(store, no_receipt("nr-9", {"barcode": MILK, "quantity": "3"}), approval2)
    refused(rest, 409, "refund_type")


async def test_the_z_report_matches_with_a_return_without_receipt_in_the_shift(
    store: Store,
) -> None:
    await opened(store)
    sale = await store.sale(
        {
            "sale_id": "s-z",
            "lines": [{"barcode": MILK, "quantity": "1"}],
            "payments": [{"type": "cash", "amount": 200}],
        }
    )
    assert sale.json()["status"] == "fiscalized", sale.text
    assert (await post(store, no_receipt("nr-z"))).status_code == 201
    closed = await store.client.post("/api/v1/shifts/current/close", headers=TILL)
    assert closed.status_code == 200, closed.text
    body = closed.json()
    # the printer's Z has no storno of it, and the agent does not expect one
    assert body["agent_storno_by_vat_group"] == {}
    assert body["matches_fiscal"] is True, body
    assert body["shift"]["returns_total"] == 2 * MILK_PRICE
