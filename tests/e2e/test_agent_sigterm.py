"""SIGTERM (systemd's stop, ``kill``) stops the agent cleanly: its last heartbeat tells
central it stopped, so a replacement server is numbered at once instead of after
central's minute of silence, and the process exits 0 with its database closed."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from sqlalchemy import select

from central.embedded_nats import EmbeddedNats
from central.models import BranchStatus
from tests.conftest import register_branch, wait_until
from tests.e2e.test_agent_kill import AgentProcess, free_port, wait_healthy


async def test_sigterm_sends_the_last_heartbeat_and_exits_cleanly(
    central: Any, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    await register_branch(central, "B1")
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[agent]
branch = "B1"
data_dir = "{tmp_path / "agent"}"
nats_url = "{nats_server.url}"
http_port = {port}
heartbeat_interval_s = 0.5

[[agent.tills]]
id = "T1"
token = "t1"
"""
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        await wait_healthy(f"http://127.0.0.1:{port}")

        async def status() -> BranchStatus | None:
            async with central.sessionmaker() as session:
                found: BranchStatus | None = await session.scalar(
                    select(BranchStatus).where(BranchStatus.branch == "B1")
                )
                return found

        async def running() -> bool:
            row = await status()
            return row is not None and bool(row.agent_instance) and not row.agent_stopped

        await wait_until(running, timeout=30)
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(20) == 0, (tmp_path / "agent.log").read_text()

        async def stopped() -> bool:
            row = await status()
            return row is not None and row.agent_stopped

        await wait_until(stopped, timeout=10)
        # Closed: SQLite folds its write-ahead log back when the last connection closes.
        assert not (tmp_path / "agent" / "agent.db-wal").exists()
    finally:
        agent.stop()
