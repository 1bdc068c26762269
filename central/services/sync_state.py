"""What central holds of each branch's event sequence, and its latest heartbeat."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.schemas import Page
from central.auth.context import RequestAudit
from central.errors import NotFoundError
from central.ingest.bulk import dialect_insert, table_of
from central.ingest.conflicts import RECORDED_AGAIN
from central.models import Branch, BranchStatus, BranchSyncState, DeadLetter, IngestedEvent
from central.services.audit import record_change
from central.services.masterdata_publisher import current_version, marked_version, up_to_date

__all__ = [
    "NEW_DATABASE",
    "RESTORED_DATABASE",
    "BranchSyncOut",
    "RunningAgent",
    "anchor_event_sequence",
    "confirm_event_sequence",
    "get_branch_sync",
    "list_branch_sync",
    "lost_events",
    "other_running_agent",
    "recorded_again_open",
    "timezone_mismatch",
]


class BranchSyncOut(msgspec.Struct, kw_only=True):
    branch: str
    # Highest n such that events 1..n of the branch are all stored at central.
    contiguous_seq: int
    max_seq: int
    missing: int  # sequence numbers below max_seq not (yet) stored
    last_event_at: datetime | None
    last_received_at: datetime | None
    resend_requested_from: int | None
    resend_requested_at: datetime | None
    open_dead_letters: int
    # Of those, a till's retry recorded again by a restored agent database before
    # central could list what the restore lost: the customer may have been charged
    # twice (README: A till's retry of a sale the restore lost).
    recorded_again_open: int = 0
    # From the latest heartbeat.
    heartbeat_sent_at: datetime | None
    last_recorded_seq: int | None
    outbox_backlog: int | None
    # Events held at the branch, too big for its NATS server (not asked for again).
    outbox_held: list[int] = []
    # The store server's clock ahead of central's (ms; negative: behind), as its agent
    # last measured it (None: not measured).
    clock_offset_ms: int | None = None
    # The branch's agent database was replaced, or restored from a backup
    # (restart_reason "new_database" or "restored_database"; restarted_at_seq: its
    # first event after): the numbers from lost_from_seq to lost_to_seq the earlier one
    # had used are given up, lost_events of them never reached central.
    restarted_at_seq: int | None = None
    restarted_at: datetime | None = None
    restart_reason: str | None = None
    # Another agent database of the branch (refused_instance, on server
    # refused_server) asked to be numbered while this one ran, last at refused_at: it
    # waits, sending nothing. The same id as the running one: a copy of its database
    # on a second server (a cloned disk).
    refused_instance: str | None = None
    refused_at: datetime | None = None
    refused_server: str | None = None
    # From the latest heartbeat: the agent database that sent it, and its server.
    agent_instance: str | None = None
    agent_server: str | None = None
    lost_from_seq: int | None = None
    lost_to_seq: int | None = None
    lost_events: int = 0
    # Master data: the version the branch applied (from its heartbeat), the version of
    # central's last publication, and whether it applied every published change.
    applied_version: int | None = None
    published_version: int = 0
    up_to_date: bool = False
    # Central's record of the branch's time zone, the one its agent reported in its
    # latest heartbeat (None: not said), and whether they differ: the tills would
    # switch local-time prices and close local days at other moments than central.
    timezone: str = "UTC"
    agent_timezone: str | None = None
    timezone_mismatch: bool = False


async def recorded_again_open(
    session: AsyncSession, branches: list[str] | None = None
) -> dict[str, int]:
    """Per branch (of ``branches``; None: every one), its open dead letters of a till's
    retry recorded again by a restored agent database (``RECORDED_AGAIN``)."""
    query = select(DeadLetter.branch, func.count(DeadLetter.id)).where(
        DeadLetter.status == "open",
        DeadLetter.reason.startswith(RECORDED_AGAIN, autoescape=True),
    )
    if branches is not None:
        query = query.where(DeadLetter.branch.in_(branches))
    rows = await session.execute(query.group_by(DeadLetter.branch))
    return {branch: int(count) for branch, count in rows if branch is not None}


async def list_branch_sync(
    session: AsyncSession, *, limit: int, offset: int
) -> Page[BranchSyncOut]:
    branches = list(
        await session.scalars(select(Branch.code).order_by(Branch.code).limit(limit).offset(offset))
    )
    total = await session.scalar(select(func.count()).select_from(Branch))
    return Page(
        items=await _sync_of(session, branches), total=total or 0, limit=limit, offset=offset
    )


async def get_branch_sync(session: AsyncSession, branch: str) -> BranchSyncOut:
    if await session.get(Branch, branch) is None:
        raise NotFoundError(f"branch {branch!r} not found", field="branch")
    return (await _sync_of(session, [branch]))[0]


async def _sync_of(session: AsyncSession, branches: list[str]) -> list[BranchSyncOut]:
    if not branches:
        return []
    states = {
        s.branch: s
        for s in await session.scalars(
            select(BranchSyncState).where(BranchSyncState.branch.in_(branches))
        )
    }
    statuses = {
        s.branch: s
        for s in await session.scalars(
            select(BranchStatus).where(BranchStatus.branch.in_(branches))
        )
    }
    zones = dict(
        (r[0], r[1])
        for r in await session.execute(
            select(Branch.code, Branch.timezone).where(Branch.code.in_(branches))
        )
    )
    letters = dict(
        (r[0], int(r[1]))
        for r in await session.execute(
            select(DeadLetter.branch, func.count(DeadLetter.id))
            .where(DeadLetter.branch.in_(branches), DeadLetter.status == "open")
            .group_by(DeadLetter.branch)
        )
    )
    again = await recorded_again_open(session, branches)
    counts = dict(
        (r[0], int(r[1]))
        for r in await session.execute(
            select(IngestedEvent.branch, func.count())
            .where(IngestedEvent.branch.in_(branches))
            .group_by(IngestedEvent.branch)
        )
    )
    # Numbers held by letters a person discarded are settled, not missing (an event
    # stored later anyway counts once).
    stored = (
        select(IngestedEvent.seq)
        .where(IngestedEvent.branch == DeadLetter.branch, IngestedEvent.seq == DeadLetter.seq)
        .exists()
    )
    for branch_code, settled in await session.execute(
        select(DeadLetter.branch, func.count(func.distinct(DeadLetter.seq)))
        .where(
            DeadLetter.branch.in_(branches),
            DeadLetter.status == "discarded",
            DeadLetter.seq.is_not(None),
            ~stored,
        )
        .group_by(DeadLetter.branch)
    ):
        if branch_code is not None:
            counts[branch_code] = counts.get(branch_code, 0) + int(settled)
    lost = await lost_events(session, list(states.values()))
    published = await marked_version(session)
    central = await current_version(session)
    out = []
    for code in branches:
        state = states.get(code)
        status = statuses.get(code)
        max_seq = state.max_seq if state else 0
        out.append(
            BranchSyncOut(
                branch=code,
                contiguous_seq=state.contiguous_seq if state else 0,
                max_seq=max_seq,
                missing=max(0, max_seq - counts.get(code, 0)),
                last_event_at=state.last_event_at if state else None,
                last_received_at=state.last_received_at if state else None,
                resend_requested_from=state.resend_requested_from if state else None,
                resend_requested_at=state.resend_requested_at if state else None,
                open_dead_letters=letters.get(code, 0),
                recorded_again_open=again.get(code, 0),
                heartbeat_sent_at=status.sent_at if status else None,
                last_recorded_seq=status.last_recorded_seq if status else None,
                outbox_backlog=status.outbox_backlog if status else None,
                outbox_held=list(status.outbox_held) if status else [],
                clock_offset_ms=status.clock_offset_ms if status else None,
                restarted_at_seq=state.restarted_at_seq if state else None,
                restarted_at=state.restarted_at if state else None,
                restart_reason=state.restart_reason if state else None,
                refused_instance=state.refused_instance if state else None,
                refused_at=state.refused_at if state else None,
                refused_server=state.refused_server if state else None,
                agent_instance=status.agent_instance if status else None,
                agent_server=status.agent_server if status else None,
                lost_from_seq=state.lost_from_seq if state else None,
                lost_to_seq=state.lost_to_seq if state else None,
                lost_events=lost.get(code, 0),
                applied_version=status.applied_version if status else None,
                published_version=published,
                up_to_date=up_to_date(
                    status.applied_version if status else None, published, central
                ),
                timezone=zones[code],
                agent_timezone=status.agent_timezone if status else None,
                timezone_mismatch=timezone_mismatch(zones[code], status),
            )
        )
    return out


def timezone_mismatch(timezone: str, status: BranchStatus | None) -> bool:
    """The branch's agent reported a time zone other than central's record of it."""
    reported = status.agent_timezone if status is not None else None
    return reported is not None and reported != timezone


async def lost_events(session: AsyncSession, states: list[BranchSyncState]) -> dict[str, int]:
    """Per branch whose agent database was replaced: how many of the numbers given up
    with the earlier one never reached central (one count per such branch)."""
    lost: dict[str, int] = {}
    for state in states:
        if state.lost_from_seq is not None and state.lost_to_seq is not None:
            received = await session.scalar(
                select(func.count()).where(
                    IngestedEvent.branch == state.branch,
                    IngestedEvent.seq.between(state.lost_from_seq, state.lost_to_seq),
                )
            )
            span = state.lost_to_seq - state.lost_from_seq + 1
            lost[state.branch] = span - int(received or 0)
    return lost


async def _locked_state(session: AsyncSession, branch: str) -> BranchSyncState:
    table = table_of(BranchSyncState)
    await session.execute(
        dialect_insert(session, table)
        .values(branch=branch, contiguous_seq=0, max_seq=0)
        .on_conflict_do_nothing(index_elements=["branch"])
    )
    return (
        await session.execute(
            select(BranchSyncState).where(BranchSyncState.branch == branch).with_for_update()
        )
    ).scalar_one()


async def _highest_known(session: AsyncSession, state: BranchSyncState, in_stream: int) -> int:
    """The highest event number of the branch central knows of: stored, recorded by
    the branch's latest heartbeat, or ``in_stream`` (sent, not stored yet: see
    ``central.sync.in_flight``)."""
    status = await session.get(BranchStatus, state.branch)
    return max(state.max_seq, status.last_recorded_seq if status else 0, in_stream)


def _answered(state: BranchSyncState, instance: str, server: str) -> None:
    """Numbering ``instance`` on ``server`` ends a refusal of it (not one of a copy of
    it on another server)."""
    if state.refused_instance == instance and (
        not (state.refused_server and server) or state.refused_server == server
    ):
        state.refused_instance = state.refused_at = state.refused_server = None


async def _restart_after(
    session: AsyncSession,
    state: BranchSyncState,
    instance: str,
    high: int,
    reason: str,
    server: str,
) -> int:
    """Agent database ``instance`` numbers on after ``high``: the numbers up to it that
    central never received are given up as lost (the gap monitor stops asking for them;
    sync health counts them); audited when the branch had numbered events."""
    start = high + 1
    before = {"agent_instance": state.agent_instance, "contiguous_seq": state.contiguous_seq}
    lost = (state.contiguous_seq + 1, high) if high > state.contiguous_seq else (None, None)
    state.lost_from_seq, state.lost_to_seq = lost
    state.contiguous_seq = max(state.contiguous_seq, high)
    state.agent_instance = instance
    state.restarted_at_seq = start
    state.restarted_at = datetime.now(UTC)
    state.restart_reason = reason
    state.resend_requested_from = None
    _answered(state, instance, server)
    if high:
        await record_change(
            session,
            action=_RESTART_ACTIONS[reason],
            target=state.branch,
            before=before,
            after={
                "agent_instance": instance,
                "first_seq": start,
                "lost_from_seq": state.lost_from_seq,
                "lost_to_seq": state.lost_to_seq,
            },
            actor=RequestAudit(actor=f"branch:{state.branch}", actor_role="branch", method="NATS"),
        )
    return start


# Heartbeats come every few seconds: one this recent from another agent database of
# the branch (not its last) means that database runs.
LIVE_AGENT = timedelta(seconds=60)


class RunningAgent(NamedTuple):
    """The agent database of a branch that runs, and its server (None: not said)."""

    instance: str
    server: str | None


async def other_running_agent(
    session: AsyncSession,
    branch: str,
    instance: str,
    *,
    server: str = "",
    now: datetime | None = None,
) -> RunningAgent | None:
    """Another agent database of ``branch`` that is running (its latest heartbeat
    recent, and not its last), or the same database ``instance`` running on another
    server than ``server`` (a copy of it: a cloned disk), else None; recorded as a
    refusal of ``instance`` on ``server`` (in the caller's transaction), which
    numbering it later clears.

    The same database on the same server is a restart, and an agent from before
    servers were named (no server on either side) is taken as one.
    """
    status = await session.get(BranchStatus, branch)
    now = now or datetime.now(UTC)
    if (
        status is None
        or not status.agent_instance
        or status.agent_stopped
        or status.received_at < now - LIVE_AGENT
    ):
        return None
    if status.agent_instance == instance and (
        not (status.agent_server and server) or status.agent_server == server
    ):
        return None
    state = await _locked_state(session, branch)
    state.refused_instance = instance
    state.refused_at = now
    state.refused_server = server or None
    return RunningAgent(status.agent_instance, status.agent_server)


NEW_DATABASE = "new_database"
RESTORED_DATABASE = "restored_database"
_RESTART_ACTIONS = {
    NEW_DATABASE: "branch.agent_replaced",
    RESTORED_DATABASE: "branch.agent_restored",
}


async def anchor_event_sequence(
    session: AsyncSession, branch: str, instance: str, *, server: str = "", in_stream: int = 0
) -> int:
    """The number of the first event of agent database ``instance`` of ``branch``, in
    the caller's transaction: the same answer whenever the same database asks.

    A new database (the store's server replaced, its disk lost) would number its events
    from 1 again, numbers central already holds from the earlier one: it starts after
    the highest number central knows of instead (stored, or recorded by the branch's
    latest heartbeat). The earlier database's numbers central never received are given
    up as lost with it. (The same database asking after central received numbers from
    it: a copy of it from before its first answer, restored from a backup.)
    ``in_stream``: the highest number the branch sent that central has not stored yet.
    """
    state = await _locked_state(session, branch)
    high = await _highest_known(session, state, in_stream)
    same = state.agent_instance == instance and state.restarted_at_seq is not None
    if same and state.restarted_at_seq is not None and high < state.restarted_at_seq:
        _answered(state, instance, server)
        return state.restarted_at_seq
    return await _restart_after(
        session, state, instance, high, RESTORED_DATABASE if same else NEW_DATABASE, server
    )


async def confirm_event_sequence(
    session: AsyncSession,
    branch: str,
    instance: str,
    last_seq: int,
    *,
    server: str = "",
    in_stream: int = 0,
) -> int:
    """The number of the next event of numbered agent database ``instance`` of
    ``branch``, which had numbered its events up to ``last_seq`` when it started; in
    the caller's transaction.

    Normally ``last_seq + 1``. If central holds (or the latest heartbeat recorded)
    higher numbers, the database went back in time: restored from a backup, or an
    earlier server put back in service. Its numbers after ``last_seq`` are central's
    already, with other sales; its events continue after the highest instead, and the
    numbers up to it that central never received are given up as lost, as for a new
    database. Asked again before anything arrived since, the same answer.
    ``in_stream``: the highest number the branch sent that central has not stored yet
    (its events still in the up stream count as held: they will be).
    """
    state = await _locked_state(session, branch)
    high = await _highest_known(session, state, in_stream)
    if last_seq >= high:
        state.agent_instance = instance
        _answered(state, instance, server)
        return last_seq + 1
    if (
        state.agent_instance == instance
        and state.restart_reason == RESTORED_DATABASE
        and state.restarted_at_seq == high + 1
    ):
        _answered(state, instance, server)
        return high + 1
    return await _restart_after(session, state, instance, high, RESTORED_DATABASE, server)
