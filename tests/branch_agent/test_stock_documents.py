"""Stock documents at the store: stock of products that left the assortment can still go
out, a document id is one document, unit costs only where central takes them, a real
write-off reason, and a till's token is not the manager's (403)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from branch_agent.db import create_engine, create_sessionmaker
from branch_agent.downstream import DownMessage
from branch_agent.masterdata_models import FormerProduct
from branch_agent.models import OutboxEvent, StockDocument, StockMove, StocktakeCount
from protocol.masterdata import (
    MasterDataMessage,
    ProductBucket,
    ProductRecord,
    SnapshotMark,
    SnapshotPart,
    bucket_of,
    encode_masterdata,
)
from protocol.subjects import parse_down_subject
from tests.branch_agent.conftest import MANAGER, TILL, Store
from tests.branch_agent.test_masterdata_snapshot_apply import _applier

T0 = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)

MILK = ProductRecord(sku="MILK-1L", name="Milk 1 l", vat_rate_bp=700, version=1)
CHEESE = ProductRecord(
    sku="CHEESE-KG", name="Gouda", unit="kg", weighed=True, vat_rate_bp=700, version=1
)
WATER = ProductRecord(sku="WATER-15", name="Water 1.5 l", vat_rate_bp=1900, version=1)
# In the assortment for a while, never stocked at this branch.
SOAP = ProductRecord(sku="SOAP-1", name="Soap", vat_rate_bp=1900, version=1)


def _msg(subject: str, seq: int, message: MasterDataMessage) -> DownMessage:
    scope, scope_id, kind, key = parse_down_subject(subject)
    return DownMessage(subject, scope, scope_id, kind, key, encode_masterdata(message), seq)


def catalog(
    seq: int, products: list[ProductRecord], *, also_empty: Sequence[ProductRecord] = ()
) -> list[DownMessage]:
    """Chain-wide product buckets as central publishes them: one message per bucket
    holding every product of it the branch sells (a bucket of ``also_empty``'s products
    without any of them is published empty: they left the assortment)."""
    buckets: dict[int, list[ProductRecord]] = defaultdict(list)
    for product in also_empty:
        buckets[bucket_of(product.sku)]
    for product in products:
        buckets[bucket_of(product.sku)].append(product)
    return [
        _msg(
            f"down.all.product.b{bucket:03d}",
            seq + i,
            ProductBucket(scope="all", bucket=bucket, version=seq, products=tuple(items)),
        )
        for i, (bucket, items) in enumerate(sorted(buckets.items()))
    ]


async def post_doc(store: Store, body: dict[str, Any], headers: dict[str, str] = MANAGER) -> Any:
    return await store.client.post("/api/v1/stock/documents", json=body, headers=headers)


async def counts(store: Store) -> tuple[int, int, int, int]:
    """Documents, ledger rows, outbox events, stocktake counts: bad input changes none."""
    async with store.agent.sessionmaker() as session:
        return (
            await session.scalar(select(func.count()).select_from(StockDocument)) or 0,
            await session.scalar(select(func.count()).select_from(StockMove)) or 0,
            await session.scalar(select(func.count()).select_from(OutboxEvent)) or 0,
            await session.scalar(select(func.count()).select_from(StocktakeCount)) or 0,
        )


async def balances_of(store: Store) -> dict[str, int]:
    stock = await store.client.get("/api/v1/stock/balances", headers=MANAGER)
    return {b["sku"]: b["quantity_milli"] for b in stock.json()}


async def receive(store: Store, sku: str, quantity: str, unit_cost: int = 70) -> None:
    """Goods in, under an id of their own (a repeat of content is then no concern)."""
    body = {
        "document_id": f"gr-{uuid.uuid4().hex[:12]}",
        "doc_type": "goods_receipt",
        "supplier": "ACME",
        "lines": [{"sku": sku, "quantity": quantity, "unit_cost": unit_cost}],
    }
    posted = await post_doc(store, body)
    assert posted.status_code == 201, posted.text


def refused(response: Any, status: int, field: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"] == field, response.text
    return str(response.json()["detail"])


async def test_stock_of_a_product_that_left_the_assortment_can_still_go_out(
    store: Store,
) -> None:
    applier = store.agent.masterdata
    await applier.handle_batch(catalog(1, [MILK, CHEESE, WATER, SOAP]))
    receipt = {
        "document_id": "gr-1",
        "doc_type": "goods_receipt",
        "supplier": "DAIRY",
        "lines": [
            {"sku": "MILK-1L", "quantity": "24", "unit_cost": 70},
            {"sku": "CHEESE-KG", "quantity": "5.250", "unit_cost": 800},
        ],
    }
    assert (await post_doc(store, receipt)).status_code == 201
    # Head office takes milk, cheese and soap out of this branch's assortment.
    await applier.handle_batch(catalog(10, [WATER], also_empty=[MILK, CHEESE, SOAP]))
    assert applier.stats.applied >= 2

    # The stock in the store can leave: to the supplier, written off, to another branch.
    back = {
        "doc_type": "supplier_return",
        "supplier": "DAIRY",
        "lines": [{"sku": "CHEESE-KG", "quantity": "0.750"}],
    }
    assert (await post_doc(store, back)).status_code == 201, "weighed: 0.750 kg"
    write_off = {"doc_type": "write_off", "reason": "delisted", "lines": []}
    whole = write_off | {"lines": [{"sku": "MILK-1L", "quantity": "4"}]}
    assert (await post_doc(store, whole)).status_code == 201
    transfer = {
        "doc_type": "transfer_out",
        "counterpart_branch": "B2",
        "lines": [{"sku": "MILK-1L", "quantity": "10"}],
    }
    assert (await post_doc(store, transfer)).status_code == 201
    before = await counts(store)
    # Still counted in pieces, as the product was.
    half = write_off | {"lines": [{"sku": "MILK-1L", "quantity": "1.5"}]}
    refused(await post_doc(store, half), 422, "lines[0].quantity")
    # A product the branch never had stock of stays out, with the reason.
    soap = write_off | {"lines": [{"sku": "SOAP-1", "quantity": "1"}]}
    detail = refused(await post_doc(store, soap), 422, "lines[0].sku")
    assert "not in this branch's assortment" in detail
    # Goods cannot come in: said as such, not "unknown product".
    again = receipt | {"document_id": "gr-2"}
    detail = refused(await post_doc(store, again), 422, "lines[0].sku")
    assert "MILK-1L is not in this branch's assortment" in detail
    assert "unknown" not in detail
    inbound = {
        "doc_type": "transfer_in",
        "counterpart_branch": "B3",
        "transfer_ref": "B3-TO-1",
        "lines": [{"sku": "CHEESE-KG", "quantity": "1"}],
    }
    assert "not in this branch's assortment" in refused(
        await post_doc(store, inbound), 422, "lines[0].sku"
    )
    # A SKU never seen here is still unknown.
    never = receipt | {"document_id": "gr-3", "lines": [{"sku": "NEVER", "quantity": "1"}]}
    assert "unknown product" in refused(await post_doc(store, never), 422, "lines[0].sku")
    assert await counts(store) == before

    # A stocktake counts what is left of them.
    take = await store.client.post(
        "/api/v1/stock/stocktakes", json={"document_id": "st-1"}, headers=MANAGER
    )
    assert take.status_code == 201, take.text
    sheet_url = "/api/v1/stock/stocktakes/st-1/sheets"
    bad_sheet = {"sheet": "s", "lines": [{"sku": "SOAP-1", "counted": "1"}]}
    assert "not in this branch's assortment" in refused(
        await store.client.post(sheet_url, json=bad_sheet, headers=MANAGER), 422, "lines[0].sku"
    )
    sheet = {
        "sheet": "back",
        "lines": [{"sku": "MILK-1L", "counted": "9"}, {"sku": "CHEESE-KG", "counted": "4.4"}],
    }
    added = await store.client.post(sheet_url, json=sheet, headers=MANAGER)
    assert added.status_code == 200, added.text
    posted = await store.client.post("/api/v1/stock/stocktakes/st-1/post", headers=MANAGER)
    assert posted.status_code == 200, posted.text
    assert {line["sku"]: line["quantity_milli"] for line in posted.json()["lines"]} == {
        "CHEESE-KG": -100,
        "MILK-1L": -1000,
    }
    assert await balances_of(store) == {"MILK-1L": 9000, "CHEESE-KG": 4400}

    # Back in the assortment: an ordinary product again, goods come in.
    await applier.handle_batch(catalog(20, [MILK, WATER], also_empty=[CHEESE, SOAP]))
    milk = receipt | {"document_id": "gr-4", "lines": receipt["lines"][:1]}
    assert (await post_doc(store, milk)).status_code == 201
    with sqlite3.connect(store.agent.settings.database_path) as db:
        former = db.execute("SELECT sku, weighed, facts FROM former_products ORDER BY sku")
        assert former.fetchall() == [("CHEESE-KG", 1, "master_data"), ("SOAP-1", 0, "master_data")]
    db.close()


async def test_a_product_moved_to_another_scope_has_not_left(store: Store) -> None:
    """Excluded by another branch of the format, a product comes to this one per branch
    instead of chain-wide: it never left this branch's assortment."""
    applier = store.agent.masterdata
    await applier.handle_batch(catalog(1, [MILK, WATER]))
    bucket = bucket_of("MILK-1L")
    own = ProductBucket(scope="branch", scope_id="B1", bucket=bucket, version=5, products=(MILK,))
    await applier.handle_batch(
        [
            _msg(f"down.branch.B1.product.b{bucket:03d}", 5, own),
            *catalog(6, [WATER], also_empty=[MILK]),
        ]
    )
    receipt = {
        "doc_type": "goods_receipt",
        "supplier": "DAIRY",
        "lines": [{"sku": "MILK-1L", "quantity": "2", "unit_cost": 70}],
    }
    assert (await post_doc(store, receipt)).status_code == 201
    with sqlite3.connect(store.agent.settings.database_path) as db:
        assert db.execute("SELECT count(*) FROM former_products").fetchone() == (0,)
    db.close()


