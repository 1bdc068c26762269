"""Counted cash at the shift close: what the cashier counted in the drawer beside the
shift's expected cash (over/short), refused when out of range, kept by a close that
failed, fixed once the shift is closed (a repeat with another count: 409). The agent
with real drivers against the device simulators over ptys, real SQLite."""

from __future__ import annotations

from typing import Any

import pytest

from tests.branch_agent.conftest import TILL, TILL2, Store
from tests.branch_agent.test_sales_and_fiscal import basket

CLOSE = "/api/v1/shifts/current/close"
FLOAT = 5000
SALE_TOTAL = 463  # basket(): paid in cash


async def close(store: Store, body: Any = None, headers: dict[str, str] = TILL) -> Any:
    if body is None:
        return await store.client.post(CLOSE, headers=headers)
    return await store.client.post(CLOSE, json=body, headers=headers)


def refused_on(response: Any, status: int, field: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in response.json()["errors"]] == [field]


@pytest.mark.parametrize("counted", [-1, 1_000_000_000, 12.5, "-1"])
async def test_a_count_out_of_range_is_refused_and_nothing_is_closed(
    store: Store, counted: Any
) -> None:
    opened = await store.open_shift(cashier="anna", opening_float=FLOAT)
    refused = await close(store, {"counted_cash": counted})
    refused_on(refused, 422, "counted_cash")
    assert store.fiscal.sim.reports == []  # no Z printed
    shown = (await store.client.get("/api/v1/shifts/current", headers=TILL)).json()
    assert shown["shift_id"] == opened["shift_id"]
    assert (shown["closing"], shown["counted_cash"], shown["cash_difference"]) == (
        False,
        None,
        None,
    )
    assert await store.events("shift_closed") == []


async def test_the_count_beside_the_expected_cash_and_a_repeat_with_another_is_409(
    store: Store,
) -> None:
    sim = store.fiscal.sim
    opened = await store.open_shift(cashier="anna", opening_float=FLOAT)
    sold = await store.sale(basket("cc-1"))
    assert sold.json()["total"] == SALE_TOTAL
    expected = FLOAT + SALE_TOTAL
    closed = await close(store, {"counted_cash": expected - 120})
    assert closed.status_code == 200, closed.text
    body = closed.json()
    shift = body["shift"]
    assert shift["expected_cash"] == expected
    assert (shift["counted_cash"], shift["cash_difference"]) == (expected - 120, -120)
    assert sim.reports == [("Z", 1)]
    (event,) = await store.events("shift_closed")
    assert (event.body.counted_cash, event.body.expected_cash) == (expected - 120, expected)  # type: ignore[union-attr]

    # A repeat (its answer lost) with the same count, or none: the same answer.
    for again in ({"counted_cash": expected - 120}, {}, None):
        repeated = await close(store, again)
        assert repeated.status_code == 200, (again, repeated.text)
        assert repeated.json() == body
    # Another count for the closed shift: 409, nothing changed.
    other = await close(store, {"counted_cash": expected})
    refused_on(other, 409, "counted_cash")
    assert "closed with" in other.json()["detail"]
    read = await store.client.get(f"/api/v1/shifts/{opened['shift_id']}", headers=TILL)
    assert read.json() == body
    assert sim.reports == [("Z", 1)]
    assert len(await store.events("shift_closed")) == 1


async def test_a_close_without_a_count_is_as_before(store: Store) -> None:
    await store.open_shift(cashier="anna", opening_float=FLOAT)
    closed = await close(store)
    assert closed.status_code == 200, closed.text
    shift = closed.json()["shift"]
    assert (shift["counted_cash"], shift["cash_difference"]) == (None, None)
    assert shift["expected_cash"] == FLOAT
    (event,) = await store.events("shift_closed")
    assert (event.body.counted_cash, event.body.expected_cash) == (None, FLOAT)  # type: ignore[union-attr]
    # Counted after the event went: a 409, not a silent second count.
    refused_on(await close(store, {"counted_cash": FLOAT}), 409, "counted_cash")
    assert (await close(store, {})).json() == closed.json()


async def test_a_failed_close_keeps_its_count_and_a_repeat_may_recount(store: Store) -> None:
    sim = store.fiscal.sim
    await store.open_shift(cashier="anna", opening_float=FLOAT)
    sim.paper_end = True
    failed = await close(store, {"counted_cash": 4000})
    assert failed.status_code == 503, failed.text
    shown = (await store.client.get("/api/v1/shifts/current", headers=TILL)).json()
    assert (shown["closing"], shown["counted_cash"], shown["cash_difference"]) == (
        True,
        4000,
        4000 - FLOAT,
    )
    # Still no paper; the cashier recounts meanwhile: the new count replaces the first.
    assert (await close(store, {"counted_cash": 4900})).status_code == 503
    shown = (await store.client.get("/api/v1/shifts/current", headers=TILL)).json()
    assert shown["counted_cash"] == 4900
    sim.paper_end = False
    # The repeat that succeeds leaves the count out: the recorded one is kept.
    closed = await close(store, {})
    assert closed.status_code == 200, closed.text
    shift = closed.json()["shift"]
    assert (shift["counted_cash"], shift["cash_difference"]) == (4900, -100)
    assert sim.reports == [("Z", 1)]
    (event,) = await store.events("shift_closed")
    assert event.body.counted_cash == 4900  # type: ignore[union-attr]


async def test_a_till_without_a_printer_counts_too(store: Store) -> None:
    await store.open_shift(TILL2, cashier="bob", opening_float=1000)
    sold = await store.sale(basket("cc-t2"), headers=TILL2)
    assert sold.status_code == 201, sold.text
    closed = await close(store, {"counted_cash": 1000 + SALE_TOTAL + 5}, headers=TILL2)
    assert closed.status_code == 200, closed.text
    assert closed.json()["shift"]["cash_difference"] == 5
    assert closed.json()["z_report_number"] is None
    refused_on(await close(store, {"counted_cash": 0}, headers=TILL2), 409, "counted_cash")
