"""Bad configuration and wrong migration commands: one line naming the fault, exit 2,
nothing changed (never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from central.db import create_engine
from central.settings import load_settings
from protocol.config import SettingsError
from tests.conftest import run_into_closed_pipe

ROOT = Path(__file__).resolve().parents[2]


def _central(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BACKROOM_")}
    base.update(
        {
            "BACKROOM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'c.db'}",
            "BACKROOM_DATA_DIR": str(tmp_path / "central"),
            "BACKROOM_NATS_URL": "nats://127.0.0.1:1",
            "PYTHONPATH": str(ROOT),
        }
    )
    base.update(env)
    return subprocess.run(
        [sys.executable, "-m", "central", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )


def _refused(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    for word in words:
        assert word in out.stderr


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    _refused(
        _central(tmp_path, "--config", "/nonexistent.toml", "users", "list"),
        "/nonexistent.toml",
        "No such file",
    )


def test_an_unknown_setting_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "central.toml"
    config.write_text('[central]\nhttp_port = 8001\nnats_cred = "x.creds"\n')
    with pytest.raises(SettingsError, match="unknown setting 'nats_cred'"):
        load_settings(config, env={})
    _refused(_central(tmp_path, "--config", str(config), "users", "list"), "'nats_cred'")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        # Beside [central]: ignored before, so the NATS link stayed the default one.
        ('[central]\nhttp_port = 8001\n[nat]\nurl = "nats://hq:4222"\n', "[nat]"),
        # A misspelt [central]: every setting was left at its default.
        ("[centrl]\nhttp_port = 8001\n", "[centrl]"),
        # A key before any section heading.
        ("http_port = 8001\n[central]\n", "'http_port'"),
    ],
)
def test_a_section_or_key_outside_central_is_refused(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "central.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=r"outside \[central\]|unknown section"):
        load_settings(config, env={})
    out = _central(tmp_path, "--config", str(config), "db", "upgrade")
    _refused(out, named, "[central]")
    assert not (tmp_path / "c.db").exists()  # nothing done


def test_a_database_never_migrated_is_named(tmp_path: Path) -> None:
    _refused(_central(tmp_path, "users", "list"), "no schema", "db upgrade")


def test_an_unknown_backroom_variable_is_warned_about(tmp_path: Path) -> None:
    assert _central(tmp_path, "db", "upgrade").returncode == 0
    out = _central(tmp_path, "users", "list", BACKROOM_HTTP_PROT="8001")
    assert out.returncode == 0, out.stderr
    assert "BACKROOM_HTTP_PROT is no setting" in out.stderr


@pytest.mark.parametrize("url", ["mysql://x", "postgresql://u@h/db", "not a url"])
def test_a_database_url_no_command_could_use_is_refused(tmp_path: Path, url: str) -> None:
    _refused(_central(tmp_path, "db", "upgrade", BACKROOM_DATABASE_URL=url), "database_url")


def test_a_database_server_that_is_down_is_named(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://postgres:secret@127.0.0.1:1/backroom"
    out = _central(tmp_path, "users", "list", BACKROOM_DATABASE_URL=url)
    _refused(out, "127.0.0.1:1", "cannot connect")
    assert "secret" not in out.stderr


async def _revision(tmp_path: Path) -> str:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
            return ",".join(sorted(r[0] for r in rows))
    finally:
        await engine.dispose()


async def test_upgrade_prints_the_revision_reached_and_refuses_going_back(
    tmp_path: Path,
) -> None:
    out = _central(tmp_path, "db", "upgrade", "1401")
    assert json.loads(out.stdout)["upgraded_to"] == "1401"
    out = _central(tmp_path, "db", "upgrade")
    head = await _revision(tmp_path)
    assert json.loads(out.stdout)["upgraded_to"] == head != "1401"
    _refused(_central(tmp_path, "db", "upgrade", "1401"), "use `db downgrade`")
    assert await _revision(tmp_path) == head
    _refused(_central(tmp_path, "db", "upgrade", "9999"), "9999")


async def test_a_downgrade_dropping_the_records_needs_drop_records(tmp_path: Path) -> None:
    assert _central(tmp_path, "db", "upgrade").returncode == 0
    added = _central(tmp_path, "branches", "add", "B1", "--timezone", "Europe/Berlin")
    assert added.returncode == 0, added.stderr
    head = await _revision(tmp_path)
    _refused(_central(tmp_path, "db", "downgrade", "9999"), "9999")
    _refused(_central(tmp_path, "db", "downgrade", "base"), "--drop-records", "0001")
    _refused(_central(tmp_path, "db", "downgrade", "0001"), "--drop-records", "0101")
    assert await _revision(tmp_path) == head
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT code FROM branches"))).all() == [("B1",)]
    finally:
        await engine.dispose()
    # A release rollback that drops no records needs no flag; the records' end does.
    out = _central(tmp_path, "db", "downgrade", "1709", "--drop-records")
    assert json.loads(out.stdout)["downgraded_to"] == "1709"
    out = _central(tmp_path, "db", "downgrade", "1601")
    assert json.loads(out.stdout)["downgraded_to"] == "1601"
    out = _central(tmp_path, "db", "downgrade", "base", "--drop-records")
    assert json.loads(out.stdout)["downgraded_to"] == "base"


async def _columns(tmp_path: Path, table: str) -> set[str]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(text(f"PRAGMA table_info({table})"))).all()
    finally:
        await engine.dispose()
    return {row[1] for row in rows}


@pytest.mark.parametrize(
    ("target", "undone"),
    [
        # Each of these downgrades drops recorded columns or tables (and nothing more
        # below it): shift id conflicts, a return's original till, a repricing's
        # per-branch lines, late documents, price history, transfer discrepancies,
        # receipts' voided lines and discounts. They went ahead without the flag.
        ("1712", ["1716"]),
        ("1715", ["1712", "1716"]),
        ("1717", ["1712", "1715", "1716"]),
        ("1711", ["1712", "1715", "1716", "1717"]),
        ("1709", ["1710", "1711", "1712", "1715", "1716", "1717"]),
        ("1101", ["1102", "1710", "1711", "1712", "1715", "1716", "1717"]),
    ],
)
async def test_a_downgrade_dropping_recorded_columns_needs_drop_records(
    tmp_path: Path, target: str, undone: list[str]
) -> None:
    assert _central(tmp_path, "db", "upgrade").returncode == 0
    head = await _revision(tmp_path)
    out = _central(tmp_path, "db", "downgrade", target)
    _refused(out, "--drop-records", *undone)
    assert await _revision(tmp_path) == head
    assert {"voided_lines"} <= await _columns(tmp_path, "receipts")
    assert {"original_till"} <= await _columns(tmp_path, "customer_returns")
    out = _central(tmp_path, "db", "downgrade", target, "--drop-records")
    assert json.loads(out.stdout)["downgraded_to"] == target


@pytest.mark.parametrize("args", [("db", "upgrade"), ("--help",)])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path, args: tuple[str, ...]) -> None:
    """``python -m central db upgrade | head``: no BrokenPipeError traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKROOM_")}
    env.update(
        {
            "BACKROOM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'c.db'}",
            "BACKROOM_DATA_DIR": str(tmp_path / "central"),
            "PYTHONPATH": str(ROOT),
        }
    )
    out = run_into_closed_pipe([sys.executable, "-m", "central", *args], env=env, cwd=tmp_path)
    assert "Traceback" not in out.stderr, out.stderr
    assert "BrokenPipeError" not in out.stderr, out.stderr
    # argparse itself ignores a failed write of its help.
    assert out.returncode == (0 if args == ("--help",) else 1)
