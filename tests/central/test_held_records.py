"""What central lists for an agent database gone back in time: the sales and customer
returns numbered between its last number and central's start, in pages that stay far
below NATS's 1 MB payload, every record once, lowest number first; those the branch
sent that are still in central's ingest queue too, read from the stream (the branch's
messages above the ingest consumer's acknowledged floor)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

from sqlalchemy import insert

from central.db import create_engine, create_sessionmaker
from central.embedded_nats import EmbeddedNats
from central.ingest.worker import IngestWorker
from central.models import CustomerReturn, IngestedEvent, Receipt
from central.services.held_records import count_held_records, held_records_page
from central.sync.in_flight import InFlight, read_in_flight
from central.sync.jetstream import connect, ensure_ingest_consumer, ensure_streams
from protocol.codec import encode
from protocol.events import ReceiptRecorded
from protocol.masterdata import (
    HELD_RECORDS_PAGE,
    HeldRecordsRequest,
    HeldSale,
    encode_snapshot_rpc,
)
from protocol.messages import BranchHeartbeat
from protocol.subjects import INGEST_DURABLE, UP_STREAM
from tests.central.chain_events import BranchBooks, message, outbox_items
from tests.conftest import engine_with_branch

SALES = 25_000
RETURN_EVERY = 10  # every tenth event is a customer return


async def test_a_large_list_comes_in_pages_below_the_payload_limit(db_url: str) -> None:
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    at = datetime(2026, 12, 1, 9, tzinfo=UTC)
    events, receipts, returns = [], [], []
    for seq in range(1, SALES + 1):
        event_id = uuid.uuid4()
        events.append(
            {
                "event_id": event_id,
                "branch": "B1",
                "seq": seq,
                "kind": "x",
                "occurred_at": at,
                "local_date": date(2026, 12, 1),
            }
        )
        row = {
            "event_id": event_id,
            "branch": "B1",
            "till": "T1",
            "shift_id": "T1-2",
            "occurred_at": at,
            "local_date": date(2026, 12, 1),
            "total": seq,
        }
        if seq % RETURN_EVERY:
            receipts.append(
                row
                | {
                    "receipt_number": seq,
                    "sale_id": f"sale-{seq:08d}" * 4,
                    "fiscal_number": "9" * 64,
                }
            )
        else:
            returns.append(row | {"return_number": seq, "return_id": f"ret-{seq}"})
    try:
        async with sessionmaker() as session, session.begin():
            await session.execute(insert(IngestedEvent), events)
            await session.execute(insert(Receipt), receipts)
            await session.execute(insert(CustomerReturn), returns)
        async with sessionmaker() as session:
            # Events 1..100 were in the restored database, central's start was SALES + 1.
            count = await count_held_records(session, "B1", 100, SALES)
            assert (count.records, count.in_flight, count.unknown) == (SALES - 100, 0, 0)
            other = await count_held_records(session, "B2", 100, SALES)
            assert (other.records, other.unknown) == (0, SALES - 100)
            after, pages, sale_ids, return_ids = 100, 0, [], []
            while True:
                page = await held_records_page(session, "B1", after, SALES)
                pages += 1
                assert len(encode_snapshot_rpc(page)) < 1024 * 1024 // 2
                seqs = [s.seq for s in page.sales] + [r.seq for r in page.returns]
                assert len(seqs) <= HELD_RECORDS_PAGE
                assert min(seqs) > after
                sale_ids += [s.sale_id for s in page.sales]
                return_ids += [r.return_id for r in page.returns]
                if page.done:
                    break
                after = page.next_after_seq
        assert pages == -(-(SALES - 100) // HELD_RECORDS_PAGE)
        assert len(sale_ids) == len(set(sale_ids)) == len([r for r in receipts if r["total"] > 100])
        assert (
            len(return_ids) == len(set(return_ids)) == len([r for r in returns if r["total"] > 100])
        )
        assert page.sales[-1].fiscal_number == "9" * 64
        assert len(encode_snapshot_rpc(HeldRecordsRequest(branch="B1"))) < 100
    finally:
        await engine.dispose()


async def test_records_still_on_their_way_are_listed_once_and_the_rest_counted(
    db_url: str,
) -> None:
    """Events 1..5 stored; 5 and 6 read from the ingest queue (5 stored meanwhile); the
    database went back to 4 and central numbers it from 9: s5 and s6 listed once each,
    7 and 8 neither held nor coming."""
    engine = await engine_with_branch(db_url)
    sessionmaker = create_sessionmaker(engine)
    books = BranchBooks("B1")
    for n in range(8):
        books.sale([("MILK", 1_000 + n, 199)])
    try:
        stored = await IngestWorker(sessionmaker).process([message(e) for e in books.events[:5]])
        assert stored.stored == 5
        flight = InFlight(high=6, seqs={5, 6})
        for event in books.events[4:6]:
            body = event.body
            assert isinstance(body, ReceiptRecorded)
            flight.sales.append(
                HeldSale(
                    seq=event.seq,
                    till=body.till,
                    sale_id=body.sale_id,
                    receipt_number=body.receipt_number,
                    shift_id=body.shift_id,
                    total=body.total,
                )
            )
        async with sessionmaker() as session:
            count = await count_held_records(session, "B1", 4, 8, flight)
            assert (count.records, count.in_flight, count.unknown) == (2, 1, 2)
            page = await held_records_page(session, "B1", 4, 8, flight=flight)
        assert [s.seq for s in page.sales] == [5, 6]
        assert page.done
        assert page.next_after_seq == 6
        # Without what is on its way (as before): s6 missing, its retry printed again.
        async with sessionmaker() as session:
            assert (await count_held_records(session, "B1", 4, 8)).records == 1
    finally:
        await engine.dispose()


async def test_the_branchs_messages_above_the_ingest_floor_are_read_from_the_stream(
    nats_server: EmbeddedNats,
) -> None:
    b1, b2 = BranchBooks("B1"), BranchBooks("B2")
    for n in range(6):
        b1.sale([("MILK", 1_000 + n, 199)])
    b1.customer_return("MILK", 1_000, 199, b1.events[1].body.sale_id)  # type: ignore[union-attr]
    b2.sale([("MILK", 1_000, 199)])
    nc = await connect(nats_server.url, name="test")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await ensure_ingest_consumer(js)

        async def publish(items: list[tuple[str, bytes, str]]) -> None:
            for subject, payload, msg_id in items:
                await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})

        everything = outbox_items(b1, b2)
        await publish(everything[:4])  # B1's 1..4: stored and acknowledged
        pull = await js.pull_subscribe("up.>", durable=INGEST_DURABLE, stream=UP_STREAM)
        for msg in await pull.fetch(4, timeout=5):
            await msg.ack_sync()
        await publish(everything[4:])  # B1's 5..7 and B2's sale: not ingested yet
        beat = BranchHeartbeat(branch="B1", sent_at=datetime.now(UTC), last_recorded_seq=9)
        await js.publish("up.B1.heartbeat", encode(beat))

        flight = await read_in_flight(js, "B1", after=5)
        assert flight.unread == ""
        assert flight.messages == 4  # 5, 6, the return 7, the heartbeat
        assert flight.high == 9  # the heartbeat's: 8 and 9 were never sent
        assert flight.seqs == {6, 7}
        assert [s.sale_id for s in flight.sales] == [b1.events[5].body.sale_id]  # type: ignore[union-attr]
        assert [r.seq for r in flight.returns] == [7]
        other = await read_in_flight(js, "B2")
        assert (other.messages, other.high, len(other.sales)) == (1, 1, 1)
        # More than it reads at once: said, so the branch asks again.
        cut = await read_in_flight(js, "B1", max_messages=2)
        assert "more of branch B1's messages than it reads at once" in cut.unread
    finally:
        await nc.drain()
