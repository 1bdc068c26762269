"""What central holds of each branch's event sequence, and its latest heartbeat."""

from __future__ import annotations

from datetime import datetime

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.schemas import Page
from central.errors import NotFoundError
from central.models import Branch, BranchStatus, BranchSyncState, DeadLetter, IngestedEvent

__all__ = ["BranchSyncOut", "get_branch_sync", "list_branch_sync"]


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
    # From the latest heartbeat.
    heartbeat_sent_at: datetime | None
    last_recorded_seq: int | None
    outbox_backlog: int | None
    # Events held at the branch, too big for its NATS server (not asked for again).
    outbox_held: list[int] = []


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
    letters = dict(
        (r[0], int(r[1]))
        for r in await session.execute(
            select(DeadLetter.branch, func.count(DeadLetter.id))
            .where(DeadLetter.branch.in_(branches), DeadLetter.status == "open")
            .group_by(DeadLetter.branch)
        )
    )
    counts = dict(
        (r[0], int(r[1]))
        for r in await session.execute(
            select(IngestedEvent.branch, func.count())
            .where(IngestedEvent.branch.in_(branches))
            .group_by(IngestedEvent.branch)
        )
    )
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
                heartbeat_sent_at=status.sent_at if status else None,
                last_recorded_seq=status.last_recorded_seq if status else None,
                outbox_backlog=status.outbox_backlog if status else None,
                outbox_held=list(status.outbox_held) if status else [],
            )
        )
    return out
