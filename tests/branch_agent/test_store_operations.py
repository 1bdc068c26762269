"""Shifts with the Z report, cash moves, customer returns and stock documents."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update

from branch_agent.downstream import DownMessage
from branch_agent.models import OutboxEvent, StockBalance, StockMove, utcnow
from branch_agent.stock import balances, rebuild_balances
from protocol.codec import encode
from protocol.events import (
    CustomerReturnRecorded,
    ShiftClosed,
    StockDocumentPosted,
    event_kind,
)
from protocol.messages import ResendRequested
from protocol.subjects import COMMAND_KIND
from tests.branch_agent.conftest import MANAGER, TILL, Store


def sale(sale_id: str, payments: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "sale_id": sale_id,
        "lines": [
            {"barcode": "4006381333931", "quantity": "2"},  # 2 x 1.19, group B
            {"sku": "COFFEE-250", "quantity": "1"},  # 6.99, group A
        ],
        "payments": payments,
    }


async def test_a_shift_from_open_to_z_report(store: Store) -> None:
    opened = await store.client.post(
        "/api/v1/shifts", json={"cashier": "anna", "opening_float": 10000}, headers=TILL
    )
    assert opened.status_code == 201, opened.text
    shift_id = opened.json()["shift_id"]
    again = await store.client.post("/api/v1/shifts", json={"cashier": "anna"}, headers=TILL)
    assert (again.status_code, again.json()["shift_id"]) == (200, shift_id)
    other = await store.client.post("/api/v1/shifts", json={"shift_id": "other"}, headers=TILL)
    assert other.status_code == 409
    assert (await store.sale(sale("a", [{"type": "cash", "amount": 2000}]))).status_code == 201
    card = [{"type": "credit_card", "amount": 937}]
    assert (await store.sale(sale("b", card))).json()["shift_id"] == shift_id
    moved = await store.client.post(
        "/api/v1/cash-moves",
        json={"move_id": "m1", "direction": "in", "amount": 5000, "reason": "change"},
        headers=TILL,
    )
    assert moved.status_code == 201, moved.text
    repeat = await store.client.post(
        "/api/v1/cash-moves",
        json={"move_id": "m1", "direction": "in", "amount": 5000},
        headers=TILL,
    )
    assert repeat.status_code == 200
    # the opening float went in first, then the move
    assert store.fiscal.sim.cash_moves == [(0, Decimal("100.00")), (0, Decimal("50.00"))]
    x = await store.client.post("/api/v1/shifts/current/x-report", headers=TILL)
    assert x.status_code == 200, x.text
    assert x.json()["fiscal_turnover_by_vat_group"] == {"A": 1398, "B": 476}
    assert x.json()["shift"]["expected_cash"] == 10000 + 937 + 5000
    assert store.fiscal.sim.cash == Decimal("159.37")  # the printer counts as the agent
    closed = await store.client.post("/api/v1/shifts/current/close", headers=TILL)
    assert closed.status_code == 200, closed.text
    body = closed.json()
    assert body["z_turnover_by_vat_group"] == {"A": 1398, "B": 476}
    assert body["agent_turnover_by_vat_group"] == {"A": 1398, "B": 476}
    assert body["matches_fiscal"] is True
    assert body["shift"]["receipts_count"] == 2
    assert body["shift"]["payments_by_type"] == {"cash": 937, "credit_card": 937}
    (event,) = await store.events("shift_closed")
    assert isinstance(event.body, ShiftClosed)
    assert event.body.z_report is not None
    assert event.body.z_report.turnover_by_vat_group == {"A": 1398, "B": 476}
    assert event.body.cash_in == 5000
    assert [event_kind(e.body) for e in await store.events()] == [
        "shift_opened",
        "receipt_recorded",
        "receipt_recorded",
        "cash_moved",
        "shift_closed",
    ]
    # Closed: a close repeated (its answer lost) gets the same answer, nothing more.
    again = await store.client.post("/api/v1/shifts/current/close", headers=TILL)
    assert again.status_code == 200, again.text
    assert again.json() == body
    assert len(await store.events("shift_closed")) == 1
    no_shift = await store.client.post(
        "/api/v1/cash-moves", json={"move_id": "m2", "direction": "out", "amount": 1}, headers=TILL
    )
    assert no_shift.status_code == 409


async def test_a_shift_does_not_close_while_a_sale_waits_for_the_printer(store: Store) -> None:
    await store.client.post("/api/v1/shifts", json={}, headers=TILL)
    store.fiscal.sim.paper_end = True
    assert (await store.sale(sale("p", [{"type": "cash", "amount": 2000}]))).json()[
        "status"
    ] == "pending_fiscal"
    refused = await store.client.post("/api/v1/shifts/current/close", headers=TILL)
    assert refused.status_code == 409
    store.fiscal.sim.paper_end = False
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    assert (await store.client.post("/api/v1/shifts/current/close", headers=TILL)).json()[
        "matches_fiscal"
    ] is True


async def test_customer_returns_against_the_receipt(store: Store) -> None:
    paid = [{"type": "cash", "amount": 2000}]
    assert (await store.sale(sale("orig", paid))).status_code == 201
    ret = await store.client.post(
        "/api/v1/returns",
        json={
            "return_id": "r1",
            "original_sale_id": "orig",
            "lines": [{"line_no": 1, "quantity": "1"}],
            "reason": "damaged",
        },
        headers=TILL,
    )
    assert ret.status_code == 201, ret.text
    assert ret.json()["total"] == 119
    assert ret.json()["refunds"] == [{"type": "cash", "amount": 119}]
    # One more milk can come back, not two.
    too_many = await store.client.post(
        "/api/v1/returns",
        json={
            "return_id": "r2",
            "original_sale_id": "orig",
            "lines": [{"line_no": 1, "quantity": "2"}],
        },
        headers=TILL,
    )
    assert too_many.status_code == 422
    assert too_many.json()["errors"][0]["field"] == "lines[0].quantity"
    unknown = await store.client.post(
        "/api/v1/returns",
        json={
            "return_id": "r3",
            "original_sale_id": "nope",
            "lines": [{"line_no": 1, "quantity": "1"}],
        },
        headers=TILL,
    )
    assert unknown.status_code == 422
    repeat = await store.client.post(
        "/api/v1/returns",
        json={
            "return_id": "r1",
            "original_sale_id": "orig",
            "lines": [{"line_no": 1, "quantity": "1"}],
        },
        headers=TILL,
    )
    assert repeat.status_code == 200
    (event,) = await store.events("customer_return_recorded")
    assert isinstance(event.body, CustomerReturnRecorded)
    assert event.body.original_receipt_number == 1
    async with store.agent.sessionmaker() as session:
        assert (await balances(session))["MILK-1L"] == -1000


async def post_doc(store: Store, body: dict[str, Any]) -> Any:
    return await store.client.post("/api/v1/stock/documents", json=body, headers=MANAGER)


async def test_stock_documents_move_stock_and_go_up_as_events(store: Store) -> None:
    receipt = {
        "document_id": "gr-1",
        "doc_type": "goods_receipt",
        "supplier": "DAIRY",
        "lines": [
            {"sku": "MILK-1L", "quantity": "24", "unit_cost": 70},
            {"sku": "CHEESE-KG", "quantity": "5.250", "unit_cost": 800},
        ],
    }
    assert (
        await store.client.post("/api/v1/stock/documents", json=receipt, headers=TILL)
    ).status_code == 403  # a till's token: valid, not the manager's
    created = await post_doc(store, receipt)
    assert created.status_code == 201, created.text
    assert (await post_doc(store, receipt)).status_code == 200  # same id: the original
    assert (await post_doc(store, receipt | {"doc_type": "write_off"})).status_code == 409
    write_off = {"doc_type": "write_off", "lines": [{"sku": "MILK-1L", "quantity": "2"}]}
    assert (await post_doc(store, write_off)).json()["errors"][0]["field"] == "reason"
    assert (await post_doc(store, write_off | {"reason": "expired"})).status_code == 201
    transfer = {
        "document_id": "to-1",
        "doc_type": "transfer_out",
        "counterpart_branch": "B2",
        "lines": [{"sku": "MILK-1L", "quantity": "4"}],
    }
    out = await post_doc(store, transfer)
    assert out.json()["transfer_ref"] == "to-1"
    inbound = {
        "doc_type": "transfer_in",
        "counterpart_branch": "B3",
        "transfer_ref": "B3-to-9",
        "lines": [{"sku": "WATER-15", "quantity": "6"}],
    }
    assert (await post_doc(store, inbound)).status_code == 201
    supplier_return = {
        "doc_type": "supplier_return",
        "supplier": "DAIRY",
        "lines": [{"sku": "CHEESE-KG", "quantity": "0.250"}],
    }
    assert (await post_doc(store, supplier_return)).status_code == 201
    bad: list[tuple[dict[str, Any], str]] = [
        (
            receipt | {"document_id": "g2", "lines": [{"sku": "MILK-1L", "quantity": "1"}]},
            "lines[0].unit_cost",
        ),
        (
            receipt
            | {"document_id": "g3", "lines": [{"sku": "NOPE", "quantity": "1", "unit_cost": 1}]},
            "lines[0].sku",
        ),
        (
            receipt
            | {
                "document_id": "g4",
                "lines": [{"sku": "MILK-1L", "quantity": "1.5", "unit_cost": 1}],
            },
            "lines[0].quantity",
        ),
        (transfer | {"document_id": "t2", "counterpart_branch": "B1"}, "counterpart_branch"),
        (inbound | {"transfer_ref": None}, "transfer_ref"),
    ]
    for body, field in bad:
        response = await post_doc(store, body)
        assert response.status_code == 422, (field, response.text)
        assert response.json()["errors"][0]["field"] == field
    negative = await post_doc(
        store, write_off | {"reason": "x", "lines": [{"sku": "MILK-1L", "quantity": "-2"}]}
    )
    assert negative.status_code in (400, 422)

    # Stocktake: two count sheets add up; the difference is posted.
    take = await store.client.post(
        "/api/v1/stock/stocktakes", json={"document_id": "st-1"}, headers=MANAGER
    )
    assert take.json()["status"] == "draft"
    for sheet, counted in (("shelf", "10"), ("back", "7")):
        added = await store.client.post(
            "/api/v1/stock/stocktakes/st-1/sheets",
            json={"sheet": sheet, "lines": [{"sku": "MILK-1L", "counted": counted}]},
            headers=MANAGER,
        )
        assert added.status_code == 200, added.text
    posted = await store.client.post("/api/v1/stock/stocktakes/st-1/post", headers=MANAGER)
    assert posted.status_code == 200, posted.text
    (line,) = posted.json()["lines"]
    assert (line["expected_milli"], line["counted_milli"], line["quantity_milli"]) == (
        18000,
        17000,
        -1000,
    )
    # Posted again (the first answer lost): the posted stocktake, nothing booked again.
    again = await store.client.post("/api/v1/stock/stocktakes/st-1/post", headers=MANAGER)
    assert again.status_code == 200, again.text
    assert again.json() == posted.json()

    stock = await store.client.get("/api/v1/stock/balances", headers=MANAGER)
    assert {b["sku"]: b["quantity_milli"] for b in stock.json()} == {
        "MILK-1L": 17000,
        "CHEESE-KG": 5000,
        "WATER-15": 6000,
    }
    events = await store.events("stock_document_posted")
    docs = [e.body for e in events if isinstance(e.body, StockDocumentPosted)]
    assert len(docs) == len(events)
    assert [d.doc_type for d in docs] == [
        "goods_receipt",
        "write_off",
        "transfer_out",
        "transfer_in",
        "supplier_return",
        "stocktake",
    ]
    assert (docs[2].counterpart_branch, docs[2].transfer_ref) == ("B2", "to-1")
    assert docs[0].lines[0].unit_cost == 70
    # The balances are a projection of the ledger: rebuilding gives the same figures.
    async with store.agent.sessionmaker() as session, session.begin():
        before = await balances(session)
        await rebuild_balances(session)
    async with store.agent.sessionmaker() as session:
        assert await balances(session) == before
        assert await session.scalar(select(func.count()).select_from(StockMove)) == 7
        assert await session.scalar(select(func.count()).select_from(StockBalance)) == 3


async def deliver_command(store: Store, data: bytes) -> None:
    """What the down-stream reader does with a message on the resend command subject."""
    subject = "down.branch.B1.command.resend"
    handler = store.agent.downstream.state.handlers[COMMAND_KIND]
    await handler(DownMessage(subject, "branch", "B1", COMMAND_KIND, "resend", data, 1))


async def test_a_resend_command_queues_events_again(store: Store) -> None:
    for n in range(3):
        await store.sale(sale(f"s{n}", [{"type": "cash", "amount": 2000}]))
    # A new database takes no resend before central has numbered its events (it
    # would name numbers of the branch's earlier database).
    request = ResendRequested(branch="B1", from_seq=1, requested_at=datetime.now(UTC))
    async with store.agent.write_lock, store.agent.sessionmaker() as session, session.begin():
        await session.execute(update(OutboxEvent).values(sent_at=utcnow()))
    await deliver_command(store, encode(request))
    assert (await store.agent.health()).outbox_backlog == 0
    # Central answered: from 1 (no earlier database).
    await store.agent.numbering.settle(1)
    # As if central had acked them all.
    async with store.agent.write_lock, store.agent.sessionmaker() as session, session.begin():
        await session.execute(update(OutboxEvent).values(sent_at=utcnow()))
    assert (await store.agent.health()).outbox_backlog == 0
    # 1 is the shift's opening, 2..4 the sales
    request = ResendRequested(branch="B1", from_seq=2, requested_at=datetime.now(UTC))
    await deliver_command(store, encode(request))
    assert (await store.agent.health()).outbox_backlog == 3
    assert await store.agent.last_acked_seq() == 1
    # Delivered twice (a redelivery): the same result.
    await deliver_command(store, encode(request))
    assert (await store.agent.health()).outbox_backlog == 3
    heartbeat = await store.agent.heartbeat()
    assert (heartbeat.last_recorded_seq, heartbeat.last_acked_seq) == (4, 1)
    assert {(d.device, d.state) for d in heartbeat.devices} >= {("fiscal", "ok")}


async def test_a_resend_request_for_another_branch_changes_nothing(store: Store) -> None:
    await store.sale(sale("s", [{"type": "cash", "amount": 2000}]))
    async with store.agent.write_lock, store.agent.sessionmaker() as session, session.begin():
        await session.execute(update(OutboxEvent).values(sent_at=utcnow()))
    other = ResendRequested(branch="B9", from_seq=1, requested_at=datetime.now(UTC))
    await deliver_command(store, encode(other))
    assert (await store.agent.health()).outbox_backlog == 0