async def test_a_snapshot_that_drops_a_product_keeps_its_facts(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    applier, engine = await _applier(path)
    try:
        await applier.handle_batch(catalog(1, [CHEESE, WATER]))
        await applier.set_pending_snapshot(9)
        water = bucket_of("WATER-15")
        part = SnapshotPart(
            snapshot_id=9,
            part=1,
            subject=f"down.all.product.b{water:03d}",
            message=ProductBucket(scope="all", bucket=water, version=9, products=(WATER,)),
        )
        await applier.handle_batch(
            [
                _msg(
                    "down.branch.B1.snapshot.begin",
                    100,
                    SnapshotMark(snapshot_id=9, phase="begin", parts=1, version=9),
                ),
                _msg("down.branch.B1.snapshot.p000001", 101, part),
                _msg(
                    "down.branch.B1.snapshot.end",
                    102,
                    SnapshotMark(snapshot_id=9, phase="end", parts=1, version=9),
                ),
            ]
        )
        assert applier.stats.snapshots_completed == 1
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT sku FROM md_products").fetchall() == [("WATER-15",)]
            assert db.execute("SELECT sku, unit, weighed FROM former_products").fetchall() == [
                ("CHEESE-KG", "kg", 1)
            ]
        db.close()
    finally:
        await engine.dispose()  # type: ignore[attr-defined]


async def test_a_document_id_is_one_document(store: Store) -> None:
    receipt = {
        "document_id": "gr-1",
        "doc_type": "goods_receipt",
        "supplier": "DAIRY",
        "lines": [
            {"sku": "MILK-1L", "quantity": "24", "unit_cost": 70},
            {"sku": "CHEESE-KG", "quantity": "5.25", "unit_cost": 800},
        ],
    }
    assert (await post_doc(store, receipt)).status_code == 201
    write_off = {
        "document_id": "wo-1",
        "doc_type": "write_off",
        "reason": "expired",
        "lines": [{"sku": "MILK-1L", "quantity": "2"}],
    }
    first = await post_doc(store, write_off)
    assert first.status_code == 201
    before = (await counts(store), await balances_of(store))
    # A retry, however its quantities are written: the original, 200.
    retry = await post_doc(
        store,
        write_off | {"reason": " expired ", "lines": [{"sku": "MILK-1L", "quantity": "2.000"}]},
    )
    assert retry.status_code == 200, retry.text
    assert retry.json() == first.json()
    same = receipt | {"lines": list(reversed(receipt["lines"]))}
    assert (await post_doc(store, same)).status_code == 200
    # Anything else under the same id: 409 naming document_id, nothing recorded.
    others: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (write_off, {"lines": [{"sku": "MILK-1L", "quantity": "3"}]}),
        (write_off, {"lines": [{"sku": "CHEESE-KG", "quantity": "2"}]}),
        (
            write_off,
            {"lines": [{"sku": "MILK-1L", "quantity": "2"}, {"sku": "CHEESE-KG", "quantity": "1"}]},
        ),
        (write_off, {"reason": "broken"}),
        (write_off, {"author": "someone else"}),
        (receipt, {"supplier": "FARM"}),
        (receipt, {"lines": [{"sku": "MILK-1L", "quantity": "24", "unit_cost": 71}]}),
    ]
    for original, change in others:
        detail = refused(await post_doc(store, original | change), 409, "document_id")
        assert "other content" in detail, detail
    transfer = {
        "document_id": "to-1",
        "doc_type": "transfer_out",
        "counterpart_branch": "B2",
        "lines": [{"sku": "MILK-1L", "quantity": "1"}],
    }
    assert (await post_doc(store, transfer)).status_code == 201
    assert (await post_doc(store, transfer)).status_code == 200
    # The transfer out is its own reference: naming it is the same document.
    assert (await post_doc(store, transfer | {"transfer_ref": "to-1"})).status_code == 200
    refused(await post_doc(store, transfer | {"counterpart_branch": "B3"}), 409, "document_id")
    assert (await counts(store))[:3] == (before[0][0] + 1, before[0][1] + 1, before[0][2] + 1)
    stock = await balances_of(store)
    assert stock["MILK-1L"] == before[1]["MILK-1L"] - 1000


