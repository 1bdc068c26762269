"""Bad configuration and wrong migration commands: one line naming the fault, exit 2,
nothing changed (never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy import text

from central.db import create_engine, current_revisions, upgrade
from central.embedded_nats import EmbeddedNats
from central.settings import load_settings
from protocol.config import SettingsError
from protocol.subjects import INGEST_DURABLE, UP_STREAM
from tests.conftest import (
    PG_URL_ENV,
    empty_database,
    run_bare,
    run_into_closed_pipe,
    self_signed,
)

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
    brief = base.pop("_BRIEF", None) is not None
    return subprocess.run(
        [sys.executable, "-m", "central", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=15 if brief else 60,
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


@pytest.mark.parametrize("command", ["serve", "ingest"])
def test_a_tls_file_the_process_cannot_use_is_named_before_it_starts(
    tmp_path: Path, command: str
) -> None:
    cert, _ = self_signed(tmp_path)
    _, other_key = self_signed(tmp_path, "other-")
    # The API's certificate is read by serve only; the NATS client's by both.
    _refused(
        _central(tmp_path, command, BACKROOM_NATS_TLS_CA=str(tmp_path / "ca.pem")),
        f"nats_tls_ca file '{tmp_path / 'ca.pem'}' does not exist",
    )
    wrong_pair = {"BACKROOM_HTTP_TLS_CERT": str(cert), "BACKROOM_HTTP_TLS_KEY": str(other_key)}
    if command == "serve":
        _refused(
            _central(tmp_path, command, **wrong_pair),
            f"http_tls_key file '{other_key}' is not the private key of http_tls_cert",
        )
    assert not (tmp_path / "c.db").exists()


def test_a_database_never_migrated_is_named(tmp_path: Path) -> None:
    _refused(_central(tmp_path, "users", "list"), "no schema", "db upgrade")


def test_an_unknown_backroom_variable_is_warned_about(tmp_path: Path) -> None:
    assert _central(tmp_path, "db", "upgrade").returncode == 0
    out = _central(tmp_path, "users", "list", BACKROOM_HTTP_PROT="8001")
    assert out.returncode == 0, out.stderr
    assert "BACKROOM_HTTP_PROT is no setting" in out.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BACKROOM_HTTP_PORT", "70000"),  # was a traceback from uvicorn at `serve`
        ("BACKROOM_INGEST_BATCH", "0"),
        ("BACKROOM_INGEST_ACK_WAIT_S", "0"),
        ("BACKROOM_DB_POOL_SIZE", "0"),
        ("BACKROOM_UP_STREAM_REPLICAS", "7"),
    ],
)
def test_a_setting_out_of_its_range_is_refused_naming_the_variable(
    tmp_path: Path, name: str, value: str
) -> None:
    config = tmp_path / "central.toml"
    config.write_text("[central]\n")
    out = _central(tmp_path, "--config", str(config), "db", "upgrade", **{name: value})
    _refused(out, name, name.removeprefix("BACKROOM_").lower())
    assert "central.toml" not in out.stderr  # the value is not the file's
    assert not (tmp_path / "c.db").exists()


def test_a_setting_out_of_its_range_in_the_file_is_named_with_the_file(tmp_path: Path) -> None:
    config = tmp_path / "central.toml"
    config.write_text("[central]\nhttp_port = 0\n")
    with pytest.raises(SettingsError, match=r"central.toml.*http_port"):
        load_settings(config, env={})


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
    shown = json.loads(out.stdout)
    assert (shown["upgraded"], shown["from"], shown["upgraded_to"]) == (True, "base", "1401")
    out = _central(tmp_path, "db", "upgrade")
    head = await _revision(tmp_path)
    shown = json.loads(out.stdout)
    assert (shown["upgraded"], shown["from"], shown["upgraded_to"]) == (True, "1401", head)
    assert head != "1401"
    # Already at the newest: said so, not "upgraded" (before: the same answer as above).
    again = json.loads(_central(tmp_path, "db", "upgrade").stdout)
    assert (again["upgraded"], again["from"], again["upgraded_to"]) == (False, head, head)
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


def _run_briefly(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``_central`` for a command that runs until stopped when it is not refused: still
    running after a few seconds is a failure (the process is killed), not a hang."""
    try:
        return _central(tmp_path, *args, **{**env, "_BRIEF": "1"})
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"`{' '.join(args)}` ran instead of being refused") from exc


async def test_ingest_on_a_database_never_migrated_is_refused_and_consumes_nothing(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    # Before: it ran, pulled the shared consumer's batches and failed each with a traceback.
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=UP_STREAM, subjects=["up.>"])
        await js.add_consumer(
            UP_STREAM, ConsumerConfig(durable_name=INGEST_DURABLE, ack_policy=AckPolicy.EXPLICIT)
        )
        await js.publish("up.B001.sale", b"{}")
        out = _run_briefly(tmp_path, "ingest", BACKROOM_NATS_URL=nats_server.url)
        _refused(out, "no schema", "db upgrade")
        info = await js.consumer_info(UP_STREAM, INGEST_DURABLE)
        assert (info.num_pending, info.num_ack_pending, info.delivered.stream_seq) == (1, 0, 0)
    finally:
        await nc.close()


