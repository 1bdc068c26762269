"""The ingest worker: a durable pull consumer shared by any number of workers.

Per fetched batch: decode, drop what is already stored (unique event id and unique
(branch, seq) in the database are the guarantee, JetStream dedup only a help),
store the rest with their effects in one transaction, then ack. If a concurrent
worker stored one of them first (a redelivery race), the batch is rolled back and
retried message by message. Anything that cannot be processed becomes a dead letter
and is acked, so one bad message never blocks the others.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from sqlalchemy import select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.ingest.handlers import EventContext, handler_for
from central.models import Branch, BranchStatus, BranchSyncState, DeadLetter, IngestedEvent
from protocol.codec import WireDecodeError, decode_envelope, decode_heartbeat
from protocol.events import EventEnvelope, event_kind
from protocol.messages import BranchHeartbeat
from protocol.subjects import HEARTBEAT_KIND, INGEST_DURABLE, UP_STREAM, parse_up_subject

__all__ = ["IngestStats", "IngestWorker", "MessageIn", "local_date_of"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MessageIn:
    """What the worker needs of one delivered message (NATS-independent for tests)."""

    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    stream_seq: int | None = None


@dataclass(slots=True)
class IngestStats:
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    heartbeats: int = 0
    batches: int = 0


class _Rejected(Exception):
    """A message that is well-formed enough to read but must not be stored."""


@dataclass(slots=True)
class _Decoded:
    index: int
    envelope: EventEnvelope


def local_date_of(envelope: EventEnvelope) -> date:
    return (envelope.occurred_at + timedelta(minutes=envelope.utc_offset_min)).date()


class IngestWorker:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        batch_size: int = 500,
        fetch_timeout_s: float = 1.0,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.batch_size = batch_size
        self.fetch_timeout_s = fetch_timeout_s
        self.stats = IngestStats()

    # --- the NATS loop -----------------------------------------------------------

    async def run(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        sub = await js.pull_subscribe_bind(INGEST_DURABLE, stream=UP_STREAM)
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(self.batch_size, timeout=self.fetch_timeout_s)
                except NatsTimeoutError:
                    continue
                except Exception as exc:  # link down, server restarting: keep trying
                    log.warning("ingest fetch failed: %s", exc)
                    await asyncio.sleep(0.5)
                    continue
                batch = [
                    MessageIn(
                        subject=m.subject,
                        data=m.data,
                        headers=dict(m.headers or {}),
                        stream_seq=m.metadata.sequence.stream if m.metadata else None,
                    )
                    for m in msgs
                ]
                try:
                    await self.process(batch)
                except Exception:
                    # Database unavailable: leave unacked, JetStream redelivers.
                    log.exception("ingest batch failed; it will be redelivered")
                    await asyncio.sleep(1.0)
                    continue
                for m in msgs:
                    try:
                        await m.ack()
                    except Exception as exc:  # an unacked message is redelivered: harmless
                        log.warning("ack failed: %s", exc)
        finally:
            await sub.unsubscribe()

    # --- processing ----------------------------------------------------------------

    async def process(self, batch: Sequence[MessageIn]) -> IngestStats:
        """Store a batch; returns what this call did. Safe to call again with the same batch."""
        stats = IngestStats(batches=1)
        try:
            async with self._sessionmaker() as session, session.begin():
                await self._process_in(session, batch, stats)
        except IntegrityError:
            # Another worker stored some of these first. One by one, so each message
            # is either found as a duplicate or stored.
            stats = IngestStats(batches=1)
            for message in batch:
                async with self._sessionmaker() as session, session.begin():
                    await self._process_in(session, [message], stats)
        self._add(stats)
        return stats

    def _add(self, stats: IngestStats) -> None:
        for name in ("stored", "duplicates", "dead_letters", "heartbeats", "batches"):
            setattr(self.stats, name, getattr(self.stats, name) + getattr(stats, name))

    async def _process_in(
        self, session: AsyncSession, batch: Sequence[MessageIn], stats: IngestStats
    ) -> None:
        branches = await self._branches(session)
        decoded: list[_Decoded] = []
        for index, message in enumerate(batch):
            try:
                envelope = self._decode(message, branches)
            except _Rejected as exc:
                self._dead_letter(session, message, str(exc))
                stats.dead_letters += 1
                continue
            if isinstance(envelope, BranchHeartbeat):
                await self._heartbeat(session, envelope)
                stats.heartbeats += 1
            else:
                decoded.append(_Decoded(index, envelope))
        if decoded:
            await self._store(session, batch, decoded, stats)

    async def _branches(self, session: AsyncSession) -> dict[str, Branch]:
        rows = await session.scalars(select(Branch))
        return {b.code: b for b in rows}

    def _decode(
        self,
        message: MessageIn,
        branches: dict[str, Branch],
    ) -> EventEnvelope | BranchHeartbeat:
        try:
            branch, kind = parse_up_subject(message.subject)
        except ValueError as exc:
            raise _Rejected(str(exc)) from exc
        known = branches.get(branch)
        if known is None:
            raise _Rejected(f"unknown branch {branch!r}")
        if not known.active:
            raise _Rejected(f"branch {branch!r} is revoked")
        if kind == HEARTBEAT_KIND:
            try:
                heartbeat = decode_heartbeat(message.data)
            except WireDecodeError as exc:
                raise _Rejected(f"malformed heartbeat: {exc}") from exc
            if heartbeat.branch != branch:
                raise _Rejected(
                    f"heartbeat names branch {heartbeat.branch!r} on {branch!r}'s subject"
                )
            return heartbeat
        try:
            envelope = decode_envelope(message.data)
        except WireDecodeError as exc:
            raise _Rejected(f"malformed event: {exc}") from exc
        if envelope.branch != branch:
            raise _Rejected(f"payload names branch {envelope.branch!r} on {branch!r}'s subject")
        if event_kind(envelope.body) != kind:
            raise _Rejected(f"payload is {event_kind(envelope.body)!r} on a {kind!r} subject")
        return envelope

    async def _heartbeat(self, session: AsyncSession, heartbeat: BranchHeartbeat) -> None:
        """Latest heartbeat wins: one row per branch, never replaced by an older one."""
        row = await session.get(BranchStatus, heartbeat.branch)
        if row is None:
            row = BranchStatus(branch=heartbeat.branch, sent_at=heartbeat.sent_at)
            session.add(row)
        elif row.sent_at > heartbeat.sent_at:
            return
        row.sent_at = heartbeat.sent_at
        row.received_at = datetime.now(UTC)
        row.outbox_backlog = heartbeat.outbox_backlog
        row.last_acked_seq = heartbeat.last_acked_seq
        row.last_recorded_seq = heartbeat.last_recorded_seq
        row.applied_version = heartbeat.applied_version
        row.devices = [msgspec.to_builtins(d) for d in heartbeat.devices]
        row.agent_version = heartbeat.agent_version

    async def _store(
        self,
        session: AsyncSession,
        batch: Sequence[MessageIn],
        decoded: list[_Decoded],
        stats: IngestStats,
    ) -> None:
        ids = [d.envelope.event_id for d in decoded]
        keys = [(d.envelope.branch, d.envelope.seq) for d in decoded]
        existing_ids: set[uuid.UUID] = set(
            await session.scalars(
                select(IngestedEvent.event_id).where(IngestedEvent.event_id.in_(ids))
            )
        )
        existing_keys: dict[tuple[str, int], uuid.UUID] = {
            (row.branch, row.seq): row.event_id
            for row in await session.execute(
                select(IngestedEvent.branch, IngestedEvent.seq, IngestedEvent.event_id).where(
                    tuple_(IngestedEvent.branch, IngestedEvent.seq).in_(keys)
                )
            )
        }
        seen_ids: set[uuid.UUID] = set()
        seen_keys: set[tuple[str, int]] = set()
        touched: dict[str, list[EventEnvelope]] = {}
        for item in decoded:
            envelope = item.envelope
            key = (envelope.branch, envelope.seq)
            if envelope.event_id in existing_ids or envelope.event_id in seen_ids:
                stats.duplicates += 1
                continue
            if key in existing_keys or key in seen_keys:
                self._dead_letter(
                    session,
                    batch[item.index],
                    f"sequence {envelope.seq} of branch {envelope.branch!r} is already used "
                    "by another event",
                )
                stats.dead_letters += 1
                continue
            seen_ids.add(envelope.event_id)
            seen_keys.add(key)
            ctx = EventContext(envelope=envelope, local_date=local_date_of(envelope))
            session.add(
                IngestedEvent(
                    event_id=envelope.event_id,
                    branch=envelope.branch,
                    seq=envelope.seq,
                    kind=event_kind(envelope.body),
                    occurred_at=envelope.occurred_at,
                    utc_offset_min=envelope.utc_offset_min,
                    local_date=ctx.local_date,
                    schema_version=envelope.schema_version,
                )
            )
            handler = handler_for(envelope.body)
            if handler is not None:
                await handler(session, ctx)
            touched.setdefault(envelope.branch, []).append(envelope)
            stats.stored += 1
        await session.flush()
        for branch, envelopes in touched.items():
            await self._advance_sequence(session, branch, envelopes)

    async def _advance_sequence(
        self, session: AsyncSession, branch: str, envelopes: list[EventEnvelope]
    ) -> None:
        state = await session.get(BranchSyncState, branch, with_for_update=True)
        if state is None:
            state = BranchSyncState(branch=branch, contiguous_seq=0, max_seq=0)
            session.add(state)
        state.max_seq = max(state.max_seq or 0, *(e.seq for e in envelopes))
        latest = max(e.occurred_at for e in envelopes)
        if state.last_event_at is None or latest > state.last_event_at:
            state.last_event_at = latest
        state.last_received_at = datetime.now(UTC)
        contiguous = state.contiguous_seq or 0
        if state.max_seq > contiguous:
            following = await session.scalars(
                select(IngestedEvent.seq)
                .where(IngestedEvent.branch == branch, IngestedEvent.seq > contiguous)
                .order_by(IngestedEvent.seq)
            )
            for seq in following:
                if seq != contiguous + 1:
                    break
                contiguous = seq
        state.contiguous_seq = contiguous

    def _dead_letter(self, session: AsyncSession, message: MessageIn, reason: str) -> None:
        branch: str | None
        try:
            branch = parse_up_subject(message.subject)[0]
        except ValueError:
            branch = None
        log.warning("dead letter on %s: %s", message.subject, reason)
        session.add(
            DeadLetter(
                subject=message.subject[:255],
                branch=branch,
                reason=reason,
                raw=message.data,
                headers=message.headers,
                stream_seq=message.stream_seq,
            )
        )