async def test_unit_cost_only_where_the_document_sets_it(store: Store) -> None:
    receipt = {
        "doc_type": "goods_receipt",
        "supplier": "DAIRY",
        "lines": [{"sku": "MILK-1L", "quantity": "24", "unit_cost": 70}],
    }
    assert (await post_doc(store, receipt)).status_code == 201
    before = await counts(store)
    line = {"sku": "MILK-1L", "quantity": "1", "unit_cost": 5}
    documents = [
        {"doc_type": "write_off", "reason": "broken"},
        {"doc_type": "supplier_return", "supplier": "DAIRY"},
        {"doc_type": "transfer_out", "counterpart_branch": "B2"},
        {"doc_type": "transfer_in", "counterpart_branch": "B2", "transfer_ref": "B2-TO-1"},
    ]
    for header in documents:
        body = header | {"lines": [{"sku": "CHEESE-KG", "quantity": "1"}, line]}
        detail = refused(await post_doc(store, body), 422, "lines[1].unit_cost")
        # Named as people name it ("a write-off"), not by its doc_type ("a write_off").
        words = header["doc_type"].replace("_off", "-off").replace("_", " ")
        assert detail.startswith(f"a {words} takes no unit cost: central values"), detail
        # A unit cost of 0 is a unit cost too.
        zero = header | {"lines": [line | {"unit_cost": 0}]}
        refused(await post_doc(store, zero), 422, "lines[0].unit_cost")
    assert await counts(store) == before
    # Without it they post; a goods receipt still needs it.
    for header in documents:
        ok = await post_doc(store, header | {"lines": [{"sku": "MILK-1L", "quantity": "1"}]})
        assert ok.status_code == 201, ok.text
        assert ok.json()["lines"][0]["unit_cost"] is None
    no_cost = receipt | {"lines": [{"sku": "MILK-1L", "quantity": "1"}]}
    refused(await post_doc(store, no_cost), 422, "lines[0].unit_cost")


