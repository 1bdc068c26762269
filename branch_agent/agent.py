"""The agent's composition root: ``Agent(settings)`` owns everything one store runs."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import ssl
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from litestar import Litestar
from nats.aio.client import Client
from nats.errors import AuthorizationError
from nats.js import JetStreamContext
from sqlalchemy import func, select

from branch_agent.api import AgentHealth, create_till_app
from branch_agent.db import create_engine, create_sessionmaker, upgrade
from branch_agent.demo_catalog import seed_demo_catalog
from branch_agent.devices import TillDevices, TillDeviceSet
from branch_agent.downstream import DownMessage, DownstreamReader
from branch_agent.fiscal import Fiscalizer, fiscal_fault, fiscal_remedy, printer_serial
from branch_agent.instance import InstanceLock
from branch_agent.masterdata import MasterDataApplier
from branch_agent.models import Counter, OutboxEvent
from branch_agent.nats_denials import NatsDenials, is_permission_violation
from branch_agent.numbering import EventNumbering, server_id
from branch_agent.outbox import EVENT_SEQ, backlog, mark_unsent_from, utc_offset_min
from branch_agent.preflight import check_before_start, creds_problem
from branch_agent.restored import RecordedAgainOut, recorded_again, settle_recorded_again
from branch_agent.sales import PayoutFrom, SaleService
from branch_agent.schemas import RecordedAgainSettleIn, ReturnIn, ReturnOut, SaleIn, SaleOut
from branch_agent.sender import OutboxSender
from branch_agent.settings import AgentSettings
from branch_agent.shifts import ShiftService
from branch_agent.status import AgentStatus, build_status
from branch_agent.stock import StockService
from devices.errors import DeviceError
from protocol.codec import decode_resend, encode
from protocol.messages import BranchHeartbeat
from protocol.nats_link import close_unconnected, connect_cancellably
from protocol.subjects import (
    COMMAND_KIND,
    DOWN_STREAM,
    HEARTBEAT_KIND,
    down_consumer_name,
    up_subject,
)

__all__ = ["Agent"]

log = logging.getLogger(__name__)

# A new NATS client after the server closed the last one: waits from 0.5 s up to 30 s.
_RECONNECT_MIN_S = 0.5
_RECONNECT_MAX_S = 30.0
# A connection that lasted this long was not refused at once: backoff starts again.
_LINK_LASTED_S = 30.0
# How long the link's loops get to end by themselves once the client is gone.
_LINK_STOP_S = 5.0
# A link that has not come up this long after the start makes /health degraded (a
# wrong nats_url or port would otherwise look healthy for as long as it lasts).
NATS_GRACE_S = 15.0


def _agent_version() -> str:
    try:
        return importlib.metadata.version("backroom")
    except importlib.metadata.PackageNotFoundError:
        return ""


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.engine = create_engine(settings.database_path)
        self.sessionmaker = create_sessionmaker(self.engine)
        self.write_lock = asyncio.Lock()
        # Sales on an engine without aiosqlite's thread hops (the till waits on them).
        self.sale_engine = create_engine(settings.database_path, inline=True)
        self.sales = SaleService(settings, self.sale_engine, self.write_lock)
        self.sender = OutboxSender(
            self.sessionmaker,
            self.write_lock,
            batch=settings.outbox_batch,
            publish_timeout_s=settings.outbox_publish_timeout_s,
        )
        self.devices = TillDevices(settings)
        self.fiscal = Fiscalizer(
            settings, self.sessionmaker, self.write_lock, self.devices, self.sender.wake
        )
        self.shifts = ShiftService(settings, self.sessionmaker, self.write_lock, self.devices)
        self.stock = StockService(settings, self.sessionmaker, self.write_lock)
        # Handlers per down-stream kind are registered by the parts that own them.
        self.downstream = DownstreamReader(settings.branch)
        self.downstream.register(COMMAND_KIND, self._on_command)
        # Catalog, prices and promotions from central (applied in stream order).
        self.masterdata = MasterDataApplier(
            self.sessionmaker, self.write_lock, timezone=settings.timezone
        )
        self.masterdata.register(self.downstream)
        # A new database's events wait until central says where their numbers start.
        self.numbering = EventNumbering(
            self.sessionmaker,
            self.write_lock,
            self.sender.wake,
            server=server_id(settings.server_id),
            restore_hold_s=settings.restore_hold_s,
        )
        self.sender.numbering = self.numbering
        self.shifts.numbering = self.numbering
        if self.masterdata.requester is not None:
            self.masterdata.requester.numbering = self.numbering
            # While central numbers another database of the branch (the old server
            # still runs), that one reads the branch's down stream alone; this one
            # asks for a whole snapshot once it may read.
            self.downstream.hold = self._down_stream_hold
            self.downstream.on_hold = self.masterdata.requester.hold_began
            self.downstream.on_release = self.masterdata.requester.hold_ended
        self.resends = 0
        self.nc: Client | None = None
        # The NATS client's last error while not connected (refused, Authorization
        # Violation, TLS...), for status: otherwise only in the log. "": connected.
        self.nats_error = ""
        # What the server refuses on a live connection (another branch's credentials):
        # the link is up, nothing gets through.
        self.denials = NatsDenials()
        self.sender.on_acked = self.denials.succeeded
        self.downstream.on_fetched = lambda: self.denials.succeeded(
            [f"$JS.API.CONSUMER.MSG.NEXT.{DOWN_STREAM}.{down_consumer_name(settings.branch)}"]
        )
        if self.masterdata.requester is not None:
            self.masterdata.requester.on_answered = self.denials.succeeded
        self.js: JetStreamContext | None = None
        # Why the NATS server refuses or closed the agent's client (revoked
        # credentials, a protocol error): /health says degraded. "": it does not.
        self.link_refused = ""
        self._logged_problem = ""
        self._refusals = 0
        self._link_lasted = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._app: Litestar | None = None
        # One agent per data directory (see branch_agent.instance), held from start()
        # to stop().
        self.instance = InstanceLock(
            settings.data_path, command="run", http_port=settings.http_port
        )
        # When start() ran, and whether the link has been up since (for /health).
        self.started_at: float | None = None
        self.ever_connected = False

    def _down_stream_hold(self) -> str:
        refused = self.numbering.refused
        return f"another database of the branch runs ({refused})" if refused else ""

    @property
    def app(self) -> Litestar:
        if self._app is None:
            self._app = create_till_app(self)
        return self._app

    async def start(self) -> None:
        """Take the data directory, check what cannot work (``StartRefused``: nothing
        opened, nothing changed), then migrate and start the loops."""
        # Waits up to a second for a status only looking at the lock: not in the loop.
        await asyncio.to_thread(self.instance.acquire)
        try:
            await asyncio.to_thread(check_before_start, self.settings)
            await upgrade(self.settings.database_path)
        except BaseException:
            self.instance.release()
            raise
        self.started_at = asyncio.get_running_loop().time()
        await self.numbering.load()
        await self.masterdata.load()
        if self.settings.demo_catalog:
            async with self.write_lock, self.sessionmaker() as session, session.begin():
                await seed_demo_catalog(session)
        # Sales left pending by a crash or an absent printer are reconciled first, then
        # retried in the background while the till API already serves.
        self._tasks.append(asyncio.create_task(self.fiscal.run(self._stop)))
        self._tasks.append(asyncio.create_task(self._probe_devices()))
        self.devices.start_scanners()
        # Connecting blocks until a server answers: the store trades meanwhile.
        self._tasks.append(asyncio.create_task(self._sync()))

    async def record_sale(self, till: str, data: SaleIn) -> tuple[SaleOut, bool]:
        """Commit, fiscalize (when the till has a fiscal printer), show, open the drawer."""
        await self.numbering.hold_after_restore()
        out, created = await self.sales.record_sale(till, data)
        # Right after a printer failure the till is answered at once (pending); the
        # background retry prints it when the printer is back.
        if out.status == "pending_fiscal" and not self.fiscal.recently_failed(till):
            try:
                await self.fiscal.process_till(till)
            except Exception:
                # The sale is safe as pending (e.g. the disk filled up after printing:
                # the retry reconciles with the printer instead of printing again).
                log.exception("fiscalizing %s/%s failed", till, data.sale_id)
            event_seq = out.event_seq
            out = await self.sales.get_sale(till, data.sale_id)
            out.event_seq = event_seq
        if created:
            self.sender.wake()
            cash = any(p.type == "cash" for p in out.payments)
            out.drawer, out.drawer_error = await self.fiscal.present(
                till, out.total, out.change, cash
            )
        return out, created

    async def record_return(self, till: str, data: ReturnIn) -> tuple[ReturnOut, bool]:
        """Commit a customer return, then print its storno receipt (fiscal tills), or pay
        out its cash refund when it is without receipt."""
        await self.numbering.hold_after_restore()
        devices = self.devices.tills.get(till)
        if (
            data.without_receipt
            and (data.refund_type or "cash") == "cash"
            and devices is not None
            and devices.has_fiscal
        ):
            out, created = await self._return_paid_out(devices, data)
        else:
            out, created = await self.sales.record_return(till, data)
            if out.status == "pending_fiscal" and not self.fiscal.recently_failed(till):
                try:
                    await self.fiscal.process_till(till)
                except Exception:
                    log.exception("storno for %s/%s failed", till, data.return_id)
                out = await self.sales.get_return(till, data.return_id)
        if created and any(r.type == "cash" and r.amount > 0 for r in out.refunds):
            # The customer's cash comes out of the drawer.
            out.drawer, out.drawer_error = await self.fiscal.open_drawer_for_cash(till)
        return out, created

    async def _return_paid_out(
        self, devices: TillDeviceSet, data: ReturnIn
    ) -> tuple[ReturnOut, bool]:
        """A cash refund without receipt at a till with a fiscal printer: the printer's
        cash count is read (older cash intents settled first, under the till's fiscal
        queue, so nothing prints in between), the return is recorded with its pay-out's
        intent, then the pay-out is printed (cash out). A till posting the same return
        again after a failed pay-out pays it out then (as a cash move posted again)."""
        till = devices.till.id
        cash = self.fiscal.cash
        if await self.sales.payout_status(till, data.return_id) == "printed":
            # A repeat of one paid out: answered without asking the printer. (A pending
            # one goes through the queue below: settled with the printer first.)
            return await self.sales.record_return(till, data)
        async with devices.fiscal_queue:
            state: tuple[int, int] | None = None
            serial: str | None = None
            try:
                await cash.settle_till(devices)
                read = await cash.printer_cash(devices)
                # whose numbers they are: a swapped printer's never settle this pay-out
                serial = await printer_serial(devices)
                state = read
                payout = PayoutFrom(document=state[0], cash=state[1], printer=serial)
            except DeviceError as exc:
                why = f"{fiscal_fault(exc)}; {fiscal_remedy(exc.condition, till)}"
                payout = PayoutFrom(problem=why)
            out, created = await self.sales.record_return(till, data, payout)
            if out.payout == "pending" or (out.payout == "failed" and not created):
                pk = await self.sales.return_pk(till, data.return_id)
                await cash.pay_out(devices, pk, state, serial)
                out = await self.sales.get_return(till, data.return_id)
        return out, created

    async def _on_command(self, message: DownMessage) -> None:
        if message.key != "resend":
            log.info("unknown command %s ignored", message.subject)
            return
        request = decode_resend(message.data)
        if request.branch != self.settings.branch:
            log.warning("resend for %s reached %s: ignored", request.branch, self.settings.branch)
            return
        if not self.numbering.settled:
            # Numbers of the branch's earlier database: none of them is here.
            log.info("resend from %d ignored: numbering not settled yet", request.from_seq)
            return
        async with self.write_lock, self.sessionmaker() as session, session.begin():
            count = await mark_unsent_from(session, request.from_seq)
        self.resends += 1
        log.info("central asked for events from %d: %d queued again", request.from_seq, count)
        self.sender.wake()

    async def _probe_devices(self) -> None:
        while not self._stop.is_set():
            try:
                await self.devices.probe_all()
            except Exception:
                log.exception("device probe failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.device_poll_interval_s)

    def applied_version(self) -> int:
        """The master-data version the agent has applied (0 until master data arrives)."""
        applier = getattr(self, "masterdata", None)
        version = getattr(applier, "applied_version", 0) if applier is not None else 0
        if callable(version):
            version = version()
        return version if isinstance(version, int) else 0

    async def last_recorded_seq(self) -> int:
        async with self.sessionmaker() as session:
            counter = await session.get(Counter, EVENT_SEQ)
        return counter.value if counter is not None else 0

    async def last_acked_seq(self) -> int:
        """Every event up to this sequence number has a JetStream ack."""
        async with self.sessionmaker() as session:
            first_unsent = await session.scalar(
                select(func.min(OutboxEvent.seq)).where(OutboxEvent.sent_at.is_(None))
            )
            if first_unsent is not None:
                return int(first_unsent) - 1
            last = await session.scalar(select(func.max(OutboxEvent.seq)))
        return int(last or 0)

    async def status(self) -> AgentStatus:
        return await build_status(self)

    async def recorded_again(self) -> list[RecordedAgainOut]:
        """Sales and returns central holds that this restored database recorded again."""
        async with self.sessionmaker() as session:
            return await recorded_again(session)

    async def settle_recorded_again(
        self, kind: str, till: str, record_id: str, data: RecordedAgainSettleIn
    ) -> RecordedAgainOut:
        """The store manager settles a record flagged as recorded again."""
        async with self.write_lock, self.sessionmaker() as session, session.begin():
            return await settle_recorded_again(
                session, kind, till, record_id, data.settled_by, data.note
            )

    async def _sync(self) -> None:
        """Keep a NATS client: connect, run the link's loops until the client is closed
        for good, then connect again with a new one.

        nats-py reconnects by itself after a lost connection, but a server ``-ERR``
        (Authorization Violation when the credentials are revoked, or any other
        protocol error) closes the client for good: without a new client the store
        would stop syncing until the agent is restarted."""
        backoff = _RECONNECT_MIN_S
        while not self._stop.is_set():
            # The credentials file is read again at each connection (rotated ones are
            # taken up): one made unusable meanwhile is named, not a parser's error.
            unusable = creds_problem(self.settings.nats_creds) if self.settings.nats_creds else None
            if unusable is not None:
                self._link_failed(unusable)
                await _wait_stop(self._stop, backoff)
                backoff = min(backoff * 2, _RECONNECT_MAX_S)
                continue
            closed = asyncio.Event()
            nc = Client()
            # Status and stop() see the client while it is connecting.
            self.nc = nc
            try:
                await connect_cancellably(nc, **self._nats_options(nc, closed))
            except asyncio.CancelledError:
                # The agent stops while connecting: nothing of the client may linger.
                close_unconnected(nc)
                raise
            except Exception as exc:
                # Connecting retries by itself; what raises is the options' (a creds
                # file that cannot be read...): try again later, it may be fixed.
                self._link_failed(self._problem(exc))
                close_unconnected(nc)
                await _wait_stop(self._stop, backoff)
                backoff = min(backoff * 2, _RECONNECT_MAX_S)
                continue
            self.js = nc.jetstream()
            self._link_up()
            await self._run_link(nc, self.js, closed)
            if self._stop.is_set():
                return
            self._link_failed(
                f"the NATS server closed the connection: {self._problem(nc.last_error)}"
                if nc.last_error is not None
                else "the NATS connection was closed"
            )
            # A quick connection that is closed again at once (a server that keeps
            # refusing) backs off; one that lasted starts again from the minimum.
            await _wait_stop(self._stop, backoff)
            backoff = min(backoff * 2, _RECONNECT_MAX_S)
            if self._link_lasted:
                backoff = _RECONNECT_MIN_S

    async def _run_link(self, nc: Client, js: JetStreamContext, closed: asyncio.Event) -> None:
        """Everything that uses the client, until it is closed or the agent stops."""
        link_stop = asyncio.Event()
        started = asyncio.get_running_loop().time()
        tasks = [
            asyncio.create_task(self._heartbeats(link_stop)),
            asyncio.create_task(self.downstream.run(js, link_stop)),
            # Reports the master-data position to central (a snapshot when it is not
            # usable).
            asyncio.create_task(self.masterdata.keep_position(nc, link_stop)),
            asyncio.create_task(self.sender.run(nc, js, link_stop)),
        ]
        try:
            await _wait_any(closed, self._stop)
        finally:
            link_stop.set()
            # Each loop ends at its next check of link_stop; one waiting longer (a
            # request to a closed client) is cancelled; all at once when the agent
            # stops (as before: stopping is not held up).
            wait_s = 0 if self._stop.is_set() else _LINK_STOP_S
            _, pending = await asyncio.wait(tasks, timeout=wait_s)
            for task in pending:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._link_lasted = asyncio.get_running_loop().time() - started > _LINK_LASTED_S
            if not nc.is_closed and not self._stop.is_set():
                with contextlib.suppress(Exception):
                    await nc.close()

    def _problem(self, exc: BaseException | None) -> str:
        return nats_problem(
            exc, credentials=bool(self.settings.nats_creds or self.settings.nats_user)
        )

    def _link_up(self) -> None:
        self.ever_connected = True
        if self.link_refused or self.nats_error:
            log.warning("connected to NATS again")
        self.nats_error = ""
        self.link_refused = ""
        self._logged_problem = ""
        self._refusals = 0
        self.denials.clear()
        self.sender.wake()

    def _link_failed(self, problem: str) -> None:
        """The client is gone: shown in status, logged once while it stays the same."""
        self.nats_error = problem[:300]
        self.link_refused = problem[:300]
        if problem != self._logged_problem:
            self._logged_problem = problem
            log.error("NATS: %s; connecting again with a new client", problem)

    def _nats_options(self, nc: Client, closed: asyncio.Event) -> dict[str, Any]:
        async def on_error(exc: Exception) -> None:
            text = str(exc)[:300]
            if is_permission_violation(text):
                # Repeated on every retry: logged once until it stops.
                level = logging.WARNING if self.denials.record(text) else logging.DEBUG
                log.log(level, "%s", text)
                return
            problem = self._problem(exc)
            # Every failed attempt reports again: logged once until it changes.
            if problem != self._logged_problem:
                self._logged_problem = problem
                log.warning("nats: %s", problem)
            self.nats_error = problem[:300]
            if is_authorization_error(exc) and not nc.is_connected:
                self.link_refused = self.nats_error
                # Awaited between connection attempts: a server that refuses the
                # credentials is asked again with backoff, not twice a second.
                self._refusals += 1
                await asyncio.sleep(
                    min(_RECONNECT_MIN_S * 2 ** min(self._refusals, 8), _RECONNECT_MAX_S)
                )

        async def on_reconnected() -> None:
            self._link_up()

        async def on_closed() -> None:
            closed.set()

        options: dict[str, Any] = {
            "servers": [u.strip() for u in self.settings.nats_url.split(",")],
            "name": f"agent-{self.settings.branch}",
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "error_cb": on_error,
            "reconnected_cb": on_reconnected,
            "closed_cb": on_closed,
            # Confined to its own inbox prefix so no other branch's replies are readable.
            "inbox_prefix": f"_INBOX.{self.settings.branch}".encode(),
        }
        if self.settings.nats_tls_ca or self.settings.nats_tls_cert:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=self.settings.nats_tls_ca or None
            )
            if self.settings.nats_tls_cert:
                context.load_cert_chain(
                    self.settings.nats_tls_cert, self.settings.nats_tls_key or None
                )
            options["tls"] = context
        if self.settings.nats_creds:
            options["user_credentials"] = self.settings.nats_creds
        if self.settings.nats_user:
            options["user"] = self.settings.nats_user
            options["password"] = self.settings.nats_password
        return options

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.publish_heartbeat()
            except Exception as exc:
                log.debug("heartbeat not sent: %s", exc)
            await _wait_stop(stop, self.settings.heartbeat_interval_s)

    async def heartbeat(self, *, stopping: bool = False) -> BranchHeartbeat:
        async with self.sessionmaker() as session:
            pending = await backlog(session)
        now = datetime.now(UTC)
        return BranchHeartbeat(
            branch=self.settings.branch,
            sent_at=now,
            utc_offset_min=utc_offset_min(self.settings.timezone, now),
            outbox_backlog=pending,
            last_acked_seq=await self.last_acked_seq(),
            last_recorded_seq=await self.last_recorded_seq(),
            applied_version=self.applied_version(),
            devices=self.devices.statuses(),
            agent_version=_agent_version(),
            outbox_held=tuple(sorted(self.sender.state.held)[:100]),
            clock_offset_ms=self.clock_offset_ms(),
            agent_instance=self.numbering.instance,
            stopping=stopping,
            agent_server=self.numbering.server,
            first_seq=self.numbering.start,
            skipped_seqs=self.numbering.skipped[-100:],
            timezone=self.settings.timezone,
        )

    def clock_offset_ms(self) -> int | None:
        """This server's clock against central's, as last measured (None: not yet)."""
        requester = self.masterdata.requester
        return requester.clock_offset_ms if requester is not None else None

    async def publish_heartbeat(self, *, stopping: bool = False) -> None:
        if self.js is None or self.nc is None or not self.nc.is_connected:
            return
        if not self.numbering.settled:
            # Its sequence numbers would not be central's yet.
            return
        beat = await self.heartbeat(stopping=stopping)
        subject = up_subject(self.settings.branch, HEARTBEAT_KIND)
        await self.js.publish(subject, encode(beat), timeout=2.0)
        self.denials.succeeded([subject])

    async def health(self) -> AgentHealth:
        async with self.sessionmaker() as session:
            pending = await backlog(session)
        link = self.link_state()
        detail = ""
        if self.link_refused:
            detail = self.link_refused
        elif link == "degraded":
            detail = "the NATS server denies: " + ", ".join(self.denials.current()[:3])
        elif self.never_connected():
            # A wrong nats_url, a port nothing listens on, a firewall: the store trades,
            # but it has never reached central since it started.
            detail = "not connected to NATS since the start" + (
                f": {self.nats_error}" if self.nats_error else ""
            )
        return AgentHealth(
            status="degraded" if detail else "ok",
            branch=self.settings.branch,
            nats=link,
            outbox_backlog=pending,
            detail=detail,
        )

    def never_connected(self) -> bool:
        """The link has not come up once since the start, NATS_GRACE_S ago or more."""
        if self.ever_connected or self.started_at is None:
            return False
        return asyncio.get_running_loop().time() - self.started_at >= NATS_GRACE_S

    def link_state(self) -> str:
        """connected, degraded (connected, but the server denies operations: see
        ``denials``) or disconnected."""
        if self.nc is None or not self.nc.is_connected:
            return "disconnected"
        return "degraded" if self.denials.current() else "connected"

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.nc is not None:
            # Central may number another database of the branch at once (a replacement
            # started while this one still ran waits until this one is gone).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.publish_heartbeat(stopping=True), 3.0)
            with contextlib.suppress(Exception):
                await self.nc.close()
            self.nc = None
        await asyncio.to_thread(self.devices.close)
        await self.sale_engine.dispose()
        await self.engine.dispose()
        self.instance.release()

    async def serve(self) -> None:
        """Run until SIGINT/SIGTERM: the till API on the store LAN and the sync loops."""
        import uvicorn

        class _Server(uvicorn.Server):
            on_started: Callable[[], None] | None = None

            async def startup(self, sockets: list[Any] | None = None) -> None:
                await super().startup(sockets=sockets)
                if self.started and self.on_started is not None:
                    self.on_started()

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                # uvicorn raises the captured SIGTERM/SIGINT again once it stops
                # serving, which ends the process before the agent's own stop: no last
                # heartbeat (a replacement server then waits out central's minute),
                # devices and database left unclosed. The signal only asks to stop.
                with super().capture_signals():
                    try:
                        yield
                    finally:
                        self._captured_signals.clear()

        await self.start()
        server = _Server(
            uvicorn.Config(
                self.app,
                host=self.settings.http_host,
                port=self.settings.http_port,
                log_level="warning",
                timeout_keep_alive=30,
                ssl_certfile=self.settings.http_tls_cert or None,
                ssl_keyfile=self.settings.http_tls_key or None,
            )
        )
        server.on_started = self._announce
        try:
            await server.serve()
        finally:
            await self.stop()
            log.info("agent of branch %s stopped", self.settings.branch)

    def _announce(self) -> None:
        """One line once the till API listens (uvicorn itself logs warnings only)."""
        scheme = "https" if self.settings.http_tls_cert else "http"
        log.info(
            "agent of branch %s (pid %d, data_dir %s): till API listening on %s://%s:%d",
            self.settings.branch,
            os.getpid(),
            self.settings.data_dir,
            scheme,
            self.settings.http_host,
            self.settings.http_port,
        )


# How the server words refused credentials: at connect, and on a live connection whose
# user was revoked (account JWT update) or whose credentials expired.
_REFUSED = ("authorization violation", "authentication revoked", "authentication expired")


def is_authorization_error(exc: BaseException | None) -> bool:
    text = str(exc).lower()
    return isinstance(exc, AuthorizationError) or any(r in text for r in _REFUSED)


def nats_problem(exc: BaseException | None, *, credentials: bool = True) -> str:
    """The NATS client's error as a technician should read it (``credentials``: whether
    the agent has any configured, nats_creds or nats_user)."""
    if is_authorization_error(exc):
        if not credentials:
            return (
                "authorization violation: the NATS server wants credentials and none are "
                "configured (set nats_creds to this branch's .creds file)"
            )
        return "authorization violation: credentials revoked or not valid for this branch"
    return f"{type(exc).__name__}: {exc}"


async def _wait_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_any(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