@pytest.mark.postgres
async def test_serve_on_postgresql_does_not_migrate_it(tmp_path: Path) -> None:
    # Before: serve upgraded the schema itself, under the running workers of a release.
    if not os.environ.get(PG_URL_ENV):
        pytest.skip("needs BACKROOM_TEST_PG_URL")  # PostgreSQL leg of .ci/run
    async with empty_database("postgresql", tmp_path) as url:
        out = _run_briefly(tmp_path, "serve", BACKROOM_DATABASE_URL=url, BACKROOM_HTTP_PORT="1")
        _refused(out, "no schema", "db upgrade")
        await upgrade(url, "1401")
        out = _run_briefly(tmp_path, "serve", BACKROOM_DATABASE_URL=url, BACKROOM_HTTP_PORT="1")
        _refused(out, "behind", "at 1401", "python -m central db upgrade")
        assert await current_revisions(url) == ("1401",)


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


def test_nats_server_config_on_a_host_without_the_chains_issuer_is_refused(
    tmp_path: Path,
) -> None:
    """`nats server-config` on a second host without the shared nats_issuer_dir printed
    a config for a new operator of its own: servers configured from it would trust none
    of the chain's credentials. With the database knowing the chain's issuer it is
    refused; on the host that has it, it prints the config."""
    host_a = {"BACKROOM_DATA_DIR": str(tmp_path / "host-a")}
    host_b = {"BACKROOM_DATA_DIR": str(tmp_path / "host-b")}
    assert _central(tmp_path, "db", "upgrade", **host_a).returncode == 0
    added = _central(tmp_path, "branches", "add", "B1", "--name", "Harbour", **host_a)
    assert added.returncode == 0, added.stderr
    out = _central(tmp_path, "nats", "server-config", "--resolver-dir", "r", **host_b)
    _refused(out, "not the chain's", "nats_issuer_dir")
    assert not (tmp_path / "host-b" / "nats-issuer" / "issuer.json").exists()
    out = _central(tmp_path, "nats", "server-config", "--resolver-dir", "r", **host_a)
    assert out.returncode == 0, out.stderr
    assert "operator" in out.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("ingest", "--workers", "0"),
        ("ingest", "--workers", "-2"),
        ("dead-letters", "list", "--limit", "-1"),
    ],
)
def test_a_count_below_one_is_a_usage_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    # `ingest --workers 0` ran for ever storing nothing; `--limit -1` listed everything.
    out = _central(tmp_path, *args, _BRIEF="1")
    assert out.returncode == 2, out.stderr
    assert "is not at least 1" in out.stderr
    assert "Traceback" not in out.stderr


def test_credentials_list_and_rotation_together_are_a_usage_error(tmp_path: Path) -> None:
    # --list won and the rotation asked for silently did not happen.
    out = _central(
        tmp_path, "branches", "credentials", "B1", "--list", "--retire-previous", _BRIEF="1"
    )
    assert out.returncode == 2, out.stderr
    assert "not allowed with" in out.stderr


def test_cli_times_are_iso_8601_as_in_the_api(tmp_path: Path) -> None:
    assert _central(tmp_path, "db", "upgrade").returncode == 0
    out = _central(tmp_path, "users", "add", "ana", "--role", "analyst")
    assert out.returncode == 0, out.stderr
    expires_at = json.loads(out.stdout)["expires_at"]
    # str() of a datetime wrote "2027-11-29 22:54:56.165235+00:00" here.
    assert "T" in expires_at, expires_at
    assert expires_at.endswith("Z"), expires_at


def test_beside_make_run_a_command_on_the_default_database_points_to_the_demo(
    tmp_path: Path,
) -> None:
    # Only branches, users and nats take var/demo/central.toml by themselves; the
    # others read the default database, and "run db upgrade" made a second chain.
    (tmp_path / "var" / "demo").mkdir(parents=True)
    (tmp_path / "var" / "demo" / "central.toml").write_text("[central]\n")
    _refused(_bare_central(tmp_path, "dead-letters", "list"), "--config var/demo/central.toml")


def _bare_central(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m central ARGS`` in tmp_path with no BACKROOM_* variable at all."""
    result: subprocess.CompletedProcess[str] = run_bare("central", tmp_path, *args)
    return result


def test_demo_ports_that_clash_are_refused_before_anything_starts(tmp_path: Path) -> None:
    args = ("demo", "--data-dir", str(tmp_path / "demo"), "--nats-port", "21022")
    out = _bare_central(tmp_path, *args)
    _refused(out, "port 21022 is both NATS (--nats-port) and B002's display")
    assert out.stdout == ""
    assert not (tmp_path / "demo").exists()
