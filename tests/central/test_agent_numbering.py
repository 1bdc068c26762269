"""Central numbers a branch's new agent database (its store server replaced) after
every event number it knows of, the same answer each time that database asks; the
numbers the earlier database never delivered are given up and counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import func, select

from central.db import create_sessionmaker
from central.ingest.worker import IngestWorker
from central.models import AuditEntry, BranchStatus
from central.reports.service import sync_health
from central.services.sync_state import (
    RunningAgent,
    anchor_event_sequence,
    confirm_event_sequence,
    get_branch_sync,
    other_running_agent,
)
from tests.central.chain_events import BranchBooks, message
from tests.conftest import engine_with_branch


def _sold(count: int) -> BranchBooks:
    """Branch B1's books with ``count`` sales (events 1..count)."""
    books = BranchBooks("B1")
    for n in range(count):
        books.sale([("MILK", 1_000 + n, 199)])
    return books


async def _heard_of(sessionmaker: Any, recorded: int) -> None:
    """B1's latest heartbeat: ``recorded`` events recorded."""
    async with sessionmaker() as session, session.begin():
        session.add(
            BranchStatus(branch="B1", sent_at=datetime.now(UTC), last_recorded_seq=recorded)
        )


async def test_a_new_database_starts_after_what_central_knows_and_asking_again_changes_nothing(
    db_url: str,
) -> None:
    engine = await engine_with_branch(db_url)
    sessionmaker = create_sessionmaker(engine)
    worker = IngestWorker(sessionmaker)
    books = _sold(7)
    try:
        # 1-5 and 7 arrived, 6 not; the last heartbeat said 9 were recorded.
        stats = await worker.process([message(e) for e in books.events if e.seq != 6])
        assert stats.stored == 6
        await _heard_of(sessionmaker, 9)

        async def anchor(instance: str) -> int:
            async with sessionmaker() as session, session.begin():
                return await anchor_event_sequence(session, "B1", instance)

        async def sync() -> tuple[int, int | None, int | None, int | None, int]:
            async with sessionmaker() as session:
                s = await get_branch_sync(session, "B1")
            return (
                s.contiguous_seq,
                s.restarted_at_seq,
                s.lost_from_seq,
                s.lost_to_seq,
                s.lost_events,
            )

        assert await anchor("a1") == 10
        assert await sync() == (9, 10, 6, 9, 3)
        async with sessionmaker() as session:
            (row,) = (await sync_health(session)).rows
        assert row.agent_replaced_at is not None
        assert row.lost_events == 3
        # The reply was lost and the database asks again after 6 turned up late: the
        # same start, and 6 is no longer counted lost.
        late = [e for e in books.events if e.seq == 6]
        assert (await worker.process([message(late[0])])).stored == 1
        assert await anchor("a1") == 10
        assert await sync() == (9, 10, 6, 9, 2)
        # The new database's events continue the run.
        for n in range(2):
            books.sale([("MILK", 2_000 + n, 199)])
        new = [e for e in books.events if e.seq > 7]
        # Numbered by the new database from 10 (the books number on from 8).
        renumbered = [message(msgspec.structs.replace(e, seq=e.seq + 2)) for e in new]
        assert (await worker.process(renumbered)).stored == 2
        assert (await sync())[0] == 11
        # Replaced again: after 11, nothing lost this time.
        assert await anchor("b2") == 12
        assert await sync() == (11, 12, None, None, 0)
        async with sessionmaker() as session:
            audited = await session.scalar(
                select(func.count()).where(AuditEntry.action == "branch.agent_replaced")
            )
        assert audited == 2
    finally:
        await engine.dispose()