async def test_a_write_off_needs_a_reason_that_says_something(store: Store) -> None:
    await receive(store, "MILK-1L", "5")
    before = await counts(store)
    write_off = {"doc_type": "write_off", "lines": [{"sku": "MILK-1L", "quantity": "1"}]}
    for reason in ("", "   ", "\t\n "):
        refused(await post_doc(store, write_off | {"reason": reason}), 422, "reason")
    assert await counts(store) == before
    posted = await post_doc(store, write_off | {"reason": "  broken  "})
    assert posted.status_code == 201
    assert posted.json()["reason"] == "broken"


async def test_a_till_token_on_a_manager_route_is_forbidden(store: Store) -> None:
    before = await counts(store)
    body = {"doc_type": "write_off", "reason": "x", "lines": [{"sku": "MILK-1L", "quantity": "1"}]}
    routes: list[tuple[str, str, Any]] = [
        ("POST", "/api/v1/stock/documents", body),
        ("GET", "/api/v1/stock/balances", None),
        ("POST", "/api/v1/stock/stocktakes", {}),
        ("GET", "/api/v1/manager/sales/pending", None),
        ("GET", "/api/v1/manager/returns/pending", None),
    ]
    for method, url, json in routes:
        forbidden = await store.client.request(method, url, json=json, headers=TILL)
        assert forbidden.status_code == 403, (url, forbidden.text)
        assert forbidden.headers["content-type"].startswith("application/problem+json")
        assert forbidden.json()["detail"] == (
            f"role 'till' may not {method} {url}; allowed: manager"
        )
        nobody = await store.client.request(
            method, url, json=json, headers={"Authorization": "Bearer nobody-s"}
        )
        assert nobody.status_code == 401, (url, nobody.text)
        none = await store.client.request(method, url, json=json)
        assert none.status_code == 401
        # Each 401 says how to authenticate, as central's do.
        for refused_401 in (nobody, none):
            assert refused_401.headers["www-authenticate"] == 'Bearer realm="backroom"'
            assert refused_401.headers["content-type"].startswith("application/problem+json")
    # A till route without a token likewise.
    no_till = await store.client.get("/api/v1/sales/pending")
    assert no_till.status_code == 401
    assert no_till.headers["www-authenticate"] == 'Bearer realm="backroom"'
    # And the manager's token is not a till's.
    sale = await store.client.get("/api/v1/sales/pending", headers=MANAGER)
    assert sale.status_code == 403, sale.text
    assert (
        sale.json()["detail"] == "role 'manager' may not GET /api/v1/sales/pending; allowed: till"
    )
    assert await counts(store) == before


