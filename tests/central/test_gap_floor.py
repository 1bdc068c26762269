"""The gap check's decision against the ingest consumer's position: a gap is asked
for once the consumer's ack floor reaches the stream's last sequence taken when the
gap was resend_gap_after_s old (or nothing is outstanding), else only after the ack
wait; the position is read before the database, so an event committed meanwhile is
never asked for."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from central.db import create_sessionmaker
from central.ingest.gaps import ConsumerPosition, GapMonitor, SeenGap, gap_ripe
from central.ingest.worker import IngestWorker
from protocol import ResendRequested, decode_resend
from tests.central.chain_events import BranchBooks, message

ACK_WAIT_S = 30.0


def _at(last_seq: int, ack_floor: int, outstanding: int = 5) -> ConsumerPosition:
    return ConsumerPosition(
        last_seq=last_seq, ack_floor=ack_floor, outstanding=outstanding, ack_wait_s=ACK_WAIT_S
    )


def test_a_young_gap_is_not_ripe() -> None:
    gap = SeenGap(contiguous=4, since=100.0)
    assert not gap_ripe(gap, _at(50, 50, 0), 104.9, 5.0)
    assert gap.mark is None


def test_without_a_consumer_a_gap_is_ripe_after_gap_after() -> None:
    assert gap_ripe(SeenGap(contiguous=4, since=100.0), None, 105.0, 5.0)


def test_a_gap_waits_for_the_floor_to_reach_the_mark_taken_once() -> None:
    gap = SeenGap(contiguous=4, since=100.0)
    # Old enough: marked with the stream's last sequence now; messages up to it are
    # still out (the missing event may be one of them).
    assert not gap_ripe(gap, _at(last_seq=80, ack_floor=60), 105.0, 5.0)
    assert gap.mark == 80
    # More traffic: the mark stays, the floor has not reached it.
    assert not gap_ripe(gap, _at(last_seq=120, ack_floor=79), 106.0, 5.0)
    assert gap.mark == 80
    # Everything the stream held at the mark is acked (stored): the event was not there.
    assert gap_ripe(gap, _at(last_seq=140, ack_floor=80), 107.0, 5.0)


def test_a_stream_made_anew_takes_the_place_of_the_mark() -> None:
    gap = SeenGap(contiguous=4, since=100.0)
    assert not gap_ripe(gap, _at(last_seq=800, ack_floor=700), 105.0, 5.0)
    # The stream's data was lost and it was made again: it numbers from 1.
    assert not gap_ripe(gap, _at(last_seq=30, ack_floor=20), 106.0, 5.0)
    assert gap.mark == 30
    assert gap_ripe(gap, _at(last_seq=60, ack_floor=30), 107.0, 5.0)


def test_nothing_outstanding_is_ripe_at_once() -> None:
    gap = SeenGap(contiguous=4, since=100.0)
    assert gap_ripe(gap, _at(last_seq=80, ack_floor=70, outstanding=0), 105.0, 5.0)


def test_a_stuck_floor_waits_for_the_ack_wait_plus_gap_after() -> None:
    gap = SeenGap(contiguous=4, since=100.0)
    assert not gap_ripe(gap, _at(80, 10), 105.0, 5.0)
    assert not gap_ripe(gap, _at(90, 10), 139.9, 5.0)
    assert gap_ripe(gap, _at(90, 10), 140.0, 5.0)


def test_a_backlog_being_worked_through_is_waited_for_past_the_ack_wait() -> None:
    """Central catching up: the missing event may be in the backlog before the mark;
    while the floor rises it is not asked for, however long that takes."""
    gap = SeenGap(contiguous=4, since=100.0)
    assert not gap_ripe(gap, _at(last_seq=100_000, ack_floor=1_000), 105.0, 5.0)
    for n, now in enumerate(range(110, 300, 10), start=1):
        assert not gap_ripe(gap, _at(last_seq=120_000, ack_floor=1_000 + n * 5_000), now, 5.0)
    assert gap_ripe(gap, _at(last_seq=120_000, ack_floor=100_000), 300.0, 5.0)
    # A floor that rose, then stuck: asked for the ack wait plus gap_after after.
    gap = SeenGap(contiguous=4, since=100.0)
    assert not gap_ripe(gap, _at(last_seq=500, ack_floor=10), 105.0, 5.0)
    assert not gap_ripe(gap, _at(last_seq=500, ack_floor=20), 130.0, 5.0)
    assert not gap_ripe(gap, _at(last_seq=500, ack_floor=20), 164.9, 5.0)
    assert gap_ripe(gap, _at(last_seq=500, ack_floor=20), 165.0, 5.0)


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


async def _gap_at_2(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> tuple[BranchBooks, IngestWorker, list[ResendRequested]]:
    """B1's events 1 and 3 stored, 2 missing; the list the monitor's requests go to."""
    books = BranchBooks("B1")
    for _ in range(3):
        books.sale([("MILK", 1_000, 100)])
    worker = IngestWorker(sessionmaker)
    await worker.process([message(books.events[0]), message(books.events[2])])
    return books, worker, []


def _monitor(
    sessionmaker: async_sessionmaker[AsyncSession],
    sent: list[ResendRequested],
    consumer_state: Callable[[], Awaitable[ConsumerPosition]],
) -> GapMonitor:
    async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        sent.append(decode_resend(payload))

    return GapMonitor(
        sessionmaker, publish, gap_after_s=0.0, retry_s=3600, consumer_state=consumer_state
    )


async def test_the_monitor_asks_once_the_floor_passes_the_mark(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    _books, _worker, sent = await _gap_at_2(sessionmaker)
    reads: list[ConsumerPosition] = []
    position = _at(last_seq=40, ack_floor=30)

    async def consumer_state() -> ConsumerPosition:
        reads.append(position)
        return position

    monitor = _monitor(sessionmaker, sent, consumer_state)
    await monitor.check()  # first sighting: no gap tracked before, nothing read
    assert reads == []
    await monitor.check()  # marked at 40; the floor is at 30
    await monitor.check()
    assert sent == []
    position = _at(last_seq=55, ack_floor=40)
    await monitor.check()
    assert [(r.branch, r.from_seq) for r in sent] == [("B1", 2)]


async def test_an_event_committed_after_the_floor_was_read_is_not_asked_for(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The floor passes the mark because the worker that held the missing event acked
    it, after its commit: read before the database, the gap is gone by then."""
    books, worker, sent = await _gap_at_2(sessionmaker)
    floor = 30

    async def consumer_state() -> ConsumerPosition:
        position = _at(last_seq=40, ack_floor=floor)
        if floor >= 40:
            # The holding worker committed and acked just as the floor was read.
            await worker.process([message(books.events[1])])
        return position

    monitor = _monitor(sessionmaker, sent, consumer_state)
    await monitor.check()
    await monitor.check()
    assert sent == []
    floor = 40
    await monitor.check()
    assert sent == []
