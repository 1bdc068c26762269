"""A message that fails every time it is stored (not a malformed one: one that decodes
but that the database or the code refuses) becomes a dead letter and its batch flows;
a database that is down or drops the link dead-letters nothing. (A value beyond its
column's limit does not decode: tests/central/test_ingest_limits.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from central.db import create_engine, create_sessionmaker
from central.ingest.bulk import is_fault_of_message
from central.ingest.gaps import GapMonitor
from central.ingest.worker import IngestWorker, MessageIn
from central.models import BranchSyncState, DeadLetter, Receipt, StockBalance
from central.reports import service
from central.services.branches import add_branch
from central.services.sync_state import get_branch_sync
from protocol import HEARTBEAT_KIND, BranchHeartbeat, encode, up_subject
from tests.central.test_ingest import message, receipt_event
from tests.conftest import PG_URL_ENV, central_cli


def _poisoned(branch: str, seq: int, **changes: Any) -> Any:
    event = receipt_event(branch, seq)
    return msgspec.structs.replace(event, body=msgspec.structs.replace(event.body, **changes))


def _overflowing(branch: str, seq: int) -> Any:
    """A receipt within every limit whose two lines' totals add up beyond 64 bits: the
    day's revenue in the report summaries cannot be stored, on either database."""
    event = receipt_event(branch, seq)
    line = event.body.lines[0]
    lines = (
        msgspec.structs.replace(line, line_total=2**62),
        msgspec.structs.replace(line, line_no=2, line_total=2**62),
    )
    return _poisoned(branch, seq, lines=lines)


async def test_a_message_refused_by_the_database_is_dead_lettered_and_the_rest_stored(
    engine: AsyncEngine,
) -> None:
    sessionmaker = create_sessionmaker(engine)
    worker = IngestWorker(sessionmaker)
    # Receipt 5's revenue does not fit a 64-bit column: every attempt to store it fails.
    events = [_overflowing("B1", s) if s == 5 else receipt_event("B1", s) for s in range(1, 10)]
    # As JetStream hands them over: each with its stream sequence.
    batch = [dataclasses.replace(message(e), stream_seq=n) for n, e in enumerate(events, start=1)]
    stats = await worker.process(batch)
    assert (stats.stored, stats.dead_letters, stats.batches) == (8, 1, 1)
    async with sessionmaker() as session:
        numbers = sorted((await session.scalars(select(Receipt.receipt_number))).all())
        letters = (await session.scalars(select(DeadLetter))).all()
        state = await session.get(BranchSyncState, "B1")
        on_hand = await session.scalar(
            select(StockBalance.quantity_milli).where(StockBalance.sku == "MILK")
        )
    assert numbers == [1, 2, 3, 4, 6, 7, 8, 9]
    assert on_hand == -8 * 2000  # the eight stored sales, once each
    assert len(letters) == 1
    assert letters[0].raw == message(events[4]).data
    assert letters[0].stream_seq == 5
    assert letters[0].reason.startswith("could not be stored: ")
    assert state is not None
    assert (state.contiguous_seq, state.max_seq) == (4, 9)
    # Redelivered (the ack was lost): nothing doubled, the same letter tried once more.
    again = await worker.process(batch)
    assert (again.stored, again.duplicates, again.dead_letters) == (0, 8, 1)
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count(Receipt.id))) == 8
        letters = (await session.scalars(select(DeadLetter))).all()
    assert [(d.stream_seq, d.attempts, d.status) for d in letters] == [(5, 2, "open")]


async def _refusal_of(url: str, sql: str, **params: Any) -> BaseException:
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            await session.execute(text(sql), params)
    except Exception as exc:
        return exc
    finally:
        await engine.dispose()
        await _aiosqlite_threads_ended()
    raise AssertionError(f"{sql} did not fail")


