"""Shared fixtures: a real nats-server, real databases (SQLite files; PostgreSQL when
``BACKROOM_TEST_PG_URL`` names a server, as ``.ci/run`` does), central and agents.

Tests that take ``db_url`` run once per available database; the PostgreSQL runs
carry the ``postgres`` marker so ``pytest -m postgres`` selects exactly them.
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from central.embedded_nats import EmbeddedNats

PG_URL_ENV = "BACKROOM_TEST_PG_URL"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_url" in metafunc.fixturenames:
        params: list[Any] = ["sqlite"]
        if os.environ.get(PG_URL_ENV):
            params.append(pytest.param("postgresql", marks=pytest.mark.postgres))
        metafunc.parametrize("db_kind", params, indirect=True)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Collect garbage after each test that runs whole processes and links: an
    unclosed socket is then reported at the test that leaked it, every run, instead of
    failing whichever later test the garbage collector happens to run in."""
    if {"e2e", "faults"} & set(item.path.parts):
        gc.collect()


@pytest.fixture
def db_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


async def pg_admin_execute(url: str, sql: str) -> None:
    """Run one statement (CREATE/DROP DATABASE) on the server of ``url``, connected to
    the database ``url`` names."""
    import asyncpg

    parsed = make_url(url)
    conn = await asyncpg.connect(
        user=parsed.username,
        password=parsed.password,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _create_pg_database(admin_url: str) -> str:
    name = f"backroom_test_{uuid.uuid4().hex[:12]}"
    await pg_admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def _drop_pg_database(admin_url: str, db_url: str) -> None:
    name = make_url(db_url).database
    await pg_admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def empty_database(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """An empty, unmigrated central database: a SQLite file, or a throwaway PostgreSQL
    database on the server named by ``BACKROOM_TEST_PG_URL`` (dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'central.db'}"
        return
    admin = os.environ[PG_URL_ENV]
    url = await _create_pg_database(admin)
    try:
        yield url
    finally:
        await _drop_pg_database(admin, url)


@pytest.fixture(scope="session")
def migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Per database kind, one central database migrated in this session (made by the
    first test that needs it): each test gets a copy, not the whole migration chain
    again (0.5-0.6 s a test). PostgreSQL's is dropped at the end."""
    templates: dict[str, str] = {"dir": str(tmp_path_factory.mktemp("migrated"))}
    yield templates
    if "postgresql" in templates:
        asyncio.run(_drop_pg_database(os.environ[PG_URL_ENV], templates["postgresql"]))


async def _migrated_copy(kind: str, tmp_path: Path, templates: dict[str, str]) -> str:
    """A copy of the migrated template of ``kind`` (made now if missing), for one test."""
    import sqlite3

    from central.db import upgrade

    if kind not in templates:
        if kind == "sqlite":
            template = f"sqlite+aiosqlite:///{Path(templates['dir']) / 'central.db'}"
        else:
            template = await _create_pg_database(os.environ[PG_URL_ENV])
        await upgrade(template)
        templates[kind] = template
    if kind == "sqlite":
        target = tmp_path / "central.db"
        source_path = str(make_url(templates[kind]).database)
        # The backup API copies a consistent database, whatever its journal holds.
        with (
            closing(sqlite3.connect(source_path)) as source,
            closing(sqlite3.connect(target)) as copy,
        ):
            source.backup(copy)
        return f"sqlite+aiosqlite:///{target}"
    admin = os.environ[PG_URL_ENV]
    name = f"backroom_test_{uuid.uuid4().hex[:12]}"
    template_name = make_url(templates[kind]).database
    await pg_admin_execute(admin, f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
    return make_url(admin).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
async def db_url(
    db_kind: str, tmp_path: Path, migrated_templates: dict[str, str]
) -> AsyncIterator[str]:
    """A fresh, migrated central database (a copy of the session's migrated one)."""
    url = await _migrated_copy(db_kind, tmp_path, migrated_templates)
    try:
        yield url
    finally:
        if db_kind != "sqlite":
            await _drop_pg_database(os.environ[PG_URL_ENV], url)


async def engine_with_branch(url: str) -> AsyncEngine:
    """An engine on a migrated central database, with branch B1 registered."""
    from central.db import create_engine, create_sessionmaker
    from central.services.branches import add_branch

    engine = create_engine(url)
    async with create_sessionmaker(engine)() as session, session.begin():
        await add_branch(session, code="B1", name="B1")
    return engine


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """``db_url``'s database (SQLite, and PostgreSQL when configured) with branch B1."""
    engine = await engine_with_branch(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def pg_engine(
    tmp_path: Path, migrated_templates: dict[str, str]
) -> AsyncIterator[AsyncEngine]:
    """A fresh, migrated PostgreSQL database with branch B1, for tests of what only
    PostgreSQL does (row locks, dropped connections); such tests are marked
    ``postgres`` and skipped without ``BACKROOM_TEST_PG_URL``."""
    url = await _migrated_copy("postgresql", tmp_path, migrated_templates)
    try:
        engine = await engine_with_branch(url)
        try:
            yield engine
        finally:
            await engine.dispose()
    finally:
        await _drop_pg_database(os.environ[PG_URL_ENV], url)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float = 20.0, interval: float = 0.1
) -> None:
    """Poll an async condition; fail with a clear message when it never holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        await asyncio.sleep(interval)


def central_settings(db_url: str, nats_url: str, **overrides: Any) -> Any:
    from central.settings import CentralSettings

    values: dict[str, Any] = {
        "database_url": db_url,
        "nats_url": nats_url,
        "ingest_fetch_timeout_s": 0.2,
        "ingest_ack_wait_s": 5.0,
    }
    values.update(overrides)
    return CentralSettings(**values)


@asynccontextmanager
async def running_central(settings: Any, *, ingest_workers: int = 1) -> AsyncIterator[Any]:
    """A started CentralRuntime with one in-process ingest worker (or ``ingest_workers``:
    0 for a test that runs ingestion as processes of its own), connected to NATS."""
    from central.runtime import CentralRuntime

    runtime = CentralRuntime(settings)
    await runtime.start(ingest_workers=ingest_workers)
    try:
        await asyncio.wait_for(runtime.nats_ready.wait(), 20)
        yield runtime
    finally:
        await runtime.stop()


@pytest.fixture
async def central(db_url: str, nats_server: EmbeddedNats) -> AsyncIterator[Any]:
    """Central (a CentralRuntime) with one in-process ingest worker."""
    async with running_central(central_settings(db_url, nats_server.url)) as runtime:
        yield runtime


async def register_branch(runtime: Any, code: str, **kwargs: Any) -> None:
    from central.services.branches import add_branch

    async with runtime.sessionmaker() as session, session.begin():
        await add_branch(session, code=code, name=code, **kwargs)


def agent_settings(tmp_path: Path, branch: str, nats_url: str, **overrides: Any) -> Any:
    from branch_agent.settings import AgentSettings, TillConfig

    values: dict[str, Any] = {
        "branch": branch,
        "data_dir": str(tmp_path / f"agent-{branch}"),
        "nats_url": nats_url,
        "demo_catalog": True,
        "heartbeat_interval_s": 0.5,
        "tills": (TillConfig(id="T1", token=f"{branch}-till-1"),),
    }
    values.update(overrides)
    return AgentSettings(**values)


@pytest.fixture
async def make_agent(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Factory of started in-process agents; all are stopped at the end."""
    from branch_agent.agent import Agent

    agents: list[Agent] = []

    async def factory(branch: str, nats_url: str, **overrides: Any) -> Agent:
        agent = Agent(agent_settings(tmp_path, branch, nats_url, **overrides))
        await agent.start()
        agents.append(agent)
        return agent

    yield factory
    for agent in agents:
        await agent.stop()


async def create_api_token(runtime: Any, role: str, name: str | None = None) -> str:
    """A new API user with ``role`` (admin, merchandiser, analyst); returns its bearer token."""
    from central.services.users import create_user

    async with runtime.sessionmaker() as session, session.begin():
        issued = await create_user(
            session, name=name or f"test-{role}-{uuid.uuid4().hex[:8]}", role=role
        )
    return issued.token


@asynccontextmanager
async def admin_client(runtime: Any) -> AsyncIterator[Any]:
    """An HTTP client of the head-office API of ``runtime``, authenticated as an admin."""
    from central.app import create_app

    token = await create_api_token(runtime, "admin")
    async with asgi_client(
        create_app(runtime.settings, runtime=runtime),
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client


@pytest.fixture
async def central_client(central: Any) -> AsyncIterator[Any]:
    """An HTTP client of the head-office API of ``central``, authenticated as an admin."""
    async with admin_client(central) as client:
        yield client


@pytest.fixture
async def client_as(central: Any) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Factory: ``await client_as("analyst")`` is an API client with a token of that role
    (``await client_as(None)`` one without credentials); all are closed at the end."""
    from contextlib import AsyncExitStack

    from central.app import create_app

    app = create_app(central.settings, runtime=central)
    async with AsyncExitStack() as stack:

        async def factory(role: str | None) -> Any:
            headers = {}
            if role is not None:
                headers["Authorization"] = f"Bearer {await create_api_token(central, role)}"
            return await stack.enter_async_context(asgi_client(app, headers=headers))

        yield factory


async def table_row_counts(runtime: Any) -> dict[str, int]:
    """The rows of every table of central's models: a refused request changes none."""
    from sqlalchemy import func, select

    from central.models import Base

    counts: dict[str, int] = {}
    async with runtime.sessionmaker() as session:
        for table in Base.metadata.sorted_tables:
            counts[table.name] = int(
                await session.scalar(select(func.count()).select_from(table)) or 0
            )
    return counts


def asgi_client(app: Any, **kwargs: Any) -> Any:
    """An httpx client calling an ASGI app in this event loop (database pools are per loop)."""
    import httpx

    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", **kwargs
    )


def run_bare(module: str, cwd: Path, *args: str, **env_set: str) -> Any:
    """``python -m MODULE ARGS`` in ``cwd`` with no BACKROOM_* variable but ``env_set``
    (the project importable from anywhere): what a technician's shell would run."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKROOM_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.update(env_set)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def central_cli(db_url: str, tmp_path: Path, *args: str, exit_code: int = 0) -> Any:
    """Run ``python -m central ARGS`` against a database; its last output line as JSON."""
    import json
    import subprocess
    import sys

    env = {
        **os.environ,
        "BACKROOM_DATABASE_URL": db_url,
        "BACKROOM_DATA_DIR": str(tmp_path / "central"),
        "BACKROOM_NATS_URL": "nats://127.0.0.1:1",
        "BACKROOM_CENTRAL_CONFIG": "",
    }
    out = subprocess.run(
        [sys.executable, "-m", "central", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == exit_code, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@asynccontextmanager
async def counted_statements(db_url: str) -> AsyncIterator[tuple[Any, list[str]]]:
    """A sessionmaker on an engine of its own for ``db_url`` and the list of statements
    it runs: what one call costs, without what the process does meanwhile."""
    from sqlalchemy import event

    from central.db import create_engine, create_sessionmaker

    engine = create_engine(db_url)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield create_sessionmaker(engine), statements
    finally:
        await engine.dispose()


def run_into_closed_pipe(args: list[str], **kwargs: Any) -> Any:
    """Run a command whose stdout reader has gone before it writes (``... | head``
    having read enough): what it says on stderr, and its exit code."""
    import subprocess

    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            args,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
            **kwargs,
        )
    finally:
        os.close(write)


def self_signed(tmp_path: Path, name: str = "") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its unencrypted key (openssl)."""
    import subprocess

    cert, key = tmp_path / f"{name}cert.pem", tmp_path / f"{name}key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
