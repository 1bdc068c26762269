"""A past moment is priced with what was in force then: an override withdrawn later
still counted before its withdrawal, and a branch moved to another price zone (or
format) kept its old zone's prices for the sales it made before the move. Central's
expected price of a past moment and the till-price mismatch report agree with what the
tills were right to charge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from central.ingest.worker import IngestWorker
from central.models import Branch, Receipt
from central.reports.backlog import summaries_current
from central.reports.service import head_office_prices
from central.services.pricing import price_mismatches
from tests.central.chain_events import BranchBooks, message
from tests.conftest import counted_statements, register_branch


async def _product(client: Any, sku: str, chain_price: int) -> None:
    r = await client.post("/api/v1/products", json={"sku": sku, "name": sku, "vat_rate_bp": 1900})
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/prices", json={"sku": sku, "price": chain_price})
    assert r.status_code == 201, r.text


class _Tills:
    """The branches' sales, each made now (after what the test did before)."""

    def __init__(self, central: Any) -> None:
        self.central = central
        self.books: dict[str, BranchBooks] = {}

    async def sell(self, branch: str, sku: str, price: int) -> datetime:
        return await _sell(
            self.central, self.books.setdefault(branch, BranchBooks(branch)), sku, price
        )


async def _sell(central: Any, books: BranchBooks, sku: str, price: int) -> datetime:
    books.start = datetime.now(UTC) - timedelta(minutes=len(books.events))
    sale = books.sale([(sku, 1000, price)])
    stats = await IngestWorker(central.sessionmaker).process([message(sale)])
    assert stats.dead_letters == 0
    return sale.occurred_at


async def _expected(client: Any, branch: str, sku: str, at: datetime | None = None) -> Any:
    params = {"at": at.isoformat()} if at is not None else {}
    r = await client.get(f"/api/v1/prices/branches/{branch}/products/{sku}", params=params)
    assert r.status_code == 200, r.text
    return r.json()["price"]


