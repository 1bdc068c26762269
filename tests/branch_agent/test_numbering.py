"""Where an agent database's event numbers start: a new database waits for central's
answer and renumbers what it recorded meanwhile; one that numbered events before this
existed is settled as it is."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from branch_agent.db import create_engine, create_sessionmaker, database_url, upgrade
from branch_agent.models import OutboxEvent
from branch_agent.numbering import EventNumbering, server_id
from branch_agent.outbox import append_event
from protocol.codec import decode_envelope
from protocol.events import ShiftOpened

REPO = Path(__file__).resolve().parents[2]


def _numbering(engine: AsyncEngine, settled: list[int]) -> EventNumbering:
    return EventNumbering(
        create_sessionmaker(engine), asyncio.Lock(), lambda: settled.append(1), server="srv-a"
    )


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
    asked = numbering.report()
    assert list(asked) == ["anchor_instance", "agent_server"]
    assert asked["agent_server"] == "srv-a"
    assert len(asked["anchor_instance"]) == 16
    # Nothing of a new database goes before the answer.
    assert numbering.sendable_through == 0
    await _record(engine, 3)
    assert await _outbox(engine) == [(1, 1, "S0"), (2, 2, "S1"), (3, 3, "S2")]

    await numbering.settle(101)
    assert (numbering.settled, numbering.report(), settled) == (True, {}, [1])
    assert numbering.sendable_through is None
    assert await _outbox(engine) == [(101, 101, "S0"), (102, 102, "S1"), (103, 103, "S2")]
    # Numbered from 101 by central: 1..100 were the earlier database's, none skipped.
    assert numbering.skipped == ()
    await _record(engine, 1)
    assert (await _outbox(engine))[-1] == (104, 104, "S0")
    # A second answer (a late duplicate reply) changes nothing.
    await numbering.settle(500)
    assert [row[0] for row in await _outbox(engine)] == [101, 102, 103, 104]
    # After a restart the database knows its start, and asks central to confirm where
    # it stands (its events to 104 may go meanwhile).
    again = _numbering(engine, [])
    await again.load()
    assert (again.settled, again.start, again.sendable_through) == (False, 101, 104)
    assert again.report() == {
        "settled_instance": asked["anchor_instance"],
        "settled_last_seq": 104,
        "agent_server": "srv-a",
    }


async def test_two_new_databases_have_different_ids(tmp_path: Path) -> None:
    ids = []
    for name in ("a.db", "b.db"):
        await upgrade(tmp_path / name)
        engine = create_engine(tmp_path / name)
        numbering = _numbering(engine, [])
        await numbering.load()
        ids.append(numbering.report()["anchor_instance"])
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
        assert numbering.start == 1
        assert numbering.report()["settled_last_seq"] == 2
        await _record(engine, 1)
        # Central confirms: the numbers go on where they were.
        await numbering.settle(3)
        assert numbering.settled
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


async def _numbered(engine: AsyncEngine, start: int, events: int) -> None:
    """A database central numbered from ``start``, with ``events`` recorded since."""
    numbering = _numbering(engine, [])
    await numbering.load()
    await numbering.settle(start)
    await _record(engine, events)


async def test_a_database_restored_from_a_backup_moves_its_new_events_after_centrals(
    agent_engine: Callable[..., AsyncEngine],
) -> None:
    engine = agent_engine()
    # Restored from a backup with events 1..3 (central holds the branch's to 20).
    await _numbered(engine, 1, 3)
    numbering = _numbering(engine, [])
    await numbering.load()
    assert numbering.report()["settled_last_seq"] == 3
    # The store sells while central has not answered: those wait, 1..3 may go.
    await _record(engine, 2)
    assert numbering.sendable_through == 3
    await numbering.settle(21)
    assert numbering.settled
    assert await _outbox(engine) == [
        (1, 1, "S0"),
        (2, 2, "S1"),
        (3, 3, "S2"),
        (21, 21, "S0"),
        (22, 22, "S1"),
    ]
    # 4..20 are not in this database: its heartbeat says so (a resend cannot bring them).
    assert numbering.skipped == ((4, 20),)
    await _record(engine, 1)
    assert (await _outbox(engine))[-1] == (23, 23, "S0")
    # Asked once per start: the next one reports where it is now.
    again = _numbering(engine, [])
    await again.load()
    assert again.report()["settled_last_seq"] == 23
    assert again.skipped == ((4, 20),)


async def test_a_restored_database_with_nothing_recorded_since_skips_to_centrals_numbers(
    agent_engine: Callable[..., AsyncEngine],
) -> None:
    engine = agent_engine()
    await _numbered(engine, 1, 3)
    first = _numbering(engine, [])
    await first.load()
    assert first.skipped == ()
    await first.settle(11)
    # Its next event will be 11: 4..10 are skipped although no event follows them yet.
    assert first.skipped == ((4, 10),)
    # Restored again, later: a second run of numbers skipped above the first.
    await _record(engine, 2)
    second = _numbering(engine, [])
    await second.load()
    await second.settle(31)
    await _record(engine, 1)
    assert second.skipped == ((4, 10), (13, 30))
    assert [row[0] for row in await _outbox(engine)] == [1, 2, 3, 11, 12, 31]


async def test_a_crash_before_centrals_answer_asks_the_same_again(
    agent_engine: Callable[..., AsyncEngine],
) -> None:
    engine = agent_engine()
    await _numbered(engine, 1, 3)
    first = _numbering(engine, [])
    await first.load()
    # Two sales, then the agent dies before central answered.
    await _record(engine, 2)
    second = _numbering(engine, [])
    await second.load()
    # It reports the start of the run that asked first: 4 and 5 are still unconfirmed.
    assert (second.report()["settled_last_seq"], second.sendable_through) == (3, 3)
    await second.settle(11)
    assert [row[0] for row in await _outbox(engine)] == [1, 2, 3, 11, 12]


async def test_a_restored_database_killed_while_renumbering_renumbers_all_or_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.db"
    await upgrade(path)
    engine = create_engine(path)
    try:
        await _numbered(engine, 1, 3)
        numbering = _numbering(engine, [])
        await numbering.load()
        await _record(engine, 3)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _KILLED_WHILE_RENUMBERING, str(path), cwd=REPO
        )
        assert await process.wait() == -signal.SIGKILL
        # Nothing moved, and it still asks from 3.
        again = _numbering(engine, [])
        await again.load()
        assert again.report()["settled_last_seq"] == 3
        assert [row[0] for row in await _outbox(engine)] == [1, 2, 3, 4, 5, 6]
        await again.settle(101)
        assert [row[:2] for row in await _outbox(engine)] == [
            (1, 1),
            (2, 2),
            (3, 3),
            (101, 101),
            (102, 102),
            (103, 103),
        ]
    finally:
        await engine.dispose()


def test_the_server_is_named_by_host_and_boot_so_a_cloned_disk_is_another_server(
    tmp_path: Path, monkeypatch: Any
) -> None:
    boot = tmp_path / "boot_id"
    boot.write_text("5f0c9a1e-2b7d-4c1a-9e0f-0123456789ab\n", encoding="ascii")
    monkeypatch.setattr("branch_agent.numbering._BOOT_ID", str(boot))
    monkeypatch.setattr("branch_agent.numbering.socket.gethostname", lambda: "store-7-" + "x" * 60)
    named = server_id()
    assert len(named) == 64
    assert named.endswith("/5f0c9a1e-2b7d-4c1a-9e0f-0123456789ab")
    assert named.startswith("store-7-")
    # Another boot (another server with the same disk, or a reboot) is another name.
    boot.write_text("00000000-0000-4000-8000-000000000000\n", encoding="ascii")
    assert server_id() != named
    # Without a boot id: the host name; configured: as configured.
    monkeypatch.setattr("branch_agent.numbering._BOOT_ID", str(tmp_path / "absent"))
    assert server_id() == ("store-7-" + "x" * 60)[:64]
    assert server_id("container-3") == "container-3"
