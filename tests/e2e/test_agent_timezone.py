"""An agent configured with another time zone than central's record of its branch (a
typo at registration, or in the agent's TOML): every local-time price would switch and
every local day close at another moment than central expects. The heartbeat carries
the agent's zone over NATS; central shows both zones and flags the branch in
/sync/branches and sync health, warns once in its log, and the flag goes once the
record is put right. The agent learns central's zone from its position report's
answer and shows both in its status."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from branch_agent.status import format_status
from central.embedded_nats import EmbeddedNats
from central.models import BranchStatus
from tests.conftest import register_branch, wait_until


async def test_an_agent_in_another_time_zone_is_flagged_until_put_right(
    central: Any,
    central_client: Any,
    nats_server: EmbeddedNats,
    make_agent: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="central.ingest.worker")
    await register_branch(central, "B006", timezone="Europe/London")
    agent = await make_agent("B006", nats_server.url, timezone="Europe/Berlin")

    async def reported() -> bool:
        async with central.sessionmaker() as session:
            status = await session.get(BranchStatus, "B006")
        return status is not None and status.agent_timezone == "Europe/Berlin"

    await wait_until(reported)
    sync = (await central_client.get("/api/v1/sync/branches/B006")).json()
    assert sync["timezone"] == "Europe/London"
    assert sync["agent_timezone"] == "Europe/Berlin"
    assert sync["timezone_mismatch"] is True
    (listed,) = (await central_client.get("/api/v1/sync/branches")).json()["items"]
    assert listed["timezone_mismatch"] is True
    (row,) = (await central_client.get("/api/v1/reports/sync-health")).json()["rows"]
    assert (row["timezone"], row["agent_timezone"], row["timezone_mismatch"]) == (
        "Europe/London",
        "Europe/Berlin",
        True,
    )

    # The agent learns central's zone from its answer to the position report and says
    # so in its status.
    async def agent_knows() -> bool:
        return (await agent.status()).central_timezone == "Europe/London"

    await wait_until(agent_knows)
    page = format_status(await agent.status(), "Europe/Berlin")
    assert "time zone        Europe/Berlin  CENTRAL HAS THE BRANCH AT Europe/London" in page

    # Several heartbeats later (one every 0.5 s): one warning, naming both zones.
    async def sent_at() -> datetime:
        async with central.sessionmaker() as session:
            status = await session.get(BranchStatus, "B006")
        assert status is not None
        return status.sent_at

    first = await sent_at()
    await wait_until(lambda: _after(sent_at, first + timedelta(seconds=2)))
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "central.ingest.worker" and "time zone" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "Europe/Berlin" in warnings[0]
    assert "Europe/London" in warnings[0]

    # Head office puts its record right: the flag goes.
    r = await central_client.patch("/api/v1/branches/B006", json={"timezone": "Europe/Berlin"})
    assert r.status_code == 200, r.text
    sync = (await central_client.get("/api/v1/sync/branches/B006")).json()
    assert (sync["timezone"], sync["timezone_mismatch"]) == ("Europe/Berlin", False)
    (row,) = (await central_client.get("/api/v1/reports/sync-health")).json()["rows"]
    assert row["timezone_mismatch"] is False


async def _after(moment: Callable[[], Awaitable[datetime]], than: datetime) -> bool:
    return await moment() > than
