"""The ingest worker's processing against a real database (no NATS: MessageIn batches)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from central.db import create_engine, create_sessionmaker
from central.ingest.worker import IngestWorker, MessageIn
from central.models import BranchSyncState, DeadLetter, Receipt, ReceiptLineRow, StockBalance
from central.services.branches import add_branch
from central.services.documents import get_document
from protocol import (
    EventEnvelope,
    Payment,
    ReceiptLine,
    ReceiptRecorded,
    StockDocumentLine,
    StockDocumentPosted,
    encode,
    new_event_id,
    up_subject,
)


def receipt_event(
    branch: str, seq: int, *, sale_id: str | None = None, total: int = 238
) -> EventEnvelope:
    return EventEnvelope(
        event_id=new_event_id(),
        branch=branch,
        seq=seq,
        occurred_at=datetime(2026, 11, 27, 23, 30, tzinfo=UTC),
        utc_offset_min=120,
        body=ReceiptRecorded(
            till="T1",
            shift_id="S1",
            receipt_number=seq,
            sale_id=sale_id or f"{branch}-{seq}",
            lines=(
                ReceiptLine(
                    line_no=1,
                    sku="MILK",
                    quantity_milli=2000,
                    unit_price=total // 2,
                    vat_rate_bp=1000,
                    line_total=total,
                ),
            ),
            payments=(Payment(type="cash", amount=total),),
            total=total,
        ),
    )


def message(envelope: EventEnvelope, subject: str | None = None) -> MessageIn:
    return MessageIn(
        subject=subject or up_subject(envelope.branch, "receipt_recorded"), data=encode(envelope)
    )


async def _setup(db_url: str, *branches: str) -> Any:
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        for code in branches:
            await add_branch(session, code=code, name=code)
    return engine, sessionmaker


async def test_stores_each_event_once_and_tracks_the_sequence(db_url: str) -> None:
    engine, sessionmaker = await _setup(db_url, "B1", "B2")
    worker = IngestWorker(sessionmaker)
    events = [receipt_event("B1", s) for s in (1, 2, 3)] + [receipt_event("B2", 1)]
    try:
        first = await worker.process([message(e) for e in events])
        # Redelivery of the whole batch, plus a duplicate inside one batch.
        again = await worker.process([message(e) for e in events] + [message(events[0])])
        async with sessionmaker() as session:
            assert await session.scalar(select(func.count(Receipt.id))) == 4
            assert await session.scalar(select(func.count(ReceiptLineRow.id))) == 4
            state = await session.get(BranchSyncState, "B1")
            receipt = await session.scalar(select(Receipt).where(Receipt.sale_id == "B1-1"))
        assert (first.stored, first.duplicates) == (4, 0)
        assert (again.stored, again.duplicates) == (0, 5)
        assert state is not None
        assert (state.contiguous_seq, state.max_seq) == (3, 3)
        # 23:30 UTC at UTC+2 is the next local day.
        assert receipt is not None
        assert receipt.local_date.isoformat() == "2026-11-28"
    finally:
        await engine.dispose()


async def test_gap_keeps_contiguous_sequence_until_filled(db_url: str) -> None:
    engine, sessionmaker = await _setup(db_url, "B1")
    worker = IngestWorker(sessionmaker)
    e1, e2, e3 = (receipt_event("B1", s) for s in (1, 2, 3))
    try:
        await worker.process([message(e1), message(e3)])
        async with sessionmaker() as session:
            state = await session.get(BranchSyncState, "B1")
            assert state is not None
            assert (state.contiguous_seq, state.max_seq) == (1, 3)
        await worker.process([message(e2)])
        async with sessionmaker() as session:
            state = await session.get(BranchSyncState, "B1")
            assert state is not None
            assert state.contiguous_seq == 3
    finally:
        await engine.dispose()


async def test_bad_messages_become_dead_letters_and_the_rest_flows(db_url: str) -> None:
    engine, sessionmaker = await _setup(db_url, "B1", "B2")
    worker = IngestWorker(sessionmaker)
    forged = receipt_event("B2", 1)
    good = receipt_event("B1", 1)
    reused_seq = receipt_event("B1", 1, sale_id="other")
    batch = [
        MessageIn(subject="up.B1.receipt_recorded", data=b"\x93garbage"),
        message(forged, subject="up.B1.receipt_recorded"),  # B2's payload on B1's subject
        message(receipt_event("ZZ", 1)),  # unknown branch
        message(good, subject="up.B1.shift_opened"),  # kind differs from subject
        message(good),
        message(reused_seq),
    ]
    try:
        stats = await worker.process(batch)
        async with sessionmaker() as session:
            letters = (await session.scalars(select(DeadLetter).order_by(DeadLetter.id))).all()
            receipts = (await session.scalars(select(Receipt))).all()
        assert stats.stored == 1
        assert [r.sale_id for r in receipts] == ["B1-1"]
        reasons = [d.reason for d in letters]
        assert len(reasons) == 5
        assert "malformed event" in reasons[0]
        assert "names branch 'B2'" in reasons[1]
        assert "unknown branch 'ZZ'" in reasons[2]
        assert "'receipt_recorded' on a 'shift_opened' subject" in reasons[3]
        assert "already used by another event" in reasons[4]
        assert letters[0].raw == b"\x93garbage"
    finally:
        await engine.dispose()


def stocktake_part(seq: int, part: int, *, parts: int = 3) -> EventEnvelope:
    """Part ``part`` of a stocktake of 2 lines a part (lines 2k-1 and 2k)."""
    first = 2 * part - 1
    return EventEnvelope(
        event_id=new_event_id(),
        branch="B1",
        seq=seq,
        occurred_at=datetime(2026, 11, 28, 9, 0, tzinfo=UTC),
        body=StockDocumentPosted(
            document_id="ST-1",
            doc_type="stocktake",
            number="B1-ST-000001",
            lines=tuple(
                StockDocumentLine(
                    sku=f"SKU{n}", quantity_milli=1000 * n, expected_milli=0, counted_milli=1000 * n
                )
                for n in (first, first + 1)
            ),
            part=part,
            parts=parts,
            first_line_no=first,
        ),
    )


async def test_a_document_in_parts_is_whole_once_every_part_arrived(db_url: str) -> None:
    engine, sessionmaker = await _setup(db_url, "B1")
    worker = IngestWorker(sessionmaker)
    p1, p2, p3 = (stocktake_part(seq, seq) for seq in (1, 2, 3))
    kind = "stock_document_posted"
    try:
        # Out of order, one part still on its way.
        await worker.process(
            [message(p3, up_subject("B1", kind)), message(p1, up_subject("B1", kind))]
        )
        async with sessionmaker() as session:
            partial = await get_document(session, "B1", "ST-1")
        assert (partial.parts, partial.parts_received) == (3, 2)
        assert [x.line_no for x in partial.lines] == [1, 2, 5, 6]
        # The last part, a redelivery of the first, and another event claiming part 2.
        forged = stocktake_part(4, 2)
        stats = await worker.process([message(e, up_subject("B1", kind)) for e in (p2, p1, forged)])
        async with sessionmaker() as session:
            whole = await get_document(session, "B1", "ST-1")
            stock = {b.sku: b.quantity_milli for b in await session.scalars(select(StockBalance))}
            letters = (await session.scalars(select(DeadLetter))).all()
        assert (stats.stored, stats.duplicates, stats.dead_letters) == (1, 1, 1)
        assert (whole.part, whole.parts, whole.parts_received) == (None, 3, 3)
        assert [(x.line_no, x.sku) for x in whole.lines] == [(n, f"SKU{n}") for n in range(1, 7)]
        assert stock == {f"SKU{n}": 1000 * n for n in range(1, 7)}
        assert [x.seq for x in letters] == [4]
    finally:
        await engine.dispose()