async def _mismatches(client: Any, branch: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/v1/prices/branches/{branch}/mismatches")
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()
    return out


async def test_a_withdrawn_override_was_in_force_before_its_withdrawal(
    central: Any, central_client: Any
) -> None:
    client = central_client
    tills = _Tills(central)
    await register_branch(central, "B1")
    await _product(client, "MILK", 129)
    r = await client.post(
        "/api/v1/prices", json={"sku": "MILK", "price": 99, "scope": "branch", "scope_id": "B1"}
    )
    assert r.status_code == 201, r.text
    sold_at = await tills.sell("B1", "MILK", 99)
    assert await _mismatches(client, "B1") == []

    r = await client.post(
        "/api/v1/prices/withdraw", params={"scope": "branch", "scope_id": "B1", "sku": "MILK"}
    )
    assert r.status_code == 200, r.text
    # The sale at the override's price was right when it was made.
    assert await _mismatches(client, "B1") == []
    assert await _expected(client, "B1", "MILK", sold_at) == 99
    assert await _expected(client, "B1", "MILK") == 129
    entry = (await client.get("/api/v1/prices", params={"sku": "MILK", "scope": "branch"})).json()
    (withdrawn,) = entry["items"]
    assert withdrawn["withdrawn"] is True
    assert sold_at < datetime.fromisoformat(withdrawn["withdrawn_at"]) <= datetime.now(UTC)
    # A sale at the withdrawn price after the withdrawal is a mismatch.
    await tills.sell("B1", "MILK", 99)
    (mismatch,) = await _mismatches(client, "B1")
    assert (mismatch["till_price"], mismatch["expected_price"]) == (99, 129)


async def test_a_second_withdrawal_keeps_the_first_ones_moment(
    central: Any, central_client: Any
) -> None:
    client = central_client
    tills = _Tills(central)
    await register_branch(central, "B1")
    await _product(client, "MILK", 129)
    override = {"sku": "MILK", "scope": "branch", "scope_id": "B1"}
    withdraw = {"scope": "branch", "scope_id": "B1", "sku": "MILK"}
    assert (await client.post("/api/v1/prices", json={**override, "price": 99})).status_code == 201
    first_sale = await tills.sell("B1", "MILK", 99)
    assert (await client.post("/api/v1/prices/withdraw", params=withdraw)).status_code == 200
    assert (await client.post("/api/v1/prices", json={**override, "price": 89})).status_code == 201
    assert (await client.post("/api/v1/prices/withdraw", params=withdraw)).status_code == 200
    assert await _expected(client, "B1", "MILK", first_sale) == 99


async def test_a_branch_moved_to_another_zone_keeps_its_old_zones_past(
    central: Any, central_client: Any
) -> None:
    client = central_client
    tills = _Tills(central)
    for zone in ("north", "south"):
        r = await client.post("/api/v1/zones", json={"code": zone, "name": zone})
        assert r.status_code == 201, r.text
    r = await client.post("/api/v1/formats", json={"code": "mini", "name": "Mini"})
    assert r.status_code == 201, r.text
    await register_branch(central, "B2", price_zone="south")
    await _product(client, "MILK", 129)
    await _product(client, "BREAD", 250)
    for scope, scope_id, sku, price in (
        ("zone", "north", "MILK", 80),
        ("zone", "south", "MILK", 90),
        ("format", "mini", "BREAD", 200),
    ):
        r = await client.post(
            "/api/v1/prices",
            json={"sku": sku, "price": price, "scope": scope, "scope_id": scope_id},
        )
        assert r.status_code == 201, r.text
    milk_sold = await tills.sell("B2", "MILK", 90)
    bread_sold = await tills.sell("B2", "BREAD", 250)

    r = await client.patch("/api/v1/branches/B2", json={"price_zone": "north"})
    assert r.status_code == 200, r.text
    r = await client.patch("/api/v1/branches/B2", json={"format_code": "mini"})
    assert r.status_code == 200, r.text
    assert await _mismatches(client, "B2") == []
    assert await _expected(client, "B2", "MILK", milk_sold) == 90
    assert await _expected(client, "B2", "BREAD", bread_sold) == 250
    assert await _expected(client, "B2", "MILK") == 80
    assert await _expected(client, "B2", "BREAD") == 200
    # The reports' head-office prices (stock at retail) of a past moment agree.
    async with central.sessionmaker() as session:
        branch = await session.get(Branch, "B2")
        assert branch is not None
        then = await head_office_prices(session, [branch], None, bread_sold)
        now = await head_office_prices(session, [branch], None, datetime.now(UTC))
    assert then == {("B2", "MILK"): 90, ("B2", "BREAD"): 250}
    assert now == {("B2", "MILK"): 80, ("B2", "BREAD"): 200}


async def test_mismatches_of_many_products_in_a_few_queries(
    central: Any, central_client: Any, db_url: str
) -> None:
    """The latest till price of each product against head office's: the answer names
    exactly the products whose last sale was off, and asking costs the same few
    statements whatever the number of products (it ran one per product)."""
    client = central_client
    tills = _Tills(central)
    await register_branch(central, "B1")
    skus = [f"P{n:02}" for n in range(30)]
    for sku in skus:
        await _product(client, sku, 100)
    # P00 was once sold too cheap, then right: its latest sale is what counts.
    await tills.sell("B1", "P00", 90)
    for sku in skus:
        await tills.sell("B1", sku, 90 if sku in ("P07", "P19", "P28") else 100)

    # The summaries brought up to date first (on PostgreSQL the ingest leaves a backlog
    # that the first reader applies): what is counted is the report alone.
    async with central.sessionmaker() as s, s.begin():
        await summaries_current(s)
    async with counted_statements(db_url) as (sessionmaker, statements), sessionmaker() as s:
        mismatches = [msgspec.to_builtins(m) for m in await price_mismatches(s, "B1", limit=100)]
    assert [(m["sku"], m["till_price"], m["expected_price"]) for m in mismatches] == [
        ("P07", 90, 100),
        ("P19", 90, 100),
        ("P28", 90, 100),
    ]
    # each names the receipt of that last sale
    async with central.sessionmaker() as session:
        for m in mismatches:
            receipt = await session.get(Receipt, m["receipt_id"])
            assert receipt is not None
            assert receipt.occurred_at == datetime.fromisoformat(m["sold_at"])
    # branch, summaries, last prices, scope history, entries, one receipt per mismatch
    assert len(statements) <= 10, statements
    assert mismatches == await _mismatches(client, "B1")  # the API answers the same
