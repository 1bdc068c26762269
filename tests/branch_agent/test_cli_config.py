"""Bad agent configuration: refused when the settings are read, by name, exit 2, for
every command (never a traceback at ``run``, never a ``status`` saying all is well)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from branch_agent.settings import load_settings
from branch_agent.status import format_status
from protocol.config import SettingsError
from tests.conftest import run_bare, run_into_closed_pipe, wait_until

ROOT = Path(__file__).resolve().parents[2]
GOOD = '[agent]\nbranch = "B1"\ndata_dir = "{data}"\nhttp_port = 1\n'


def _agent(tmp_path: Path, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = run_bare(
        "branch_agent", tmp_path, "--config", config, *args
    )
    return result


def _write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(GOOD.format(data=tmp_path / "data") + extra)
    return path


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ('nats_cred = "B1.creds"\n', "unknown setting 'nats_cred'"),
        ("bogus_field = 1\n", "unknown setting 'bogus_field'"),
        ('timezone = "Mars/Olympus"\n', "timezone: unknown time zone 'Mars/Olympus'"),
        (
            '[[agent.tills]]\nid = "T1"\n'
            'fiscal_printer = { port = "loop://", protocol = "nope" }\n',
            "fiscal_printer: unsupported protocol 'nope'",
        ),
        (
            '[[agent.tills]]\nid = "T1"\nscale = { port = "loop://", baud = 9600 }\n',
            "unknown setting 'tills[0].scale.baud'",
        ),
        # Two devices on one port talk over each other (another till's scale too).
        (
            '[[agent.tills]]\nid = "T1"\ntoken = "t1"\n'
            'scale = { port = "socket://127.0.0.1:21013" }\n'
            '[[agent.tills]]\nid = "T2"\ntoken = "t2"\n'
            'scale = { port = "socket://127.0.0.1:21013" }\n',
            "tills[0].scale (till T1) and tills[1].scale (till T2) are both on port"
            " 'socket://127.0.0.1:21013': each device needs a port of its own",
        ),
        # Sections beside [agent] were ignored: the tills' devices, the link's settings
        # under a heading of their own, a misspelt [agent], all left at their defaults.
        ('[device]\nport = "loop://"\n', "unknown section [device]"),
        ('[nats]\nurl = "nats://hq:4222"\n', "unknown section [nats]"),
        ('[agnet.tills]\nid = "T1"\n', "unknown section [agnet]"),
        # What would record one till's sales as another's, give a till the manager's
        # rights, or fail only at the first sale (tests/branch_agent/test_settings.py).
        (
            '[[agent.tills]]\nid = "T1"\ntoken = "same-secret"\n'
            '[[agent.tills]]\nid = "T2"\ntoken = "same-secret"\n',
            "tills[0] (till T1) and tills[1] (till T2) have the same token",
        ),
        (
            'manager_token = "boss-secret"\n[[agent.tills]]\nid = "T1"\ntoken = "boss-secret"\n',
            "tills[0].token (till T1) is the manager_token",
        ),
        (
            '[[agent.tills]]\nid = "T1"\ntoken = "t1"\n[[agent.tills]]\nid = "T1"\ntoken = "t2"\n',
            "tills[0] (till T1) and tills[1] have the same id 'T1'",
        ),
        ('[[agent.tills]]\nid = "T1"\n', "tills[0].token (till T1) is empty"),
        (
            '[[agent.tills]]\nid = "T1"\ntoken = "t1"\ndrawer_pin = 3\n',
            "drawer_pin: 3 is no cash drawer pin",
        ),
        ('timezone = "EST"\n', "use a zone named by place, such as America/New_York"),
        ('http_tls_key = "/etc/agent.key"\n', "http_tls_key is set without http_tls_cert"),
        # Was a traceback at run, after data_dir was made.
        ('weight_barcode_layout = "2XPPP"\n', "weight_barcode_layout: layout is 13 characters"),
    ],
)
@pytest.mark.parametrize("command", ["status", "run"])
def test_bad_settings_are_refused_by_name(
    tmp_path: Path, extra: str, named: str, command: str
) -> None:
    config = _write(tmp_path, extra)
    with pytest.raises(SettingsError) as refused:
        load_settings(config, env={})
    assert named in str(refused.value)
    out = _agent(tmp_path, str(config), command)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert named in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert "secret" not in out.stderr  # tills are named, tokens never
    assert f"settings file {str(config)!r}: " in out.stderr
    assert not (tmp_path / "data").exists()  # nothing started, nothing created


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    out = _agent(tmp_path, "/nonexistent.toml", "status")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "'/nonexistent.toml': No such file" in out.stderr


def test_a_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nbranch = "B1"\nhttp_port = \n')
    out = _agent(tmp_path, str(config), "status")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"settings file '{config}' is not valid TOML" in out.stderr


def test_the_known_protocols_and_zones_load(tmp_path: Path) -> None:
    config = _write(
        tmp_path,
        'timezone = "Europe/Berlin"\n[[agent.tills]]\nid = "T1"\ntoken = "t1"\n'
        'fiscal_printer = { port = "loop://", protocol = "datecs-x" }\n'
        'display = { port = "loop://" }\n',
    )
    settings = load_settings(config, env={})
    assert settings.timezone == "Europe/Berlin"
    assert settings.tills[0].display is not None


async def test_status_shows_why_nats_does_not_connect(make_agent: Any) -> None:
    # A port nothing listens on: the link stays down and status says why.
    agent = await make_agent("B1", "nats://127.0.0.1:1")

    async def said() -> bool:
        return bool((await agent.status()).nats_error)

    await wait_until(said)
    status = await agent.status()
    assert status.link == "disconnected"
    assert "NATS: " in format_status(status)
    assert status.nats_error in format_status(status)


def test_an_unknown_agent_variable_is_warned_about(tmp_path: Path) -> None:
    config = _write(tmp_path, "")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKROOM_")}
    env.update({"PYTHONPATH": str(ROOT), "BACKROOM_AGENT_NATS_CRED": "x.creds"})
    out = subprocess.run(
        [sys.executable, "-m", "branch_agent", "--config", str(config), "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert "BACKROOM_AGENT_NATS_CRED is no setting" in out.stderr, out.stderr


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("--help",)])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path, args: tuple[str, ...]) -> None:
    """``status | head``: the reader gone, no BrokenPipeError traceback."""
    import asyncio

    from branch_agent.db import upgrade

    config = _write(tmp_path, "")
    (tmp_path / "data").mkdir()
    asyncio.run(upgrade(load_settings(config).database_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKROOM_")}
    env["PYTHONPATH"] = str(ROOT)
    out = run_into_closed_pipe(
        [sys.executable, "-m", "branch_agent", "--config", str(config), *args],
        env=env,
        cwd=tmp_path,
    )
    assert "Traceback" not in out.stderr, out.stderr
    assert "BrokenPipeError" not in out.stderr, out.stderr
    # argparse itself ignores a failed write of its help.
    assert out.returncode == (0 if args == ("--help",) else 1)


@pytest.mark.parametrize(
    "args", [("stock", "balances"), ("fiscal", "finish-open", "T1", "--reason", "x")]
)
def test_manager_commands_without_a_manager_token_say_so_on_stderr(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    # On stdout the line read as the command's answer (a script parsing its JSON).
    out = _agent(tmp_path, str(_write(tmp_path, "")), *args)
    assert out.returncode == 2
    assert out.stdout == ""
    assert "need the agent's manager_token" in out.stderr
