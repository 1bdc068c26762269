"""Sales at a till with real drivers against device simulators over pty / socket URLs."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from branch_agent.models import Product, Sale, StockMove
from branch_agent.stock import balances
from devices.fiscal_datecs import CMD_CLOSE_RECEIPT, CMD_SALE
from protocol.events import ReceiptRecorded
from tests.branch_agent.conftest import MANAGER, TILL, TILL2, Store, embedded_code
from tests.conftest import wait_until


async def _true(value: bool) -> bool:
    return value


def basket(sale_id: str, *, cash: int = 1000, **extra: Any) -> dict[str, Any]:
    return {
        "sale_id": sale_id,
        "cashier": "anna",
        "lines": [
            {"barcode": "4006381333931", "quantity": "2"},
            {"sku": "APPLE-KG", "quantity": "0.754"},
        ],
        "payments": [{"type": "cash", "amount": cash}],
        **extra,
    }


async def test_a_cash_sale_is_fiscalized_shown_and_opens_the_drawer(store: Store) -> None:
    response = await store.sale(basket("s-1"))
    assert response.status_code == 201, response.text
    sale = response.json()
    assert (sale["status"], sale["total"], sale["change"]) == ("fiscalized", 463, 537)
    journal = store.fiscal.sim.receipts
    assert len(journal) == 1
    assert str(journal[0].number) == sale["fiscal_number"]
    assert journal[0].amount == Decimal("4.63")
    assert [line.quantity for line in journal[0].lines] == [Decimal("2.000"), Decimal("0.754")]
    # The simulators take the bytes a moment after the driver wrote them.
    await wait_until(lambda: _true("4.63" in store.display.sim.lines[0]), timeout=5)
    await wait_until(lambda: _true(len(store.printer.sim.kicks) == 1), timeout=5)
    (event,) = await store.events("receipt_recorded")
    assert isinstance(event.body, ReceiptRecorded)
    assert event.body.fiscal_number == sale["fiscal_number"]
    async with store.agent.sessionmaker() as session:
        assert await balances(session) == {"MILK-1L": -2000, "APPLE-KG": -754}
    # The till did not hear back and posts again: the same receipt, nothing printed.
    again = await store.sale(basket("s-1"))
    assert again.status_code == 200
    assert again.json()["fiscal_number"] == sale["fiscal_number"]
    assert len(store.fiscal.sim.receipts) == 1
    assert len(await store.events("receipt_recorded")) == 1


async def test_a_card_sale_keeps_the_drawer_shut(store: Store) -> None:
    body = basket("card-1") | {"payments": [{"type": "debit_card", "amount": 463}]}
    response = await store.sale(body)
    assert response.json()["status"] == "fiscalized"
    assert store.printer.sim.kicks == []
    assert store.fiscal.sim.receipts[0].payments == [(2, Decimal("4.63"))]


async def test_paper_out_mid_receipt_leaves_the_sale_pending_then_prints_it_once(
    store: Store,
) -> None:
    fiscal = store.fiscal.sim

    def paper_runs_out(sim: Any) -> None:
        sim.paper_end = True

    # The paper ends as the second line is printed: the receipt stays open on the printer.
    fiscal.at_command(CMD_SALE, paper_runs_out, nth=2)
    response = await store.sale(basket("s-paper"))
    assert response.status_code == 201
    sale = response.json()
    assert sale["status"] == "pending_fiscal"
    assert sale["fiscal_number"] is None
    assert "paper_end" in sale["fiscal_error"]
    assert fiscal.receipts == []
    # Durable and visible, but not sent up until it has its fiscal number.
    assert await store.events("receipt_recorded") == []
    pending = await store.client.get("/api/v1/sales/pending", headers=TILL)
    assert [s["sale_id"] for s in pending.json()] == ["s-paper"]
    status = (await store.client.get("/health/status")).json()
    assert status["pending_fiscal"] == 1
    fiscal_state = next(d for d in status["devices"] if d["device"] == "fiscal")
    assert fiscal_state["state"] == "paper_end"
    # A later sale queues behind it (receipts of a till go out in order).
    later = await store.sale(basket("s-later"))
    assert later.json()["status"] == "pending_fiscal"
    assert fiscal.receipts == []

    fiscal.paper_end = False
    retried = await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    assert retried.status_code == 200
    assert retried.json() == []
    assert len(fiscal.receipts) == 2
    assert [r.amount for r in fiscal.receipts] == [Decimal("4.63"), Decimal("4.63")]
    first = (await store.client.get("/api/v1/sales/s-paper", headers=TILL)).json()
    assert first["status"] == "fiscalized"
    assert first["fiscal_number"] == str(fiscal.receipts[0].number)
    # Asking again prints nothing more.
    await store.client.post("/api/v1/sales/fiscalize", headers=TILL)
    await store.agent.fiscal.process_all()
    assert len(fiscal.receipts) == 2
    events = await store.events("receipt_recorded")
    assert [e.body.sale_id for e in events] == ["s-paper", "s-later"]  # type: ignore[union-attr]


async def test_a_lost_answer_to_close_is_reconciled_not_printed_again(store: Store) -> None:
    store.fiscal.sim.lose_answers(CMD_CLOSE_RECEIPT, count=10)
    response = await store.sale(basket("s-lost"))
    assert response.status_code == 201
    sale = response.json()
    assert len(store.fiscal.sim.receipts) == 1
    if sale["status"] == "pending_fiscal":
        # The driver gave up before learning the outcome: the retry asks the printer.
        await store.agent.fiscal.process_till("T1")
        sale = (await store.client.get("/api/v1/sales/s-lost", headers=TILL)).json()
    assert sale["status"] == "fiscalized"
    assert sale["fiscal_number"] == str(store.fiscal.sim.receipts[0].number)
    assert len(store.fiscal.sim.receipts) == 1


async def test_a_printer_gone_for_good_is_completed_by_the_manager_unfiscalized(
    store: Store,
) -> None:
    store.fiscal.stop()  # the printer is dead: its port is gone
    response = await store.sale(basket("s-dead"))
    assert response.json()["status"] == "pending_fiscal"
    url = "/api/v1/manager/sales/T1/s-dead/complete-unfiscal"
    assert (await store.client.post(url, json={"reason": "x"}, headers=TILL)).status_code == 403
    done = await store.client.post(url, json={"reason": "printer broken"}, headers=MANAGER)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed_unfiscal"
    (event,) = await store.events("receipt_recorded")
    assert event.body.fiscal_number is None  # type: ignore[union-attr]
    again = await store.client.post(url, json={"reason": "printer broken"}, headers=MANAGER)
    assert again.status_code == 409
    assert len(await store.events("receipt_recorded")) == 1


async def test_a_till_without_fiscal_printer_records_and_sends_at_commit(store: Store) -> None:
    body = basket("t2-1") | {"payments": [{"type": "voucher", "amount": 463}]}
    response = await store.sale(body, headers=TILL2)
    assert response.status_code == 201
    assert response.json()["status"] == "recorded"
    assert response.json()["event_seq"] == 2  # after its shift's opening
    assert len(await store.events("receipt_recorded")) == 1


async def test_weight_embedded_barcodes_and_the_scale(store: Store) -> None:
    code = embedded_code(101, 754)
    found = await store.client.get(f"/api/v1/products/by-barcode/{code}", headers=TILL)
    assert found.status_code == 200, found.text
    product = found.json()
    assert (product["sku"], product["quantity"], product["amount"]) == ("APPLE-KG", "0.754", 225)
    store.scale.sim.set_weight("1.250")
    weight = await store.client.get("/api/v1/devices/scale/weight", headers=TILL)
    assert weight.json()["quantity_milli"] == 1250
    no_scale = await store.client.get("/api/v1/devices/scale/weight", headers=TILL2)
    assert no_scale.status_code == 404
    store.scale.sim.set_fault("motion")
    moving = await store.client.get("/api/v1/devices/scale/weight", headers=TILL)
    assert moving.status_code == 503
    devices = (await store.client.get("/health/status")).json()["devices"]
    assert next(d for d in devices if d["device"] == "scale")["state"] == "motion"
    store.scale.sim.clear_faults()
    body = {
        "sale_id": "w-1",
        "lines": [{"barcode": code}, {"sku": "CHEESE-KG", "quantity": "1.250"}],
        "payments": [{"type": "cash", "amount": 2000}],
    }
    sale = (await store.sale(body)).json()
    assert [line["quantity"] for line in sale["lines"]] == ["0.754", "1.250"]
    assert sale["total"] == 225 + 1613  # 1.25 x 12.90 = 16.125 -> 16.13
    search = await store.client.get("/api/v1/products", params={"q": "chees"}, headers=TILL)
    assert [p["sku"] for p in search.json()] == ["CHEESE-KG"]


async def test_a_scanned_code_reaches_the_till(store: Store) -> None:
    store.scanner.sim.scan("4006381333931", split=4)
    scanned = await store.client.get(
        "/api/v1/devices/scanner/next", params={"wait_s": 5}, headers=TILL
    )
    assert scanned.status_code == 200, scanned.text
    assert scanned.json()["sku"] == "MILK-1L"


async def test_bad_sales_get_a_clear_problem_and_record_nothing(store: Store) -> None:
    await store.open_shift()
    cases = [
        (basket("x1") | {"lines": [{"barcode": "4006381333932"}]}, "lines[0].barcode"),
        (basket("x2") | {"lines": [{"barcode": "0000000000017"}]}, "lines[0].barcode"),
        (basket("x3") | {"lines": [{"sku": "MILK-1L", "quantity": "-1"}]}, "lines[0].quantity"),
        (basket("x4") | {"expected_total": 464}, "expected_total"),
        (basket("x5", cash=462), "payments"),
        # "other" has no PaidMode configured for T1 (vouchers do: see the voucher test)
        (basket("x6") | {"payments": [{"type": "other", "amount": 463}]}, "payments[0].type"),
        (
            basket("x7") | {"lines": [{"barcode": embedded_code(101, 754), "quantity": "1"}]},
            "lines[0].quantity",
        ),
        (basket("x8") | {"lines": [{"sku": "MILK-1L", "quantity": "0"}]}, "lines[0].quantity"),
    ]
    for body, field in cases:
        response = await store.sale(body)
        assert response.status_code == 422, (field, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"][0]["field"] == field
    unauthenticated = await store.client.post("/api/v1/sales", json=basket("x9"))
    assert unauthenticated.status_code == 401
    async with store.agent.sessionmaker() as session:
        for model in (Sale, StockMove):
            assert await session.scalar(select(func.count()).select_from(model)) == 0
    assert [type(e.body).__name__ for e in await store.events()] == ["ShiftOpened"]
    assert store.fiscal.sim.receipts == []


async def dispose_when_idle(engine: AsyncEngine) -> None:
    """Dispose once the agent's background loops hold no connection: a connection
    checked out during dispose() is orphaned and only closed by the GC (a warning)."""
    pool: Any = engine.sync_engine.pool

    async def idle() -> bool:
        return bool(pool.checkedout() == 0)

    await wait_until(idle, timeout=10, interval=0.005)
    await engine.dispose()


async def test_a_failing_disk_is_a_storage_problem_and_the_sale_can_be_sent_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def disk_fails(till: str, data: Any) -> Any:
        # What SQLite raises when a write meets EIO, or a file-size limit (EFBIG).
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patch:
        patch.setattr(store.agent, "record_sale", disk_fails)
        failed = await store.sale(basket("io-error"))
    assert failed.status_code == 500, failed.text
    assert failed.headers["content-type"].startswith("application/problem+json")
    assert failed.json()["title"] == "Storage error"
    assert "send the same request again" in failed.json()["detail"]
    assert (await store.sale(basket("io-error"))).status_code == 201
    assert (await store.sale(basket("io-error"))).status_code == 200


async def test_a_full_disk_refuses_new_sales_and_keeps_the_old(store: Store) -> None:
    assert (await store.sale(basket("before-full"))).status_code == 201
    # A catalog big enough for a document of 2,000 lines (written before the disk fills).
    filler = [f"FILL-{n:04d}" for n in range(2000)]
    async with store.agent.sessionmaker() as session, session.begin():
        await session.execute(
            insert(Product), [{"sku": s, "name": s, "vat_rate_bp": 0, "price": 1} for s in filler]
        )
    engine = store.agent.engine
    async with engine.connect() as connection:
        pages = (await connection.exec_driver_sql("PRAGMA page_count")).scalar_one()

    from sqlalchemy import event

    def cap(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.cursor().execute(f"PRAGMA max_page_count = {pages}")

    engines = (engine, store.agent.sale_engine)  # sales have their own engine
    for each in engines:
        event.listen(each.sync_engine, "connect", cap)
        await dispose_when_idle(each)  # every new connection gets the cap: the "disk" is full
    big = basket("too-much") | {
        "cashier": "x" * 60,
        "lines": [{"sku": "MILK-1L", "quantity": "1"}] * 400,
        "payments": [{"type": "cash", "amount": 100000}],
    }
    refused = await store.sale(big)
    assert refused.status_code == 507, refused.text
    assert refused.json()["title"] == "Storage full"
    # Every write route refuses the same way, not only sales.
    document = {
        "document_id": "gr-full",
        "doc_type": "goods_receipt",
        "supplier": "DAIRY",
        # More than the free space left in the file.
        "lines": [{"sku": sku, "quantity": "1", "unit_cost": 50} for sku in filler],
    }
    refused_doc = await store.client.post("/api/v1/stock/documents", json=document, headers=MANAGER)
    assert refused_doc.status_code == 507, refused_doc.text
    assert refused_doc.json()["title"] == "Storage full"
    for each in engines:
        event.remove(each.sync_engine, "connect", cap)
        await dispose_when_idle(each)
    kept = await store.client.get("/api/v1/sales/before-full", headers=TILL)
    assert kept.json()["status"] == "fiscalized"
    async with store.agent.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Sale)) == 1