async def test_the_first_database_of_a_branch_starts_at_one(db_url: str) -> None:
    engine = await engine_with_branch(db_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            assert await anchor_event_sequence(session, "B1", "first") == 1
        async with create_sessionmaker(engine)() as session:
            sync = await get_branch_sync(session, "B1")
            audited = await session.scalar(select(func.count()).select_from(AuditEntry))
        assert (sync.contiguous_seq, sync.restarted_at_seq, sync.lost_events) == (0, 1, 0)
        async with create_sessionmaker(engine)() as session:
            (row,) = (await sync_health(session)).rows
        # A branch's first database is no replacement.
        assert (row.agent_replaced_at, row.lost_events) == (None, 0)
        assert audited == 0
    finally:
        await engine.dispose()


async def test_a_database_gone_back_in_time_continues_after_central_and_asking_again_is_the_same(
    db_url: str,
) -> None:
    engine = await engine_with_branch(db_url)
    sessionmaker = create_sessionmaker(engine)
    worker = IngestWorker(sessionmaker)
    books = _sold(8)
    try:
        # 1-6 and 8 arrived; the last heartbeat recorded 9.
        assert (await worker.process([message(e) for e in books.events if e.seq != 7])).stored == 7
        await _heard_of(sessionmaker, 9)

        async def confirm(last_seq: int) -> int:
            async with sessionmaker() as session, session.begin():
                return await confirm_event_sequence(session, "B1", "db1", last_seq)

        async def sync() -> tuple[int, int | None, str | None, int | None, int | None, int]:
            async with sessionmaker() as session:
                s = await get_branch_sync(session, "B1")
            return (
                s.contiguous_seq,
                s.restarted_at_seq,
                s.restart_reason,
                s.lost_from_seq,
                s.lost_to_seq,
                s.lost_events,
            )

        # A database where it was, or ahead: its numbers go on, nothing recorded.
        assert await confirm(9) == 10
        assert await confirm(12) == 13
        assert await sync() == (6, None, None, None, None, 0)
        # Restored from a backup taken at 4: its next events continue after 9; 7 and 9
        # were lost with the database it replaced.
        assert await confirm(4) == 10
        assert await sync() == (9, 10, "restored_database", 7, 9, 2)
        # Asked again (its answer lost, or it crashed before renumbering): the same.
        assert await confirm(4) == 10
        assert await sync() == (9, 10, "restored_database", 7, 9, 2)
        async with sessionmaker() as session:
            (row,) = (await sync_health(session)).rows
            audited = await session.scalar(
                select(func.count()).where(AuditEntry.action == "branch.agent_restored")
            )
        assert (row.agent_restart_reason, row.lost_events) == ("restored_database", 2)
        assert row.agent_replaced_at is not None
        assert audited == 1
    finally:
        await engine.dispose()


async def test_numbers_still_in_the_ingest_queue_count_as_the_branchs(db_url: str) -> None:
    """1..4 stored, 5 and 6 sent and still in the up stream (ingestion stalled): a
    database restored to 4 continues after 6, not at 5 (which would collide with the
    sale on its way); asked again once they are stored, the same answer, none lost. A
    new database is numbered past them the same way."""
    engine = await engine_with_branch(db_url)
    sessionmaker = create_sessionmaker(engine)
    worker = IngestWorker(sessionmaker)
    books = _sold(6)
    try:
        assert (await worker.process([message(e) for e in books.events[:4]])).stored == 4
        await _heard_of(sessionmaker, 4)

        async def confirm(in_stream: int) -> int:
            async with sessionmaker() as session, session.begin():
                return await confirm_event_sequence(session, "B1", "db1", 4, in_stream=in_stream)

        assert await confirm(6) == 7
        assert (await worker.process([message(e) for e in books.events[4:]])).stored == 2
        assert await confirm(0) == 7
        async with sessionmaker() as session:
            sync = await get_branch_sync(session, "B1")
        assert (sync.restart_reason, sync.lost_from_seq, sync.lost_to_seq) == (
            "restored_database",
            5,
            6,
        )
        assert sync.lost_events == 0  # both arrived
        async with sessionmaker() as session, session.begin():
            assert await anchor_event_sequence(session, "B1", "db2", in_stream=9) == 10
    finally:
        await engine.dispose()


async def test_a_new_database_restored_from_before_its_first_answer_starts_after_its_own_events(
    db_url: str,
) -> None:
    engine = await engine_with_branch(db_url)
    sessionmaker = create_sessionmaker(engine)
    worker = IngestWorker(sessionmaker)
    books = _sold(3)
    try:

        async def anchor() -> int:
            async with sessionmaker() as session, session.begin():
                return await anchor_event_sequence(session, "B1", "db1")

        assert await anchor() == 1
        assert (await worker.process([message(e) for e in books.events])).stored == 3
        # A copy of it from before it was numbered asks again: after its own 1..3.
        assert await anchor() == 4
        async with sessionmaker() as session:
            sync = await get_branch_sync(session, "B1")
        assert (sync.restarted_at_seq, sync.restart_reason, sync.lost_events) == (
            4,
            "restored_database",
            0,
        )
    finally:
        await engine.dispose()


async def test_another_database_counts_as_running_while_its_heartbeats_are_recent(
    db_url: str,
) -> None:
    engine = await engine_with_branch(db_url)
    sessionmaker = create_sessionmaker(engine)
    try:
        received = datetime.now(UTC)
        async with sessionmaker() as session, session.begin():
            session.add(
                BranchStatus(
                    branch="B1", sent_at=received, received_at=received, agent_instance="old"
                )
            )

        async def running(instance: str, seconds_later: float) -> str | None:
            async with sessionmaker() as session, session.begin():
                return await other_running_agent(
                    session, "B1", instance, now=received + timedelta(seconds=seconds_later)
                )

        assert await running("old", 1) is None  # itself, restarted
        assert await running("new", 30) == RunningAgent("old", None)
        async with sessionmaker() as session:
            sync = await get_branch_sync(session, "B1")
        assert sync.refused_instance == "new"
        # Gone quiet for more than a minute (a dead server): no longer running.
        assert await running("new", 61) is None
        # Numbering it clears the refusal.
        async with sessionmaker() as session, session.begin():
            assert await anchor_event_sequence(session, "B1", "new") == 1
        async with sessionmaker() as session:
            assert (await get_branch_sync(session, "B1")).refused_instance is None
        # A last heartbeat ("stopping") ends it at once.
        async with sessionmaker() as session, session.begin():
            status = await session.get(BranchStatus, "B1")
            assert status is not None
            status.agent_stopped = True
        assert await running("new", 1) is None
    finally:
        await engine.dispose()


async def test_a_copy_of_the_running_database_on_another_server_counts_as_running(
    db_url: str,
) -> None:
    engine = await engine_with_branch(db_url)
    sessionmaker = create_sessionmaker(engine)
    try:
        received = datetime.now(UTC)
        async with sessionmaker() as session, session.begin():
            session.add(
                BranchStatus(
                    branch="B1",
                    sent_at=received,
                    received_at=received,
                    agent_instance="db1",
                    agent_server="till-server/boot-a",
                )
            )

        async def running(server: str, seconds_later: float = 1) -> RunningAgent | None:
            async with sessionmaker() as session, session.begin():
                return await other_running_agent(
                    session,
                    "B1",
                    "db1",
                    server=server,
                    now=received + timedelta(seconds=seconds_later),
                )

        async def refused() -> tuple[str | None, str | None]:
            async with sessionmaker() as session:
                sync = await get_branch_sync(session, "B1")
            return sync.refused_instance, sync.refused_server

        # Restarted on its own server, or an agent that does not name its server.
        assert await running("till-server/boot-a") is None
        assert await running("") is None
        assert await refused() == (None, None)
        # The same database on a second server (a cloned disk): refused while it runs.
        assert await running("new-server/boot-b") == RunningAgent("db1", "till-server/boot-a")
        assert await refused() == ("db1", "new-server/boot-b")
        # The running one restarting and numbered on its own server leaves the refusal
        # of its copy standing; the copy numbered once the other went quiet clears it.
        async with sessionmaker() as session, session.begin():
            await confirm_event_sequence(session, "B1", "db1", 0, server="till-server/boot-a")
        assert await refused() == ("db1", "new-server/boot-b")
        assert await running("new-server/boot-b", seconds_later=61) is None
        async with sessionmaker() as session, session.begin():
            await confirm_event_sequence(session, "B1", "db1", 0, server="new-server/boot-b")
        assert await refused() == (None, None)
    finally:
        await engine.dispose()