async def _aiosqlite_threads_ended() -> None:
    """aiosqlite stops the worker thread of a connection that failed to open without
    waiting for it, and the thread then posts its answer to this test's event loop:
    closed by then, that was an unhandled thread exception failing a later test."""
    for _ in range(200):
        if not any("_connection_worker_thread" in t.name for t in threading.enumerate()):
            return
        await asyncio.sleep(0.01)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_what_counts_as_the_message_s_fault(db_url: str, tmp_path: Path) -> None:
    # The message's: a value the driver or the server refuses.
    too_big = await _refusal_of(db_url, "UPDATE branches SET name = 'x' WHERE code = :n", n=2**63)
    assert is_fault_of_message(too_big)
    # Not the message's: a database that cannot be opened or reached.
    (tmp_path / "a-directory").mkdir()
    unopenable = f"sqlite+aiosqlite:///{tmp_path}/a-directory"
    assert not is_fault_of_message(await _refusal_of(unopenable, "SELECT 1"))
    refused = f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/postgres"
    assert not is_fault_of_message(await _refusal_of(refused, "SELECT 1"))
    if db_url.startswith("postgresql"):
        # A data exception raised by the server (SQLSTATE class 22).
        assert is_fault_of_message(await _refusal_of(db_url, "SELECT 1 / 0"))
        # The server dropping the connection (admin shutdown, 57P01).
        dropped = await _refusal_of(db_url, "SELECT pg_terminate_backend(pg_backend_pid())")
        assert not is_fault_of_message(dropped)


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"needs {PG_URL_ENV}")
async def test_a_link_dropped_mid_batch_dead_letters_nothing_and_redelivery_stores_once(
    pg_engine: AsyncEngine,
) -> None:
    sessionmaker = create_sessionmaker(pg_engine)
    worker = IngestWorker(sessionmaker)
    events = [receipt_event("B1", s) for s in range(1, 21)]
    batch = [message(e) for e in events]
    async with pg_engine.connect() as blocker:
        # The worker writes its event log and receipts, then waits for the balances.
        await blocker.execute(text("LOCK TABLE stock_balances IN EXCLUSIVE MODE"))
        processing = asyncio.create_task(worker.process(batch))
        async with pg_engine.connect() as watcher:
            # Up to a minute: beside other test workers, 10 s was not always enough.
            for _ in range(1200):
                pids = (
                    (
                        await watcher.execute(
                            text(
                                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                            )
                        )
                    )
                    .scalars()
                    .all()
                )
                if pids:
                    break
                await asyncio.sleep(0.05)
            activity = (
                await watcher.execute(
                    text(
                        "SELECT pid, state, wait_event_type, left(query, 60) FROM pg_stat_activity"
                    )
                )
            ).all()
            assert len(pids) == 1, f"the worker never waited on the lock: {activity}"
            # The link drops in the middle of the batch's transaction.
            await watcher.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pids[0]})
        with pytest.raises(DBAPIError) as failed:
            await processing
        assert not is_fault_of_message(failed.value)
        await blocker.rollback()
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count(Receipt.id))) == 0
        assert await session.scalar(select(func.count(DeadLetter.id))) == 0
    # JetStream redelivers the unacked batch: stored once, whole.
    stats = await worker.process(batch)
    assert (stats.stored, stats.dead_letters) == (20, 0)
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count(Receipt.id))) == 20
        on_hand = await session.scalar(
            select(StockBalance.quantity_milli).where(StockBalance.sku == "MILK")
        )
    assert on_hand == -20 * 2000


async def test_a_gap_held_by_a_dead_letter_asks_no_resend(engine: AsyncEngine) -> None:
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await add_branch(session, code="B2", name="B2")
    # B1's event 2 is at central, as a dead letter; B2's event 2 never arrived.
    b1 = [
        _poisoned("B1", s, receipt_number=2**63) if s == 2 else receipt_event("B1", s)
        for s in (1, 2, 3)
    ]
    b2 = [receipt_event("B2", s) for s in (1, 3)]
    await IngestWorker(sessionmaker).process([message(e) for e in (*b1, *b2)])
    sent: list[str] = []

    async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        sent.append(subject)

    monitor = GapMonitor(sessionmaker, publish, gap_after_s=0.0, retry_s=0.0)
    await monitor.check()  # first sighting
    requested = await monitor.check()
    # Only the lost event is asked for; a resend of B1's would bring the same bytes.
    assert [(r.branch, r.from_seq) for r in requested] == [("B2", 2)]
    assert sent == ["down.branch.B2.command.resend"]
    assert monitor.held_by_dead_letter == {"B1"}
    async with sessionmaker() as session:
        letter = (await session.scalars(select(DeadLetter))).one()
    assert (letter.branch, letter.seq) == ("B1", 2)
    # Discarded by a person: still no resend (the same bytes would fail again).
    async with sessionmaker() as session, session.begin():
        await session.execute(update(DeadLetter).values(status="discarded"))
    assert [r.branch for r in await monitor.check()] == ["B2"]


