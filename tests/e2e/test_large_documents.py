"""Stock documents bigger than one NATS message (a whole store's stocktake) reach
central in parts, whole and once; an outbox event the server will not carry is held
without holding the events after it, and goes once the server allows it."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import insert, select

from branch_agent.models import OutboxEvent, Product
from branch_agent.status import AgentStatus, format_status
from branch_agent.stock import balances
from central.embedded_nats import EmbeddedNats
from central.models import BranchStatus, StockBalance, StockDocument
from central.services.documents import get_document, list_documents
from protocol.codec import decode_envelope
from protocol.events import StockDocumentPosted
from protocol.limits import MAX_EVENT_BYTES, STOCK_DOCUMENT_PART_LINES
from tests.conftest import asgi_client, register_branch, wait_until

MANAGER = {"Authorization": "Bearer boss"}
# 40-character SKUs: 10,500 stocktake lines take ~1.2 MB, beyond one message.
LINES = 2 * STOCK_DOCUMENT_PART_LINES + 500


def sku(n: int) -> str:
    return f"ITEM-{n:035d}"


async def add_products(agent: Any, count: int) -> None:
    """The store's catalog (normally from central's master data), written directly."""
    async with agent.sessionmaker() as session, session.begin():
        await session.execute(
            insert(Product),
            [
                {"sku": sku(n), "name": f"item {n}", "vat_rate_bp": 2000, "price": 100 + n}
                for n in range(count)
            ],
        )


async def stocktake(client: Any, counts: dict[str, int]) -> str:
    """Count sheets of at most 5,000 lines, then post; returns the document id."""
    opened = await client.post("/api/v1/stock/stocktakes", json={}, headers=MANAGER)
    assert opened.status_code == 201, opened.text
    doc_id: str = opened.json()["document_id"]
    items = sorted(counts.items())
    for start in range(0, len(items), 5000):
        lines = [{"sku": s, "counted": str(q)} for s, q in items[start : start + 5000]]
        sheet = await client.post(
            f"/api/v1/stock/stocktakes/{doc_id}/sheets",
            json={"sheet": str(start), "lines": lines},
            headers=MANAGER,
        )
        assert sheet.status_code in (200, 201), sheet.text
    posted = await client.post(f"/api/v1/stock/stocktakes/{doc_id}/post", headers=MANAGER)
    assert posted.status_code == 200, posted.text
    return doc_id


async def outbox_documents(agent: Any) -> list[tuple[int, int, StockDocumentPosted]]:
    """(seq, bytes, body) of the agent's stock document events."""
    async with agent.sessionmaker() as session:
        rows = (
            await session.execute(
                select(OutboxEvent.seq, OutboxEvent.payload)
                .where(OutboxEvent.kind == "stock_document_posted")
                .order_by(OutboxEvent.seq)
            )
        ).all()
    out = []
    for seq, payload in rows:
        body = decode_envelope(payload).body
        assert isinstance(body, StockDocumentPosted)
        out.append((seq, len(payload), body))
    return out


async def central_stock(central: Any, branch: str) -> dict[str, int]:
    async with central.sessionmaker() as session:
        return {
            b.sku: b.quantity_milli
            for b in await session.scalars(
                select(StockBalance).where(StockBalance.branch == branch)
            )
        }


