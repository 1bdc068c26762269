"""One agent process per data directory, with real processes: a second ``run`` on the
same ``agent.db`` (another http_port, as a forgotten old instance or systemd plus a
manual start) is refused before it opens the fiscal printer or the database; so are
``restore`` and ``db-upgrade`` under a running agent, whatever port its config names;
``status`` and ``backup`` keep working; a SIGKILLed agent leaves nothing that blocks
the next start."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import httpx

from branch_agent.till_sim import TillSimulator
from central.embedded_nats import EmbeddedNats
from devices.sim import start_simulator
from tests.e2e.test_agent_kill import REPO, AgentProcess, free_port, wait_healthy, write_config


def cli(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "branch_agent", "--config", str(config), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def outbox_rows(data: Path) -> int:
    with closing(sqlite3.connect(f"file:{data / 'agent.db'}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])


async def test_a_second_agent_on_one_data_dir_is_refused_and_prints_nothing(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    # socket://: no serial device lock protects it, only the agent's own lock does.
    fiscal = start_simulator("fiscal")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, nats_server.url, port, fiscal.url)
    data = tmp_path / "agent"
    first = AgentProcess(config, tmp_path / "first.log")
    try:
        first.start()
        assert first.proc is not None
        await wait_healthy(url)
        till = TillSimulator(url, "t1", seed=3)
        async with httpx.AsyncClient(timeout=30) as client:
            await till.open_shift(client)
            sale = await till.post_sale(client)
        assert sale is not None
        assert sale["status"] == "fiscalized", sale
        assert len(fiscal.sim.receipts) == 1
        executed = len(fiscal.sim.executed)

        other_port = {"BACKROOM_AGENT_HTTP_PORT": str(free_port())}
        second = cli(config, "run", env=other_port)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "Traceback" not in second.stderr
        refusal = second.stderr.strip().splitlines()[-1]
        assert f"{data} is in use by another agent process" in refusal
        assert f"pid {first.proc.pid}" in refusal
        assert f"till API on port {port}" in refusal
        assert "stop it first" in refusal
        # The second process never spoke to the printer; the first still serves.
        assert len(fiscal.sim.executed) == executed
        assert len(fiscal.sim.receipts) == 1
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await till.post_sale(client)) is not None
        assert len(fiscal.sim.receipts) == 2

        # Restore and db-upgrade under the running agent, from a config naming another
        # port (the HTTP probe alone let that through): refused, nothing replaced.
        backup = tmp_path / "nightly.db"
        taken = cli(config, "backup", str(backup), env=other_port)
        assert taken.returncode == 0, taken.stdout + taken.stderr
        rows = outbox_rows(data)
        restore = cli(config, "restore", str(backup), env=other_port)
        assert restore.returncode == 2, restore.stdout + restore.stderr
        answer = json.loads(restore.stdout)
        assert "in use by another agent process" in answer["error"]
        assert answer["holder"]["pid"] == first.proc.pid
        assert not [n for n in os.listdir(data) if "before-restore" in n]
        upgrade = cli(config, "db-upgrade", env=other_port)
        assert upgrade.returncode == 2, upgrade.stdout + upgrade.stderr
        assert f"pid {first.proc.pid}" in upgrade.stderr
        assert outbox_rows(data) == rows

        # status from that config: not "agent not running", but who holds the directory.
        status = cli(config, "status", "--json", env=other_port)
        assert status.returncode == 1
        assert f"an agent process holds {data} (pid {first.proc.pid}" in status.stderr
        assert json.loads(status.stdout)["link"] == "agent running, not answering"
        # ...and from its own config, the running agent's page.
        assert cli(config, "status").returncode == 0

        # A SIGKILLed agent's lock goes with it: the next start succeeds at once.
        first.kill()
        first.start()
        await wait_healthy(url)
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await till.post_sale(client)) is not None
        assert len(fiscal.sim.receipts) == 3
        # A clean stop says so in the log, as the start did.
        first.stop()
        log = (tmp_path / "first.log").read_text()
        assert f"till API listening on http://127.0.0.1:{port}" in log
        assert "agent of branch B1 stopped" in log
        # Stopped: restore goes through.
        restored = cli(config, "restore", str(backup))
        assert restored.returncode == 0, restored.stdout + restored.stderr
    finally:
        first.stop()
        fiscal.stop()
