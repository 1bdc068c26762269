"""What a central process holds while it runs: database engine, NATS link, ingest workers.

The API process (``create_app``) and a stand-alone ingest process
(``python -m central ingest``) both build one of these.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from central.auth.context import RequestAudit
from central.db import create_engine, create_sessionmaker
from central.embedded_nats import EmbeddedNats
from central.failures import FailureLog, one_line
from central.ingest.gaps import ConsumerPosition, GapMonitor
from central.ingest.worker import IngestWorker
from central.models import Branch, MasterDataOutbox
from central.reports.backlog import SummaryApplier
from central.services.audit import record_change
from central.services.masterdata_publisher import (
    MasterDataPublisher,
    down_seq_high,
    enqueue_snapshots_of_all_branches,
    note_down_seq,
)
from central.services.masterdata_snapshot import SnapshotService
from central.settings import CentralSettings
from central.sync.jetstream import (
    connect,
    ensure_branch_consumer,
    ensure_ingest_consumer,
    ensure_streams,
)
from protocol.subjects import DOWN_STREAM, INGEST_DURABLE, UP_STREAM

__all__ = ["CentralRuntime"]

log = logging.getLogger(__name__)
# How long a stopping ingest worker may take to finish its batch before it is cancelled.
_WORKER_STOP_GRACE_S = 5.0

# The embedded nats-server is looked at this often, and started again after a death
# with this backoff (doubling from the first, at most the second).
_EMBEDDED_NATS_CHECK_S = 0.5
_EMBEDDED_NATS_BACKOFF_S = (0.5, 30.0)

# Room above the highest down-stream sequence central recorded for what was published
# after its last record (the keeper records every 2 s, the publisher at each pass).
DOWN_SEQ_MARGIN = 1_000_000


class CentralRuntime:
    def __init__(self, settings: CentralSettings) -> None:
        self.settings = settings
        self.engine: AsyncEngine = create_engine(
            settings.database_url, pool_size=settings.db_pool_size, echo=settings.sql_echo
        )
        self.sessionmaker: async_sessionmaker[AsyncSession] = create_sessionmaker(self.engine)
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.embedded_nats: EmbeddedNats | None = None
        self.workers: list[IngestWorker] = []
        self.gap_monitor: GapMonitor | None = None
        self.summary_applier: SummaryApplier | None = None
        # Publishes committed master-data changes to the down stream (outbox-driven).
        self.publisher = MasterDataPublisher(
            self.sessionmaker,
            crash_after_catch_up=settings.fault_crash_after_masterdata_catch_up,
        )
        self.snapshots = SnapshotService(self.sessionmaker, self.publisher)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._worker_tasks: list[asyncio.Task[None]] = []
        self.nats_ready = asyncio.Event()
        # When this process started (monotonic): /health gives NATS a grace after it.
        self.started_at = time.monotonic()
        # The streams and consumers central owns: "connecting", "ready", or "error: ..."
        # while setting them up fails (shown by /health).
        self.jetstream = "connecting"
        self._nats_creds = settings.nats_creds
        # The down stream's last sequence this process recorded, and whether it recorded
        # the stream's loss (once per loss, not at every set-up retry).
        self._down_seq_noted = 0
        self._down_loss_recorded = False
        # Whether this host's NATS issuer is the chain's (shown by /health): "ok", "none"
        # (created on first use) or "error: ..." (credential operations refused).
        self.nats_issuer = "unchecked"
        # A start of the embedded nats-server under way in a thread (stop waits for it,
        # so it cannot leave a server running behind a stopped central).
        self._embedded_start: asyncio.Future[None] | None = None
        # How often the embedded nats-server was started again after it died.
        self.embedded_nats_restarts = 0

    @property
    def nats_url(self) -> str:
        if self.settings.nats_url:
            return self.settings.nats_url
        assert self.embedded_nats is not None
        return self.embedded_nats.url

    async def start(self, *, ingest_workers: int) -> None:
        await self.check_nats_issuer()
        if not self.settings.nats_url:
            from central.services.nats_auth import embedded_nats_server

            # The embedded server runs with central's issuer auth on, never open.
            self.embedded_nats, creds = embedded_nats_server(
                self.settings, self.settings.data_path / "nats", port=self.settings.nats_server_port
            )
            self._nats_creds = str(creds)
            await asyncio.to_thread(self.embedded_nats.start)
            self._tasks.append(asyncio.create_task(self._keep_embedded_nats()))
        # Connecting blocks until a server answers: never on the request path.
        self._tasks.append(asyncio.create_task(self._connect_and_ingest(ingest_workers)))
        if ingest_workers:
            self._tasks.append(asyncio.create_task(self._keep_partitions()))

    async def _keep_embedded_nats(self) -> None:
        """The embedded nats-server runs as long as central does. One that died (killed,
        crashed, out of memory) is started again on the same store, port and config
        (the account JWT preloaded is the newest, as at a start of central), with
        backoff while that fails; the NATS link reconnects by itself and the branches
        with it. Logged once when it dies and once when it is back, attempts that fail
        once per reason."""
        server = self.embedded_nats
        assert server is not None
        failures = FailureLog(log, "embedded nats-server restart")
        backoff = _EMBEDDED_NATS_BACKOFF_S[0]
        died_at: float | None = None
        attempts = 0
        while not self._stop.is_set():
            if server.is_running():
                if died_at is not None:
                    log.warning(
                        "embedded nats-server running again (pid %s) after %d attempt(s) in %.1f s",
                        server.pid,
                        attempts,
                        time.monotonic() - died_at,
                    )
                    # Its recovery is the line above, not a second one.
                    failures = FailureLog(log, "embedded nats-server restart")
                    died_at, attempts, backoff = None, 0, _EMBEDDED_NATS_BACKOFF_S[0]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), _EMBEDDED_NATS_CHECK_S)
                continue
            if died_at is None:
                died_at = time.monotonic()
                log.error(
                    "embedded nats-server (pid %s) died (exit status %s): starting it "
                    "again on 127.0.0.1:%d with store %s",
                    server.pid,
                    server.exit_status(),
                    server.port,
                    server.store_dir,
                )
            attempts += 1
            self._embedded_start = asyncio.ensure_future(
                asyncio.to_thread(self._restart_embedded_nats, server)
            )
            try:
                await asyncio.shield(self._embedded_start)
            except Exception as exc:
                failures.failed(one_line(exc), retry=f"retried with backoff up to {backoff:g} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, _EMBEDDED_NATS_BACKOFF_S[1])
            else:
                self.embedded_nats_restarts += 1

    def _restart_embedded_nats(self, server: EmbeddedNats) -> None:
        """Start the embedded server again (in a thread: it waits until it listens)."""
        from central.services.nats_auth import embedded_nats_server

        try:
            # Revocations pushed while it was down are in the newest account JWT.
            fresh, _creds = embedded_nats_server(self.settings, server.store_dir, port=server.port)
            server.extra_config = fresh.extra_config
        except Exception as exc:
            log.warning("embedded nats-server config not refreshed (the last one is used): %s", exc)
        server.start()

    async def _connect_and_ingest(self, ingest_workers: int) -> None:
        from central.services.nats_auth import client_tls_options

        self.nc = await connect(
            self.nats_url,
            creds=self._nats_creds,
            name="central",
            **client_tls_options(self.settings),
        )
        self.js = self.nc.jetstream()
        # The servers accepted this host's link: its issuer may be recorded as the chain's.
        await self.check_nats_issuer(link_up=True)
        if self._nats_creds:
            await self._refresh_account_jwt()
        while not self._stop.is_set():
            if await self._set_up_streams():
                break
            await asyncio.sleep(1.0)
        self.nats_ready.set()
        self._tasks.append(asyncio.create_task(self._keep_branch_consumers()))
        self._tasks.append(asyncio.create_task(self.publisher.run(self.js, self._stop)))
        # Branches' master-data position reports: a snapshot when a position is not usable.
        self._tasks.append(asyncio.create_task(self.snapshots.run(self.nc, self.js, self._stop)))
        if ingest_workers:
            self.summary_applier = SummaryApplier(
                self.engine,
                interval_s=self.settings.summary_interval_s,
                crash_before_commit=self.settings.fault_crash_in_summary_apply,
            )
            self._tasks.append(asyncio.create_task(self.summary_applier.run(self._stop)))
        for _ in range(ingest_workers):
            worker = IngestWorker(
                self.sessionmaker,
                batch_size=self.settings.ingest_batch,
                fetch_timeout_s=self.settings.ingest_fetch_timeout_s,
                crash_after_commit=self.settings.fault_crash_after_commit,
                # The stream drained: a good moment to apply the summary backlog.
                on_caught_up=self.summary_applier.wake if self.summary_applier else None,
                fault_hold_batch_s=self.settings.fault_hold_batch_s,
                fault_fail_batches=self.settings.fault_fail_batches,
            )
            self.workers.append(worker)
            task = asyncio.create_task(worker.run(self.js, self._stop))
            self._worker_tasks.append(task)
            self._tasks.append(task)
        if ingest_workers:
            self.gap_monitor = GapMonitor(
                self.sessionmaker,
                self._publish_down,
                gap_after_s=self.settings.resend_gap_after_s,
                retry_s=self.settings.resend_retry_s,
                consumer_state=self._ingest_consumer_state,
            )
            self._tasks.append(asyncio.create_task(self.gap_monitor.run(self._stop)))

    async def _ingest_consumer_state(self) -> ConsumerPosition:
        """The up stream's last sequence, then the ingest consumer's ack floor and what
        it has out (in that order: see central.ingest.gaps)."""
        assert self.js is not None
        stream = await self.js.stream_info(UP_STREAM)
        info = await self.js.consumer_info(UP_STREAM, INGEST_DURABLE)
        return ConsumerPosition(
            last_seq=stream.state.last_seq,
            ack_floor=info.ack_floor.stream_seq if info.ack_floor is not None else 0,
            outstanding=(info.num_pending or 0) + (info.num_ack_pending or 0),
            ack_wait_s=float(info.config.ack_wait or self.settings.ingest_ack_wait_s),
        )

    async def _set_up_streams(self) -> bool:
        """Create or update the streams and the ingest consumer; False on failure."""
        assert self.js is not None
        try:
            await ensure_streams(
                self.js,
                replicas=self.settings.up_stream_replicas,
                max_age_days=self.settings.up_stream_max_age_days,
                dedup_window_s=self.settings.dedup_window_s,
                down_first_seq=await self._down_stream_lost(),
            )
            await ensure_ingest_consumer(self.js, ack_wait_s=self.settings.ingest_ack_wait_s)
        except Exception as exc:
            log.warning("JetStream set-up failed, retrying: %s", exc)
            self.jetstream = f"error: {type(exc).__name__}: {exc}"
            return False
        self.jetstream = "ready"
        return True

    async def _down_stream_lost(self) -> int | None:
        """The first sequence of a down stream about to be created, when central had one
        before (None: it exists, or a new deployment's numbers from 1).

        The NATS server lost it (a wiped store): the branches' positions are numbers of
        the old stream, so the new one numbers on above the highest central recorded,
        with room for what it published since its last record; otherwise a branch's
        position would lie above everything new, and central could not tell what it
        missed. The old stream's history is gone, and what it held undelivered with it:
        every active branch gets a whole snapshot, queued before the stream exists so
        a failure between the two cannot lose it (idempotent: one queued per branch)."""
        assert self.js is not None
        try:
            await self.js.stream_info(DOWN_STREAM)
        except NotFoundError:
            pass
        else:
            self._down_loss_recorded = False
            return None
        async with self.sessionmaker() as session, session.begin():
            high = await down_seq_high(session)
            published = await session.scalar(
                select(MasterDataOutbox.id)
                .where(MasterDataOutbox.published_at.is_not(None))
                .limit(1)
            )
            if not high and published is None:
                return None  # nothing was ever published: a new deployment
            first_seq = high + DOWN_SEQ_MARGIN
            branches = await enqueue_snapshots_of_all_branches(session)
            if not self._down_loss_recorded:
                await record_change(
                    session,
                    action="masterdata.down_stream_recreated",
                    target="masterdata",
                    before={"down_stream_seq": high},
                    after={"first_seq": first_seq, "snapshots": branches},
                    actor=RequestAudit(actor="central", actor_role="system", method="NATS"),
                )
        if not self._down_loss_recorded:
            log.error(
                "the master-data down stream is gone: created again numbering from %d "
                "(above the %d central recorded); %d branches get a snapshot",
                first_seq,
                high,
                len(branches),
            )
        self._down_loss_recorded = True
        self.publisher.wake()
        return first_seq

    async def _note_down_seq(self, last_seq: int) -> None:
        """Record the down stream's last sequence when it grew (see _down_stream_lost)."""
        if last_seq <= self._down_seq_noted:
            return
        try:
            async with self.sessionmaker() as session, session.begin():
                await note_down_seq(session, last_seq)
        except Exception as exc:
            log.warning("down-stream position not recorded (retried): %s", exc)
            return
        self._down_seq_noted = last_seq

    async def _streams_gone(self) -> bool:
        """A stream or the ingest consumer is missing (the NATS server lost its store,
        or someone deleted them): nothing would flow until they exist again."""
        assert self.js is not None
        try:
            await self.js.stream_info(UP_STREAM)
            down = await self.js.stream_info(DOWN_STREAM)
            await self.js.consumer_info(UP_STREAM, INGEST_DURABLE)
        except NotFoundError:
            return True
        except Exception:
            return False  # not connected: the link's state says so, nothing is gone
        await self._note_down_seq(down.state.last_seq or 0)
        return False

    async def check_nats_issuer(self, *, link_up: bool = False) -> str:
        """Say at start when this host's NATS issuer is not the chain's (a second API
        host without the shared nats_issuer_dir): its credentials would not connect.
        Checked again once the link is up (then it may record the issuer)."""
        from central.services.nats_auth import check_chain_issuer

        try:
            async with self.sessionmaker() as session, session.begin():
                self.nats_issuer = await check_chain_issuer(session, self.settings, link_up=link_up)
        except Exception as exc:
            # The database is not there yet: credential operations check again.
            self.nats_issuer = f"unchecked: {type(exc).__name__}"
        if self.nats_issuer.startswith("error"):
            log.error("%s", self.nats_issuer)
        return self.nats_issuer

    async def _refresh_account_jwt(self) -> None:
        """Servers running with an older account JWT (an upgrade changed what a branch
        may do) get the current one; a failure only logs (branches keep what they had)."""
        from central.services.nats_auth import (
            carry_back_revocations,
            client_tls_options,
            issuer_for,
            refresh_account_jwt,
        )
        from central.sync.nats_auth import ISSUER_FILE

        directory = Path(self.settings.nats_issuer_dir or self.settings.data_path / "nats-issuer")
        if not (directory / ISSUER_FILE).exists():
            return  # central does not issue this deployment's NATS credentials
        if self.nats_issuer.startswith("error"):
            return  # not the chain's issuer: the servers would not take its JWT
        try:
            issuer = issuer_for(self.settings)
            async with self.sessionmaker() as session, session.begin():
                again = await carry_back_revocations(session, issuer)
            if again:
                log.error(
                    "branches %s were revoked after this database's backup: revoked again",
                    ", ".join(again),
                )
            async with self.sessionmaker() as session:
                pushed = await refresh_account_jwt(
                    session, issuer, self.nats_url, **client_tls_options(self.settings)
                )
            if pushed:
                log.info("account JWT pushed to the NATS servers (its claims had changed)")
        except Exception:
            log.exception("account JWT refresh failed")

    async def _publish_down(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """A JetStream publish on the down stream (commands to branches)."""
        assert self.js is not None
        await self.js.publish(subject, payload, timeout=10, headers=headers)

    async def _keep_branch_consumers(self) -> None:
        """The streams, the ingest consumer and every registered branch's durable
        down-stream consumer exist (idempotent; created again when they are gone)."""
        known: set[tuple[str, str | None, str | None]] = set()
        consumer_failures = FailureLog(log, "branch consumers set-up")
        while not self._stop.is_set():
            if self.js is not None and (self.jetstream != "ready" or await self._streams_gone()):
                if self.jetstream == "ready":
                    log.error(
                        "JetStream streams or consumers are gone (the NATS server lost its "
                        "store?): creating them again"
                    )
                if await self._set_up_streams():
                    known.clear()  # the branches' consumers went with them
            try:
                async with self.sessionmaker() as session:
                    branches = (await session.scalars(select(Branch).where(Branch.active))).all()
                for b in branches:
                    key = (b.code, b.format_code, b.price_zone)
                    if key not in known and self.js is not None:
                        await ensure_branch_consumer(
                            self.js, b.code, format_code=b.format_code, price_zone=b.price_zone
                        )
                        known.add(key)
            except Exception as exc:
                consumer_failures.failed(one_line(exc), retry="retried every 2 s")
            else:
                consumer_failures.ok()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 2.0)

    async def _keep_partitions(self) -> None:
        """Monthly partitions ahead (PostgreSQL), at start and twice a day, by the
        processes that write; idempotent and serialised across processes."""
        from central.partitions import maintain_partitions

        while not self._stop.is_set():
            try:
                await maintain_partitions(self.engine)
            except Exception as exc:
                log.warning("partitions not maintained (retried later): %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 12 * 3600)

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        self._stop.set()
        # Workers finish the batch in hand (stored and acked) and hand back what they
        # pulled beyond it; one still busy after the grace is cancelled and hands its
        # batch back too (nak): either way another worker has it at once, not after the
        # ack wait.
        if self._worker_tasks:
            await asyncio.wait(self._worker_tasks, timeout=_WORKER_STOP_GRACE_S)
            self._worker_tasks.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
            self.nc = None
        if self._embedded_start is not None:
            # A restart under way finishes (or fails) before the server is stopped.
            with contextlib.suppress(Exception):
                await self._embedded_start
        if self.embedded_nats is not None:
            await asyncio.to_thread(self.embedded_nats.stop)
        await self.engine.dispose()
