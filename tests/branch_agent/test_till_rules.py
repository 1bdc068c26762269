"""What the till API refuses and fills in: the shift a sale goes into, quantities,
a line's product, the cashier, voided lines; and the technician's views (status time,
the CLI's unit costs, the demo catalog's codes)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import pytest
from litestar import Litestar, get
from litestar.params import QueryParameter
from sqlalchemy import func, select

from branch_agent.api import _handlers as api_handlers
from branch_agent.cli import _lines
from branch_agent.demo_catalog import DEMO_PRODUCTS
from branch_agent.models import CustomerReturn, Sale, StockMove
from branch_agent.status import AgentStatus, format_status
from branch_agent.till_sim import DEMO_ITEMS
from devices.scanner import ean_check_digit
from protocol.events import CustomerReturnRecorded, ReceiptRecorded
from protocol.limits import INT32_MAX
from tests.branch_agent.conftest import TILL, TILL2, Store, embedded_code
from tests.conftest import asgi_client


def _sale(sale_id: str, **changes: Any) -> dict[str, Any]:
    return {
        "sale_id": sale_id,
        "lines": [{"sku": "MILK-1L", "quantity": "2"}],
        "payments": [{"type": "cash", "amount": 1000}],
        **changes,
    }


async def _post(store: Store, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    return await store.client.post(path, json=body, headers=headers)


async def _count(store: Store, model: Any) -> int:
    async with store.agent.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def _problem_field(response: Any) -> str:
    return str(response.json()["errors"][0]["field"])


async def test_a_sale_goes_only_into_the_tills_open_shift(store: Store) -> None:
    # No shift open: refused before anything is recorded or printed.
    none = await _post(store, "/api/v1/sales", _sale("s-1"), TILL)
    assert none.status_code == 409, none.text
    assert _problem_field(none) == "shift_id"
    assert (await _count(store, Sale), await _count(store, StockMove)) == (0, 0)
    assert store.fiscal.sim.receipts == []
    assert await store.events() == []

    shift = await store.open_shift(TILL2, cashier="ben")
    other_tills = await store.open_shift(TILL)
    # A shift id that is not this till's open shift: another till's, or made up.
    for wrong in (other_tills["shift_id"], "S-unknown"):
        refused = await _post(store, "/api/v1/sales", _sale("s-2", shift_id=wrong), TILL2)
        assert refused.status_code == 409, refused.text
        assert _problem_field(refused) == "shift_id"
    sold = await _post(store, "/api/v1/sales", _sale("s-2", shift_id=shift["shift_id"]), TILL2)
    assert sold.status_code == 201, sold.text
    assert sold.json()["shift_id"] == shift["shift_id"]
    closed = await store.client.post("/api/v1/shifts/current/close", headers=TILL2)
    assert closed.status_code == 200, closed.text

    # Into the closed shift, or with none open again: refused.
    late = await _post(store, "/api/v1/sales", _sale("s-3", shift_id=shift["shift_id"]), TILL2)
    assert (late.status_code, _problem_field(late)) == (409, "shift_id")
    late = await _post(store, "/api/v1/sales", _sale("s-3"), TILL2)
    assert (late.status_code, _problem_field(late)) == (409, "shift_id")
    # The same sale again: the original answer, whatever the shift now (idempotency first).
    again = await _post(store, "/api/v1/sales", _sale("s-2", shift_id=shift["shift_id"]), TILL2)
    assert again.status_code == 200, again.text
    assert again.json()["receipt_number"] == sold.json()["receipt_number"]
    assert await _count(store, Sale) == 1


async def test_a_return_goes_only_into_the_tills_open_shift(store: Store) -> None:
    shift = await store.open_shift(TILL2, cashier="ben")
    assert (await _post(store, "/api/v1/sales", _sale("s-1"), TILL2)).status_code == 201
    await store.client.post("/api/v1/shifts/current/close", headers=TILL2)
    body = {
        "return_id": "r-1",
        "original_sale_id": "s-1",
        "lines": [{"line_no": 1, "quantity": "1"}],
    }
    none = await _post(store, "/api/v1/returns", body, TILL2)
    assert (none.status_code, _problem_field(none)) == (409, "shift_id")
    await store.open_shift(TILL2, cashier="cleo")
    closed = await _post(store, "/api/v1/returns", body | {"shift_id": shift["shift_id"]}, TILL2)
    assert (closed.status_code, _problem_field(closed)) == (409, "shift_id")
    assert await _count(store, CustomerReturn) == 0
    done = await _post(store, "/api/v1/returns", body, TILL2)
    assert done.status_code == 201, done.text
    # Recorded: the same return again is the original, even with the shift named wrong.
    again = await _post(store, "/api/v1/returns", body | {"shift_id": "S-old"}, TILL2)
    assert again.status_code == 200, again.text


async def test_without_a_cashier_the_open_shifts_cashier_is_recorded(store: Store) -> None:
    await store.open_shift(TILL2, cashier="ben")
    assert (await _post(store, "/api/v1/sales", _sale("s-1"), TILL2)).status_code == 201
    named = _sale("s-2", cashier="anna")
    assert (await _post(store, "/api/v1/sales", named, TILL2)).status_code == 201
    body = {
        "return_id": "r-1",
        "original_sale_id": "s-1",
        "lines": [{"line_no": 1, "quantity": "1"}],
    }
    assert (await _post(store, "/api/v1/returns", body, TILL2)).status_code == 201
    move = {"move_id": "m-1", "direction": "in", "amount": 500}
    assert (await _post(store, "/api/v1/cash-moves", move, TILL2)).status_code == 201
    receipts = [e.body for e in await store.events("receipt_recorded")]
    assert [(r.sale_id, r.cashier) for r in receipts if isinstance(r, ReceiptRecorded)] == [
        ("s-1", "ben"),
        ("s-2", "anna"),
    ]
    (ret,) = [e.body for e in await store.events("customer_return_recorded")]
    assert isinstance(ret, CustomerReturnRecorded)
    assert ret.cashier == "ben"
    (moved,) = [e.body for e in await store.events("cash_moved")]
    assert getattr(moved, "cashier", None) == "ben"


async def test_a_piece_item_is_returned_in_whole_pieces_only(store: Store) -> None:
    await store.open_shift(TILL2)
    sale = _sale(
        "s-1", lines=[{"sku": "WATER-15", "quantity": "6"}, {"sku": "APPLE-KG", "quantity": "1"}]
    )
    assert (await _post(store, "/api/v1/sales", sale, TILL2)).status_code == 201
    half = {
        "return_id": "r-1",
        "original_sale_id": "s-1",
        "lines": [{"line_no": 2, "quantity": "0.25"}, {"line_no": 1, "quantity": "0.5"}],
    }
    refused = await _post(store, "/api/v1/returns", half, TILL2)
    assert refused.status_code == 422, refused.text
    assert _problem_field(refused) == "lines[1].quantity"
    assert "sold by the piece: whole quantities only" in refused.json()["detail"]
    assert await _count(store, CustomerReturn) == 0
    # A weighed item (sold as exactly 1 kg) may come back in part.
    half["lines"] = [{"line_no": 2, "quantity": "0.25"}, {"line_no": 1, "quantity": "1"}]
    assert (await _post(store, "/api/v1/returns", half, TILL2)).status_code == 201


async def test_a_weighed_item_needs_its_quantity(store: Store) -> None:
    await store.open_shift(TILL2)
    for index, line in enumerate(({"sku": "CHEESE-KG"}, {"barcode": "2000202000004"})):
        lines = [{"sku": "MILK-1L"}, line]
        refused = await _post(store, "/api/v1/sales", _sale(f"w-{index}", lines=lines), TILL2)
        assert refused.status_code == 422, refused.text
        assert _problem_field(refused) == "lines[1].quantity"
    assert await _count(store, Sale) == 0
    # A piece item without a quantity is one piece; a label carries its weight.
    label = embedded_code(202, 1250)
    lines = [{"sku": "MILK-1L"}, {"barcode": label}]
    sold = await _post(
        store,
        "/api/v1/sales",
        _sale("w-ok", lines=lines, payments=[{"type": "cash", "amount": 2000}]),
        TILL2,
    )
    assert sold.status_code == 201, sold.text
    assert [line["quantity"] for line in sold.json()["lines"]] == ["1.000", "1.250"]


async def test_a_line_whose_sku_and_barcode_disagree_is_refused(store: Store) -> None:
    await store.open_shift(TILL2)
    milk_code = "4006381333931"
    lines = [{"sku": "BREAD-500", "barcode": milk_code, "quantity": "1"}]
    refused = await _post(store, "/api/v1/sales", _sale("d-1", lines=lines), TILL2)
    assert refused.status_code == 422, refused.text
    assert _problem_field(refused) == "lines[0].barcode"
    assert "MILK-1L" in refused.json()["detail"]
    assert await _count(store, Sale) == 0
    lines = [{"sku": "MILK-1L", "barcode": milk_code, "quantity": "1"}]
    assert (
        await _post(store, "/api/v1/sales", _sale("d-2", lines=lines), TILL2)
    ).status_code == 201


async def test_voided_lines_go_up_with_the_receipt(store: Store) -> None:
    await store.open_shift(TILL2)
    for value in (-1, INT32_MAX + 1):
        refused = await _post(store, "/api/v1/sales", _sale("v-0", voided_lines=value), TILL2)
        assert refused.status_code == 422, refused.text
        assert _problem_field(refused) == "voided_lines"
    assert (
        await _post(store, "/api/v1/sales", _sale("v-1", voided_lines=3), TILL2)
    ).status_code == 201
    assert (await _post(store, "/api/v1/sales", _sale("v-2"), TILL2)).status_code == 201
    bodies = [e.body for e in await store.events("receipt_recorded")]
    assert [getattr(b, "voided_lines", None) for b in bodies] == [3, 0]


async def test_a_missing_query_parameter_is_a_problem_naming_it() -> None:
    """GET /api/v1/products without q, through the till API's own error handlers (on a
    one-route app: a request that fails this way leaves the in-process store's
    teardown hanging, before this change too)."""

    @get("/api/v1/products")
    async def search(q: Annotated[str, QueryParameter(min_length=1)]) -> list[str]:
        return [q]

    app = Litestar(route_handlers=[search], exception_handlers=api_handlers)
    async with asgi_client(app) as client:
        response = await client.get("/api/v1/products")
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["title"] == "Invalid input"
    assert [e["field"] for e in problem["errors"]] == ["q"]


def test_status_shows_the_last_sync_in_the_branchs_local_time() -> None:
    status = AgentStatus(
        branch="B1",
        link="connected",
        outbox_backlog=0,
        last_recorded_seq=1,
        last_acked_seq=1,
        last_sync_at="2026-07-01T10:15:30.123456+00:00",
        last_sync_error="",
        applied_version=0,
        pending_fiscal=0,
        downstream_last_seq=0,
        devices=[],
    )
    text = format_status(status, "Europe/Berlin")
    assert "last sync        2026-07-01 12:15:30+02:00" in text
    # As SQLite keeps it (naive, UTC), in winter.
    naive = format_status(_with(status, last_sync_at="2026-01-05 23:30:00"), "Europe/Berlin")
    assert "last sync        2026-01-06 00:30:00+01:00" in naive
    assert "last sync        never" in format_status(_with(status, last_sync_at=None), "UTC")


def _with(status: AgentStatus, **changes: Any) -> AgentStatus:
    return msgspec.structs.replace(status, **changes)


def test_the_cli_refuses_a_unit_cost_that_is_not_whole_cents(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _lines(["WATER-15=48@33"], "quantity") == [
        {"sku": "WATER-15", "quantity": "48", "unit_cost": 33}
    ]
    for spec in ("WATER-15=48@0.33", "WATER-15=48@x", "WATER-15=48@-3"):
        with pytest.raises(SystemExit) as exit_info:
            _lines([spec], "quantity")
        assert exit_info.value.code == 2
        assert "whole number of cents" in capsys.readouterr().err


def test_the_demo_catalogs_barcodes_are_valid_ean13() -> None:
    codes = [p.barcode for p in DEMO_PRODUCTS] + [item.barcode for item in DEMO_ITEMS]
    for code in codes:
        assert len(code) == 13, code
        assert ean_check_digit(code[:12]) == int(code[12]), code


async def test_the_till_simulator_opens_the_next_shift_after_someone_closed_its_own(
    store: Store,
) -> None:
    """`make run`'s simulated till sold into a closed shift for ever once a person
    closed it (the README's close at the till): every sale a 409, logged every 3 s.
    It now opens the next shift, as a cashier would, and the sale goes into it."""
    from branch_agent.till_sim import TillSimulator

    sim = TillSimulator("http://testserver", "till-2-secret", seed=7, return_rate=0)
    await sim.open_shift(store.client)
    first = await sim.post_sale(store.client)
    assert first is not None
    closed = await store.client.post("/api/v1/shifts/current/close", headers=TILL2)
    assert closed.status_code == 200, closed.text
    second = await sim.post_sale(store.client)
    assert second is not None, sim.log.refused
    assert second["shift_id"] != first["shift_id"]
    assert sim.log.refused == 0
    current = await store.client.get("/api/v1/shifts/current", headers=TILL2)
    assert current.json()["shift_id"] == second["shift_id"]
    assert current.json()["receipts_count"] == 1
