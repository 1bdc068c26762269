"""The agent's side of master-data snapshots: reporting its position to central.

A branch cannot tell by itself whether its position in the down stream is still
usable: only central sees the stream's first sequence (history aged out under a
``max_age``/``max_msgs`` limit), the consumer's acknowledgements (the database was
lost or restored from an older copy) and whether the consumer exists at all. So the
agent reports its position (``SnapshotRequest`` over NATS request/reply on
``rpc.<branch>.md_snapshot``) when it starts, when its consumer is gone, after a
snapshot ended (complete, or with parts missing) and every few minutes; central
answers whether a snapshot is on its way. The first report happens before the
down-stream reader fetches anything, so a lost database never reports a version it
does not hold. Requests are idempotent: asking again while a snapshot is queued or
still being delivered returns the same one.

Each answer also carries, when it changed, the list of the chain's branch codes (kept
in ``md_branches``: the stock documents refuse a transfer to any other code), and
central's clock: the agent measures its own against it (the
middle of the round trip against the middle of central's handling, as NTP does,
within half the round trip) and warns when the store server's clock is off by more
than ``CLOCK_WARN_S``: sales are dated, and put in days, by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from nats.js.errors import NotFoundError, ServiceUnavailableError

from branch_agent.restored import fetch_held_records
from protocol.masterdata import (
    SnapshotReply,
    SnapshotRequest,
    decode_snapshot_reply,
    encode_snapshot_rpc,
    snapshot_request_subject,
)

if TYPE_CHECKING:
    from nats.aio.client import Client

    from branch_agent.masterdata import MasterDataApplier
    from branch_agent.numbering import EventNumbering

__all__ = ["CLOCK_WARN_S", "SnapshotRequester", "clock_offset_ms"]

log = logging.getLogger(__name__)

# A store clock off by more than this is worth a technician's visit (a minute moves a
# sale made just before midnight into the wrong day; NTP keeps clocks within ms).
CLOCK_WARN_S = 60.0


def clock_offset_ms(sent: datetime, received: datetime, central: datetime) -> int:
    """How far this clock is ahead of central's (ms; negative: behind): a request sent
    at ``sent`` and answered at ``received`` (this clock), central's time ``central``
    taken in the middle of its handling."""
    middle = sent + (received - sent) / 2
    return round((middle - central).total_seconds() * 1000)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SnapshotRequester:
    def __init__(
        self,
        branch: str,
        applier: MasterDataApplier,
        *,
        interval_s: float = 300.0,
        timeout_s: float = 10.0,
        retry_s: float = 2.0,
        first_check_timeout_s: float = 15.0,
        pending_timeout_s: float = 3600.0,
    ) -> None:
        self.branch = branch
        self.applier = applier
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.first_check_timeout_s = first_check_timeout_s
        self.pending_timeout_s = pending_timeout_s
        self.requests = 0
        self.failures = 0
        self.last_reply: SnapshotReply | None = None
        self._wake = asyncio.Event()
        self._first_check = asyncio.Event()
        self._reported_completed = 0
        self._pending_since: float | None = None
        # A snapshot pending while the down stream was held: its parts may have gone to
        # another server (see hold_began).
        self._held_snapshot = 0
        self._lost_snapshot = 0
        # Set by the agent: a new database asks where its event numbers start.
        self.numbering: EventNumbering | None = None
        # Told the subject of each answered report (the agent clears its denials).
        self.on_answered: Callable[[list[str]], None] | None = None
        # This clock against central's, from the latest answer (None: not measured).
        self.clock: Callable[[], datetime] = _utc_now
        self.clock_offset_ms: int | None = None
        # Central's record of the branch's time zone, from its last answer ("": not said).
        self.central_timezone = ""

    def poke(self) -> None:
        """Report soon (a snapshot ended, the consumer is gone)."""
        self._wake.set()

    def hold_began(self) -> None:
        """The down stream is not read for a while (another database of the branch reads
        it): the snapshot pending now may never end here."""
        self._held_snapshot = self.applier.snapshot.pending

    def hold_ended(self) -> None:
        """Read again: a snapshot pending since the hold began is asked for anew."""
        self._lost_snapshot, self._held_snapshot = self._held_snapshot, 0
        self.poke()

    def on_fetch_error(self, exc: BaseException) -> None:
        # A deleted consumer answers pulls with "no responders" (503) or 404.
        if isinstance(exc, ServiceUnavailableError | NotFoundError):
            self.poke()

    async def wait_first_check(self) -> None:
        """Hold the reader until central has seen the position once (bounded: an
        unreachable central must not stop the branch from taking what the stream has)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_check.wait(), self.first_check_timeout_s)

    def _request(self) -> SnapshotRequest:
        snap = self.applier.snapshot
        now = time.monotonic()
        if snap.pending:
            if self._pending_since is None:
                self._pending_since = now
        else:
            self._pending_since = None
        incomplete = snap.incomplete
        if (
            snap.pending
            and not incomplete
            and self._pending_since is not None
            and (
                snap.pending == self._lost_snapshot
                or now - self._pending_since > self.pending_timeout_s
            )
        ):
            # Promised long ago and never ended, or read by another server: its parts
            # are gone, ask for a new one.
            incomplete = snap.pending
        return SnapshotRequest(
            branch=self.branch,
            last_stream_seq=snap.last_stream_seq,
            applied_version=self.applier.applied_version,
            pending_snapshot=snap.pending,
            incomplete_snapshot=incomplete,
            completed_snapshot=snap.completed if snap.completed > self._reported_completed else 0,
            branches_digest=self.applier.branches_digest,
            **(self.numbering.report() if self.numbering is not None else {}),
        )

    async def check(self, nc: Client) -> SnapshotReply:
        """One report; raises when central did not answer."""
        request = self._request()
        self.requests += 1
        sent = self.clock()
        subject = snapshot_request_subject(self.branch)
        msg = await nc.request(subject, encode_snapshot_rpc(request), timeout=self.timeout_s)
        received = self.clock()
        if self.on_answered is not None:
            self.on_answered([subject])
        reply = decode_snapshot_reply(msg.data)
        if reply.central_time is not None:
            self._clock_measured(clock_offset_ms(sent, received, reply.central_time))
        if reply.branch_timezone:
            self._central_timezone(reply.branch_timezone)
        if reply.error:
            raise RuntimeError(f"central refused the position report: {reply.error}")
        if reply.branches is not None:
            # The chain's branches (changed since the list the agent reported, or its
            # first): a transfer to a code that is none of them is refused at the store.
            await self.applier.set_branches(reply.branches)
        self._reported_completed = max(self._reported_completed, request.completed_snapshot)
        if request.incomplete_snapshot == self._lost_snapshot:
            self._lost_snapshot = 0
        if reply.action == "snapshot" and reply.snapshot_id:
            log.warning(
                "master-data position not usable (%s): snapshot %s on its way",
                reply.reason,
                reply.snapshot_id,
            )
            await self.applier.set_pending_snapshot(reply.snapshot_id)
            self._pending_since = time.monotonic()
        self.last_reply = reply
        if self.numbering is not None and (request.anchor_instance or request.settled_instance):
            if reply.numbering_refused:
                if reply.numbering_refused != self.numbering.refused:
                    log.warning(
                        "central does not number this database's events yet: %s; they wait",
                        reply.numbering_refused,
                    )
                self.numbering.refused = reply.numbering_refused
                self.numbering.waiting = reply.numbering_wait
            elif reply.event_seq_start:
                if reply.held_records and request.settled_instance:
                    # Gone back in time: first what central holds that this database
                    # lost, so a till's retry of it is refused, not printed again.
                    kept = await fetch_held_records(
                        nc,
                        self.branch,
                        request.settled_last_seq,
                        reply.event_seq_start - 1,
                        self.numbering.keep_held,
                        timeout_s=self.timeout_s,
                    )
                    log.warning(
                        "%d sales and returns recorded after this database's backup are "
                        "central's (%d of them not stored there yet): a till's retry of "
                        "one is refused, not printed again",
                        kept,
                        reply.held_in_flight,
                    )
                if reply.held_unknown:
                    log.warning(
                        "%d events this database gave numbers to after its backup never "
                        "reached central: a till's retry of a sale among them cannot be "
                        "recognised (it is recorded and printed again)",
                        reply.held_unknown,
                    )
                await self.numbering.settle(reply.event_seq_start, unknown=reply.held_unknown)
            elif request.settled_instance:
                # A central from before this check: it cannot tell, the numbers go on.
                await self.numbering.settle(request.settled_last_seq + 1)
            else:  # a new database and a central from before numbering
                log.warning("central did not number this new database's events: they wait")
        return reply

    def _central_timezone(self, zone: str) -> None:
        """Warn (once per zone central says) when central has the branch in another
        time zone than this agent's: local-time prices and local days would differ."""
        if zone != self.central_timezone and zone != self.applier.timezone:
            log.warning(
                "central has branch %s in time zone %s, this agent runs in %s: local-time "
                "prices switch and local days end at other moments than central expects; "
                "correct the agent's timezone setting or the branch's record at central",
                self.branch,
                zone,
                self.applier.timezone,
            )
        self.central_timezone = zone

    def _clock_measured(self, offset_ms: int) -> None:
        off = abs(offset_ms) > CLOCK_WARN_S * 1000
        was_off = self.clock_offset_ms is not None and (
            abs(self.clock_offset_ms) > CLOCK_WARN_S * 1000
        )
        self.clock_offset_ms = offset_ms
        if off:
            log.warning(
                "this server's clock is %.0f s %s central's: sales are dated by it; "
                "fix its time synchronisation (NTP)",
                abs(offset_ms) / 1000,
                "ahead of" if offset_ms > 0 else "behind",
            )
        elif was_off:
            log.warning("this server's clock is in step with central's again")

    async def run(self, nc: Client, stop: asyncio.Event) -> None:
        delay = 0.0
        while not stop.is_set():
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                if stop.is_set():
                    return
            self._wake.clear()
            try:
                await self.check(nc)
            except Exception as exc:
                self.failures += 1
                log.info("master-data position not reported: %s", exc)
                delay = self.retry_s
                continue
            finally:
                # Also after a failure: the reader waits once, not on every retry.
                self._first_check.set()
            unsettled = self.numbering is not None and not self.numbering.settled
            delay = min(self.interval_s, 30.0) if unsettled else self.interval_s
            if (
                unsettled
                and self.numbering is not None
                and self.numbering.waiting
                and self.numbering.restore_hold() == "holding"
            ):
                # Central is reading what the branch sent, sales wait for its answer:
                # ask again within seconds. Once the hold has ended (sales go on
                # unchecked) every 30 s is enough, and spares a central whose ingest
                # queue is long.
                delay = self.retry_s
