"""A store server whose clock is off: the agent measures it against central's on its
position report (central's time in each answer) and says so in its status and its
heartbeat; head office's sync health flags the branch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from branch_agent.status import format_status
from central.embedded_nats import EmbeddedNats
from central.models import BranchStatus
from central.reports.service import sync_health
from tests.conftest import register_branch, wait_until


async def test_a_clock_five_minutes_ahead_is_measured_shown_and_flagged(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    await register_branch(central, "B1")
    agent = await make_agent("B1", nats_server.url)
    requester = agent.masterdata.requester

    def near(value: int | None, target: int) -> bool:
        # Within a second: the measure is good to half a round trip on loopback.
        return value is not None and abs(value - target) < 1_000

    async def agent_measured(target: int) -> bool:
        return near(agent.clock_offset_ms(), target)

    await wait_until(lambda: agent_measured(0))
    assert "in step with central" in format_status(await agent.status())

    # The server's clock runs five minutes ahead (a fake clock: the machine's is right).
    requester.clock = lambda: datetime.now(UTC) + timedelta(minutes=5)
    requester.poke()
    await wait_until(lambda: agent_measured(300_000))
    assert "300 s ahead of central" in format_status(await agent.status())

    async def central_knows(target: int) -> bool:
        async with central.sessionmaker() as session:
            status = await session.get(BranchStatus, "B1")
        return status is not None and near(status.clock_offset_ms, target)

    await wait_until(lambda: central_knows(300_000))
    async with central.sessionmaker() as session:
        (row,) = (await sync_health(session)).rows
    assert row.clock_off is True

    # Put right: in step again, the flag goes.
    requester.clock = lambda: datetime.now(UTC)
    requester.poke()
    await wait_until(lambda: central_knows(0))
    async with central.sessionmaker() as session:
        (row,) = (await sync_health(session)).rows
    assert row.clock_off is False
