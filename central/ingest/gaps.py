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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
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

__all__ = ["GapMonitor", "Publish"]

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, dict[str, str]], Awaitable[None]]
# The ingest consumer's state: (messages not yet delivered + delivered and unacked,
# its ack wait in seconds).
ConsumerState = Callable[[], Awaitable[tuple[int, float]]]


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
        # branch -> (contiguous seq when the gap was first seen, monotonic time)
        self._seen: dict[str, tuple[int, float]] = {}
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
        outstanding: tuple[int, float] | None = None
        for branch, contiguous in sorted(gaps.items()):
            first = self._seen.get(branch)
            if first is None or first[0] != contiguous:
                self._seen[branch] = (contiguous, now)
                continue
            if now - first[1] < self.gap_after_s:
                continue
            if self._consumer_state is not None:
                # While the ingest consumer still holds messages (undelivered, or out
                # with a worker that failed, stopped or died), the missing events may
                # be among them: a dead worker's batch comes back after the ack wait,
                # so only a gap older than that is asked for. None outstanding: it is
                # not in the stream, asked for now.
                if outstanding is None:
                    outstanding = await self._consumer_state()
                pending, ack_wait_s = outstanding
                if pending and now - first[1] < ack_wait_s + self.gap_after_s:
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
