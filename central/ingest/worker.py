"""The ingest worker: a durable pull consumer shared by any number of workers.

Per fetched batch, in one database transaction: decode, drop what is already stored
(unique event id and unique (branch, seq) in the database are the guarantee,
JetStream dedup only a help), store the rest and apply their effects (the registered
handlers, in bulk), advance each branch's sequence state, commit, then ack.

- A concurrent worker stored one of them first (a redelivery race): IntegrityError,
  the batch is rolled back and retried message by message.
- A lock conflict (deadlock, serialization failure, SQLite busy): the whole batch is
  retried; good messages are never dead-lettered for it.
- Anything that cannot be processed becomes a dead letter (reason and raw bytes) and
  is acked, so one bad message never blocks the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from sqlalchemy import bindparam, or_, select, text, tuple_, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.failures import FailureLog, nats_reason
from central.ingest.bulk import (
    dialect_insert,
    insert_rows,
    is_fault_of_message,
    is_postgresql,
    is_retryable,
    table_of,
)
from central.ingest.conflicts import conflict_in_words
from central.ingest.handlers import EventContext, IngestBatch, apply_handlers
from central.ingest.ordering import TICKET_NOTE, hold_ticket
from central.models import Branch, BranchStatus, BranchSyncState, DeadLetter, IngestedEvent
from protocol.codec import (
    WireDecodeError,
    decode_envelope,
    decode_envelope_seq,
    decode_heartbeat,
)
from protocol.events import EventEnvelope, event_kind
from protocol.messages import BranchHeartbeat
from protocol.subjects import HEARTBEAT_KIND, INGEST_DURABLE, UP_STREAM, parse_up_subject

__all__ = [
    "CRASH_EXIT_CODE",
    "IngestStats",
    "IngestWorker",
    "MessageIn",
    "contiguous_from",
    "local_date_of",
]

log = logging.getLogger(__name__)

# Exit status of the fault-injection crash between commit and ack (tests only).
CRASH_EXIT_CODE = 86
_MAX_ATTEMPTS = 8
# How long a batch keeps pulling once its first message is in.
_LINGER_S = 0.2
# A kept heartbeat sent further ahead of central's clock than this came from a wrong
# store clock: any later heartbeat replaces it.
_FUTURE_HEARTBEAT = timedelta(minutes=5)
# Arrays, not thousands of bind parameters: one cached statement per batch.
_PG_EXISTING = text(
    "SELECT event_id, branch, seq FROM ingested_events "
    "WHERE event_id = ANY(CAST(:ids AS uuid[])) "
    "UNION "
    "SELECT e.event_id, e.branch, e.seq FROM ingested_events AS e "
    "JOIN unnest(CAST(:branches AS text[]), CAST(:seqs AS bigint[])) AS k(b, s) "
    "ON e.branch = k.b AND e.seq = k.s"
)


@dataclass(slots=True)
class MessageIn:
    """What the worker needs of one delivered message (NATS-independent for tests)."""

    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    stream_seq: int | None = None
    # Set when replaying a stored dead letter: a new failure updates that row.
    dead_letter_id: int | None = None


@dataclass(slots=True)
class IngestStats:
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    heartbeats: int = 0
    batches: int = 0
    retries: int = 0

    def add(self, other: IngestStats) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class _Rejected(Exception):
    """A message that is well-formed enough to read but must not be stored."""


@dataclass(slots=True)
class _Decoded:
    index: int
    envelope: EventEnvelope


async def _nak_all(msgs: Sequence[Any], *, delay: float | None) -> None:
    """Hand messages back to the consumer (redelivered after ``delay``, to any worker).
    Shielded: a cancelled worker still hands its batch back."""

    async def nak() -> None:
        for m in msgs:
            try:
                await m.nak(delay=delay)
            except Exception as exc:  # not handed back: redelivered after the ack wait
                log.warning("nak failed: %s", exc)
                return

    if msgs:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(nak())


def local_date_of(envelope: EventEnvelope) -> date:
    return (envelope.occurred_at + timedelta(minutes=envelope.utc_offset_min)).date()


async def contiguous_from(session: AsyncSession, branch: str, contiguous: int) -> int:
    """The highest n with 1..n all settled, scanning only forward from the known run:
    stored, or held by a dead letter a person discarded (the event reached central and
    was decided not to be stored: nothing to wait for or to ask again)."""
    discarded = set(
        await session.scalars(
            select(DeadLetter.seq).where(
                DeadLetter.branch == branch,
                DeadLetter.seq > contiguous,
                DeadLetter.status == "discarded",
            )
        )
    )

    def past_discarded(seq: int) -> int:
        while seq + 1 in discarded:
            seq += 1
        return seq

    while True:
        advanced = past_discarded(contiguous)
        for seq in await session.scalars(
            select(IngestedEvent.seq)
            .where(IngestedEvent.branch == branch, IngestedEvent.seq > advanced)
            .order_by(IngestedEvent.seq)
            .limit(5000)
        ):
            advanced = past_discarded(advanced)
            if seq <= advanced:
                continue  # stored after all (its letter discarded before)
            if seq != advanced + 1:
                return advanced
            advanced = seq
        advanced = past_discarded(advanced)
        if advanced == contiguous:
            return contiguous
        contiguous = advanced


class IngestWorker:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        batch_size: int = 500,
        fetch_timeout_s: float = 1.0,
        crash_after_commit: bool = False,
        branch_cache_s: float = 5.0,
        on_caught_up: Callable[[], None] | None = None,
        retry_delay_s: float = 1.0,
        fault_hold_batch_s: float = 0.0,
        fault_fail_batches: int = 0,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.batch_size = batch_size
        self.fetch_timeout_s = fetch_timeout_s
        # Fault injection for the kill test: exit between the commit and the ack.
        self.crash_after_commit = crash_after_commit
        self.branch_cache_s = branch_cache_s
        # branch -> (the agent's zone last checked against central's, monotonic time)
        self._zone_checked: dict[str, tuple[str, float]] = {}
        # A batch that failed (database away) comes back after this long.
        self.retry_delay_s = retry_delay_s
        # Fault injection for the SIGTERM and database-error tests: wait this long
        # before storing each batch; fail this many batches as if the database were away.
        self.fault_hold_batch_s = fault_hold_batch_s
        self.fault_fail_batches = fault_fail_batches
        # Called when a fetch found nothing: the up stream is drained (a time to apply
        # the summary backlog). Not after each short batch: while ingestion keeps pace
        # with a busy stream every batch is short, and so would every chunk be.
        self.on_caught_up = on_caught_up
        self._branches: dict[str, bool] = {}
        self._branches_loaded = -1e9
        self.stats = IngestStats()
        self.batch_failures = FailureLog(log, "ingest batch")
        self.fetch_failures = FailureLog(log, "ingest fetch")
        # Messages pulled beyond the batch size, first in the next batch.
        self._overflow: list[Any] = []

    # --- the NATS loop -----------------------------------------------------------

    async def run(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        sub = await js.pull_subscribe_bind(INGEST_DURABLE, stream=UP_STREAM)
        # Delivered to this worker and neither acked nor handed back yet: on a stop or
        # a cancel (SIGTERM) they are nak'd, so another worker gets them at once rather
        # than after the consumer's ack wait (by then the branch was asked to resend).
        in_hand: list[Any] = []
        try:
            while not stop.is_set():
                try:
                    msgs = await self._fetch(sub)
                except (NatsTimeoutError, TimeoutError):  # nothing to fetch
                    self.fetch_failures.ok()
                    if self.on_caught_up is not None:
                        self.on_caught_up()
                    continue
                except Exception as exc:  # link down, server restarting: keep trying
                    self.fetch_failures.failed(nats_reason(exc), retry="retried every 0.5 s")
                    await asyncio.sleep(0.5)
                    continue
                self.fetch_failures.ok()
                in_hand = msgs
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
                    if self.fault_hold_batch_s:
                        await asyncio.sleep(self.fault_hold_batch_s)
                    if self.fault_fail_batches > 0:
                        self.fault_fail_batches -= 1
                        raise ConnectionError("fault injection: the database is unavailable")
                    await self.process(batch)
                except Exception as exc:
                    # Database unavailable: handed back, to come again shortly (to any
                    # worker), not after the ack wait; nothing of it was committed. One
                    # line per outage (its reason), a traceback only for what is no outage.
                    self.batch_failures.failed_on_database(
                        exc, retry="the batch is handed back and retried shortly"
                    )
                    in_hand = []
                    await _nak_all(msgs, delay=self.retry_delay_s)
                    await asyncio.sleep(self.retry_delay_s)
                    continue
                self.batch_failures.ok()
                if self.crash_after_commit:
                    log.error("fault injection: exiting after commit, before ack")
                    os._exit(CRASH_EXIT_CODE)
                for i, m in enumerate(msgs):
                    # Cancelled between acks: the rest is handed back (a nak of an
                    # acked message is ignored; the redelivery of a stored one skipped).
                    in_hand = msgs[i:]
                    try:
                        await m.ack()
                    except Exception as exc:  # an unacked message is redelivered: harmless
                        log.warning("ack failed: %s", exc)
                in_hand = []
        finally:
            # A batch cut short by the stop (maybe committed: its redelivery is skipped
            # as duplicates) and what was pulled for the next one.
            handed_back, self._overflow = [*in_hand, *self._overflow], []
            await _nak_all(handed_back, delay=None)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _fetch(self, sub: Any) -> list[Any]:
        """Wait for the first message, then take what is there already.

        nats-py's ``fetch(n)`` on a quiet stream lingers until n messages or the
        timeout: the tail of a burst would wait the whole timeout before it is stored.
        """
        msgs, self._overflow = self._overflow, []
        if not msgs:
            msgs = await sub.fetch(1, timeout=self.fetch_timeout_s)
        # One pull returns what arrives within its 20 ms, the rest of a backlog comes on
        # the next: pull again while messages keep coming (a small batch costs nearly
        # as much as a full one), for at most _LINGER_S.
        lingering_until = time.monotonic() + _LINGER_S
        while len(msgs) < self.batch_size and time.monotonic() < lingering_until:
            try:
                more = await sub.fetch(self.batch_size - len(msgs), timeout=0.02)
            except (NatsTimeoutError, TimeoutError):
                break
            if not more:
                break
            msgs += more
        # A pull also hands over what arrived late for earlier pulls, beyond what it
        # asked for: the excess starts the next batch (unacked until then).
        self._overflow = msgs[self.batch_size :]
        return msgs[: self.batch_size]

    # --- processing ----------------------------------------------------------------

    async def process(self, batch: Sequence[MessageIn]) -> IngestStats:
        """Store a batch; returns what this call did. Safe to call again with the same batch.

        Raises when the database cannot be used (the batch is then left for redelivery);
        a message that cannot be stored because of what it holds becomes a dead letter
        and the rest of its batch is stored."""
        stats = await self._store_or_split(batch)
        stats.batches = 1
        self.stats.add(stats)
        return stats

    async def _store_or_split(self, batch: Sequence[MessageIn]) -> IngestStats:
        try:
            return await self._attempt(batch)
        except IntegrityError:
            # Another worker stored some of these first. One by one, so each message
            # is either found as a duplicate or stored.
            stats = IngestStats()
            for message in batch:
                stats.add(await self._process_alone(message))
            return stats
        except Exception as exc:
            if not is_fault_of_message(exc):
                raise
            if len(batch) == 1:
                return await self._reject_alone(batch[0], exc)
            # Some message in the batch fails every time (e.g. a number beyond its
            # column's range): halves, in order, until it stands alone, so one bad
            # message costs a few more transactions and never holds back the others.
            log.warning("a batch of %d failed on its content (%s); splitting it", len(batch), exc)
            middle = len(batch) // 2
            stats = await self._store_or_split(batch[:middle])
            stats.add(await self._store_or_split(batch[middle:]))
            return stats

    async def _attempt(self, batch: Sequence[MessageIn]) -> IngestStats:
        """One transaction, retried on lock conflicts; IntegrityError goes to the caller."""
        delay = 0.05
        retries = 0
        while True:
            stats = IngestStats(batches=1, retries=retries)
            try:
                async with self._sessionmaker() as session, session.begin():
                    await self._process_in(session, batch, stats)
                return stats
            except IntegrityError:
                raise
            except Exception as exc:
                if not is_retryable(exc) or retries >= _MAX_ATTEMPTS:
                    raise
                retries += 1
                log.info("ingest batch hit a lock conflict (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _process_alone(self, message: MessageIn) -> IngestStats:
        """One message; a conflict with a concurrent worker's uncommitted batch shows up
        as IntegrityError once that batch commits, and as a duplicate on the next try."""
        for attempt in range(3):
            try:
                return await self._attempt([message])
            except IntegrityError as exc:
                if attempt == 2:
                    # Still conflicting on its own (e.g. a sale id already stored under
                    # another event id): not a race, a bad message.
                    return await self._reject_alone(message, exc)
                await asyncio.sleep(0.05 * (attempt + 1))
            except Exception as exc:
                if not is_fault_of_message(exc):
                    raise
                return await self._reject_alone(message, exc)
        raise AssertionError("unreachable")

    async def _reject_alone(self, message: MessageIn, exc: Exception) -> IngestStats:
        """A dead letter for a message that failed on its own, in a transaction of its
        own (if the database is down after all, this raises and nothing is lost)."""
        stats = IngestStats()
        async with self._sessionmaker() as session, session.begin():
            if isinstance(exc, IntegrityError):
                # In words when it records again what central holds (a sale id taken).
                reason = (
                    await conflict_in_words(session, message.data)
                    or f"conflicts with a stored record: {exc.orig or exc}"
                )
            else:
                cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
                reason = f"could not be stored: {type(cause).__name__}: {cause}"
            await self._dead_letter(session, message, reason[:2000])
        stats.dead_letters = 1
        return stats

    async def _process_in(
        self, session: AsyncSession, batch: Sequence[MessageIn], stats: IngestStats
    ) -> None:
        decoded: list[_Decoded] = []
        heartbeats: dict[str, BranchHeartbeat] = {}
        for index, message in enumerate(batch):
            try:
                envelope = await self._decode(session, message)
            except _Rejected as exc:
                await self._dead_letter(session, message, str(exc))
                stats.dead_letters += 1
                continue
            if isinstance(envelope, BranchHeartbeat):
                stats.heartbeats += 1
                latest = heartbeats.get(envelope.branch)
                if latest is None or envelope.sent_at > latest.sent_at:
                    heartbeats[envelope.branch] = envelope
            else:
                decoded.append(_Decoded(index, envelope))
            if message.dead_letter_id is not None:
                await self._resolve_dead_letter(session, message.dead_letter_id)
        if decoded:
            await self._store(session, batch, decoded, stats)
        for branch in sorted(heartbeats):
            await self._heartbeat(session, heartbeats[branch])

    async def _known_branches(self, session: AsyncSession, *, reload: bool) -> dict[str, bool]:
        now = time.monotonic()
        if reload or now - self._branches_loaded > self.branch_cache_s:
            rows = await session.execute(select(Branch.code, Branch.active))
            self._branches = {r.code: r.active for r in rows}
            self._branches_loaded = now
        return self._branches

    async def _decode(
        self, session: AsyncSession, message: MessageIn
    ) -> EventEnvelope | BranchHeartbeat:
        try:
            branch, kind = parse_up_subject(message.subject)
        except ValueError as exc:
            raise _Rejected(str(exc)) from exc
        branches = await self._known_branches(session, reload=message.dead_letter_id is not None)
        if branch not in branches:
            # Registered since the cache was filled?
            branches = await self._known_branches(session, reload=True)
        active = branches.get(branch)
        if active is None:
            raise _Rejected(f"unknown branch {branch!r}")
        if not active:
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
        """Latest heartbeat wins: one row per branch, never replaced by an older one,
        unless the one kept was sent "in the future" (a store clock that was ahead and
        has been put right would otherwise have its heartbeats ignored until then)."""
        table = table_of(BranchStatus)
        stmt = dialect_insert(session, table)
        now = datetime.now(UTC)
        # Checked at most once a minute per branch and zone: a heartbeat comes every
        # few seconds from every branch, and the answer changes only with a zone.
        last = self._zone_checked.get(heartbeat.branch)
        stale = last is None or last[0] != heartbeat.timezone or time.monotonic() - last[1] >= 60
        if heartbeat.timezone and stale:
            await self._check_timezone(session, heartbeat)
            self._zone_checked[heartbeat.branch] = (heartbeat.timezone, time.monotonic())
        values = {
            "branch": heartbeat.branch,
            "sent_at": heartbeat.sent_at,
            "received_at": now,
            "outbox_backlog": heartbeat.outbox_backlog,
            "last_acked_seq": heartbeat.last_acked_seq,
            "last_recorded_seq": heartbeat.last_recorded_seq,
            "applied_version": heartbeat.applied_version,
            "devices": [msgspec.to_builtins(d) for d in heartbeat.devices],
            "agent_version": heartbeat.agent_version,
            "outbox_held": list(heartbeat.outbox_held),
            "clock_offset_ms": heartbeat.clock_offset_ms,
            "agent_instance": heartbeat.agent_instance or None,
            "agent_stopped": heartbeat.stopping,
            "agent_server": heartbeat.agent_server or None,
            "first_seq": heartbeat.first_seq,
            "skipped_seqs": [list(r) for r in heartbeat.skipped_seqs],
            "agent_timezone": heartbeat.timezone or None,
        }
        await session.execute(
            stmt.values(**values).on_conflict_do_update(
                index_elements=["branch"],
                set_={k: stmt.excluded[k] for k in values if k != "branch"},
                where=or_(
                    table.c.sent_at < stmt.excluded.sent_at,
                    table.c.sent_at > now + _FUTURE_HEARTBEAT,
                ),
            )
        )

    async def _check_timezone(self, session: AsyncSession, heartbeat: BranchHeartbeat) -> None:
        """Warn when the agent's zone is not central's record of the branch: every
        local-time price and local day would be shifted. Once per zone the agent
        reports (the previous heartbeat's is in branch_status), not every few seconds."""
        row = (
            await session.execute(
                select(Branch.timezone, BranchStatus.agent_timezone)
                .outerjoin(BranchStatus, BranchStatus.branch == Branch.code)
                .where(Branch.code == heartbeat.branch)
            )
        ).first()
        if row is None or row.timezone == heartbeat.timezone:
            return
        if row.agent_timezone != heartbeat.timezone:
            log.warning(
                "branch %s: its agent runs in time zone %s, central has the branch at %s; "
                "local-time prices and local days differ until one is corrected",
                heartbeat.branch,
                heartbeat.timezone,
                row.timezone,
            )

    async def _store(
        self,
        session: AsyncSession,
        batch: Sequence[MessageIn],
        decoded: list[_Decoded],
        stats: IngestStats,
    ) -> None:
        # The batch's place in stream order, held from the start of its transaction (see
        # central.ingest.ordering); none when a message has no stream sequence.
        stream_seqs = [m.stream_seq for m in batch]
        ticket = None if None in stream_seqs else min(s for s in stream_seqs if s is not None)
        if ticket is not None:
            await hold_ticket(session, ticket, {d.envelope.branch for d in decoded})
        ids = [d.envelope.event_id for d in decoded]
        keys = [(d.envelope.branch, d.envelope.seq) for d in decoded]
        existing_ids: set[uuid.UUID] = set()
        existing_keys: set[tuple[str, int]] = set()
        # One query for both unique keys of the whole batch.
        if is_postgresql(session):
            found: Any = await session.execute(
                _PG_EXISTING,
                {"ids": ids, "branches": [b for b, _ in keys], "seqs": [q for _, q in keys]},
            )
        else:
            found = await session.execute(
                select(IngestedEvent.event_id, IngestedEvent.branch, IngestedEvent.seq).where(
                    or_(
                        IngestedEvent.event_id.in_(ids),
                        tuple_(IngestedEvent.branch, IngestedEvent.seq).in_(keys),
                    )
                )
            )
        for row in found:
            existing_ids.add(row.event_id)
            existing_keys.add((row.branch, row.seq))
        seen_ids: set[uuid.UUID] = set()
        seen_keys: set[tuple[str, int]] = set()
        new: list[EventContext] = []
        for item in decoded:
            envelope = item.envelope
            key = (envelope.branch, envelope.seq)
            if envelope.event_id in existing_ids or envelope.event_id in seen_ids:
                stats.duplicates += 1
                continue
            if key in existing_keys or key in seen_keys:
                await self._dead_letter(
                    session,
                    batch[item.index],
                    f"sequence {envelope.seq} of branch {envelope.branch!r} is already used "
                    "by another event (two agent databases numbering the branch at once? "
                    "e.g. an old server still running beside its replacement)",
                )
                stats.dead_letters += 1
                continue
            seen_ids.add(envelope.event_id)
            seen_keys.add(key)
            new.append(EventContext(envelope=envelope, local_date=local_date_of(envelope)))
        if not new:
            return
        # Effects in each branch's own order (moving average cost depends on it).
        new.sort(key=lambda c: (c.envelope.branch, c.envelope.seq))
        received_at = datetime.now(UTC)
        await insert_rows(
            session,
            table_of(IngestedEvent),
            [
                {
                    "event_id": c.envelope.event_id,
                    "branch": c.envelope.branch,
                    "seq": c.envelope.seq,
                    "kind": event_kind(c.envelope.body),
                    "occurred_at": c.envelope.occurred_at,
                    "utc_offset_min": c.envelope.utc_offset_min,
                    "local_date": c.local_date,
                    "received_at": received_at,
                    "schema_version": c.envelope.schema_version,
                }
                for c in new
            ],
        )
        await apply_handlers(
            session,
            IngestBatch(events=new, received_at=received_at, notes={TICKET_NOTE: ticket}),
        )
        stats.stored += len(new)
        await self._advance_sequences(session, new, received_at)

    async def _advance_sequences(
        self, session: AsyncSession, new: list[EventContext], received_at: datetime
    ) -> None:
        """One lock and one update per branch per batch, branches in sorted order."""
        by_branch: dict[str, list[EventEnvelope]] = {}
        for ctx in new:
            by_branch.setdefault(ctx.envelope.branch, []).append(ctx.envelope)
        branches = sorted(by_branch)
        table = table_of(BranchSyncState)
        await session.execute(
            dialect_insert(session, table)
            .values([{"branch": b, "contiguous_seq": 0, "max_seq": 0} for b in branches])
            .on_conflict_do_nothing(index_elements=["branch"])
        )
        states = {
            row.branch: row
            for row in await session.execute(
                select(
                    BranchSyncState.branch,
                    BranchSyncState.contiguous_seq,
                    BranchSyncState.max_seq,
                    BranchSyncState.last_event_at,
                )
                .where(BranchSyncState.branch.in_(branches))
                .order_by(BranchSyncState.branch)
                .with_for_update()
            )
        }
        updates: list[dict[str, object]] = []
        for branch in branches:
            envelopes = by_branch[branch]  # sorted by seq
            state = states[branch]
            contiguous = state.contiguous_seq
            max_before = state.max_seq
            seqs = [e.seq for e in envelopes]
            if max_before <= contiguous and seqs == list(
                range(contiguous + 1, contiguous + 1 + len(seqs))
            ):
                # The usual case: this batch continues the branch exactly.
                contiguous = seqs[-1]
            else:
                contiguous = await contiguous_from(session, branch, contiguous)
            latest = max(e.occurred_at for e in envelopes)
            last_event_at = state.last_event_at
            updates.append(
                {
                    "k_branch": branch,
                    "v_contiguous": contiguous,
                    "v_max": max(max_before, seqs[-1]),
                    "v_last_event_at": latest
                    if last_event_at is None or latest > last_event_at
                    else last_event_at,
                    "v_received": received_at,
                }
            )
        await session.execute(
            update(table)
            .where(table.c.branch == bindparam("k_branch"))
            .values(
                contiguous_seq=bindparam("v_contiguous"),
                max_seq=bindparam("v_max"),
                last_event_at=bindparam("v_last_event_at", type_=table.c.last_event_at.type),
                last_received_at=bindparam("v_received", type_=table.c.last_received_at.type),
            ),
            updates,
        )

    async def _dead_letter(self, session: AsyncSession, message: MessageIn, reason: str) -> None:
        log.warning("dead letter on %s: %s", message.subject, reason)
        letter_id = message.dead_letter_id
        if letter_id is None and message.stream_seq is not None:
            # JetStream redelivering a message already dead-lettered (its batch's ack
            # was lost): the same letter, not a second one.
            letter_id = await session.scalar(
                select(DeadLetter.id).where(
                    DeadLetter.stream_seq == message.stream_seq,
                    DeadLetter.subject == message.subject[:255],
                    DeadLetter.status == "open",
                )
            )
        if letter_id is not None:
            # A replay or redelivery that failed again: the letter stays open with the
            # new reason.
            await session.execute(
                update(DeadLetter)
                .where(DeadLetter.id == letter_id)
                .values(reason=reason, attempts=DeadLetter.attempts + 1, status="open")
            )
            return
        branch: str | None
        try:
            branch = parse_up_subject(message.subject)[0]
        except ValueError:
            branch = None
        # Read even when the body breaks a limit: the letter then holds its branch's gap
        # (a resend would bring the same bytes). Only a sequence of the subject's own
        # branch fills a gap of that branch.
        head = decode_envelope_seq(message.data)
        seq = head[1] if head is not None and head[0] == branch else None
        session.add(
            DeadLetter(
                subject=message.subject[:255],
                branch=branch,
                seq=seq,
                reason=reason,
                raw=message.data,
                headers=message.headers,
                stream_seq=message.stream_seq,
            )
        )

    async def _resolve_dead_letter(self, session: AsyncSession, dead_letter_id: int) -> None:
        await session.execute(
            update(DeadLetter)
            .where(DeadLetter.id == dead_letter_id)
            .values(
                status="replayed",
                resolved_at=datetime.now(UTC),
                attempts=DeadLetter.attempts + 1,
            )
        )
