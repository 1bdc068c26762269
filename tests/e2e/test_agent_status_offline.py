"""``python -m branch_agent status`` with the agent stopped reads its database and says
what the running agent says, the same way: the same labels and JSON keys, the applied
master-data version, the last sync (an event acknowledged by central, or master data
applied from it: here only master data has come), and the event numbering as a
restarted agent has it (central confirms it at each start, so not settled until then).
The line saying the agent does not answer is a line of its own on stderr."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from central.embedded_nats import EmbeddedNats
from central.services.masterdata_publisher import published_version
from tests.conftest import register_branch, wait_until
from tests.e2e.test_agent_cli import cli
from tests.e2e.test_agent_kill import AgentProcess, free_port, wait_healthy
from tests.e2e.test_masterdata_kill import agent_toml, bulk_catalog


def _line(page: str, label: str) -> str:
    (line,) = [x for x in page.splitlines() if x.startswith(label)]
    return line


def _port(config: Path) -> int:
    port: int = tomllib.loads(config.read_text())["agent"]["http_port"]
    return port


async def _running(config: Path, log: Path) -> AgentProcess:
    agent = AgentProcess(config, log)
    agent.start()
    await wait_healthy(f"http://127.0.0.1:{_port(config)}")
    return agent


async def test_the_stopped_agents_status_says_what_the_running_one_says(
    central: Any, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    await bulk_catalog(central, ["S1", "S2"])
    await register_branch(central, "B1", format_code="mini")
    config = agent_toml(tmp_path, nats_server.url)
    agent = await _running(config, tmp_path / "agent.log")
    try:
        async with central.sessionmaker() as s:
            target = await published_version(s)

        async def applied() -> bool:
            answer = cli(config, "status", "--json")
            return (
                answer.returncode == 0
                and json.loads(answer.stdout)["applied_version"] >= target > 0
                and json.loads(answer.stdout)["numbering_settled"]
            )

        await wait_until(applied, timeout=60, interval=0.5)
        running = cli(config, "status")
        running_json = json.loads(cli(config, "status", "--json").stdout)
    finally:
        agent.stop()
    assert running.returncode == 0, running.stderr
    # Master data came, no event went up: that is a sync all the same.
    assert running_json["masterdata_applied_at"] is not None
    assert running_json["last_sync_at"] == running_json["masterdata_applied_at"]
    assert f"master data      version {target}, last applied " in running.stdout

    offline = cli(config, "status")
    offline_json = json.loads(cli(config, "status", "--json").stdout)
    assert offline.returncode == 1
    # The running view's labels, values read from the database.
    assert "link to central  agent not running" in offline.stdout
    for label in ("branch", "outbox backlog", "master data", "last sync", "pending fiscal"):
        assert _line(offline.stdout, label) == _line(running.stdout, label), label
    assert "never" not in _line(offline.stdout, "last sync")
    assert set(offline_json) == set(running_json)
    for key in ("applied_version", "last_sync_at", "masterdata_applied_at", "first_event_seq"):
        assert offline_json[key] == running_json[key], key
    assert offline_json["downstream_last_seq"] == running_json["downstream_last_seq"]
    # Central confirms the numbering at each start: not settled while stopped.
    assert offline_json["numbering_settled"] is False
    assert "central confirms the event numbering when the agent starts" in offline.stdout
    # The stderr note is a whole line, and not in the page.
    assert re.fullmatch(r"the agent at \S+ does not answer: [^\n]*\n", offline.stderr)
    assert "does not answer" not in offline.stdout

    # Started again with the link down: the running agent waits for that confirmation,
    # as the stopped one said.
    config.write_text(
        config.read_text().replace(nats_server.url, f"nats://127.0.0.1:{free_port()}")
    )
    agent = await _running(config, tmp_path / "agent-2.log")
    try:
        again = json.loads(cli(config, "status", "--json").stdout)
    finally:
        agent.stop()
    assert again["numbering_settled"] is False
    assert again["applied_version"] == offline_json["applied_version"]
    assert again["masterdata_applied_at"] == offline_json["masterdata_applied_at"]
