"""The cash drawer opens for every cash movement at the till (a cash sale, a refund in
cash, a cash move) and the till's answer says whether it did: a receipt printer out of
paper ignores the kick (DEVICES.md §3), and the cashier must hear it. Real drivers
against the simulators, real SQLite."""

from __future__ import annotations

from tests.branch_agent.conftest import Store
from tests.branch_agent.test_sales_and_fiscal import basket
from tests.branch_agent.test_storno_cash_z import cash_move, post_return, return_body
from tests.conftest import wait_until

NOT_OPENED = "the cash drawer did not open (receipt printer: paper_end before the job)"


async def _kicks(store: Store, count: int) -> None:
    # The simulator takes the bytes a moment after the driver wrote them.
    async def seen() -> bool:
        return len(store.printer.sim.kicks) == count

    await wait_until(seen, timeout=5)


async def test_a_cash_sale_says_the_drawer_did_not_open_when_the_printer_is_out_of_paper(
    store: Store,
) -> None:
    store.printer.sim.paper_end = True
    response = await store.sale(basket("s-1"))
    assert response.status_code == 201, response.text
    sale = response.json()
    # The sale itself is whole: fiscalized on the fiscal printer, recorded once.
    assert sale["status"] == "fiscalized"
    assert sale["drawer"] == "not_opened"
    assert sale["drawer_error"] == f"{NOT_OPENED}; open it with its key"
    assert store.printer.sim.kicks == []
    # The till asks again (no answer heard): the drawer is not kicked by a repeat.
    again = await store.sale(basket("s-1"))
    assert again.status_code == 200
    assert (again.json()["drawer"], again.json()["drawer_error"]) == (None, None)
    store.printer.sim.paper_end = False
    opened = (await store.sale(basket("s-2"))).json()
    assert (opened["drawer"], opened["drawer_error"]) == ("opened", None)
    await _kicks(store, 1)


async def test_a_card_sale_has_no_drawer_to_report(store: Store) -> None:
    body = basket("card-1") | {"payments": [{"type": "debit_card", "amount": 463}]}
    sale = (await store.sale(body)).json()
    assert (sale["status"], sale["drawer"], sale["drawer_error"]) == ("fiscalized", None, None)
    assert store.printer.sim.kicks == []


async def test_a_refund_in_cash_opens_the_drawer_and_says_so(store: Store) -> None:
    card = basket("s-1") | {"payments": [{"type": "debit_card", "amount": 463}]}
    assert (await store.sale(card)).json()["drawer"] is None  # no kick from the sale
    refunded = await post_return(
        store, return_body("r-1", "s-1", (1, "1")) | {"refund_type": "cash"}
    )
    assert refunded.status_code == 201, refunded.text
    assert (refunded.json()["drawer"], refunded.json()["drawer_error"]) == ("opened", None)
    await _kicks(store, 1)
    store.printer.sim.paper_end = True
    second = await post_return(store, return_body("r-2", "s-1", (1, "1")) | {"refund_type": "cash"})
    assert second.status_code == 201, second.text
    assert second.json()["drawer"] == "not_opened"
    assert second.json()["drawer_error"].startswith(NOT_OPENED)
    repeat = await post_return(store, return_body("r-2", "s-1", (1, "1")) | {"refund_type": "cash"})
    assert (repeat.status_code, repeat.json()["drawer"]) == (200, None)


async def test_a_cash_move_says_whether_the_drawer_opened(store: Store) -> None:
    await store.open_shift(opening_float=0)
    put_in = await cash_move(store, "in-1", "in", 500)
    assert put_in.status_code == 201, put_in.text
    assert (put_in.json()["drawer"], put_in.json()["drawer_error"]) == ("opened", None)
    await _kicks(store, 1)
    store.printer.sim.paper_end = True
    take_out = await cash_move(store, "out-1", "out", 200)
    assert take_out.status_code == 201, take_out.text
    assert take_out.json()["drawer"] == "not_opened"
    assert take_out.json()["drawer_error"].startswith(NOT_OPENED)
    assert len(store.printer.sim.kicks) == 1