async def test_the_upgrade_remembers_products_that_had_left_with_stock(tmp_path: Path) -> None:
    """Stores whose products left before former_products existed: the stock they still
    hold can go out after the upgrade, counted the way the ledger shows it was."""
    from branch_agent.db import upgrade
    from tests.branch_agent.test_masterdata_apply import _upgrade_to

    path = tmp_path / "agent.db"
    await asyncio.to_thread(_upgrade_to, path, "a1701")
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO md_products (scope, scope_id, sku, bucket, name, unit, weighed, "
            "category_path, vat_rate_bp, vat_group, version) "
            "VALUES ('all', '', 'WATER-15', 1, 'Water', 'pcs', 0, '', 1900, 'A', 1)"
        )
        moves = [
            ("WATER-15", 6000),
            ("GONE-PCS", 12000),
            ("GONE-PCS", -2000),
            ("GONE-KG", 3000),
            ("GONE-KG", -750),
        ]
        db.executemany(
            "INSERT INTO stock_ledger (sku, quantity_milli, source, source_id, created_at) "
            "VALUES (?, ?, 'goods_receipt', 'gr', '2026-01-05 06:00:00.000000')",
            moves,
        )
        db.executemany(
            "INSERT INTO stock_balances (sku, quantity_milli) "
            "SELECT sku, sum(quantity_milli) FROM stock_ledger WHERE sku = ? GROUP BY sku",
            [("WATER-15",), ("GONE-PCS",), ("GONE-KG",)],
        )
    db.close()
    await upgrade(path)
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT sku, name, unit, weighed, facts FROM former_products ORDER BY sku"
        ).fetchall()
    db.close()
    assert rows == [
        ("GONE-KG", "GONE-KG", "kg", 1, "ledger"),
        ("GONE-PCS", "GONE-PCS", "pcs", 0, "ledger"),
    ]
    engine = create_engine(path)
    try:
        async with create_sessionmaker(engine)() as session:
            kept = await session.get(FormerProduct, "GONE-KG")
            assert kept is not None
            assert kept.left_at.tzinfo is UTC
            assert kept.left_at > T0
    finally:
        await engine.dispose()