async def test_a_gap_held_at_the_branch_asks_no_resend_and_shows_in_sync_health(
    engine: AsyncEngine,
) -> None:
    """An event too big for the branch's NATS server, held there: its heartbeat says so,
    and central does not ask for the tail again every minute."""
    sessionmaker = create_sessionmaker(engine)
    worker = IngestWorker(sessionmaker)
    await worker.process([message(receipt_event("B1", s)) for s in (1, 3)])

    def heartbeat(minute: int, held: tuple[int, ...]) -> MessageIn:
        beat = BranchHeartbeat(
            branch="B1",
            sent_at=datetime(2026, 11, 28, 9, minute, tzinfo=UTC),
            last_recorded_seq=3,
            outbox_held=held,
        )
        return MessageIn(subject=up_subject("B1", HEARTBEAT_KIND), data=encode(beat))

    await worker.process([heartbeat(0, (2,))])
    sent: list[str] = []

    async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        sent.append(subject)

    monitor = GapMonitor(sessionmaker, publish, gap_after_s=0.0, retry_s=0.0)
    await monitor.check()  # first sighting
    assert await monitor.check() == []
    assert (sent, monitor.held_at_branch) == ([], {"B1"})
    async with sessionmaker() as session:
        health = await service.sync_health(session)
        sync = await get_branch_sync(session, "B1")
    assert [(r.branch, r.outbox_held) for r in health.rows] == [("B1", [2])]
    assert sync.outbox_held == [2]
    # The branch no longer holds it (its server was raised) but it is still missing.
    await worker.process([heartbeat(1, ())])
    assert await monitor.check() == []  # a gap seen anew waits gap_after_s first
    assert [(r.branch, r.from_seq) for r in await monitor.check()] == [("B1", 2)]
    assert monitor.held_at_branch == set()


async def test_the_cli_lists_replays_and_discards_dead_letters(
    db_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    sessionmaker = create_sessionmaker(engine)
    # Two events of a branch not registered yet, one of another.
    await IngestWorker(sessionmaker).process(
        [message(receipt_event(b, s)) for b, s in (("B7", 1), ("B7", 2), ("B8", 1))]
    )
    listed = await asyncio.to_thread(central_cli, db_url, tmp_path, "dead-letters", "list")
    assert listed["total"] == 3
    assert [(d["branch"], d["seq"], d["raw_base64"]) for d in listed["items"]] == [
        ("B7", 1, None),
        ("B7", 2, None),
        ("B8", 1, None),
    ]
    async with sessionmaker() as session, session.begin():
        await add_branch(session, code="B7", name="B7")
    replayed = await asyncio.to_thread(
        central_cli, db_url, tmp_path, "dead-letters", "replay", "--all", "--branch", "B7"
    )
    assert [r["status"] for r in replayed] == ["replayed", "replayed"]
    b8 = listed["items"][2]["id"]
    discarded = await asyncio.to_thread(
        central_cli, db_url, tmp_path, "dead-letters", "discard", str(b8)
    )
    assert discarded == {"id": b8, "status": "discarded"}
    again = await asyncio.to_thread(
        central_cli, db_url, tmp_path, "dead-letters", "discard", str(b8), exit_code=1
    )
    assert again["field"] == "dead_letter_id"
    still_open = await asyncio.to_thread(central_cli, db_url, tmp_path, "dead-letters", "list")
    assert still_open["total"] == 0
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count(Receipt.id))) == 2
