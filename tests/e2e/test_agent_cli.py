"""The agent's command line against a real agent process: stock documents and status."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from central.embedded_nats import EmbeddedNats
from tests.central.test_auth_tls import self_signed
from tests.e2e.test_agent_kill import REPO, AgentProcess, free_port, wait_healthy


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "branch_agent", "--config", str(config), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_stock_and_status_commands(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nbranch = "B7"\ndata_dir = "{tmp_path / "agent"}"\n'
        f'nats_url = "{nats_server.url}"\nhttp_port = {port}\n'
        'demo_catalog = true\nmanager_token = "boss"\n'
        '[[agent.tills]]\nid = "T1"\ntoken = "t1"\n'
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        await wait_healthy(f"http://127.0.0.1:{port}")
        receipt = ("stock", "goods-receipt", "MILK-1L=24@70", "--supplier", "DAIRY")
        received = cli(config, *receipt)
        assert received.returncode == 0, received.stdout + received.stderr
        assert json.loads(received.stdout)["lines"][0]["quantity_milli"] == 24000
        # Run again without --id (after a timeout, say): refused, naming the first; the
        # stock is not doubled.
        repeated = cli(config, *receipt)
        assert repeated.returncode == 1, repeated.stdout + repeated.stderr
        assert json.loads(repeated.stdout)["errors"][0]["field"] == "document_id"
        first_number = json.loads(received.stdout)["number"]
        assert "refused: 409 Conflict: the same goods receipt was posted" in repeated.stderr
        assert first_number in repeated.stderr
        assert "--again" in repeated.stderr
        # A second delivery indeed: --again posts it.
        coffee = ("stock", "goods-receipt", "COFFEE-250=5@400", "--supplier", "ACME")
        assert cli(config, *coffee).returncode == 0
        assert cli(config, *coffee).returncode == 1
        again = cli(config, *coffee, "--again")
        assert again.returncode == 0, again.stdout + again.stderr
        # No more leaves than is on hand, unless the manager says the books are wrong.
        theft = ("stock", "write-off", "COFFEE-250=50", "--reason", "theft", "--id", "WO-3")
        short = cli(config, *theft)
        assert short.returncode == 1, short.stdout + short.stderr
        assert "COFFEE-250: 10 on hand, 50 to take out" in short.stderr
        assert "[lines[0].quantity]" in short.stderr
        forced = cli(config, *theft, "--allow-negative")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        refused = cli(config, "stock", "write-off", "MILK-1L=2")  # no reason given
        assert refused.returncode == 1
        assert json.loads(refused.stdout)["errors"][0]["field"] == "reason"
        assert "refused: 422" in refused.stderr
        assert "[reason]" in refused.stderr
        # One id, one document: a retry gets the original (exit 0), other content under
        # the same id is refused (exit 1, 409 naming document_id), nothing recorded.
        write_off = ("stock", "write-off", "--id", "WO-1", "--reason", "broken")
        first = cli(config, *write_off, "MILK-1L=1")
        assert first.returncode == 0, first.stdout + first.stderr
        retry = cli(config, *write_off, "MILK-1L=1")
        assert retry.returncode == 0, retry.stdout + retry.stderr
        assert json.loads(retry.stdout) == json.loads(first.stdout)
        assert "already posted with this content" in retry.stderr
        other = cli(config, *write_off, "MILK-1L=3")
        assert other.returncode == 1, other.stdout + other.stderr
        assert json.loads(other.stdout)["status"] == 409
        assert json.loads(other.stdout)["errors"][0]["field"] == "document_id"
        assert "refused: 409 Conflict: document WO-1 was posted with other content" in (
            other.stderr
        )
        assert "[document_id]" in other.stderr
        cli(config, "stock", "stocktake", "open", "--id", "ST-1")
        cli(config, "stock", "stocktake", "count", "ST-1", "shelf", "MILK-1L=20")
        # 24 received, 1 written off: 23 booked.
        posted = cli(config, "stock", "stocktake", "post", "ST-1")
        assert json.loads(posted.stdout)["lines"][0]["quantity_milli"] == -3000
        # Posted again (the first answer lost): the posted stocktake, exit 0.
        reposted = cli(config, "stock", "stocktake", "post", "ST-1")
        assert reposted.returncode == 0, reposted.stdout + reposted.stderr
        assert json.loads(reposted.stdout) == json.loads(posted.stdout)
        stock = cli(config, "stock", "balances", "MILK-1L")
        assert json.loads(stock.stdout) == [
            {"sku": "MILK-1L", "quantity": "20.000", "quantity_milli": 20000}
        ]
        status = cli(config, "status")
        assert status.returncode == 0, status.stderr
        assert "branch           B7" in status.stdout
        assert "link to central  connected" in status.stdout
        assert "master data      version 0" in status.stdout
        # No central on this NATS: the new database's events wait to be numbered.
        assert "waiting for central to confirm the event numbering" in status.stdout
        as_json = json.loads(cli(config, "status", "--json").stdout)
        assert (as_json["last_recorded_seq"], as_json["numbering_settled"]) == (6, False)
    finally:
        agent.stop()
    offline = cli(config, "status", "--json")
    assert offline.returncode == 1
    assert json.loads(offline.stdout)["link"] == "agent not running"
    assert json.loads(offline.stdout)["numbering_settled"] is False


async def test_backup_while_running_and_restore_when_stopped(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "agent.toml"
    data = tmp_path / "agent"
    config.write_text(
        f'[agent]\nbranch = "B7"\ndata_dir = "{data}"\n'
        f'nats_url = "{nats_server.url}"\nhttp_port = {port}\n'
        'demo_catalog = true\nmanager_token = "boss"\n'
    )
    other = tmp_path / "other.toml"
    other.write_text(config.read_text().replace('"B7"', '"B8"'))
    backup = tmp_path / "nightly.db"
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        await wait_healthy(f"http://127.0.0.1:{port}")
        cli(config, "stock", "goods-receipt", "MILK-1L=24@70", "--supplier", "DAIRY")
        taken = cli(config, "backup", str(backup))
        assert taken.returncode == 0, taken.stdout + taken.stderr
        assert json.loads(taken.stdout)["last_event_seq"] == 1
        assert json.loads(taken.stdout)["branch"] == "B7"
        # One self-contained file: no -wal/-shm beside it (a cron deleting old
        # backups by name would leave those behind), not in WAL mode.
        assert [n for n in os.listdir(tmp_path) if n.startswith("nightly")] == ["nightly.db"]
        with closing(sqlite3.connect(f"file:{backup}?mode=ro", uri=True)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert [n for n in os.listdir(tmp_path) if n.startswith("nightly")] == ["nightly.db"]
        again = cli(config, "backup", str(backup))
        assert again.returncode == 1
        assert "exists already" in json.loads(again.stdout)["error"]
        cli(config, "stock", "goods-receipt", "MILK-1L=6@70", "--supplier", "DAIRY")
        running = cli(config, "restore", str(backup))
        # The data directory's lock refuses it (exit 2), naming the running agent.
        assert running.returncode == 2
        assert "stop it first" in json.loads(running.stdout)["error"]
    finally:
        agent.stop()
    # Another store's backup, and a file that is no database, change nothing.
    wrong = cli(other, "restore", str(backup))
    assert wrong.returncode == 1
    assert "branch 'B7', not 'B8'" in json.loads(wrong.stdout)["error"]
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    refused = cli(config, "restore", str(junk))
    assert refused.returncode == 1
    assert "not a readable SQLite database" in json.loads(refused.stdout)["error"]
    assert not [name for name in os.listdir(data) if "before-restore" in name]
    restored = cli(config, "restore", str(backup))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    kept = Path(json.loads(restored.stdout)["kept"])
    with closing(sqlite3.connect(data / "agent.db")) as db:
        assert db.execute("SELECT max(seq) FROM outbox").fetchone()[0] == 1
    # The replaced database is kept, with its WAL: both of its events.
    with closing(sqlite3.connect(kept)) as db:
        assert db.execute("SELECT max(seq) FROM outbox").fetchone()[0] == 2


async def test_an_agent_serving_https_is_seen_running_by_the_cli(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """With the till API on HTTPS, the technician's commands talk HTTPS to it, and
    restore refuses to replace the database under it (it used to take the HTTPS
    port's refusal of plain HTTP for "not running")."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nbranch = "B7"\ndata_dir = "{tmp_path / "agent"}"\n'
        f'nats_url = "{nats_server.url}"\nhttp_port = {port}\n'
        f'demo_catalog = true\nmanager_token = "boss"\n'
        f'http_tls_cert = "{cert}"\nhttp_tls_key = "{key}"\n'
    )
    backup = tmp_path / "nightly.db"
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        await wait_healthy(f"https://127.0.0.1:{port}", verify=False)
        received = cli(config, "stock", "goods-receipt", "MILK-1L=24@70", "--supplier", "DAIRY")
        assert received.returncode == 0, received.stdout + received.stderr
        status = cli(config, "status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert cli(config, "backup", str(backup)).returncode == 0
        running = cli(config, "restore", str(backup))
        assert running.returncode == 2, running.stdout
        assert "stop it first" in json.loads(running.stdout)["error"]
    finally:
        agent.stop()


def test_the_technicians_mistakes_get_a_reason_not_a_traceback(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: the agent is stopped
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nbranch = "B7"\ndata_dir = "{tmp_path / "agent"}"\n'
        f'http_port = {port}\nmanager_token = "boss"\n'
    )
    no_manager = tmp_path / "no-manager.toml"
    no_manager.write_text(config.read_text().replace('manager_token = "boss"\n', ""))
    assert cli(config, "db-upgrade").returncode == 0

    missing_dir = cli(config, "backup", str(tmp_path / "no-such-dir" / "agent.db"))
    assert missing_dir.returncode == 1
    assert "create it first" in json.loads(missing_dir.stdout)["error"]
    off = cli(no_manager, "stock", "balances")
    assert (off.returncode, "manager_token" in off.stderr) == (2, True)
    stopped = cli(config, "stock", "balances")
    assert stopped.returncode == 1
    assert "does not answer" in stopped.stderr
    no_config = subprocess.run(
        [sys.executable, "-m", "branch_agent", "status"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("BACKROOM_AGENT_")},
    )
    assert no_config.returncode == 2
    assert "missing required field `branch`" in no_config.stderr
    for result in (missing_dir, off, stopped, no_config):
        assert "Traceback" not in result.stdout + result.stderr