async def test_a_whole_store_stocktake_reaches_central_in_parts(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    await register_branch(central, "B1")
    agent = await make_agent("B1", nats_server.url, manager_token="boss")
    await add_products(agent, LINES)
    counts = {sku(n): n % 7 for n in range(LINES)}
    async with asgi_client(agent.app) as client:
        doc_id = await stocktake(client, counts)
        shown = (await client.get(f"/api/v1/stock/documents/{doc_id}", headers=MANAGER)).json()
    # One document at the store; three events, each small enough for one message,
    # together more than one message may carry.
    assert len(shown["lines"]) == LINES
    events = await outbox_documents(agent)
    assert [(b.part, b.parts, b.first_line_no) for _, _, b in events] == [
        (1, 3, 1),
        (2, 3, STOCK_DOCUMENT_PART_LINES + 1),
        (3, 3, 2 * STOCK_DOCUMENT_PART_LINES + 1),
    ]
    assert all(size <= MAX_EVENT_BYTES for _, size, _ in events)
    assert sum(size for _, size, _ in events) > MAX_EVENT_BYTES
    assert [line.sku for _, _, b in events for line in b.lines] == [
        x["sku"] for x in shown["lines"]
    ]
    async with agent.sessionmaker() as session:
        expected = {s: q for s, q in (await balances(session)).items() if q}
    assert expected == {s: q * 1000 for s, q in counts.items() if q}

    async def arrived() -> bool:
        async with central.sessionmaker() as session:
            parts = await session.scalars(
                select(StockDocument.part).where(StockDocument.document_id == doc_id)
            )
            return len(parts.all()) == 3

    await wait_until(arrived, timeout=60)
    async with central.sessionmaker() as session:
        whole = await get_document(session, "B1", doc_id)
        listed = await list_documents(
            session,
            branch="B1",
            doc_type="stocktake",
            date_from=None,
            date_to=None,
            sku=None,
            limit=10,
            offset=0,
        )
    # The document's own address: every line once, in the store's order and numbering.
    assert (whole.part, whole.parts, whole.parts_received) == (None, 3, 3)
    assert [x.line_no for x in whole.lines] == list(range(1, LINES + 1))
    assert [(x.sku, x.counted_milli) for x in whole.lines] == [
        (x["sku"], x["counted_milli"]) for x in shown["lines"]
    ]
    assert whole.number == shown["number"]
    # The list: each part, its own lines.
    assert [(x.part, len(x.lines), x.parts_received) for x in listed.items] == [
        (1, STOCK_DOCUMENT_PART_LINES, 3),
        (2, STOCK_DOCUMENT_PART_LINES, 3),
        (3, 500, 3),
    ]
    stock = await central_stock(central, "B1")
    assert {s: q for s, q in stock.items() if q} == expected
    assert sum(whole.lines[n].quantity_milli for n in range(LINES)) == sum(expected.values())


async def test_an_event_too_big_for_the_server_is_held_and_the_rest_flow(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    """A server whose max_payload is below the agent's limit (misconfigured, lowered
    later): the too-big event waits, visible in the status, while the events after it
    go; once the server is raised it goes too, and central ends with each event once."""
    nats_server.stop()
    nats_server.max_payload = 256 * 1024
    nats_server.start()
    await register_branch(central, "B1")
    agent = await make_agent("B1", nats_server.url, manager_token="boss")
    await add_products(agent, STOCK_DOCUMENT_PART_LINES)
    receipt = {
        "doc_type": "goods_receipt",
        "supplier": "ACME",
        "lines": [{"sku": sku(1), "quantity": "10", "unit_cost": 50}],
    }
    async with asgi_client(agent.app) as client:
        assert (
            await client.post("/api/v1/stock/documents", json=receipt, headers=MANAGER)
        ).status_code == 201
        # One part of 5,000 lines: ~600 KB, beyond this server's 256 KiB.
        big = await stocktake(client, {sku(n): 3 for n in range(STOCK_DOCUMENT_PART_LINES)})
        after = {**receipt, "lines": [{"sku": sku(2), "quantity": "4", "unit_cost": 70}]}
        assert (
            await client.post("/api/v1/stock/documents", json=after, headers=MANAGER)
        ).status_code == 201
        events = await outbox_documents(agent)
        big_seq = next(seq for seq, _, b in events if b.document_id == big)

        async def others_arrived() -> bool:
            async with central.sessionmaker() as session:
                docs = (await session.scalars(select(StockDocument.document_id))).all()
            return len(docs) == 2

        await wait_until(others_arrived, timeout=30)
        status = (await client.get("/health/status")).json()
        assert status["outbox_held"] == [big_seq]
        shown = format_status(msgspec.convert(status, AgentStatus))
        assert f"held, too big for the NATS server: seq {big_seq}" in shown
        assert "max_payload" in status["last_sync_error"]
        assert status["outbox_backlog"] == 1
        async with central.sessionmaker() as session:
            stored = set((await session.scalars(select(StockDocument.document_id))).all())
        assert big not in stored

        # Head office sees it in sync health (from the heartbeat), and asks no resend.
        async def central_knows() -> bool:
            async with central.sessionmaker() as session:
                row = await session.get(BranchStatus, "B1", populate_existing=True)
            return row is not None and row.outbox_held == [big_seq]

        await wait_until(central_knows, timeout=10)

        # The technician raises the server's limit; the link drops and comes back.
        nats_server.stop()
        nats_server.max_payload = 1024 * 1024
        nats_server.start()

        async def all_arrived() -> bool:
            return (await client.get("/health/status")).json()["outbox_backlog"] == 0

        await wait_until(all_arrived, timeout=60)
        assert (await client.get("/health/status")).json()["outbox_held"] == []
    async with agent.sessionmaker() as session:
        expected = {s: q for s, q in (await balances(session)).items() if q}

    async def central_has_it() -> bool:
        async with central.sessionmaker() as session:
            docs = (await session.scalars(select(StockDocument.document_id))).all()
        return len(docs) == 3

    await wait_until(central_has_it, timeout=30)
    stock = await central_stock(central, "B1")
    assert {s: q for s, q in stock.items() if q} == expected
    async with central.sessionmaker() as session:
        whole = await get_document(session, "B1", big)
    assert len(whole.lines) == STOCK_DOCUMENT_PART_LINES
