"""The latest heartbeat wins, by the branch's clock: an older one arriving late is
ignored; one kept from a clock that was ahead (sent "in the future") is replaced once
the clock is put right, instead of hiding the branch's heartbeats until then."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from central.db import create_sessionmaker
from central.ingest.worker import IngestWorker, MessageIn
from central.models import BranchStatus
from protocol import BranchHeartbeat, encode, up_subject
from protocol.subjects import HEARTBEAT_KIND
from tests.conftest import counted_statements, engine_with_branch


def _beat(sent_at: datetime, recorded: int, offset_ms: int | None) -> MessageIn:
    heartbeat = BranchHeartbeat(
        branch="B1", sent_at=sent_at, last_recorded_seq=recorded, clock_offset_ms=offset_ms
    )
    return MessageIn(subject=up_subject("B1", HEARTBEAT_KIND), data=encode(heartbeat))


async def test_a_heartbeat_from_a_clock_put_right_replaces_one_sent_in_the_future(
    db_url: str,
) -> None:
    engine = await engine_with_branch(db_url)
    sessionmaker = create_sessionmaker(engine)
    worker = IngestWorker(sessionmaker)

    async def kept() -> tuple[int, int | None]:
        async with sessionmaker() as session:
            status = await session.get(BranchStatus, "B1")
        assert status is not None
        return status.last_recorded_seq, status.clock_offset_ms

    try:
        now = datetime.now(UTC)
        await worker.process([_beat(now, 5, 20)])
        # An older heartbeat delivered late changes nothing.
        await worker.process([_beat(now - timedelta(seconds=30), 4, 20)])
        assert await kept() == (5, 20)
        # The server's clock jumps a day ahead, then is put right.
        await worker.process([_beat(now + timedelta(days=1), 6, 86_400_000)])
        assert await kept() == (6, 86_400_000)
        await worker.process([_beat(now + timedelta(seconds=1), 7, -15)])
        assert await kept() == (7, -15)
        # Back in step: the rule "the latest wins" holds again.
        await worker.process([_beat(now, 3, -15)])
        assert await kept() == (7, -15)
    finally:
        await engine.dispose()


async def test_the_agents_time_zone_is_checked_once_a_minute_not_per_heartbeat(
    db_url: str,
) -> None:
    """Every branch heartbeats every few seconds: its zone is compared with central's
    record once, then again only when it changes (or a minute later)."""
    engine = await engine_with_branch(db_url)
    await engine.dispose()
    now = datetime.now(UTC)
    async with counted_statements(db_url) as (sessionmaker, statements):
        worker = IngestWorker(sessionmaker)

        def beat(n: int, zone: str) -> MessageIn:
            heartbeat = BranchHeartbeat(
                branch="B1", sent_at=now + timedelta(seconds=n), last_recorded_seq=n, timezone=zone
            )
            return MessageIn(subject=up_subject("B1", HEARTBEAT_KIND), data=encode(heartbeat))

        def zone_checks() -> int:
            return sum("branch_status.agent_timezone" in s and "JOIN" in s for s in statements)

        for n in range(1, 5):
            assert (await worker.process([beat(n, "Europe/Berlin")])).heartbeats == 1
        assert zone_checks() == 1
        await worker.process([beat(5, "Europe/London")])
        assert zone_checks() == 2
