"""What ``run`` refuses before it opens anything (another branch's database, credentials
it cannot use), and what /health and status say of a link that never came up."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import nkeys
import pytest

import branch_agent.agent as agent_module
from branch_agent.agent import Agent
from branch_agent.instance import InstanceLocked, StartRefused
from branch_agent.preflight import creds_problem
from branch_agent.settings import AgentSettings, DeviceConfig, TillConfig
from branch_agent.status import format_status
from central.embedded_nats import EmbeddedNats
from central.sync.nats_auth import format_creds
from devices.sim import start_simulator_pty
from protocol.codec import decode_envelope, encode
from protocol.ids import new_event_id
from tests.conftest import asgi_client, self_signed, wait_until

ROOT = Path(__file__).resolve().parents[2]
T1 = {"Authorization": "Bearer t1"}


def _settings(tmp_path: Path, branch: str, **extra: Any) -> AgentSettings:
    values: dict[str, Any] = {
        "branch": branch,
        "data_dir": str(tmp_path / "agent"),
        "nats_url": "nats://127.0.0.1:9",
        "tills": (TillConfig(id="T1", token="t1"),),
    }
    values.update(extra)
    return AgentSettings(**values)


def _run(tmp_path: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKROOM_")}
    return subprocess.run(
        [sys.executable, "-m", "branch_agent", "--config", str(config), "run"],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )


def _outbox(tmp_path: Path) -> list[tuple[int, str]]:
    path = tmp_path / "agent" / "agent.db"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return list(db.execute("SELECT seq, subject FROM outbox ORDER BY seq"))


async def test_run_refuses_a_database_made_for_another_branch_code(tmp_path: Path) -> None:
    # Installed as "B03" (a typo of B003): a shift opened, its event up.B03.*.
    typo = Agent(_settings(tmp_path, "B03"))
    await typo.start()
    try:
        async with asgi_client(typo.app) as client:
            opened = await client.post("/api/v1/shifts", json={"cashier": "ann"}, headers=T1)
            assert opened.status_code == 201, opened.text
    finally:
        await typo.stop()
    before = _outbox(tmp_path)
    assert [subject for _, subject in before] == ["up.B03.shift_opened"]

    fixed = Agent(_settings(tmp_path, "B003"))
    with pytest.raises(StartRefused) as refused:
        await fixed.start()
    message = str(refused.value)
    assert "was made for branch 'B03', not 'B003'" in message
    assert "move agent.db (with its -wal and -shm files) aside" in message
    assert _outbox(tmp_path) == before
    # Refused, it holds nothing: the directory is free for the right start.
    assert not fixed.instance.held
    again = Agent(_settings(tmp_path, "B03"))
    await again.start()
    await again.stop()

    # The command: one line, exit 2.
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nbranch = "B003"\ndata_dir = "{tmp_path / "agent"}"\n')
    out = _run(tmp_path, config)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "run: refused:" in out.stderr
    assert "made for branch 'B03', not 'B003'" in out.stderr
    assert _outbox(tmp_path) == before


async def test_a_database_used_under_two_codes_is_refused_too(tmp_path: Path) -> None:
    """Its newest event is the right branch's, an older one another's (a database
    accepted as-is before this check): still refused, naming the other code."""
    typo = Agent(_settings(tmp_path, "B03"))
    await typo.start()
    try:
        async with asgi_client(typo.app) as client:
            opened = await client.post("/api/v1/shifts", json={"cashier": "ann"}, headers=T1)
            assert opened.status_code == 201
    finally:
        await typo.stop()
    path = tmp_path / "agent" / "agent.db"
    with closing(sqlite3.connect(path)) as db, db:
        (payload,) = db.execute("SELECT payload FROM outbox").fetchone()
        later = msgspec.structs.replace(
            decode_envelope(payload), branch="B003", seq=2, event_id=new_event_id()
        )
        db.execute(
            "INSERT INTO outbox (seq, event_id, subject, kind, payload, created_at, attempts)"
            " SELECT 2, ?, 'up.B003.shift_opened', kind, ?, created_at, 0 FROM outbox",
            (later.event_id.hex, encode(later)),
        )
    with pytest.raises(StartRefused, match="made for branch 'B03', not 'B003'"):
        await Agent(_settings(tmp_path, "B003")).start()


async def test_two_agents_in_one_process_are_refused_as_well(tmp_path: Path) -> None:
    first = Agent(_settings(tmp_path, "B1"))
    await first.start()
    try:
        with pytest.raises(InstanceLocked, match=f"pid {os.getpid()}"):
            await Agent(_settings(tmp_path, "B1", http_port=8199)).start()
    finally:
        await first.stop()


def _creds(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_credentials_file_is_checked_before_use(tmp_path: Path) -> None:
    good = _creds(
        tmp_path,
        "good.creds",
        format_creds("eyJ0eXAi.x.y", nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)),
    )
    assert creds_problem(good) is None
    assert "does not exist" in str(creds_problem(str(tmp_path / "B1.creds")))
    garbage = _creds(tmp_path, "garbage.creds", "hello\nthis is not it\n")
    assert "holds no user JWT" in str(creds_problem(garbage))
    no_seed = _creds(tmp_path, "jwt-only.creds", "-----BEGIN NATS USER JWT-----\neyJ.x.y\n")
    assert "holds no user seed" in str(creds_problem(no_seed))
    bad_seed = _creds(
        tmp_path, "bad-seed.creds", format_creds("eyJ.x.y", b"SUAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    )
    assert "user seed is not valid" in str(creds_problem(bad_seed))


@pytest.mark.parametrize(
    ("creds", "named"),
    [
        ("missing.creds", "nats_creds file '{path}' does not exist"),
        ("garbage.creds", "nats_creds file '{path}' holds no user JWT"),
    ],
)
def test_run_refuses_credentials_it_cannot_use_naming_the_file(
    tmp_path: Path, creds: str, named: str
) -> None:
    path = tmp_path / creds
    if creds == "garbage.creds":
        path.write_text("not a creds file\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nbranch = "B1"\ndata_dir = "{tmp_path / "agent"}"\nnats_creds = "{path}"\n'
    )
    out = _run(tmp_path, config)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert named.format(path=path) in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    # Refused before the database: nothing made.
    assert not (tmp_path / "agent" / "agent.db").exists()


@pytest.mark.parametrize("fault", ["missing", "other key"])
def test_run_refuses_a_till_api_certificate_it_cannot_serve_before_opening_anything(
    tmp_path: Path, fault: str
) -> None:
    cert, key = self_signed(tmp_path)
    if fault == "missing":
        cert = tmp_path / "missing.pem"
        named = f"http_tls_cert file '{cert}' does not exist"
    else:
        _, key = self_signed(tmp_path, "other-")
        named = f"http_tls_key file '{key}' is not the private key of http_tls_cert '{cert}'"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nbranch = "B1"\ndata_dir = "{tmp_path / "agent"}"\n'
        f'http_tls_cert = "{cert}"\nhttp_tls_key = "{key}"\n'
    )
    out = _run(tmp_path, config)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert named in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    # Refused before the database (and the devices, the NATS link): nothing made.
    assert not (tmp_path / "agent" / "agent.db").exists()


async def test_a_link_never_up_since_the_start_is_degraded_after_a_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "NATS_GRACE_S", 0.5)
    # A port nothing listens on: a wrong nats_url on a fresh install.
    agent = Agent(_settings(tmp_path, "B1", nats_url="nats://127.0.0.1:1"))
    await agent.start()
    try:
        health = await agent.health()
        assert (health.status, health.nats) == ("ok", "disconnected")  # within the grace

        async def degraded() -> bool:
            health = await agent.health()
            return health.status == "degraded" and bool(agent.nats_error)

        await wait_until(degraded, timeout=20)
        health = await agent.health()
        assert health.detail.startswith("not connected to NATS since the start: ")
        assert agent.nats_error in health.detail
        async with asgi_client(agent.app) as client:
            body = (await client.get("/health")).json()
        assert (body["status"], body["nats"]) == ("degraded", "disconnected")
        assert "not connected to NATS since the start" in body["detail"]
    finally:
        await agent.stop()


async def test_no_credentials_configured_is_said_so_not_blamed_on_them(tmp_path: Path) -> None:
    server = EmbeddedNats(
        tmp_path / "nats", extra_config="authorization { user: central, password: s3cret }"
    )
    server.start()
    agent = Agent(_settings(tmp_path, "B1", nats_url=server.url))
    try:
        await agent.start()

        async def refused() -> bool:
            return bool(agent.link_refused)

        await wait_until(refused, timeout=20)
        health = await agent.health()
        assert health.status == "degraded"
        assert "none are configured" in health.detail
        assert "nats_creds" in health.detail
        assert "not valid for this branch" not in health.detail
        status = await agent.status()
        assert "none are configured" in status.nats_error
        assert not status.nats_credentials
    finally:
        await agent.stop()
        server.stop()


def test_denials_without_credentials_do_not_blame_the_credentials(tmp_path: Path) -> None:
    from branch_agent.status import AgentStatus

    status = AgentStatus(
        branch="B1",
        link="degraded",
        outbox_backlog=1,
        last_recorded_seq=1,
        last_acked_seq=0,
        last_sync_at=None,
        last_sync_error="",
        applied_version=0,
        pending_fiscal=0,
        downstream_last_seq=0,
        nats_error='nats: permissions violation for publish to "up.b1.sale"',
        nats_denied=['publish to "up.b1.sale"'],
        nats_credentials=False,
        devices=[],
    )
    text = format_status(status)
    assert "no NATS credentials configured" in text
    assert "credentials are not this branch's" not in text
    status.nats_credentials = True
    assert "credentials are not this branch's (B1)" in format_status(status)


async def test_run_refuses_a_till_removed_with_fiscal_work_pending(tmp_path: Path) -> None:
    """A till whose block is removed (or renamed, or left without its fiscal printer)
    while its printer still has work of it pending: refused, naming the till, what is
    pending and what to do; the block put back, the work is done, then it may go."""
    handle = start_simulator_pty("fiscal", link_path=str(tmp_path / "fiscal.tty"))
    printer = DeviceConfig(port=handle.url, protocol="datecs-x")
    t1 = TillConfig(id="T1", token="t1", fiscal_printer=printer)
    t2 = TillConfig(id="T2", token="t2")
    sale = {
        "sale_id": "s-1",
        "lines": [{"sku": "COFFEE-250", "quantity": "1"}],
        "payments": [{"type": "cash", "amount": 1000}],
    }
    try:
        handle.sim.set_fault("paper_end")
        agent = Agent(_settings(tmp_path, "B1", demo_catalog=True, tills=(t1, t2)))
        await agent.start()
        try:
            async with asgi_client(agent.app) as client:
                opened = await client.post(
                    "/api/v1/shifts", json={"opening_float": 2000}, headers=T1
                )
                assert opened.json()["float_deposit"] == "pending", opened.text
                sold = await client.post("/api/v1/sales", json=sale, headers=T1)
                assert sold.json()["status"] == "pending_fiscal", sold.text
        finally:
            await agent.stop()
        before = _outbox(tmp_path)

        for tills, said in (
            # renamed (T1 -> T1a), or removed
            (
                (TillConfig(id="T1a", token="t1", fiscal_printer=printer), t2),
                "till T1 is not in the config",
            ),
            ((t2,), "till T1 is not in the config"),
            # kept, its fiscal printer taken out
            (
                (TillConfig(id="T1", token="t1"), t2),
                "till T1's block in the config has no fiscal_printer",
            ),
        ):
            refused_start = Agent(_settings(tmp_path, "B1", demo_catalog=True, tills=tills))
            with pytest.raises(StartRefused) as refused:
                await refused_start.start()
            message = str(refused.value)
            assert message.startswith(said), message
            assert "2 record(s) waiting for its fiscal printer" in message, message
            assert "1 sale(s) waiting to be printed" in message
            assert "1 opening float(s) not deposited" in message
            assert "Keep (or put back) its block, id 'T1' with its fiscal_printer" in message
            assert "/api/v1/manager/sales/T1/{sale_id}/complete-unfiscal" in message
            # the float is settled by the manager when the printer is gone for good
            assert "/api/v1/manager/tills/T1/fiscal/settle-pending" in message
            assert "T2" not in message
            assert not refused_start.instance.held
            assert _outbox(tmp_path) == before

        # The command: one line naming the till, exit 2, nothing changed.
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\nbranch = "B1"\ndata_dir = "{tmp_path / "agent"}"\n'
            '[[agent.tills]]\nid = "T2"\ntoken = "t2"\n'
        )
        out = _run(tmp_path, config)
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr
        assert out.stderr.count("\n") == 1, out.stderr
        assert "run: refused: till T1 is not in the config" in out.stderr
        assert _outbox(tmp_path) == before

        # The block kept until its printer has done the work: then it may go.
        handle.sim.set_fault("paper_end", on=False)
        agent = Agent(_settings(tmp_path, "B1", demo_catalog=True, tills=(t1, t2)))
        await agent.start()
        try:

            async def printed() -> bool:
                await agent.fiscal.process_till("T1")
                return not await agent.sales.pending_sales() and len(handle.sim.cash_moves) == 1

            await wait_until(printed, timeout=20)
        finally:
            await agent.stop()
        removed = Agent(_settings(tmp_path, "B1", demo_catalog=True, tills=(t2,)))
        await removed.start()
        await removed.stop()
    finally:
        handle.stop()
