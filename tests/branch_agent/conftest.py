"""A store: an in-process agent whose till T1 has every device, each a simulator
reached through a pyserial URL (pty pairs, as a USB-serial adapter would be)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from branch_agent.agent import Agent
from branch_agent.db import create_engine, database_url, upgrade
from branch_agent.models import OutboxEvent
from branch_agent.settings import AgentSettings, DeviceConfig, TillConfig
from devices.scanner import ean_check_digit
from devices.sim import SimulatorHandle, start_simulator_pty
from protocol.codec import decode_envelope
from protocol.events import EventEnvelope
from tests.conftest import asgi_client

TILL = {"Authorization": "Bearer till-1-secret"}
TILL2 = {"Authorization": "Bearer till-2-secret"}
MANAGER = {"Authorization": "Bearer manager-secret"}


def embedded_code(plu: int, grams: int) -> str:
    body = f"20{plu:05d}{grams:05d}"
    return body + str(ean_check_digit(body))


@dataclass
class Store:
    agent: Agent
    client: httpx.AsyncClient
    fiscal: SimulatorHandle
    printer: SimulatorHandle
    display: SimulatorHandle
    scale: SimulatorHandle
    scanner: SimulatorHandle

    async def events(self, kind: str | None = None) -> list[EventEnvelope]:
        async with self.agent.sessionmaker() as session:
            query = select(OutboxEvent.payload).order_by(OutboxEvent.seq)
            if kind:
                query = query.where(OutboxEvent.kind == kind)
            return [decode_envelope(p) for p in await session.scalars(query)]

    async def sale(self, body: dict[str, Any], headers: dict[str, str] = TILL) -> Any:
        """Sell as a till does: into its open shift, opened first if there is none
        (the agent refuses a sale outside the till's open shift)."""
        await self.open_shift(headers)
        return await self.client.post("/api/v1/sales", json=body, headers=headers)

    async def open_shift(self, headers: dict[str, str] = TILL, **body: Any) -> Any:
        """The till's open shift (POST /api/v1/shifts: the open one again, 200, or a new one)."""
        opened = await self.client.post("/api/v1/shifts", json=body, headers=headers)
        assert opened.status_code in (200, 201), opened.text
        return opened.json()


def store_settings(tmp_path: Path, handles: dict[str, SimulatorHandle], **extra: Any) -> Any:
    values: dict[str, Any] = {
        "branch": "B1",
        "data_dir": str(tmp_path / "agent"),
        # Nothing listens there: the store trades without central.
        "nats_url": "nats://127.0.0.1:9",
        "demo_catalog": True,
        "manager_token": "manager-secret",
        "timezone": "Europe/Berlin",
        "fiscal_retry_interval_s": 3600.0,
        "device_poll_interval_s": 3600.0,
        "tills": (
            TillConfig(
                id="T1",
                token="till-1-secret",
                fiscal_printer=DeviceConfig(port=handles["fiscal"].url, protocol="datecs-x"),
                receipt_printer=DeviceConfig(port=handles["printer"].url, protocol="escpos"),
                display=DeviceConfig(port=handles["display"].url),
                scale=DeviceConfig(port=handles["scale"].url, protocol="toledo-8217"),
                scanner=DeviceConfig(port=handles["scanner"].url),
            ),
            TillConfig(id="T2", token="till-2-secret"),
        ),
    }
    values.update(extra)
    return AgentSettings(**values)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    # Behind symlinks that go with the simulator when it stops: a stopped device's
    # /dev/pts number can be handed to another process's pty at once, and the driver
    # reopening it would talk to that one.
    handles = {
        kind: start_simulator_pty(kind, link_path=str(tmp_path / f"{kind}.tty"))
        for kind in ("fiscal", "printer", "display", "scanner", "scale")
    }
    agent = Agent(store_settings(tmp_path, handles))
    try:
        await agent.start()
        async with asgi_client(agent.app) as client:
            yield Store(agent, client, **handles)
    finally:
        await agent.stop()
        for handle in handles.values():
            handle.stop()


def to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


@pytest.fixture
async def agent_engine(tmp_path: Path) -> AsyncIterator[Callable[..., AsyncEngine]]:
    """Engines on one migrated agent database, all disposed at the end:
    ``agent_engine()`` as the agent opens it, ``inline=True`` as its sale path does,
    ``reader=False`` without the agent's direct reader (lookups go through the session)."""
    path = tmp_path / "agent.db"
    await upgrade(path)
    engines: list[AsyncEngine] = []

    def factory(*, inline: bool = False, reader: bool = True) -> AsyncEngine:
        engine = (
            create_engine(path, inline=inline)
            if reader
            else create_async_engine(database_url(path))
        )
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.dispose()
