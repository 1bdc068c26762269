"""Central's side of master-data snapshots: deciding from a branch's position report.

A branch reports its position (``SnapshotRequest``, NATS request/reply on
``rpc.<branch>.md_snapshot``; the branch is taken from the subject). Central alone can
judge it, with the stream and the branch's durable consumer in view:

- the consumer is gone: it is created again (``DeliverPolicy.ALL``);
- the branch lost what its consumer already delivered and it acknowledged (database
  lost, or restored from an older copy): a message of the branch's scopes lies above
  the branch's position but at or below the consumer's acknowledged floor;
- history aged out: on a stream that drops messages by age, count or size, the
  branch's position lies below the stream's first sequence (without such limits the
  stream keeps the latest value of every key forever, and nothing can be lost);
- the branch's last snapshot ended with parts missing;
- the stream numbers below the branch's position: it was created again (the NATS
  server lost its store) from a number central could not set above every branch's
  (see ``central.runtime``), and the old stream's undelivered messages are gone.

Then a snapshot is queued in the master-data outbox (``enqueue_snapshot``), so the
publisher builds it from the database and publishes it in order with every other
change: the branch's consumer delivers it after what it already had pending, and
every change after it follows it, so nothing made during the snapshot is missed.

Every answer that is not an error also carries the codes of the chain's branches when
the agent's copy differs from them (``branches``, sent against the report's
``branches_digest``): the agent refuses a transfer to a code that is none of them.

The same report carries the agent database's numbering question (a new database:
where its event numbers start; a numbered one, at each start: whether it went back in
time): ``central.services.sync_state`` answers it, in ``event_seq_start``. What the
branch sent that ingestion has not stored yet counts too (``central.sync.in_flight``):
those numbers are taken, and the sales among them are listed to a restored database.
Until that has been read (a backlog too long to read at once, JetStream not
answering) the question is not answered: ``numbering_refused`` with
``numbering_wait``, and the branch asks again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.models import Branch
from central.services.held_records import HeldCount, count_held_records, held_records_page
from central.services.masterdata_publisher import (
    MasterDataPublisher,
    enqueue_snapshot,
    pending_snapshot,
)
from central.services.sync_state import (
    RunningAgent,
    anchor_event_sequence,
    confirm_event_sequence,
    other_running_agent,
)
from central.sync.in_flight import InFlight, read_in_flight
from central.sync.jetstream import down_filter_subjects, ensure_branch_consumer
from protocol.codec import WireDecodeError
from protocol.masterdata import (
    SNAPSHOT_REQUEST_SUBJECTS,
    HeldRecordsReply,
    HeldRecordsRequest,
    SnapshotReply,
    SnapshotRequest,
    branch_list_digest,
    decode_branch_rpc,
    decode_snapshot_request,
    encode_snapshot_rpc,
    parse_snapshot_request_subject,
)
from protocol.subjects import DOWN_STREAM, down_consumer_name

__all__ = ["PositionFacts", "SnapshotService", "snapshot_reason"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PositionFacts:
    """What the stream and the branch's consumer say about a branch's position."""

    # The consumer's acknowledged floor (stream sequence; 0 for a new consumer).
    ack_floor: int
    # The first stream sequence above the branch's position on one of its subjects.
    first_missing: int | None
    # The stream's first sequence, and whether it drops messages by age/count/size.
    first_seq: int
    lossy: bool
    # The stream's last sequence (None: not known).
    last_seq: int | None = None


def snapshot_reason(request: SnapshotRequest, facts: PositionFacts) -> str | None:
    """Why the branch needs a snapshot, or None when its position is usable."""
    if request.incomplete_snapshot:
        return "the last snapshot ended with parts missing"
    if (
        facts.last_seq is not None
        and request.last_stream_seq > facts.last_seq
        and not request.pending_snapshot
    ):
        # A stream never numbers backwards: it was created again (the NATS server lost
        # it) below the branch's position, and what the old one held is gone. (With a
        # snapshot on its way the branch's position follows the new numbers at its end.)
        return "the down stream was created again, numbered below the branch's position"
    if facts.first_missing is not None and facts.first_missing <= facts.ack_floor:
        return "the replica lacks messages its consumer acknowledged (database lost or restored)"
    if facts.lossy and request.last_stream_seq + 1 < facts.first_seq:
        return "history above the branch's position aged out of the stream"
    return None


def _refusal(branch: str, instance: str, server: str, running: RunningAgent) -> str:
    """Why agent database ``instance`` on ``server`` is not numbered now (logged)."""
    if running.instance == instance:
        log.error(
            "branch %s: agent database %s asks to be numbered from server %s while it "
            "runs on server %s: a copy of it (a cloned disk?); refused (their events "
            "would collide); stop one of them",
            branch,
            instance,
            server,
            running.server,
        )
        return (
            f"this agent database of branch {branch} ({instance}) is running on another "
            f"server ({running.server}): a copy of its disk? stop one of them (this one "
            "sends once the other has stopped)"
        )
    log.error(
        "branch %s: agent database %s asks to be numbered while %s runs: "
        "refused (their events would collide); stop one of them",
        branch,
        instance,
        running.instance,
    )
    return (
        f"another agent database of branch {branch} ({running.instance}) is running: "
        "stop one of them (this one sends once the other has stopped)"
    )


def _held_records_request(data: bytes) -> HeldRecordsRequest | None:
    """The question is a page of held records (else a position report, or garbage the
    report's path answers with its error)."""
    try:
        request = decode_branch_rpc(data)
    except WireDecodeError:
        return None
    return request if isinstance(request, HeldRecordsRequest) else None


def _lossy(config: Any) -> bool:
    # max_msgs_per_subject only replaces a key's value by a newer one: not a loss.
    return bool(
        (config.max_age or 0) > 0 or (config.max_msgs or -1) > 0 or (config.max_bytes or -1) > 0
    )


class SnapshotService:
    """Answers branches' position reports; one subscription per central process (a
    queue group, so several central processes share the reports)."""

    # How long the chain's branch list read for the answers is used (a branch registered
    # meanwhile reaches the agents with their next report after it).
    BRANCH_LIST_CACHE_S = 10.0

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        publisher: MasterDataPublisher,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._publisher = publisher
        self.requests = 0
        self.snapshots = 0
        self.refused = 0
        # The chain's branch codes and their digest, read at most every
        # BRANCH_LIST_CACHE_S (every branch reports every few minutes).
        self._branches: tuple[tuple[str, ...], str] | None = None
        self._branches_read = 0.0

    async def run(self, nc: Client, js: JetStreamContext, stop: asyncio.Event) -> None:
        async def on_request(msg: Any) -> None:
            held = _held_records_request(msg.data)
            if held is not None:
                page = await self.held_records(js, msg.subject, held)
                if msg.reply:
                    await msg.respond(encode_snapshot_rpc(page))
                return
            received = datetime.now(UTC)
            reply = await self.answer(js, msg.subject, msg.data)
            # The middle of its stay here: the branch takes the middle of its round trip
            # for the same moment (NTP's offset, the answer's time taken out).
            answered = datetime.now(UTC)
            reply = msgspec.structs.replace(
                reply, central_time=received + (answered - received) / 2
            )
            if msg.reply:
                await msg.respond(encode_snapshot_rpc(reply))

        sub = await nc.subscribe(SNAPSHOT_REQUEST_SUBJECTS, queue="central-md", cb=on_request)
        try:
            await stop.wait()
        finally:
            await sub.unsubscribe()

    async def answer(self, js: JetStreamContext, subject: str, data: bytes) -> SnapshotReply:
        self.requests += 1
        try:
            branch_code = parse_snapshot_request_subject(subject)
            request = decode_snapshot_request(data)
        except (ValueError, WireDecodeError) as exc:
            self.refused += 1
            return SnapshotReply(action="none", error=f"bad position report: {exc}")
        if request.branch != branch_code:
            # Permissions cover subjects only: the subject names the branch.
            self.refused += 1
            return SnapshotReply(
                action="none", error=f"report names {request.branch!r} on {branch_code!r}'s subject"
            )
        try:
            numbered = bool(request.anchor_instance or request.settled_instance)
            # Another database of the branch runs: this one is not the branch's reader
            # now (it holds its down stream), so its position decides no snapshot; one
            # would only be read by the running database.
            held = await self._held(branch_code, request) if numbered else ""
            reply = await self._decide(js, branch_code, request, position=not held)
            if numbered and not reply.error:
                reply = await self._numbered(js, branch_code, request, reply, held)
            if not reply.error:
                codes, digest = await self._branch_list()
                if digest != request.branches_digest:
                    reply = msgspec.structs.replace(reply, branches=codes)
            return reply
        except Exception as exc:
            log.warning("position report of %s not answered: %s", branch_code, exc)
            return SnapshotReply(action="none", error=f"central could not decide: {exc}")

    async def _numbered(
        self,
        js: JetStreamContext,
        branch_code: str,
        request: SnapshotRequest,
        reply: SnapshotReply,
        held: str,
    ) -> SnapshotReply:
        """``reply`` with the answer to the numbering question: the start, or why not
        now (another database runs: ``held``; what the branch sent is not all read)."""
        if held:
            return msgspec.structs.replace(reply, numbering_refused=held)
        flight = await read_in_flight(js, branch_code, after=request.settled_last_seq)
        if flight.unread:
            log.warning("numbering of branch %s waits: %s", branch_code, flight.unread)
            return msgspec.structs.replace(
                reply, numbering_refused=flight.unread, numbering_wait=True
            )
        start, refused = await self._number(branch_code, request, flight.high)
        count = await self._held_count(branch_code, request, start, flight)
        return msgspec.structs.replace(
            reply,
            event_seq_start=start,
            numbering_refused=refused,
            held_records=count.records,
            held_in_flight=count.in_flight,
            held_unknown=count.unknown,
        )

    async def _held_count(
        self, branch_code: str, request: SnapshotRequest, start: int, flight: InFlight
    ) -> HeldCount:
        """Sales and returns the database lost by going back in time (see
        ``central.services.held_records``); none when it did not."""
        if not request.settled_instance or start <= request.settled_last_seq + 1:
            return HeldCount(records=0, in_flight=0, unknown=0)
        async with self._sessionmaker() as session:
            count = await count_held_records(
                session, branch_code, request.settled_last_seq, start - 1, flight
            )
        if count.unknown:
            log.warning(
                "branch %s: %d of the events numbered %d..%d that its restored agent "
                "database lost never reached central (nor are they on their way): a "
                "till's retry of a sale among them cannot be recognised",
                branch_code,
                count.unknown,
                request.settled_last_seq + 1,
                start - 1,
            )
        return count

    async def held_records(
        self, js: JetStreamContext, subject: str, request: HeldRecordsRequest
    ) -> HeldRecordsReply:
        """One page of those records, for the branch the subject names."""
        try:
            branch_code = parse_snapshot_request_subject(subject)
        except ValueError as exc:
            return HeldRecordsReply(error=f"bad request: {exc}")
        if request.branch != branch_code:
            return HeldRecordsReply(
                error=f"request names {request.branch!r} on {branch_code!r}'s subject"
            )
        try:
            async with self._sessionmaker() as session:
                branch = await session.get(Branch, branch_code)
                if branch is None or not branch.active:
                    return HeldRecordsReply(error=f"unknown or revoked branch {branch_code!r}")
            # The stream before the database (see central.sync.in_flight).
            flight = await read_in_flight(js, branch_code, after=request.after_seq)
            if flight.unread:
                return HeldRecordsReply(error=flight.unread)
            async with self._sessionmaker() as session:
                return await held_records_page(
                    session, branch_code, request.after_seq, request.through_seq, flight=flight
                )
        except Exception as exc:
            log.warning("held records of %s not answered: %s", branch_code, exc)
            return HeldRecordsReply(error=f"central could not answer: {exc}")

    async def _branch_list(self) -> tuple[tuple[str, ...], str]:
        """Every registered branch code (revoked ones too: central files a transfer
        naming one without ``unknown_branch``), sorted, and its digest."""
        now = time.monotonic()
        if self._branches is None or now - self._branches_read > self.BRANCH_LIST_CACHE_S:
            async with self._sessionmaker() as session:
                codes = tuple(await session.scalars(select(Branch.code).order_by(Branch.code)))
            self._branches = (codes, branch_list_digest(codes))
            self._branches_read = now
        return self._branches

    async def _held(self, branch_code: str, request: SnapshotRequest) -> str:
        """Why the reporting database is not numbered now ("": nothing against it);
        a refusal is recorded (see other_running_agent)."""
        instance = request.anchor_instance or request.settled_instance
        async with self._sessionmaker() as session, session.begin():
            other = await other_running_agent(
                session, branch_code, instance, server=request.agent_server
            )
        return _refusal(branch_code, instance, request.agent_server, other) if other else ""

    async def _number(
        self, branch_code: str, request: SnapshotRequest, in_stream: int
    ) -> tuple[int, str]:
        """Where the reporting agent database's events (go on to) be numbered, or why
        not now: (start, "") or (0, the reason); ``in_stream``: the highest number the
        branch sent that central has not stored yet."""
        instance = request.anchor_instance or request.settled_instance
        server = request.agent_server
        async with self._sessionmaker() as session, session.begin():
            other = await other_running_agent(session, branch_code, instance, server=server)
            if other is not None:
                return 0, _refusal(branch_code, instance, server, other)
            if request.anchor_instance:
                start = await anchor_event_sequence(
                    session,
                    branch_code,
                    request.anchor_instance,
                    server=server,
                    in_stream=in_stream,
                )
                if start > 1:
                    log.warning(
                        "branch %s has a new agent database (%s): its events start at %d",
                        branch_code,
                        request.anchor_instance,
                        start,
                    )
                return start, ""
            start = await confirm_event_sequence(
                session,
                branch_code,
                request.settled_instance,
                request.settled_last_seq,
                server=server,
                in_stream=in_stream,
            )
        if start > request.settled_last_seq + 1:
            log.warning(
                "branch %s: its agent database (%s) went back in time (restored from a "
                "backup?) to event %d: its events since continue from %d",
                branch_code,
                request.settled_instance,
                request.settled_last_seq,
                start,
            )
        return start, ""

    async def _decide(
        self, js: JetStreamContext, branch_code: str, request: SnapshotRequest, *, position: bool
    ) -> SnapshotReply:
        async with self._sessionmaker() as session:
            branch = await session.get(Branch, branch_code)
            queued = await pending_snapshot(session, branch_code)
        if branch is None or not branch.active:
            self.refused += 1
            return SnapshotReply(action="none", error=f"unknown or revoked branch {branch_code!r}")
        # Central's record of the branch's zone: the agent compares it with its own.
        zone = branch.timezone
        if request.completed_snapshot:
            await self._publisher.drop_snapshot(js, branch_code, request.completed_snapshot)
        if not position:
            return SnapshotReply(action="none", branch_timezone=zone)
        if queued is not None:
            return SnapshotReply(
                action="snapshot", snapshot_id=queued, reason="queued", branch_timezone=zone
            )
        facts = await self._facts(js, branch, request.last_stream_seq)
        reason = snapshot_reason(request, facts)
        if reason is None:
            return SnapshotReply(action="none", branch_timezone=zone)
        async with self._sessionmaker() as session, session.begin():
            snapshot_id = await enqueue_snapshot(session, branch_code)
        self._publisher.wake()
        self.snapshots += 1
        log.warning("master-data snapshot %s for %s: %s", snapshot_id, branch_code, reason)
        return SnapshotReply(
            action="snapshot", snapshot_id=snapshot_id, reason=reason, branch_timezone=zone
        )

    async def _facts(self, js: JetStreamContext, branch: Branch, position: int) -> PositionFacts:
        durable = down_consumer_name(branch.code)
        try:
            info = await js.consumer_info(DOWN_STREAM, durable)
        except NotFoundError:
            log.warning("down consumer of %s was gone: created again", branch.code)
            await ensure_branch_consumer(
                js, branch.code, format_code=branch.format_code, price_zone=branch.price_zone
            )
            info = await js.consumer_info(DOWN_STREAM, durable)
        stream = await js.stream_info(DOWN_STREAM)
        first_missing: int | None = None
        for subject in down_filter_subjects(branch.code, branch.format_code, branch.price_zone):
            try:
                found = await js.get_msg(DOWN_STREAM, seq=position + 1, subject=subject, next=True)
            except NotFoundError:
                continue
            if found.seq is not None and (first_missing is None or found.seq < first_missing):
                first_missing = found.seq
        return PositionFacts(
            ack_floor=(info.ack_floor.stream_seq if info.ack_floor else 0) or 0,
            first_missing=first_missing,
            first_seq=stream.state.first_seq,
            lossy=_lossy(stream.config),
            last_seq=stream.state.last_seq or 0,
        )
