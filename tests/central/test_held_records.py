"""What central lists for an agent database gone back in time: the sales and customer
returns numbered between its last number and central's start, in pages that stay far
below NATS's 1 MB payload, every record once, lowest number first."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

from sqlalchemy import insert

from central.db import create_engine, create_sessionmaker
from central.models import CustomerReturn, IngestedEvent, Receipt
from central.services.held_records import count_held_records, held_records_page
from protocol.masterdata import HELD_RECORDS_PAGE, HeldRecordsRequest, encode_snapshot_rpc

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
