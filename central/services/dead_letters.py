"""Dead letters: list, replay through the ingest path after a fix, or discard."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import msgspec
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import defer

from central.api.schemas import DeadLetterOut, Page
from central.errors import ConflictError, NotFoundError, ValidationFailed
from central.ingest.worker import IngestWorker, MessageIn, contiguous_from
from central.models import BranchSyncState, DeadLetter
from central.services.audit import bulk_summary, record_change
from central.services.paging import paged

__all__ = [
    "DEAD_LETTER_STATUSES",
    "ReplayOut",
    "discard_dead_letter",
    "get_dead_letter",
    "list_dead_letters",
    "replay_all",
    "replay_dead_letter",
]

DEAD_LETTER_STATUSES = ("open", "replayed", "discarded")


class ReplayOut(msgspec.Struct, kw_only=True):
    id: int
    status: str  # replayed (stored, or found already stored) or open (failed again)
    reason: str
    attempts: int


def _state(d: DeadLetter) -> dict[str, object]:
    """A dead letter for the audit log: its state, not its (possibly large) payload."""
    return {
        "id": d.id,
        "subject": d.subject,
        "branch": d.branch,
        "status": d.status,
        "reason": d.reason,
        "attempts": d.attempts,
        "size": len(d.raw),
        "resolved_at": d.resolved_at,
    }


def dead_letter_out(d: DeadLetter, *, size: int | None = None) -> DeadLetterOut:
    """The letter; its raw bytes only when ``size`` is not given (a list leaves them
    out: a page of 1,000 letters of up to 1 MiB each is no response)."""
    return DeadLetterOut(
        id=d.id,
        subject=d.subject,
        branch=d.branch,
        reason=d.reason,
        status=d.status,
        received_at=d.received_at,
        stream_seq=d.stream_seq,
        raw_base64=None if size is not None else base64.b64encode(d.raw).decode(),
        size=size if size is not None else len(d.raw),
        seq=d.seq,
        attempts=d.attempts,
    )


async def list_dead_letters(
    session: AsyncSession,
    *,
    status: str | None,
    branch: str | None = None,
    limit: int,
    offset: int,
) -> Page[DeadLetterOut]:
    if status and status not in DEAD_LETTER_STATUSES:
        raise ValidationFailed(
            f"status must be one of {', '.join(DEAD_LETTER_STATUSES)}", field="status"
        )
    conditions = []
    if status:
        conditions.append(DeadLetter.status == status)
    if branch:
        conditions.append(DeadLetter.branch == branch)
    rows = (
        await session.execute(
            select(DeadLetter, func.length(DeadLetter.raw))
            .options(defer(DeadLetter.raw))
            .where(*conditions)
            .order_by(DeadLetter.id)
            .limit(limit)
            .offset(offset)
        )
    ).all()
    return await paged(
        session,
        [dead_letter_out(d, size=int(size or 0)) for d, size in rows],
        select(DeadLetter.id).where(*conditions),
        limit=limit,
        offset=offset,
    )


async def get_dead_letter(session: AsyncSession, dead_letter_id: int) -> DeadLetterOut:
    row = await session.get(DeadLetter, dead_letter_id)
    if row is None:
        raise NotFoundError(f"dead letter {dead_letter_id} not found", field="dead_letter_id")
    return dead_letter_out(row)


async def replay_dead_letter(
    sessionmaker: async_sessionmaker[AsyncSession], dead_letter_id: int
) -> ReplayOut:
    """Process the stored subject and raw bytes again, through the ingest worker's path.

    Stored (or found already stored): the letter is marked replayed in the same
    transaction. Failing again: it stays open with the new reason.
    """
    async with sessionmaker() as session:
        row = await session.get(DeadLetter, dead_letter_id)
        if row is None:
            raise NotFoundError(f"dead letter {dead_letter_id} not found", field="dead_letter_id")
        if row.status != "open":
            raise ConflictError(
                f"dead letter {dead_letter_id} is {row.status}, not open", field="dead_letter_id"
            )
        before = _state(row)
        message = MessageIn(
            subject=row.subject,
            data=row.raw,
            headers=dict(row.headers or {}),
            stream_seq=row.stream_seq,
            dead_letter_id=row.id,
        )
    await IngestWorker(sessionmaker).process([message])
    # The ingest worker commits the replay in its own transaction; the audit line
    # follows in the next one (the outcome is only known afterwards).
    async with sessionmaker() as session, session.begin():
        row = await session.get(DeadLetter, dead_letter_id)
        assert row is not None
        await record_change(
            session,
            action="dead_letter.replay",
            target=f"dead_letter:{dead_letter_id}",
            before=before,
            after=_state(row),
        )
        return ReplayOut(id=row.id, status=row.status, reason=row.reason, attempts=row.attempts)


async def replay_all(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    branch: str | None = None,
    limit: int | None = None,
) -> list[ReplayOut]:
    """Replay the open letters (of one branch), oldest first; at most ``limit`` of them
    (the API's request does a page at a time; the CLI's ``--all`` does every one)."""
    async with sessionmaker() as session:
        stmt = (
            select(DeadLetter.id)
            .where(DeadLetter.status == "open")
            .order_by(DeadLetter.id)
            .limit(limit)
        )
        if branch:
            stmt = stmt.where(DeadLetter.branch == branch)
        ids = list(await session.scalars(stmt))
    results = []
    for dead_letter_id in ids:
        try:
            results.append(await replay_dead_letter(sessionmaker, dead_letter_id))
        except ConflictError:
            continue  # replayed meanwhile by someone else
    # Each replay has its own entry; this one says what was asked and what came of it.
    async with sessionmaker() as session, session.begin():
        await record_change(
            session,
            action="dead_letter.replay_all",
            target=f"dead_letters:{branch or '*'}",
            before=bulk_summary(str(i) for i in ids),
            after={
                "replayed": bulk_summary(str(r.id) for r in results if r.status == "replayed"),
                "still_open": bulk_summary(str(r.id) for r in results if r.status == "open"),
            },
        )
    return results


async def discard_dead_letter(session: AsyncSession, dead_letter_id: int) -> DeadLetterOut:
    """A person decided the message is not to be stored (kept for the record)."""
    current = await session.get(DeadLetter, dead_letter_id)
    before = None if current is None else _state(current)
    result = await session.execute(
        update(DeadLetter)
        .where(DeadLetter.id == dead_letter_id, DeadLetter.status == "open")
        .values(status="discarded", resolved_at=datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        row = await session.get(DeadLetter, dead_letter_id)
        if row is None:
            raise NotFoundError(f"dead letter {dead_letter_id} not found", field="dead_letter_id")
        raise ConflictError(
            f"dead letter {dead_letter_id} is {row.status}, not open", field="dead_letter_id"
        )
    row = await session.get(DeadLetter, dead_letter_id, populate_existing=True)
    assert row is not None
    settled = await _settle_sequence(session, row)
    await record_change(
        session,
        action="dead_letter.discard",
        target=f"dead_letter:{dead_letter_id}",
        before=before,
        after={**_state(row), **settled},
    )
    await session.commit()
    return await get_dead_letter(session, dead_letter_id)


async def _settle_sequence(session: AsyncSession, letter: DeadLetter) -> dict[str, object]:
    """A discarded letter's branch sequence number is settled: the event reached central
    and a person decided not to store it, so the branch's contiguous run goes past it
    now (before: it stayed a gap, ``missing`` in sync, until some later renumbering),
    and no resend is asked for it. What the audit entry adds (nothing without a seq)."""
    if letter.branch is None or letter.seq is None:
        return {}
    state = (
        await session.execute(
            select(BranchSyncState).where(BranchSyncState.branch == letter.branch).with_for_update()
        )
    ).scalar_one_or_none()
    if state is None:
        return {}
    before = state.contiguous_seq
    state.contiguous_seq = await contiguous_from(session, letter.branch, before)
    state.max_seq = max(state.max_seq, letter.seq)
    if state.contiguous_seq != before:
        state.resend_requested_from = state.resend_requested_at = None
    await session.flush()
    return {"seq": letter.seq, "contiguous_seq": [before, state.contiguous_seq]}
