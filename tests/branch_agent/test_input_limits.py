"""The agent never records a fact whose event central would refuse: what the till or
the manager sends carries the limits of the wire fields it ends in (422 naming the
field, nothing recorded), and a value from elsewhere (the catalog, the agent's own
arithmetic) is checked against them before anything is written."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from branch_agent.db import create_engine, create_sessionmaker, upgrade
from branch_agent.downstream import DownMessage
from branch_agent.errors import Rejected
from branch_agent.masterdata import MasterDataApplier
from branch_agent.masterdata_models import MdProduct, MdPromotion
from branch_agent.models import (
    CashMove,
    CustomerReturn,
    OutboxEvent,
    Product,
    Sale,
    Shift,
    StockDocument,
    StockMove,
)
from branch_agent.outbox import append_event, check_event
from protocol.events import StockDocumentLine, StockDocumentPosted
from protocol.limits import CASH_MOVE_MAX, INT64_MAX, MAX_EVENT_BYTES
from protocol.masterdata import ProductBucket, ProductRecord, PromotionRecord, encode_masterdata
from tests.branch_agent.conftest import MANAGER, TILL, TILL2, Store

_RECORDS = (OutboxEvent, Sale, CustomerReturn, Shift, CashMove, StockDocument, StockMove)


async def _counts(store: Store) -> dict[str, int]:
    async with store.agent.sessionmaker() as session:
        return {
            model.__name__: await session.scalar(select(func.count()).select_from(model)) or 0
            for model in _RECORDS
        }


def _sale(sale_id: str, **changes: Any) -> dict[str, Any]:
    return {
        "sale_id": sale_id,
        "cashier": "anna",
        "lines": [{"sku": "MILK-1L", "quantity": "1"}],
        "payments": [{"type": "cash", "amount": 200}],
        **changes,
    }


def _return(**changes: Any) -> dict[str, Any]:
    return {
        "return_id": "r-1",
        "original_sale_id": "orig",
        "lines": [{"line_no": 1, "quantity": "1"}],
        **changes,
    }


_RECEIPT = {
    "document_id": "gr-1",
    "doc_type": "goods_receipt",
    "supplier": "DAIRY",
    "lines": [{"sku": "MILK-1L", "quantity": "2", "unit_cost": 70}],
}
_TRANSFER_IN = {
    "document_id": "ti-1",
    "doc_type": "transfer_in",
    "counterpart_branch": "B3",
    "transfer_ref": "B3-to-1",
    "lines": [{"sku": "MILK-1L", "quantity": "2"}],
}

# (route, credentials, body, the field at fault)
CASES: list[tuple[str, dict[str, str], dict[str, Any], str]] = [
    ("/api/v1/sales", TILL, _sale("s1", cashier="c" * 65), "cashier"),
    ("/api/v1/sales", TILL2, _sale("s2", shift_id="s" * 65), "shift_id"),
    ("/api/v1/sales", TILL2, _sale("x" * 65), "sale_id"),
    ("/api/v1/sales", TILL, _sale("s4", lines=[{"barcode": "4" * 65}]), "lines[0].barcode"),
    ("/api/v1/sales", TILL2, _sale("s5", lines=[{"sku": "K" * 65}]), "lines[0].sku"),
    (
        "/api/v1/sales",
        TILL2,
        _sale("s6", payments=[{"type": "cash", "amount": INT64_MAX + 1}]),
        "payments[0].amount",
    ),
    (
        "/api/v1/sales",
        TILL2,
        _sale("s7", lines=[{"sku": "MILK-1L", "manual_discount": INT64_MAX + 1}]),
        "lines[0].manual_discount",
    ),
    ("/api/v1/returns", TILL, _return(cashier="c" * 65), "cashier"),
    ("/api/v1/returns", TILL, _return(original_till="T" * 33), "original_till"),
    ("/api/v1/returns", TILL, _return(shift_id="s" * 65), "shift_id"),
    ("/api/v1/shifts", TILL2, {"cashier": "c" * 65}, "cashier"),
    ("/api/v1/shifts", TILL2, {"opening_float": INT64_MAX + 1}, "opening_float"),
    # Deposited on the fiscal printer, which takes 9,999,999.99 at most in one field: a
    # float beyond it would wait before every receipt of the till.
    ("/api/v1/shifts", TILL2, {"opening_float": CASH_MOVE_MAX + 1}, "opening_float"),
    (
        "/api/v1/cash-moves",
        TILL2,
        {"move_id": "m1", "direction": "in", "amount": INT64_MAX + 1},
        "amount",
    ),
    # What the fiscal printer takes in one field: one move is at most 9,999,999.99.
    (
        "/api/v1/cash-moves",
        TILL2,
        {"move_id": "m1", "direction": "out", "amount": CASH_MOVE_MAX + 1},
        "amount",
    ),
    (
        "/api/v1/cash-moves",
        TILL2,
        {"move_id": "m1", "direction": "in", "amount": 100, "cashier": "c" * 65},
        "cashier",
    ),
    ("/api/v1/stock/documents", MANAGER, _RECEIPT | {"supplier": "p" * 201}, "supplier"),
    ("/api/v1/stock/documents", MANAGER, _RECEIPT | {"author": "a" * 65}, "author"),
    (
        "/api/v1/stock/documents",
        MANAGER,
        _RECEIPT | {"lines": [{"sku": "K" * 65, "quantity": "1", "unit_cost": 1}]},
        "lines[0].sku",
    ),
    (
        "/api/v1/stock/documents",
        MANAGER,
        _RECEIPT | {"lines": [{"sku": "MILK-1L", "quantity": "1", "unit_cost": INT64_MAX + 1}]},
        "lines[0].unit_cost",
    ),
    ("/api/v1/stock/documents", MANAGER, _TRANSFER_IN | {"transfer_ref": "r" * 65}, "transfer_ref"),
    ("/api/v1/stock/stocktakes", MANAGER, {"author": "a" * 65}, "author"),
    # Reasons are kept whole at central; the bound keeps each event inside one message.
    ("/api/v1/returns", TILL, _return(reason="r" * 1001), "reason"),
    (
        "/api/v1/cash-moves",
        TILL2,
        {"move_id": "m1", "direction": "in", "amount": 100, "reason": "r" * 1001},
        "reason",
    ),
    ("/api/v1/stock/documents", MANAGER, _RECEIPT | {"reason": "r" * 1001}, "reason"),
    # A C till padding a name with NULs: central's PostgreSQL could not store it.
    ("/api/v1/sales", TILL, _sale("s8", cashier="anna\x00\x00"), "cashier"),
    ("/api/v1/returns", TILL, _return(reason="wrong size\x00"), "reason"),
    ("/api/v1/stock/documents", MANAGER, _RECEIPT | {"reason": "\x00"}, "reason"),
    ("/api/v1/stock/stocktakes", MANAGER, {"reason": "r" * 1001}, "reason"),
    # An id of blanks only reads as none, yet a second record under it was a retry.
    ("/api/v1/sales", TILL, _sale("   "), "sale_id"),
    ("/api/v1/returns", TILL, _return(return_id=" \t"), "return_id"),
    ("/api/v1/shifts", TILL2, {"shift_id": "  ", "cashier": "anna"}, "shift_id"),
    (
        "/api/v1/cash-moves",
        TILL2,
        {"move_id": "  ", "direction": "in", "amount": 100, "reason": "float"},
        "move_id",
    ),
]


@pytest.mark.parametrize(
    ("route", "headers", "body", "field"), CASES, ids=[f"{r}:{f}" for r, _, _, f in CASES]
)
async def test_a_value_beyond_its_limit_is_refused_at_the_api_and_nothing_is_recorded(
    store: Store, route: str, headers: dict[str, str], body: dict[str, Any], field: str
) -> None:
    if route == "/api/v1/returns":
        original = await store.sale(_sale("orig"))
        assert original.status_code == 201, original.text
    if route in ("/api/v1/sales", "/api/v1/cash-moves"):
        opened = await store.client.post("/api/v1/shifts", json={}, headers=headers)
        assert opened.status_code == 201, opened.text
    before = await _counts(store)
    printed = len(store.fiscal.sim.receipts)
    response = await store.client.post(route, json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    # Refused where the input is read, before anything is priced, counted or printed.
    assert problem["detail"].startswith("Validation failed"), problem
    assert [e["field"] for e in problem["errors"]] == [field]
    assert "Expected `" in problem["errors"][0]["message"]
    assert await _counts(store) == before
    assert len(store.fiscal.sim.receipts) == printed


async def test_a_scanned_code_longer_than_any_barcode_is_refused(store: Store) -> None:
    store.scanner.sim.scan("4" * 65)
    scanned = await store.client.get(
        "/api/v1/devices/scanner/next", params={"wait_s": 5}, headers=TILL
    )
    assert scanned.status_code == 422, scanned.text
    assert scanned.json()["errors"][0]["field"] == "code"


@pytest.mark.parametrize("headers", [TILL, TILL2], ids=["fiscal-till", "till-without-printer"])
async def test_a_catalog_value_beyond_a_limit_refuses_the_sale_and_records_nothing(
    store: Store, headers: dict[str, str]
) -> None:
    """A product whose name central could not store (the local catalog takes any):
    the sale is refused before it is recorded or printed, naming the receipt's field."""
    await store.open_shift(headers)
    async with store.agent.sessionmaker() as session, session.begin():
        await session.execute(
            insert(Product).values(
                sku="LONG-NAME", name="n" * 201, unit="pcs", vat_rate_bp=1000, price=100
            )
        )
    before = await _counts(store)
    printed = len(store.fiscal.sim.receipts)
    response = await store.sale(
        _sale("long-1", lines=[{"sku": "LONG-NAME", "quantity": "1"}]), headers=headers
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["field"] == "lines[0].name"
    assert "length <= 200" in problem["detail"]
    assert await _counts(store) == before
    assert len(store.fiscal.sim.receipts) == printed
    # The catalog's other products still sell.
    assert (await store.sale(_sale("fine-1"), headers=headers)).status_code == 201


def _bucket_message(seq: int, products: tuple[ProductRecord, ...]) -> DownMessage:
    data = encode_masterdata(ProductBucket(scope="all", bucket=3, version=seq, products=products))
    return DownMessage("down.all.product.b003", "all", None, "product", "b003", data, seq)


async def test_master_data_beyond_a_limit_is_rejected_and_the_stream_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.db"
    await upgrade(path)
    engine = create_engine(path)
    applier = MasterDataApplier(create_sessionmaker(engine), asyncio.Lock())
    try:
        fine = ProductRecord(sku="MILK", name="Milk", vat_rate_bp=1000, version=1)
        too_long = ProductRecord(sku="BREAD", name="b" * 201, vat_rate_bp=1000, version=2)
        # Counted and logged, not applied, not raised: the down stream keeps flowing.
        await applier.handle_batch([_bucket_message(1, (fine, too_long))])
        assert applier.stats.rejected == 1
        assert "products[1].name" in applier.stats.last_rejection
        await applier.handle_batch([_bucket_message(2, (fine,))])
        async with engine.connect() as conn:
            skus = (await conn.execute(select(MdProduct.sku))).scalars().all()
        assert skus == ["MILK"]
        assert applier.stats.applied == 1
    finally:
        await engine.dispose()


async def test_a_stored_promotion_beyond_a_limit_does_not_stop_sales(store: Store) -> None:
    """Kept from before the limits were declared: left out of pricing, logged."""
    record = PromotionRecord(
        promotion_id="P1", version=1, name="p" * 201, percent_bp=5000, skus=("MILK-1L",)
    )
    async with store.agent.sessionmaker() as session, session.begin():
        await session.execute(
            insert(MdPromotion).values(
                scope="all",
                scope_id="",
                promotion_id="P1",
                version=1,
                ends_at=datetime.now(UTC) + timedelta(days=1),
                body=encode_masterdata(record),
            )
        )
    sold = await store.sale(_sale("promo-1"), headers=TILL2)
    assert sold.status_code == 201, sold.text
    assert sold.json()["lines"][0]["discount"] == 0


async def test_an_event_bigger_than_one_message_is_refused_and_nothing_is_written(
    store: Store,
) -> None:
    """Whatever builds it: an event NATS could not carry would never leave the outbox."""
    before = await _counts(store)
    body = StockDocumentPosted(
        document_id="huge",
        doc_type="write_off",
        lines=(StockDocumentLine(sku="MILK-1L", quantity_milli=-1000),),
        reason="r" * MAX_EVENT_BYTES,
    )
    with pytest.raises(Rejected, match=r"more than the .* one message may carry"):
        check_event(body)
    with pytest.raises(Rejected, match=r"more than the .* one message may carry"):
        async with store.agent.sessionmaker() as session, session.begin():
            await append_event(session, branch="B1", timezone="UTC", body=body)
    assert await _counts(store) == before


# (route, credentials, body, the field sent as text)
TEXT_CASES: list[tuple[str, dict[str, str], dict[str, Any], str]] = [
    # "100.00" meaning 100 euros was taken as 100 cents.
    ("/api/v1/shifts", TILL2, {"opening_float": "100.00"}, "opening_float"),
    ("/api/v1/cash-moves", TILL2, {"move_id": "m1", "direction": "in", "amount": "1e2"}, "amount"),
    (
        "/api/v1/sales",
        TILL2,
        _sale("s1", payments=[{"type": "cash", "amount": "200"}]),
        "payments[0].amount",
    ),
    (
        "/api/v1/stock/documents",
        MANAGER,
        _RECEIPT | {"lines": [{"sku": "MILK-1L", "quantity": "2", "unit_cost": "70"}]},
        "lines[0].unit_cost",
    ),
    ("/api/v1/stock/documents", MANAGER, _RECEIPT | {"allow_negative": "true"}, "allow_negative"),
]


@pytest.mark.parametrize(
    ("route", "headers", "body", "field"),
    TEXT_CASES,
    ids=[f"{r}:{f}" for r, _, _, f in TEXT_CASES],
)
async def test_a_number_or_boolean_sent_as_text_is_refused_and_nothing_is_recorded(
    store: Store, route: str, headers: dict[str, str], body: dict[str, Any], field: str
) -> None:
    if route in ("/api/v1/sales", "/api/v1/cash-moves"):
        opened = await store.client.post("/api/v1/shifts", json={}, headers=headers)
        assert opened.status_code == 201, opened.text
    before = await _counts(store)
    response = await store.client.post(route, json=body, headers=headers)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert [e["field"] for e in problem["errors"]] == [field]
    assert "not as text" in problem["errors"][0]["message"]
    assert await _counts(store) == before


async def test_a_body_refused_for_other_reasons_keeps_the_frameworks_words(store: Store) -> None:
    # Text where a number is wanted and no number in it: refused by the lenient
    # conversion as well, in its words (no "as text" advice for what is no number).
    response = await store.client.post(
        "/api/v1/shifts", json={"opening_float": "lots"}, headers=TILL2
    )
    assert response.status_code == 422, response.text
    (error,) = response.json()["errors"]
    assert error["field"] == "opening_float"
    assert "not as text" not in error["message"]
    opened = await store.client.post("/api/v1/shifts", json={"opening_float": 100}, headers=TILL2)
    assert opened.status_code == 201, opened.text


# (route, credentials, body, the field at fault, the words its message ends in)
HINT_CASES: list[tuple[str, dict[str, str], dict[str, Any], str, str]] = [
    ("/api/v1/sales", TILL, _sale("h1"), "sale_id", "not empty or blanks only"),
    (
        "/api/v1/sales",
        TILL,
        _sale("h2", lines=[{"sku": "CHEESE-KG", "quantity": "0,754"}]),
        "lines[0].quantity",
        'e.g. "2" or "0.754"',
    ),
    (
        "/api/v1/stock/documents",
        MANAGER,
        _RECEIPT | {"lines": [{"sku": "MILK-1L", "quantity": "-2", "unit_cost": 70}]},
        "lines[0].quantity",
        'e.g. "2" or "0.754"',
    ),
]


@pytest.mark.parametrize(
    ("route", "headers", "body", "field", "hint"),
    HINT_CASES,
    ids=[f"{r}:{f}" for r, _, _, f, _ in HINT_CASES],
)
async def test_a_malformed_id_or_quantity_is_refused_saying_what_to_send(
    store: Store, route: str, headers: dict[str, str], body: dict[str, Any], field: str, hint: str
) -> None:
    """msgspec's "Expected `str` matching regex '^...$'" alone does not tell the till's
    or the manager's app what to send: the problem adds it, nothing recorded."""
    if route == "/api/v1/sales":
        opened = await store.client.post("/api/v1/shifts", json={}, headers=headers)
        assert opened.status_code == 201, opened.text
        body = body | {"sale_id": "\u00a0 "} if field == "sale_id" else body
    before = await _counts(store)
    response = await store.client.post(route, json=body, headers=headers)
    assert response.status_code == 422, response.text
    (error,) = response.json()["errors"]
    assert error["field"] == field
    assert error["message"].endswith(hint), error
    assert await _counts(store) == before
