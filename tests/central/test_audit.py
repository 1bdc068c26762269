"""The audit log of head-office API changes: who, when, what, before and after."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from central.app import create_app
from central.models import AuditEntry, DeadLetter
from central.services.audit import SUMMARY_KEYS
from central.services.catalog_import import import_products
from tests.conftest import asgi_client, create_api_token, register_branch


@contextlib.asynccontextmanager
async def _clients(central: Any) -> AsyncIterator[dict[str, Any]]:
    """One client per role, each with a user whose name the test knows (role = name)."""
    app = create_app(central.settings, runtime=central)
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for role in ("admin", "merchandiser", "analyst"):
            token = await create_api_token(central, role, name=f"audit-{role}")
            clients[role] = await stack.enter_async_context(
                asgi_client(app, headers={"Authorization": f"Bearer {token}"})
            )
        yield clients


async def _entries(admin: Any, **params: str) -> list[dict[str, Any]]:
    response = await admin.get("/api/v1/audit", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _one(items: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(items) == 1, items
    return items[0]


def _check_who_when(entry: dict[str, Any], actor: str, method: str, path: str) -> None:
    assert entry["actor"] == f"audit-{actor}"
    assert entry["actor_role"] == actor
    assert (entry["method"], entry["path"]) == (method, path)
    at = datetime.fromisoformat(entry["at"])
    assert at.tzinfo is not None
    assert abs(datetime.now(UTC) - at) < timedelta(minutes=5)


async def _add_dead_letter(central: Any, raw: bytes) -> int:
    async with central.sessionmaker() as session, session.begin():
        letter = DeadLetter(subject="backroom.up.B1.sale", branch="B1", reason="bad", raw=raw)
        session.add(letter)
        await session.flush()
        return letter.id


async def test_price_product_promotion_and_dead_letter_changes_are_audited(
    central: Any,
) -> None:
    await register_branch(central, "B1")
    async with _clients(central) as c:
        merch, admin = c["merchandiser"], c["admin"]
        r = await merch.post("/api/v1/categories", json={"code": "dairy", "name": "Dairy"})
        assert r.status_code == 201, r.text
        product = {"sku": "MILK", "name": "Milk", "category": "dairy", "vat_rate_bp": 1000}
        assert (await merch.post("/api/v1/products", json=product)).status_code == 201
        r = await merch.patch("/api/v1/products/MILK", json={"name": "Whole milk"})
        assert r.status_code == 200, r.text
        for price in (129, 149):
            r = await merch.post("/api/v1/prices", json={"sku": "MILK", "price": price})
            assert r.status_code == 201, r.text
        now = datetime.now(UTC)
        promotion = {
            "promotion_id": "P1",
            "name": "Milk week",
            "type": "percent",
            "percent_bp": 1000,
            "skus": ["MILK"],
            "starts_at": now.isoformat(),
            "ends_at": (now + timedelta(days=7)).isoformat(),
        }
        r = await merch.post("/api/v1/promotions", json=promotion)
        assert r.status_code == 201, r.text
        letter = await _add_dead_letter(central, b"not msgpack")
        r = await admin.post(f"/api/v1/dead-letters/{letter}/discard")
        assert r.status_code == 200, r.text

        update, create = await _entries(admin, target="product:MILK")  # newest first
        assert create["action"] == "product.create"
        assert create["before"] is None
        assert create["after"]["name"] == "Milk"
        _check_who_when(update, "merchandiser", "PATCH", "/api/v1/products/MILK")
        assert update["action"] == "product.update"
        assert update["before"]["name"] == "Milk"
        assert update["after"]["name"] == "Whole milk"
        assert update["after"]["category"] == "dairy"

        second, first = await _entries(admin, action="price.set")
        _check_who_when(second, "merchandiser", "POST", "/api/v1/prices")
        assert first["target"] == second["target"] == "price:MILK@all"
        assert first["before"] is None
        assert first["after"]["price"] == 129
        assert second["before"]["price"] == 129
        assert second["after"]["price"] == 149
        assert second["after"]["version"] > second["before"]["version"]

        promo = _one(await _entries(admin, action="promotion.create"))
        _check_who_when(promo, "merchandiser", "POST", "/api/v1/promotions")
        assert promo["target"] == "promotion:P1"
        assert promo["before"] is None
        assert promo["after"]["skus"] == ["MILK"]
        assert promo["after"]["percent_bp"] == 1000

        discard = _one(await _entries(admin, target=f"dead_letter:{letter}"))
        _check_who_when(discard, "admin", "POST", f"/api/v1/dead-letters/{letter}/discard")
        assert discard["action"] == "dead_letter.discard"
        assert discard["before"]["status"] == "open"
        assert discard["before"]["resolved_at"] is None
        assert discard["after"]["status"] == "discarded"
        assert discard["after"]["resolved_at"] is not None

        # Each request recorded its own entry: no generic middleware line besides.
        assert await _entries(admin, action="request") == []
        everything = await _entries(admin, actor="audit-merchandiser")
        assert len(everything) == 6  # category, product x2, price x2, promotion

        for role in ("merchandiser", "analyst"):
            refused = await c[role].get("/api/v1/audit")
            assert refused.status_code == 403, (role, refused.text)
            assert refused.json()["status"] == 403
            assert (
                await c[role].get("/api/v1/audit", params={"action": "price.set"})
            ).status_code == 403


async def test_a_refused_or_invalid_change_leaves_no_audit_entry(central: Any) -> None:
    async with _clients(central) as c:
        async with central.sessionmaker() as session:
            before = await session.scalar(select(func.count()).select_from(AuditEntry))
        r = await c["merchandiser"].post("/api/v1/prices", json={"sku": "NOPE", "price": 1})
        assert r.status_code == 422, r.text
        r = await c["analyst"].post("/api/v1/prices", json={"sku": "NOPE", "price": 1})
        assert r.status_code == 403
        letter = await _add_dead_letter(central, b"x")
        r = await c["merchandiser"].post(f"/api/v1/dead-letters/{letter}/discard")
        assert r.status_code == 403
        assert (await c["admin"].post(f"/api/v1/dead-letters/{letter}/discard")).status_code == 200
        # Discarding twice: a conflict, and nothing more on file.
        assert (await c["admin"].post(f"/api/v1/dead-letters/{letter}/discard")).status_code == 409
        async with central.sessionmaker() as session:
            after = await session.scalar(select(func.count()).select_from(AuditEntry))
        assert after == (before or 0) + 1


async def test_bulk_changes_are_summarised_not_listed(central: Any) -> None:
    count = SUMMARY_KEYS + 15
    csv_text = "sku,name,vat_rate_bp\n" + "".join(f"S{i:03d},Item {i},1000\n" for i in range(count))
    async with central.sessionmaker() as session:
        report = await import_products(session, csv_text.splitlines(keepends=True), dry_run=False)
    assert report.applied, report.errors
    async with _clients(central) as c:
        admin, merch = c["admin"], c["merchandiser"]
        imported = _one(await _entries(admin, action="product.import"))
        # Made on the server's command line: the actor is the OS user.
        assert imported["actor"].startswith("cli:")
        assert imported["after"]["count"] == count
        assert imported["after"]["created"] == count
        assert imported["after"]["keys"] == [f"S{i:03d}" for i in range(SUMMARY_KEYS)]
        assert imported["before"] == {"count": 0, "keys": []}

        assert (
            await merch.post("/api/v1/formats", json={"code": "MINI", "name": "Mini"})
        ).status_code == 201
        skus = [f"S{i:03d}" for i in range(count)]
        r = await merch.post("/api/v1/formats/MINI/products", json={"add": skus})
        assert r.status_code == 200, r.text
        r = await merch.post("/api/v1/formats/MINI/products", json={"remove": skus[:3]})
        assert r.status_code == 200, r.text
        removed, added = await _entries(admin, action="format.products")
        assert added["before"] == {"products": 0}
        assert added["after"]["products"] == count
        assert added["after"]["added"]["count"] == count
        assert len(added["after"]["added"]["keys"]) == SUMMARY_KEYS
        assert removed["before"] == {"products": count}
        assert removed["after"]["products"] == count - 3
        assert removed["after"]["removed"] == {"count": 3, "keys": skus[:3]}


async def test_a_dead_letter_replay_is_audited_with_its_outcome(central: Any) -> None:
    letter = await _add_dead_letter(central, b"\x00 still not a message")
    async with _clients(central) as c:
        assert (
            await c["merchandiser"].post(f"/api/v1/dead-letters/{letter}/replay")
        ).status_code == 403
        r = await c["admin"].post(f"/api/v1/dead-letters/{letter}/replay")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "open"  # failed again: still open
        entry = _one(await _entries(c["admin"], action="dead_letter.replay"))
        _check_who_when(entry, "admin", "POST", f"/api/v1/dead-letters/{letter}/replay")
        assert entry["before"]["attempts"] == 1
        assert entry["after"]["attempts"] == 2
        assert entry["after"]["status"] == "open"
        assert entry["after"]["reason"] != "bad"
        assert await _entries(c["admin"], action="request") == []


async def test_every_other_master_data_and_records_write_is_audited(central: Any) -> None:
    await register_branch(central, "B1")
    async with _clients(central) as c:
        merch, admin = c["merchandiser"], c["admin"]
        product = {"sku": "TEA", "name": "Tea", "vat_rate_bp": 700}
        assert (await merch.post("/api/v1/products", json=product)).status_code == 201
        r = await merch.post("/api/v1/zones", json={"code": "Z1", "name": "North"})
        assert r.status_code == 201, r.text
        price = {"sku": "TEA", "price": 300, "scope": "branch", "scope_id": "B1"}
        assert (await merch.post("/api/v1/prices", json=price)).status_code == 201
        r = await merch.post(
            "/api/v1/prices/withdraw", params={"scope": "branch", "scope_id": "B1", "sku": "TEA"}
        )
        assert r.status_code == 200, r.text
        doc = {"lines": [{"sku": "TEA", "new_price": 350, "stock_milli": 2000}]}
        r = await merch.post("/api/v1/repricing", json=doc)
        assert r.status_code == 201, r.text
        doc_id = r.json()["id"]
        r = await merch.post(f"/api/v1/repricing/{doc_id}/approve")
        assert r.status_code == 200, r.text
        approved_status = r.json()["status"]  # approved, or effective once its moment came
        assert approved_status in ("approved", "effective")
        exception = {"sku": "TEA", "include": True}
        r = await merch.put("/api/v1/assortment/branches/B1/exceptions", json=exception)
        assert r.status_code == 200, r.text
        r = await merch.delete("/api/v1/assortment/branches/B1/exceptions/TEA")
        assert r.status_code == 204, r.text
        now = datetime.now(UTC)
        promotion = {
            "promotion_id": "P2",
            "type": "amount",
            "amount": 50,
            "skus": ["TEA"],
            "starts_at": now.isoformat(),
            "ends_at": (now + timedelta(days=1)).isoformat(),
        }
        assert (await merch.post("/api/v1/promotions", json=promotion)).status_code == 201
        assert (await merch.post("/api/v1/promotions/P2/withdraw")).status_code == 200
        assert (await merch.post("/api/v1/products/TEA/archive")).status_code == 200
        day = {"branch": "B1", "local_date": "2026-11-01", "closed_by": "ops"}
        assert (await merch.post("/api/v1/shifts/closed-days", json=day)).status_code == 403
        assert (await admin.post("/api/v1/shifts/closed-days", json=day)).status_code == 201

        def by_action(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
            return {e["action"]: e for e in items}

        merch_entries = by_action(await _entries(admin, actor="audit-merchandiser"))
        assert set(merch_entries) == {
            "product.create",
            "zone.create",
            "price.set",
            "price.withdraw",
            "repricing.create",
            "repricing.approve",
            "assortment.set_exception",
            "assortment.remove_exception",
            "promotion.create",
            "promotion.withdraw",
            "product.archive",
        }
        withdrawn = merch_entries["price.withdraw"]
        assert withdrawn["target"] == "price:TEA@branch:B1"
        assert withdrawn["before"]["count"] == 1
        assert withdrawn["before"]["entries"][0]["price"] == 300
        assert withdrawn["after"] == {"count": 0, "withdrawn": 1}
        approved = merch_entries["repricing.approve"]
        assert approved["target"] == f"repricing:{doc_id}"
        assert approved["before"]["status"] == "draft"
        assert approved["after"]["status"] == approved_status
        assert approved["after"]["approved_at"] is not None
        assert approved["after"]["lines"] == {"count": 1, "keys": ["TEA"]}
        assert approved["after"]["first_lines"][0]["new_price"] == 350
        removed = merch_entries["assortment.remove_exception"]
        assert removed["before"] == {"sku": "TEA", "include": True}
        assert removed["after"] is None
        promo = merch_entries["promotion.withdraw"]
        assert promo["before"]["active"] is True
        assert promo["after"]["active"] is False
        archived = merch_entries["product.archive"]
        assert archived["before"]["active"] is True
        assert archived["after"]["active"] is False
        closed = _one(await _entries(admin, action="shift.close_day"))
        _check_who_when(closed, "admin", "POST", "/api/v1/shifts/closed-days")
        assert closed["target"] == "closed_day:B1:2026-11-01"
        assert closed["after"]["closed_by"] == "ops"
        assert await _entries(admin, action="request") == []
