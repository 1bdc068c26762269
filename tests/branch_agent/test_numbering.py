"""Where an agent database's event numbers start: a new database waits for central's
answer and renumbers what it recorded meanwhile; one that numbered events before this
existed is settled as it is."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from branch_agent.db import create_engine, create_sessionmaker, database_url, upgrade
from branch_agent.models import OutboxEvent
from branch_agent.numbering import EventNumbering
from branch_agent.outbox import append_event
from protocol.codec import decode_envelope
from protocol.events import ShiftOpened

REPO = Path(__file__).resolve().parents[2]


def _numbering(engine: AsyncEngine, settled: list[int]) -> EventNumbering:
    return EventNumbering(create_sessionmaker(engine), asyncio.Lock(), lambda: settled.append(1))


async def _record(engine: AsyncEngine, count: int) -> None:
    async with create_sessionmaker(engine)() as session, session.begin():
        for n in range(count):
            await append_event(
                session,
                branch="B1",
                timezone="UTC",
                body=ShiftOpened(till="T1", shift_id=f"S{n}"),
            )


async def _outbox(engine: AsyncEngine) -> list[tuple[int, int, str]]:
    """(row number, number in the payload, shift id) of each event."""
    async with create_sessionmaker(engine)() as session:
        rows = (await session.execute(select(OutboxEvent.seq, OutboxEvent.payload))).all()
    out = []
    for seq, payload in sorted(rows):
        envelope = decode_envelope(payload)
        assert isinstance(envelope.body, ShiftOpened)
        out.append((seq, envelope.seq, envelope.body.shift_id))
    return out


async def test_a_new_database_renumbers_what_it_recorded_once_central_answers(
    agent_engine: Callable[..., AsyncEngine],
) -> None:
    engine = agent_engine()
    settled: list[int] = []
    numbering = _numbering(engine, settled)
    await numbering.load()
    assert not numbering.settled
    assert len(numbering.wanted()) == 16
    await _record(engine, 3)
    assert await _outbox(engine) == [(1, 1, "S0"), (2, 2, "S1"), (3, 3, "S2")]

    await numbering.settle(101)
    assert (numbering.settled, numbering.wanted(), settled) == (True, "", [1])
    assert await _outbox(engine) == [(101, 101, "S0"), (102, 102, "S1"), (103, 103, "S2")]
    await _record(engine, 1)
    assert (await _outbox(engine))[-1] == (104, 104, "S0")
    # A second answer (a late duplicate reply) changes nothing.
    await numbering.settle(500)
    assert [row[0] for row in await _outbox(engine)] == [101, 102, 103, 104]
    # After a restart the database knows it is settled.
    again = _numbering(engine, [])
    await again.load()
    assert (again.settled, again.start) == (True, 101)


async def test_two_new_databases_have_different_ids(tmp_path: Path) -> None:
    ids = []
    for name in ("a.db", "b.db"):
        await upgrade(tmp_path / name)
        engine = create_engine(tmp_path / name)
        numbering = _numbering(engine, [])
        await numbering.load()
        ids.append(numbering.wanted())
        await engine.dispose()
    assert ids[0] != ids[1]
    assert all(ids)


async def test_a_database_that_numbered_events_before_is_settled_by_the_upgrade(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.db"
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent / "agent"))
    config.set_main_option("sqlalchemy.url", database_url(path))
    # The release before: events numbered 1..2 already.
    await asyncio.to_thread(command.upgrade, config, "a1301")
    engine = create_engine(path)
    try:
        await _record(engine, 2)
        await upgrade(path)
        numbering = _numbering(engine, [])
        await numbering.load()
        assert (numbering.settled, numbering.wanted()) == (True, "")
        await _record(engine, 1)
        assert [row[0] for row in await _outbox(engine)] == [1, 2, 3]
        async with engine.connect() as connection:
            names = set(await connection.scalars(text("SELECT name FROM counters")))
        assert {"agent_instance", "event_seq_settled", "event_seq"} <= names
    finally:
        await engine.dispose()


# Renumbers the outbox of the database at argv[1] from 101, and SIGKILLs its own process
# at the second event's update, inside the transaction.
_KILLED_WHILE_RENUMBERING = """
import asyncio, os, signal, sys
from pathlib import Path
from sqlalchemy.ext.asyncio import AsyncSession
from branch_agent.db import create_engine
from tests.branch_agent.test_numbering import _numbering

updates = 0
execute = AsyncSession.execute

async def dying_execute(self, statement, *args, **kwargs):
    global updates
    if getattr(statement, "is_update", False):
        updates += 1
        if updates == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return await execute(self, statement, *args, **kwargs)

AsyncSession.execute = dying_execute

async def main():
    numbering = _numbering(create_engine(Path(sys.argv[1])), [])
    await numbering.load()
    await numbering.settle(101)

asyncio.run(main())
"""


async def test_an_agent_killed_while_renumbering_renumbers_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    await upgrade(path)
    engine = create_engine(path)
    try:
        await _record(engine, 3)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _KILLED_WHILE_RENUMBERING, str(path), cwd=REPO
        )
        assert await process.wait() == -signal.SIGKILL
        # Nothing moved: still waiting for central, which answers the same again.
        numbering = _numbering(engine, [])
        await numbering.load()
        assert not numbering.settled
        assert await _outbox(engine) == [(1, 1, "S0"), (2, 2, "S1"), (3, 3, "S2")]
        await numbering.settle(101)
        assert await _outbox(engine) == [(101, 101, "S0"), (102, 102, "S1"), (103, 103, "S2")]
    finally:
        await engine.dispose()
