"""What head office sees of a transfer that did not go as sent: central stores every
document's stock effects (never refused) and keeps each discrepancy beside the
transfer: a wrong receiver or sender, a second receipt, an unknown branch, a line short,
over or never sent. Events built as the agents send them, through the IngestWorker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.db import create_engine, create_sessionmaker
from central.ingest.worker import IngestWorker
from central.models import StockBalance, StockTransferDiscrepancy
from central.services.branches import add_branch
from central.services.stock import TransferOut, list_transfers, rebuild_balances
from protocol import EventEnvelope
from tests.central.chain_events import BranchBooks, message
from tests.conftest import register_branch


@pytest.fixture
async def sessionmaker(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    maker = create_sessionmaker(engine)
    async with maker() as session, session.begin():
        for code in ("B001", "B002", "B003"):
            await add_branch(session, code=code, name=code)
    yield maker
    await engine.dispose()


async def ingest(maker: async_sessionmaker[AsyncSession], *events: EventEnvelope) -> None:
    """One batch per branch, in the order given (a receipt in the sender's batch would be
    valued before the out's value is at central: see central.ingest.stock)."""
    worker = IngestWorker(maker)
    for branch in dict.fromkeys(e.branch for e in events):
        stats = await worker.process([message(e) for e in events if e.branch == branch])
        assert stats.dead_letters == 0


async def transfers(
    maker: async_sessionmaker[AsyncSession], **filters: Any
) -> dict[str, TransferOut]:
    options: dict[str, Any] = {"branch": None, "in_transit_only": False} | filters
    async with maker() as session:
        page = await list_transfers(session, limit=100, offset=0, **options)
    assert page.total == len(page.items)
    return {t.transfer_ref: t for t in page.items}


def kinds(transfer: TransferOut) -> list[tuple[str, str | None, str | None, int]]:
    """(kind, document or sku, expected, quantity) of each discrepancy."""
    return [
        (d.kind, d.document_id or d.sku, d.expected, d.quantity_milli)
        for d in transfer.discrepancies
    ]


def lines(transfer: TransferOut) -> list[tuple[str, int, int, int, int | None]]:
    """(sku, sent, received, in transit, difference) of each line."""
    return [
        (x.sku, x.sent_milli, x.received_milli, x.in_transit_milli, x.difference_milli)
        for x in transfer.lines
    ]


def stocked(books: BranchBooks, *skus: str) -> None:
    books.document("goods_receipt", [(sku, 100_000, 100) for sku in skus])


async def test_received_twice_under_a_new_document_is_kept_apart(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """(a) B002 received TO-1 a second time: its stock went in (never refused), but the
    transfer stays 12 sent, 12 received, and the second document is listed."""
    b1, b2 = BranchBooks("B001"), BranchBooks("B002")
    stocked(b1, "MILK")
    b1.document("transfer_out", [("MILK", -12_000, None)], counterpart="B002", document_id="TO-1")
    b2.document("transfer_in", [("MILK", 12_000, None)], counterpart="B001", transfer_ref="TO-1")
    second = b2.document(
        "transfer_in", [("MILK", 13_000, None)], counterpart="B001", transfer_ref="TO-1"
    )
    await ingest(sessionmaker, *b1.events, *b2.events)
    t = (await transfers(sessionmaker))["TO-1"]
    assert t.status == "received"
    assert lines(t) == [("MILK", 12_000, 12_000, 0, 0)]
    assert kinds(t) == [("received_twice", second.body.document_id, "B002/B002-doc-1", 13_000)]  # type: ignore[union-attr]
    found = t.discrepancies[0]
    assert (found.branch, found.counterpart, found.value) == ("B002", "B001", 1_300)
    async with sessionmaker() as session:
        balance = await session.get(StockBalance, ("B002", "MILK"))
    assert balance is not None
    assert balance.quantity_milli == 25_000  # the stock stands
    assert list(await transfers(sessionmaker, discrepancies_only=True)) == ["TO-1"]
    assert await transfers(sessionmaker, in_transit_only=True) == {}


async def test_a_receipt_by_the_sender_itself_is_a_wrong_receiver(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """(b) B001 quotes its own transfer out: not merged; the goods are still on their
    way to B002, whose receipt then receives the transfer."""
    b1, b2 = BranchBooks("B001"), BranchBooks("B002")
    stocked(b1, "MILK")
    b1.document("transfer_out", [("MILK", -5_000, None)], counterpart="B002", document_id="TO-1")
    own = b1.document(
        "transfer_in", [("MILK", 5_000, None)], counterpart="B001", transfer_ref="TO-1"
    )
    await ingest(sessionmaker, *b1.events)
    t = (await transfers(sessionmaker))["TO-1"]
    assert (t.status, t.in_document_id) == ("in_transit", None)
    assert lines(t) == [("MILK", 5_000, 0, 5_000, None)]
    assert kinds(t) == [("wrong_receiver", own.body.document_id, "B002", 5_000)]  # type: ignore[union-attr]
    assert t.discrepancies[0].branch == "B001"
    assert list(await transfers(sessionmaker, in_transit_only=True)) == ["TO-1"]

    b2.document("transfer_in", [("MILK", 5_000, None)], counterpart="B001", transfer_ref="TO-1")
    await ingest(sessionmaker, *b2.events)
    t = (await transfers(sessionmaker))["TO-1"]
    assert (t.status, t.in_document_id) == ("received", "B002-doc-1")
    assert lines(t) == [("MILK", 5_000, 5_000, 0, 0)]
    assert [k[0] for k in kinds(t)] == ["wrong_receiver"]  # still listed, never forgotten


async def test_a_receipt_naming_another_sender_is_flagged(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """(c) B002 quotes TO-2 naming B003 as the sender; B001 sent it. The goods arrived
    where they were sent: received, with the wrong sender listed."""
    b1, b2 = BranchBooks("B001"), BranchBooks("B002")
    stocked(b1, "MILK")
    b1.document("transfer_out", [("MILK", -3_000, None)], counterpart="B002", document_id="TO-2")
    b2.document("transfer_in", [("MILK", 3_000, None)], counterpart="B003", transfer_ref="TO-2")
    await ingest(sessionmaker, *b1.events, *b2.events)
    t = (await transfers(sessionmaker))["TO-2"]
    assert t.status == "received"
    assert kinds(t) == [("wrong_sender", "B002-doc-1", "B001", 0)]
    assert t.discrepancies[0].counterpart == "B003"
    # The same found when the receipt comes first.
    b1.document("transfer_out", [("MILK", -1_000, None)], counterpart="B002", document_id="TO-3")
    b2.document("transfer_in", [("MILK", 1_000, None)], counterpart="B003", transfer_ref="TO-3")
    await ingest(sessionmaker, b2.events[-1])
    await ingest(sessionmaker, b1.events[-1])
    t = (await transfers(sessionmaker))["TO-3"]
    assert (t.status, t.from_branch, t.to_branch) == ("received", "B001", "B002")
    assert kinds(t) == [("wrong_sender", "B002-doc-2", "B001", 0)]


async def test_a_receipt_of_a_ref_never_sent_shows_its_age(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """(d) Legitimate while the sender is offline: received_unsent, with its age."""
    b2 = BranchBooks("B002", start=datetime.now(UTC) - timedelta(days=3, hours=1))
    b2.document("transfer_in", [("MILK", 1_000, 90)], counterpart="B001", transfer_ref="TO-X")
    await ingest(sessionmaker, *b2.events)
    t = (await transfers(sessionmaker))["TO-X"]
    assert (t.status, t.waiting_days, t.discrepancies) == ("received_unsent", 3, [])
    # Nothing to compare yet: the out may still come.
    assert lines(t) == [("MILK", 0, 1_000, 0, None)]
    assert await transfers(sessionmaker, in_transit_only=True) == {}
    assert await transfers(sessionmaker, discrepancies_only=True) == {}


async def test_a_product_received_that_was_never_sent(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """(e) BREAD arrived, never sent: a difference, not goods "in transit" by -2."""
    b1, b2 = BranchBooks("B001"), BranchBooks("B002")
    stocked(b1, "MILK")
    b1.document("transfer_out", [("MILK", -4_000, None)], counterpart="B002", document_id="TO-E")
    b2.document(
        "transfer_in",
        [("MILK", 4_000, None), ("BREAD", 2_000, 80)],
        counterpart="B001",
        transfer_ref="TO-E",
    )
    await ingest(sessionmaker, *b1.events, *b2.events)
    t = (await transfers(sessionmaker))["TO-E"]
    assert t.status == "received_with_differences"
    assert lines(t) == [("BREAD", 0, 2_000, 0, 2_000), ("MILK", 4_000, 4_000, 0, 0)]
    assert kinds(t) == [("not_sent", "BREAD", None, 2_000)]
    assert (t.lines[0].difference_value, t.discrepancies[0].value) == (160, 160)
    assert list(await transfers(sessionmaker, discrepancies_only=True)) == ["TO-E"]
    assert await transfers(sessionmaker, in_transit_only=True) == {}


async def test_received_short_is_a_difference_not_goods_in_transit(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """(f) 8 of 10: received with a shortage of 2 at the value they left with; out of
    the in-transit list (the transfer is closed: a later receipt is a second one)."""
    b1, b2 = BranchBooks("B001"), BranchBooks("B002")
    b1.document("goods_receipt", [("MILK", 10_000, 101)])
    b1.document("transfer_out", [("MILK", -10_000, None)], counterpart="B002", document_id="TO-F")
    b2.document("transfer_in", [("MILK", 8_000, None)], counterpart="B001", transfer_ref="TO-F")
    await ingest(sessionmaker, *b1.events, *b2.events)
    t = (await transfers(sessionmaker))["TO-F"]
    assert t.status == "received_with_differences"
    assert lines(t) == [("MILK", 10_000, 8_000, 0, -2_000)]
    # 1010 left; 808 arrived (their share); 202 short.
    assert (t.lines[0].sent_value, t.lines[0].received_value) == (1_010, 808)
    assert t.lines[0].difference_value == -202
    assert kinds(t) == [("short", "MILK", None, -2_000)]
    assert await transfers(sessionmaker, in_transit_only=True) == {}
    # The rest received later: a second document, listed, the difference stays.
    b2.document("transfer_in", [("MILK", 2_000, None)], counterpart="B001", transfer_ref="TO-F")
    await ingest(sessionmaker, b2.events[-1])
    t = (await transfers(sessionmaker))["TO-F"]
    assert kinds(t) == [("received_twice", "B002-doc-2", "B002/B002-doc-1", 2_000), kinds(t)[1]]
    assert kinds(t)[1] == ("short", "MILK", None, -2_000)


async def test_a_transfer_to_a_branch_central_does_not_know(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """(g) Sent to B999 (not registered): accepted, in transit, flagged."""
    b1 = BranchBooks("B001", start=datetime.now(UTC) - timedelta(days=8))
    stocked(b1, "MILK")
    b1.document("transfer_out", [("MILK", -1_000, None)], counterpart="B999", document_id="TO-G")
    await ingest(sessionmaker, *b1.events)
    t = (await transfers(sessionmaker))["TO-G"]
    assert (t.status, t.waiting_days) == ("in_transit", 7)
    assert kinds(t) == [("unknown_branch", "TO-G", None, 0)]
    assert (t.discrepancies[0].branch, t.discrepancies[0].counterpart) == ("B001", "B999")
    assert list(await transfers(sessionmaker, in_transit_only=True)) == ["TO-G"]
    assert list(await transfers(sessionmaker, discrepancies_only=True)) == ["TO-G"]


async def test_a_receipt_first_is_refiled_when_the_out_names_another_receiver(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """B003's receipt arrives before the sender's record and received the transfer for
    the time being; the out names B002: B003's goods are kept apart as a wrong
    receiver's, the transfer is in transit to B002 again."""
    b1, b2, b3 = BranchBooks("B001"), BranchBooks("B002"), BranchBooks("B003")
    stocked(b1, "MILK", "SALT")
    b3.document(
        "transfer_in",
        [("MILK", 2_000, 50), ("EGGS", 1_000, 30)],
        counterpart="B001",
        transfer_ref="TO-R",
    )
    await ingest(sessionmaker, *b3.events)
    assert (await transfers(sessionmaker))["TO-R"].status == "received_unsent"
    b1.document(
        "transfer_out",
        [("MILK", -2_000, None), ("SALT", -1_000, None)],
        counterpart="B002",
        document_id="TO-R",
    )
    await ingest(sessionmaker, *b1.events)
    t = (await transfers(sessionmaker))["TO-R"]
    assert (t.status, t.from_branch, t.to_branch) == ("in_transit", "B001", "B002")
    assert lines(t) == [("MILK", 2_000, 0, 2_000, None), ("SALT", 1_000, 0, 1_000, None)]
    assert kinds(t) == [("wrong_receiver", "B003-doc-1", "B002", 3_000)]
    assert t.discrepancies[0].value == 130
    assert list(await transfers(sessionmaker, branch="B003")) == ["TO-R"]
    b2.document(
        "transfer_in",
        [("MILK", 2_000, None), ("SALT", 1_000, None)],
        counterpart="B001",
        transfer_ref="TO-R",
    )
    await ingest(sessionmaker, *b2.events)
    t = (await transfers(sessionmaker))["TO-R"]
    assert t.status == "received"
    assert [k[0] for k in kinds(t)] == ["wrong_receiver"]


async def test_a_second_transfer_out_under_the_same_ref(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Two branches numbered a transfer out alike: the first one is the transfer, the
    other is listed (its goods left its stock all the same)."""
    b1, b3 = BranchBooks("B001"), BranchBooks("B003")
    stocked(b1, "MILK")
    stocked(b3, "MILK")
    b1.document("transfer_out", [("MILK", -1_000, None)], counterpart="B002", document_id="TO-S")
    b3.document("transfer_out", [("MILK", -4_000, None)], counterpart="B002", document_id="TO-S")
    await ingest(sessionmaker, *b1.events)
    await ingest(sessionmaker, *b3.events)
    t = (await transfers(sessionmaker))["TO-S"]
    assert (t.status, t.from_branch) == ("in_transit", "B001")
    assert lines(t) == [("MILK", 1_000, 0, 1_000, None)]
    assert kinds(t) == [("sent_twice", "TO-S", "B001/TO-S", 4_000)]
    assert t.discrepancies[0].branch == "B003"


async def test_documents_in_parts_are_one_document_whatever_the_order_or_redelivery(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The out and the receipt each arrive in parts, interleaved, some redelivered: no
    second receipt, no difference until both are whole, then none."""
    b1, b2 = BranchBooks("B001"), BranchBooks("B002")
    skus = [f"ITEM{k}" for k in range(5)]
    stocked(b1, *skus)
    out = b1.document_in_parts(
        "transfer_out",
        [(sku, -1_000, None) for sku in skus],
        per_part=2,
        counterpart="B002",
        document_id="TO-P",
    )
    receipt = b2.document_in_parts(
        "transfer_in",
        [(sku, 1_000, None) for sku in skus],
        per_part=3,
        counterpart="B001",
        transfer_ref="TO-P",
    )
    assert (len(out), len(receipt)) == (3, 2)
    await ingest(sessionmaker, b1.events[0], out[0])
    await ingest(sessionmaker, receipt[0])
    t = (await transfers(sessionmaker))["TO-P"]
    # Both sides in, parts still coming: received, differences wait.
    assert (t.status, t.discrepancies) == ("receiving", [])
    assert all(x.difference_milli is None for x in t.lines)
    assert await transfers(sessionmaker, in_transit_only=True) == {}
    # Redelivered with the next parts (a worker died before its ack): stored once.
    worker = IngestWorker(sessionmaker)
    again = await worker.process([message(e) for e in (out[0], receipt[0], receipt[1])])
    assert (again.stored, again.duplicates) == (1, 2)
    assert (await transfers(sessionmaker))["TO-P"].status == "receiving"
    await ingest(sessionmaker, out[2], out[1])
    every = [message(e) for e in (*b1.events, *b2.events)]
    assert (await worker.process(every)).stored == 0
    t = (await transfers(sessionmaker))["TO-P"]
    assert (t.status, t.discrepancies) == ("received", [])
    assert lines(t) == [(sku, 1_000, 1_000, 0, 0) for sku in skus]
    assert await transfers(sessionmaker, discrepancies_only=True) == {}
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(StockTransferDiscrepancy)) == 0
        assert (await rebuild_balances(session, verify_only=True)).agree


async def test_a_receipt_split_across_a_redelivered_batch_is_not_received_twice(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The worst moment: a batch holding the receipt's first part committed and was
    never acked; JetStream redelivers it after the second part was stored."""
    b1, b2 = BranchBooks("B001"), BranchBooks("B002")
    stocked(b1, "MILK", "SALT")
    b1.document(
        "transfer_out",
        [("MILK", -2_000, None), ("SALT", -3_000, None)],
        counterpart="B002",
        document_id="TO-K",
    )
    first, second = b2.document_in_parts(
        "transfer_in",
        [("MILK", 2_000, None), ("SALT", 2_500, None)],
        per_part=1,
        counterpart="B001",
        transfer_ref="TO-K",
    )
    worker = IngestWorker(sessionmaker)
    await worker.process([message(e) for e in b1.events])
    await worker.process([message(first)])  # committed, "not acked"
    await worker.process([message(second)])
    redelivered = await worker.process([message(first), message(second)])
    assert (redelivered.stored, redelivered.duplicates) == (0, 2)
    t = (await transfers(sessionmaker))["TO-K"]
    assert t.status == "received_with_differences"
    assert lines(t) == [("MILK", 2_000, 2_000, 0, 0), ("SALT", 3_000, 2_500, 0, -500)]
    assert kinds(t) == [("short", "SALT", None, -500)]


async def test_transfers_api_filters_and_schema(central: Any, central_client: Any) -> None:
    for code in ("B001", "B002"):
        await register_branch(central, code)
    b1, b2 = BranchBooks("B001"), BranchBooks("B002")
    stocked(b1, "MILK")
    for ref in ("TO-OK", "TO-SHORT", "TO-ROAD"):
        b1.document("transfer_out", [("MILK", -2_000, None)], counterpart="B002", document_id=ref)
    b2.document("transfer_in", [("MILK", 2_000, None)], counterpart="B001", transfer_ref="TO-OK")
    b2.document("transfer_in", [("MILK", 1_500, None)], counterpart="B001", transfer_ref="TO-SHORT")
    await ingest(central.sessionmaker, *b1.events, *b2.events)

    async def listed(**params: str) -> list[tuple[str, str]]:
        r = await central_client.get("/api/v1/stock/transfers", params=params)
        assert r.status_code == 200, r.text
        return [(t["transfer_ref"], t["status"]) for t in r.json()["items"]]

    everything = [
        ("TO-OK", "received"),
        ("TO-ROAD", "in_transit"),
        ("TO-SHORT", "received_with_differences"),
    ]
    assert await listed() == everything
    assert await listed(discrepancies="true") == [everything[2]]
    assert await listed(discrepancies="false") == everything
    assert await listed(in_transit="true") == [everything[1]]
    assert await listed(in_transit="true", discrepancies="true") == []
    r = await central_client.get(
        "/api/v1/stock/transfers", params={"discrepancies": "true", "branch": "B001"}
    )
    short = r.json()["items"][0]
    assert short["lines"][0]["difference_milli"] == -500
    assert short["lines"][0]["in_transit_milli"] == 0
    assert short["discrepancies"] == [
        msgspec.to_builtins(d)
        for d in (await transfers(central.sessionmaker))["TO-SHORT"].discrepancies
    ]
    assert short["discrepancies"][0]["kind"] == "short"
    bad = await central_client.get("/api/v1/stock/transfers", params={"discrepancies": "maybe"})
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["discrepancies"]

    schema = (await central_client.get("/docs/openapi.json")).json()
    operation = schema["paths"]["/api/v1/stock/transfers"]["get"]
    assert (operation["operationId"], operation["tags"]) == ("listStockTransfers", ["records"])
    parameters = {p["name"]: p for p in operation["parameters"]}
    for name in ("discrepancies", "in_transit"):
        assert parameters[name]["in"] == "query"
        assert parameters[name]["required"] is False
        assert parameters[name]["schema"]["type"] == "boolean"
        assert parameters[name]["description"]
    components = schema["components"]["schemas"]
    transfer = next(v for k, v in components.items() if k.endswith("TransferOut"))
    assert {"status", "discrepancies", "waiting_days", "in_document_id"} <= set(
        transfer["properties"]
    )
    line = next(v for k, v in components.items() if k.endswith("TransferLineOut"))
    assert {"difference_milli", "difference_value"} <= set(line["properties"])


async def test_workers_matching_both_sides_at_once_agree(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Three branches send each other transfers and receive them, each branch drained by
    its own worker at the same time (on PostgreSQL the sides of one transfer meet in
    concurrent transactions): every transfer received once, nothing flagged."""
    codes = ("B001", "B002", "B003")
    books = {code: BranchBooks(code) for code in codes}
    for b in books.values():
        stocked(b, "MILK")
    for n in range(12):
        for i, code in enumerate(codes):
            receiver = codes[(i + 1) % 3]
            books[code].document(
                "transfer_out",
                [("MILK", -1_000, None)],
                counterpart=receiver,
                document_id=f"{code}-TO-{n}",
            )
            books[receiver].document(
                "transfer_in",
                [("MILK", 1_000, None)],
                counterpart=code,
                transfer_ref=f"{code}-TO-{n}",
            )

    async def drain(b: BranchBooks) -> None:
        worker = IngestWorker(sessionmaker)
        for start in range(0, len(b.events), 4):
            stats = await worker.process([message(e) for e in b.events[start : start + 4]])
            assert stats.dead_letters == 0

    await asyncio.gather(*(drain(b) for b in books.values()))
    listed = await transfers(sessionmaker)
    assert len(listed) == 36
    assert {t.status for t in listed.values()} == {"received"}
    assert all(lines(t) == [("MILK", 1_000, 1_000, 0, 0)] for t in listed.values())
    assert await transfers(sessionmaker, discrepancies_only=True) == {}
