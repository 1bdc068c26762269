"""Gap detection: ask a branch to resend from the first sequence central is missing.

A branch's events can arrive out of order (several workers, redeliveries), so a gap
is only acted on when it persists for ``gap_after_s``. The request
(:class:`protocol.messages.ResendRequested` on ``down.branch.<b>.command.resend``) is
remembered in ``branch_sync_state`` and repeated only when the gap moved or after
``retry_s``; the conditional UPDATE makes exactly one of several ingest processes
send it.

A gap at the tail counts too: events the branch's latest heartbeat says JetStream
acked (``last_acked_seq``) that central does not hold, with nothing after them to
show a gap (central's database restored from a backup while the store sends nothing,
e.g. closed for the night). The heartbeat follows those events in the stream, so
normally they are stored within a batch or two; ``gap_after_s`` covers the rest.

Numbers below the first of the agent database that heartbeats (``first_seq``: a
replacement, numbered after the earlier database) cannot be resent by it: central
gave them up when it numbered that database, and knows it unless its own database
went back to before then (restored from a backup). Such a gap is given up again, as
lost (the range ``lost_from_seq``..``lost_to_seq``), instead of asking forever. So is
a gap in numbers that database skipped (``skipped_seqs``: restored from a backup, it
continued after central's numbers); the resend would bring only the events after
them, every ``retry_s``.

In flight or lost: the consumer's ack floor
-------------------------------------------
A gap may be events that are only in flight at central: in the up stream, not yet
delivered, or delivered to a worker that has not committed them (a worker that died
holding its batch gives it back only after the consumer's ack wait). Asking for those
would be needless. A lost event (never stored by JetStream, or lost with the stream or
with central's database) must be asked for in seconds, also while the stream is busy:
under constant traffic the consumer always has messages out, so "nothing outstanding"
never holds.

The rule. Each round first reads the up stream's last sequence L and then the ingest
consumer (ack floor F: every message at or below it acked; messages not yet delivered
or not acked), and only then reads the gaps from the database; the request is claimed
later still, by an UPDATE that holds only while the gap is there. Once a gap is
``gap_after_s`` old it gets a mark: the L of that round. It is asked for when, in that
round or a later one, F >= mark, or nothing is outstanding. Why that is safe:

- A worker acks only after its transaction committed (a dead letter commits too). So
  F >= mark, read before the database, means every message the stream held at the
  mark was committed before the gaps were read (and before the claim, which checks
  again that the gap is there, so a commit between the two asks nothing either). Had
  the missing event been in the stream then, it would have been stored (no gap) or
  held by a dead letter (no resend asked, see below). So it was not in the stream
  ``gap_after_s`` after the gap was first seen: it is lost, or the agent publishes it
  later than that, as with nothing outstanding before. "Nothing outstanding" read
  before the database is the same statement for all of the stream at that moment.
- The rule relies on nothing of the order in which the agent publishes: a publish
  that timed out and is retried after later events were acked, or that the NATS
  client stored only after a reconnect, lands after them in the stream. (Using the
  stream sequence of the event after the gap as the mark would rely on that order,
  and ask for such an event while a worker still held it.)
- A worker that dies holding the missing events: they stay unacked, F stays below
  them until they are redelivered after the ack wait and stored; then the gap is
  closed, nothing is asked. Several workers (processes) share one consumer, so one
  F covers them all; each process's monitor reads it for itself and the conditional
  UPDATE in ``_claim`` still lets one of them ask.
- A handed-back batch (nak on SIGTERM or a database failure) stays unacked as well.
- The tail gap from heartbeats: the same rule; an event the heartbeat counts as acked
  by JetStream was stored in the stream before the heartbeat was sent, so if the
  stream still holds it, it lies below the mark.
- An up stream made anew (its data lost on the NATS server) numbers from 1 again:
  a last sequence below the mark takes its place, as the old stream's messages are
  gone with it.
- Never missing a real gap: under traffic F passes the mark within a batch or two;
  with a backlog (central catching up after an outage) once the backlog up to the
  mark is stored, and not before: the missing event may be in it (the rule before
  this one asked after the ack wait plus ``gap_after_s``, needlessly then). F stays
  below the mark for good only when a message is never acked (a batch the database
  refuses again and again): a floor that has not risen for the ack wait plus
  ``gap_after_s`` (longer than a dead worker's batch takes to come back, it was
  delivered before the gap was seen) gets the gap asked for anyway (a resend doubles
  nothing: central skips what it holds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.auth.context import RequestAudit
from central.failures import FailureLog, one_line
from central.ingest.bulk import dialect_insert, table_of
from central.ingest.fiscal import sweep_waiting_fiscal_numbers
from central.ingest.worker import contiguous_from
from central.models import BranchStatus, BranchSyncState, DeadLetter
from central.services.audit import record_change
from protocol.codec import encode
from protocol.messages import ResendRequested
from protocol.subjects import down_branch_subject

__all__ = ["ConsumerPosition", "GapMonitor", "Publish", "SeenGap", "gap_ripe"]

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, dict[str, str]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ConsumerPosition:
    """Where the ingest consumer stands in the up stream (read in this order)."""

    # The stream's last sequence, read before the consumer.
    last_seq: int
    # Every message at or below this stream sequence is acked (committed).
    ack_floor: int
    # Messages not yet delivered + delivered and not acked.
    outstanding: int
    ack_wait_s: float


ConsumerState = Callable[[], Awaitable[ConsumerPosition]]


@dataclass(slots=True)
class SeenGap:
    contiguous: int
    # monotonic time the gap was first seen
    since: float
    # The stream's last sequence once the gap was gap_after_s old (see the module doc).
    mark: int | None = None
    # The highest ack floor seen since, and when it last rose (monotonic time).
    floor: int = -1
    floor_rose_at: float = 0.0


def gap_ripe(
    gap: SeenGap, position: ConsumerPosition | None, now: float, gap_after_s: float
) -> bool:
    """Whether the gap may be asked for now (the rule in the module doc). ``position``
    is read after ``now`` and before the database; None: no consumer to consult."""
    if now - gap.since < gap_after_s:
        return False
    if position is None:
        return True
    if gap.mark is None or position.last_seq < gap.mark:
        # (A stream that went back was made anew: what the mark counted is gone.)
        gap.mark, gap.floor = position.last_seq, -1
    if position.ack_floor > gap.floor:
        gap.floor, gap.floor_rose_at = position.ack_floor, now
    if position.outstanding == 0 or position.ack_floor >= gap.mark:
        return True
    # A floor that does not rise for longer than a redelivery takes is held by a
    # message never acked: asked for anyway. (One that rises, a backlog being worked
    # through, reaches the mark.)
    return now - gap.floor_rose_at >= position.ack_wait_s + gap_after_s


class GapMonitor:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        publish: Publish,
        *,
        gap_after_s: float = 5.0,
        retry_s: float = 60.0,
        interval_s: float = 1.0,
        consumer_state: ConsumerState | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._publish = publish
        self._consumer_state = consumer_state
        self.gap_after_s = gap_after_s
        self.retry_s = retry_s
        self.interval_s = interval_s
        # branch -> its gap (contiguous seq when first seen, since when, mark, floor)
        self._seen: dict[str, SeenGap] = {}
        self.requested = 0
        # Branches whose gap is an open dead letter (no resend asked).
        self.held_by_dead_letter: set[str] = set()
        # Branches whose gap is an event the branch holds, too big for its NATS server
        # (from its heartbeat): a resend would bring only the events after it, again.
        self.held_at_branch: set[str] = set()
        self.failures = FailureLog(log, "gap check")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check()
                # Late fiscal numbers a concurrent batch left waiting (see the sweep).
                await sweep_waiting_fiscal_numbers(self._sessionmaker)
            except Exception as exc:  # database or NATS away: try again next round
                self.failures.failed(one_line(exc), retry="tried again next round")
            else:
                self.failures.ok()
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass

    async def check(self) -> list[ResendRequested]:
        """One round: request resends for gaps that persisted; returns what was sent."""
        now = time.monotonic()
        # Read before the gaps (the order makes the floor rule sound, see the module
        # doc); only a gap seen in an earlier round can be asked for, so only then.
        position: ConsumerPosition | None = None
        if self._consumer_state is not None and self._seen:
            position = await self._consumer_state()
        await self._track_heard_of()
        async with self._sessionmaker() as session:
            rows = (
                await session.execute(
                    select(BranchSyncState.branch, BranchSyncState.contiguous_seq)
                    .outerjoin(BranchStatus, BranchStatus.branch == BranchSyncState.branch)
                    .where(
                        or_(
                            BranchSyncState.max_seq > BranchSyncState.contiguous_seq,
                            func.coalesce(BranchStatus.last_acked_seq, 0)
                            > BranchSyncState.contiguous_seq,
                        )
                    )
                )
            ).all()
            gaps = {r.branch: r.contiguous_seq for r in rows}
            not_held = (
                {
                    r.branch: (r.first_seq, r.skipped_seqs or [])
                    for r in await session.execute(
                        select(
                            BranchStatus.branch, BranchStatus.first_seq, BranchStatus.skipped_seqs
                        ).where(BranchStatus.branch.in_(sorted(gaps)))
                    )
                }
                if gaps
                else {}
            )
        for branch, contiguous in list(gaps.items()):
            first_seq, skipped = not_held.get(branch, (0, []))
            through = _not_at_branch_through(contiguous + 1, first_seq, skipped)
            if through is not None:
                await self._give_up_through(branch, through, first_seq=first_seq)
                del gaps[branch]  # what is left of it, if anything, next round
        async with self._sessionmaker() as session:
            # A gap whose next event sits in a dead letter (open, or discarded by a
            # person) is not lost: a resend would only bring the same bytes again (the
            # agent re-publishing its whole tail every retry_s). It stays a gap, shown
            # in sync health, until the letter is replayed.
            held: set[tuple[str | None, int | None]] = set()
            at_branch: set[tuple[str, int]] = set()
            if gaps:
                held = {
                    (r.branch, r.seq)
                    for r in await session.execute(
                        select(DeadLetter.branch, DeadLetter.seq).where(
                            DeadLetter.status != "replayed",
                            DeadLetter.branch.in_(sorted(gaps)),
                            DeadLetter.seq.is_not(None),
                        )
                    )
                }
                at_branch = {
                    (r.branch, int(seq))
                    for r in await session.execute(
                        select(BranchStatus.branch, BranchStatus.outbox_held).where(
                            BranchStatus.branch.in_(sorted(gaps))
                        )
                    )
                    for seq in r.outbox_held or ()
                }
        for branch, contiguous in list(gaps.items()):
            if (branch, contiguous + 1) in held:
                del gaps[branch]
                self.held_by_dead_letter.add(branch)
            else:
                self.held_by_dead_letter.discard(branch)
            if (branch, contiguous + 1) in at_branch:
                gaps.pop(branch, None)
                self.held_at_branch.add(branch)
            else:
                self.held_at_branch.discard(branch)
        for branch in list(self._seen):
            if branch not in gaps:
                del self._seen[branch]
        sent: list[ResendRequested] = []
        for branch, contiguous in sorted(gaps.items()):
            gap = self._seen.get(branch)
            if gap is None or gap.contiguous != contiguous:
                self._seen[branch] = SeenGap(contiguous, now)
                continue
            if self._consumer_state is not None and position is None:
                continue  # not read this round (cannot happen: the gap was seen before)
            if not gap_ripe(gap, position, now, self.gap_after_s):
                continue
            request = await self._claim(branch, contiguous + 1)
            if request is not None:
                await self._publish(
                    down_branch_subject(branch, "command", "resend"),
                    encode(request),
                    {"Nats-Msg-Id": request.request_id},
                )
                log.info("asked branch %s to resend from %d", branch, request.from_seq)
                self.requested += 1
                sent.append(request)
        return sent

    async def _give_up_through(self, branch: str, last: int, *, first_seq: int) -> None:
        """The numbers from the contiguous run up to ``last`` are not at the branch:
        given up as lost (merged with an earlier lost range), audited."""
        async with self._sessionmaker() as session, session.begin():
            state = (
                await session.execute(
                    select(BranchSyncState)
                    .where(BranchSyncState.branch == branch)
                    .with_for_update()
                )
            ).scalar_one()
            if state.contiguous_seq >= last:
                return  # another process did it
            given_up_from = state.contiguous_seq + 1
            before = {
                "contiguous_seq": state.contiguous_seq,
                "lost_from_seq": state.lost_from_seq,
                "lost_to_seq": state.lost_to_seq,
            }
            lost_from, lost_to = state.contiguous_seq + 1, last
            if state.lost_from_seq is not None and state.lost_to_seq is not None:
                lost_from = min(lost_from, state.lost_from_seq)
                lost_to = max(lost_to, state.lost_to_seq)
            state.lost_from_seq, state.lost_to_seq = lost_from, lost_to
            state.contiguous_seq = await contiguous_from(session, branch, last)
            state.resend_requested_from = None
            await record_change(
                session,
                action="branch.events_given_up",
                target=branch,
                before=before,
                after={
                    "contiguous_seq": state.contiguous_seq,
                    "lost_from_seq": lost_from,
                    "lost_to_seq": lost_to,
                    "first_seq": first_seq,
                    "given_up": [given_up_from, last],
                },
                actor=RequestAudit(actor="central", actor_role="system", method="NATS"),
            )
        log.warning(
            "branch %s: events %d to %d are not at the branch (its agent database starts "
            "at %d, or skipped them): given up as lost",
            branch,
            given_up_from,
            last,
            first_seq,
        )

    async def _track_heard_of(self) -> None:
        """A branch central holds no event of but heard of in a heartbeat (acked events,
        all lost with central's database) gets its sequence row, so its gap counts."""
        async with self._sessionmaker() as session:
            unknown = list(
                await session.scalars(
                    select(BranchStatus.branch)
                    .outerjoin(BranchSyncState, BranchSyncState.branch == BranchStatus.branch)
                    .where(BranchSyncState.branch.is_(None), BranchStatus.last_acked_seq > 0)
                )
            )
        if not unknown:
            return
        table = table_of(BranchSyncState)
        async with self._sessionmaker() as session, session.begin():
            for branch in unknown:
                await session.execute(
                    dialect_insert(session, table)
                    .values(branch=branch, contiguous_seq=0, max_seq=0)
                    .on_conflict_do_nothing(index_elements=["branch"])
                )

    async def _claim(self, branch: str, from_seq: int) -> ResendRequested | None:
        """Record the request unless one for the same gap is recent (any process)."""
        now = datetime.now(UTC)
        cutoff = now - timedelta(seconds=self.retry_s)
        async with self._sessionmaker() as session, session.begin():
            result = await session.execute(
                update(BranchSyncState)
                .where(
                    BranchSyncState.branch == branch,
                    BranchSyncState.contiguous_seq == from_seq - 1,
                    or_(
                        BranchSyncState.resend_requested_from.is_(None),
                        BranchSyncState.resend_requested_from != from_seq,
                        BranchSyncState.resend_requested_at.is_(None),
                        BranchSyncState.resend_requested_at < cutoff,
                    ),
                )
                .values(resend_requested_from=from_seq, resend_requested_at=now)
                .execution_options(synchronize_session=False)
            )
        if getattr(result, "rowcount", 0) != 1:
            return None
        return ResendRequested(
            branch=branch,
            from_seq=from_seq,
            requested_at=now,
            request_id=f"resend-{branch}-{from_seq}-{int(now.timestamp())}",
        )


def _not_at_branch_through(missing: int, first_seq: int, skipped: list[list[int]]) -> int | None:
    """The last of the numbers from ``missing`` on that the branch's agent database
    does not have (below its first, or a run it skipped); None: it has ``missing``."""
    if missing < first_seq:
        return first_seq - 1
    for pair in skipped:
        if len(pair) == 2 and pair[0] <= missing <= pair[1]:
            return int(pair[1])
    return None
