"""A till's retry recorded again by an agent database restored from a backup (taken
before central could list what the restore lost): central keeps the first record and
dead-letters the second with a reason that names the case first ("a retry recorded
again by a restored agent database: the customer may have been charged twice"), and
``GET /api/v1/sync/branches`` and the sync health report count such open letters
(``recorded_again_open``). The
same id recorded twice with no restore in between stays a plain conflict."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.db import create_engine, create_sessionmaker
from central.ingest.conflicts import RECORDED_AGAIN
from central.ingest.worker import IngestWorker
from central.models import BranchSyncState, DeadLetter, Receipt
from central.reports.service import sync_health
from central.services.branches import add_branch
from central.services.dead_letters import discard_dead_letter
from central.services.sync_state import get_branch_sync
from protocol import new_event_id
from protocol.events import EventEnvelope, ReceiptRecorded
from tests.central.chain_events import BranchBooks, message


@pytest.fixture
async def sessionmaker(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    maker = create_sessionmaker(engine)
    async with maker() as session, session.begin():
        await add_branch(session, code="B1", name="B1")
    yield maker
    await engine.dispose()


def _retry(books: BranchBooks, original: EventEnvelope, seq: int) -> EventEnvelope:
    """The till's retry of ``original`` recorded as a new sale: a new event, the next
    receipt number, printed again (another fiscal number)."""
    body = original.body
    assert isinstance(body, ReceiptRecorded)
    again = msgspec.structs.replace(
        original,
        event_id=new_event_id(),
        seq=seq,
        body=msgspec.structs.replace(body, receipt_number=2, fiscal_number="F99"),
    )
    books.events.append(again)
    return again


async def _letter(sessionmaker: async_sessionmaker[AsyncSession]) -> DeadLetter:
    async with sessionmaker() as session:
        (letter,) = (await session.scalars(select(DeadLetter))).all()
    return letter


async def test_a_retry_recorded_again_after_a_restore_names_the_double_charge(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    books = BranchBooks("B1")
    original = books.sale([("MILK", 1_000, 463)])
    books.sale([("MILK", 1_000, 100)])
    worker = IngestWorker(sessionmaker)
    await worker.process([message(e) for e in books.events])
    # The agent database was restored from a backup holding event 0 and numbered
    # again from 3 (central's answer, given when the link came back).
    async with sessionmaker() as session, session.begin():
        state = await session.get(BranchSyncState, "B1")
        assert state is not None
        state.restart_reason = "restored_database"
        state.restarted_at_seq = 3
        state.restarted_at = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    stats = await worker.process([message(_retry(books, original, 3))])
    assert stats.dead_letters == 1

    letter = await _letter(sessionmaker)
    assert letter.reason.startswith(
        f"{RECORDED_AGAIN}: the customer may have been charged twice. "
        f"sale T1/{original.body.sale_id} of branch B1 is already recorded at central "  # type: ignore[union-attr]
        "(event 1, receipt 1 of shift S1, total 4.63, fiscal number F1"
    )
    assert "this event 3 records it again (receipt 2 of shift S1, total 4.63" in letter.reason
    assert "fiscal number F99" in letter.reason
    assert "restored from a backup at 2026-11-27T10:00:00+00:00 (numbered again from 3)" in (
        letter.reason
    )
    assert "GET /api/v1/manager/sales/recorded-again" in letter.reason
    async with sessionmaker() as session:
        sync = await get_branch_sync(session, "B1")
        (health,) = (await sync_health(session)).rows
        receipts = (await session.scalars(select(Receipt.fiscal_number))).all()
    assert (sync.open_dead_letters, sync.recorded_again_open) == (1, 1)
    assert (health.open_dead_letters, health.recorded_again_open) == (1, 1)
    assert sorted(n or "" for n in receipts) == ["F1", "F2"]  # the original stays, once

    async with sessionmaker() as session, session.begin():
        await discard_dead_letter(session, letter.id)
    async with sessionmaker() as session:
        sync = await get_branch_sync(session, "B1")
    assert (sync.open_dead_letters, sync.recorded_again_open, sync.contiguous_seq) == (0, 0, 3)


async def test_one_id_recorded_twice_without_a_restore_stays_a_plain_conflict(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    books = BranchBooks("B1")
    original = books.sale([("MILK", 1_000, 463)])
    worker = IngestWorker(sessionmaker)
    await worker.process([message(original)])
    await worker.process([message(_retry(books, original, 2))])
    letter = await _letter(sessionmaker)
    assert letter.reason.startswith(f"sale T1/{original.body.sale_id} of branch B1")  # type: ignore[union-attr]
    assert "recorded one sale id twice" in letter.reason
    async with sessionmaker() as session:
        sync = await get_branch_sync(session, "B1")
        (health,) = (await sync_health(session)).rows
    assert (sync.open_dead_letters, sync.recorded_again_open) == (1, 0)
    assert (health.open_dead_letters, health.recorded_again_open) == (1, 0)
