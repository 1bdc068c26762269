"""Central's embedded nats-server (no ``nats_url``: ``make run``, a single machine)
killed with SIGKILL: central starts it again on the same port and store, the branch's
link comes back by itself, its sales made while the server was dead and after reach
central once each, and stopping central leaves no nats-server behind."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from central.embedded_nats import free_port
from central.models import DeadLetter, IngestedEvent
from central.services.health import health_of
from central.services.nats_auth import issuer_for, register_branch, write_branch_creds
from central.services.sync_state import get_branch_sync
from tests.conftest import central_settings, running_central, wait_until
from tests.e2e.test_demo_ports import _alive
from tests.e2e.test_skeleton import post_sale, receipts_at_central, sale

TOKEN = "B1-till-1"


class _Lines(logging.Handler):
    """The records of one logger (the agent's app reconfigures the root's handlers,
    caplog's among them)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def runtime_log() -> Iterator[_Lines]:
    logger = logging.getLogger("central.runtime")
    lines = _Lines()
    logger.addHandler(lines)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)


async def test_a_killed_embedded_nats_server_is_started_again(
    db_url: str, tmp_path: Path, make_agent: Any, runtime_log: _Lines
) -> None:
    port = free_port()
    settings = central_settings(
        db_url, "", nats_server_port=port, data_dir=str(tmp_path / "central")
    )
    async with running_central(settings) as central:
        server = central.embedded_nats
        assert server is not None
        async with central.sessionmaker() as session, session.begin():
            issuer = issuer_for(settings)
            reg = await register_branch(session, issuer, code="B1", name="B1")
        creds = write_branch_creds(issuer, "B1", reg.user)
        agent = await make_agent("B1", central.nats_url, nats_creds=str(creds))

        async def at_central(count: int) -> bool:
            return len(await receipts_at_central(central)) == count

        assert (await post_sale(agent, sale("before"), TOKEN)).status_code == 201
        await wait_until(lambda: at_central(1))

        first_pid = server.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        # The store sells on while the server is dead; the sale waits in its outbox.
        assert (await post_sale(agent, sale("while-dead"), TOKEN)).status_code == 201

        async def running_again() -> bool:
            health = await health_of(central)
            return (
                central.embedded_nats_restarts == 1  # counted once its start returned
                and server.is_running()
                and server.pid != first_pid
                and (health.nats, health.jetstream) == ("connected", "ready")
            )

        await wait_until(running_again, timeout=30)
        assert server.port == port
        assert central.nats_url.endswith(f":{port}")
        assert (await post_sale(agent, sale("after"), TOKEN)).status_code == 201
        await wait_until(lambda: at_central(3), timeout=30)

        async def caught_up() -> bool:
            async with central.sessionmaker() as session:
                sync = await get_branch_sync(session, "B1")
            return sync.contiguous_seq == sync.last_recorded_seq == sync.max_seq

        await wait_until(caught_up)
        await asyncio.sleep(1.0)  # nothing more arrives: no event twice
        assert sorted(s for _, s in await receipts_at_central(central)) == [
            "after",
            "before",
            "while-dead",
        ]
        async with central.sessionmaker() as session:
            events = await session.scalar(select(func.count()).select_from(IngestedEvent))
            letters = await session.scalar(select(func.count()).select_from(DeadLetter))
            sync = await get_branch_sync(session, "B1")
        assert (events, letters, sync.missing) == (sync.max_seq, 0, 0)
        second_pid = server.pid
        await agent.stop()
    # Stopped with central: no nats-server left, neither the first nor its successor.
    assert second_pid is not None
    assert not _alive(second_pid)
    assert not _alive(first_pid)
    died = [r for r in runtime_log.records if "embedded nats-server" in r.getMessage()]
    assert [r.levelname for r in died] == ["ERROR", "WARNING"], [r.getMessage() for r in died]
    assert "died (exit status -9)" in died[0].getMessage()
    assert "running again" in died[1].getMessage()
