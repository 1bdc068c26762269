"""The agent's composition root: ``Agent(settings)`` owns everything one store runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import nats
from litestar import Litestar
from nats.aio.client import Client
from nats.js import JetStreamContext

from branch_agent.api import AgentHealth, create_till_app
from branch_agent.db import create_engine, create_sessionmaker, upgrade
from branch_agent.demo_catalog import seed_demo_catalog
from branch_agent.downstream import DownstreamReader
from branch_agent.outbox import backlog
from branch_agent.sales import SaleService
from branch_agent.sender import OutboxSender
from branch_agent.settings import AgentSettings
from protocol.codec import encode
from protocol.messages import BranchHeartbeat
from protocol.subjects import HEARTBEAT_KIND, up_subject

__all__ = ["Agent"]

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.engine = create_engine(settings.database_path)
        self.sessionmaker = create_sessionmaker(self.engine)
        self.write_lock = asyncio.Lock()
        self.sales = SaleService(settings, self.sessionmaker, self.write_lock)
        self.sender = OutboxSender(
            self.sessionmaker,
            self.write_lock,
            batch=settings.outbox_batch,
            publish_timeout_s=settings.outbox_publish_timeout_s,
        )
        # Handlers per down-stream kind are registered by the parts that own them.
        self.downstream = DownstreamReader(settings.branch)
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._app: Litestar | None = None

    @property
    def app(self) -> Litestar:
        if self._app is None:
            self._app = create_till_app(self)
        return self._app

    async def start(self) -> None:
        await upgrade(self.settings.database_path)
        if self.settings.demo_catalog:
            async with self.write_lock, self.sessionmaker() as session, session.begin():
                await seed_demo_catalog(session)
        # Connecting blocks until a server answers: the store trades meanwhile.
        self._tasks.append(asyncio.create_task(self._sync()))

    async def _sync(self) -> None:
        self.nc = await nats.connect(**self._nats_options())
        self.js = self.nc.jetstream()
        self._tasks.append(asyncio.create_task(self._heartbeats()))
        self._tasks.append(asyncio.create_task(self.downstream.run(self.js, self._stop)))
        await self.sender.run(self.nc, self.js, self._stop)

    def _nats_options(self) -> dict[str, Any]:
        async def on_error(exc: Exception) -> None:
            log.warning("nats: %s", exc)

        async def on_reconnected() -> None:
            self.sender.wake()

        options: dict[str, Any] = {
            "servers": [u.strip() for u in self.settings.nats_url.split(",")],
            "name": f"agent-{self.settings.branch}",
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "error_cb": on_error,
            "reconnected_cb": on_reconnected,
            # Confined to its own inbox prefix so no other branch's replies are readable.
            "inbox_prefix": f"_INBOX.{self.settings.branch}".encode(),
        }
        if self.settings.nats_creds:
            options["user_credentials"] = self.settings.nats_creds
        if self.settings.nats_user:
            options["user"] = self.settings.nats_user
            options["password"] = self.settings.nats_password
        return options

    async def _heartbeats(self) -> None:
        while not self._stop.is_set():
            try:
                await self.publish_heartbeat()
            except Exception as exc:
                log.debug("heartbeat not sent: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.heartbeat_interval_s)

    async def heartbeat(self) -> BranchHeartbeat:
        async with self.sessionmaker() as session:
            pending = await backlog(session)
        return BranchHeartbeat(
            branch=self.settings.branch,
            sent_at=datetime.now(UTC),
            outbox_backlog=pending,
            last_acked_seq=self.sender.state.last_acked_seq,
        )

    async def publish_heartbeat(self) -> None:
        if self.js is None or self.nc is None or not self.nc.is_connected:
            return
        beat = await self.heartbeat()
        await self.js.publish(
            up_subject(self.settings.branch, HEARTBEAT_KIND), encode(beat), timeout=2.0
        )

    async def health(self) -> AgentHealth:
        async with self.sessionmaker() as session:
            pending = await backlog(session)
        connected = self.nc is not None and self.nc.is_connected
        return AgentHealth(
            status="ok",
            branch=self.settings.branch,
            nats="connected" if connected else "disconnected",
            outbox_backlog=pending,
        )

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
            self.nc = None
        await self.engine.dispose()

    async def serve(self) -> None:
        """Run until SIGINT/SIGTERM: the till API on the store LAN and the sync loops."""
        import uvicorn

        await self.start()
        server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host=self.settings.http_host,
                port=self.settings.http_port,
                log_level="warning",
                timeout_keep_alive=30,
            )
        )
        try:
            await server.serve()
        finally:
            await self.stop()
