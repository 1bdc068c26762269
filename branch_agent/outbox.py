"""The transactional outbox: an event row written in the same transaction as its fact."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from branch_agent.db import table_of
from branch_agent.direct_sql import DirectStatement, DirectUnit, run
from branch_agent.errors import Rejected
from branch_agent.models import Counter, OutboxEvent
from protocol.codec import WireDecodeError, check, decode_envelope, encode
from protocol.events import BranchEvent, EventEnvelope, event_kind
from protocol.ids import new_event_id
from protocol.limits import MAX_EVENT_BYTES
from protocol.subjects import up_subject

__all__ = [
    "EVENT_SEQ",
    "append_event",
    "backlog",
    "check_event",
    "mark_unsent_from",
    "next_counter",
    "utc_offset_min",
]

EVENT_SEQ = "event_seq"


_counters = table_of(Counter)
# Built once (the sale path bumps two counters per sale).
_BUMP_COUNTER = DirectStatement(
    sqlite_insert(_counters)
    .values(name=bindparam("name"), value=1)
    .on_conflict_do_update(index_elements=["name"], set_={"value": _counters.c.value + 1})
    .returning(_counters.c.value)
)


# A Core insert: no ORM object to flush for a row nobody reads back in this transaction.
_outbox = table_of(OutboxEvent)
_INSERT_OUTBOX = DirectStatement(
    insert(_outbox).values(
        {c: bindparam(c) for c in ("seq", "event_id", "subject", "kind", "payload", "created_at")}
    ),
    _outbox,
)


async def next_counter(db: AsyncSession | DirectUnit, name: str) -> int:
    """Bump a gapless counter inside the caller's transaction (rolled back with it).

    One UPSERT ... RETURNING statement: on the sale path every round trip counts."""
    ((value,),) = await run(db, _BUMP_COUNTER, {"name": name})
    return int(value)


def utc_offset_min(timezone: str, at: datetime) -> int:
    offset = at.astimezone(ZoneInfo(timezone)).utcoffset()
    return int(offset.total_seconds() // 60) if offset else 0


def _refused(exc: WireDecodeError) -> Rejected:
    field = exc.field
    if field is not None and field.startswith("body."):
        field = field.removeprefix("body.")
    return Rejected(f"central would refuse it: {exc}", field=field)


# What an envelope adds to its body: ids, branch, sequence, times (~120 bytes).
_ENVELOPE_BYTES = 512


def _check_size(size: int) -> None:
    """An event too big for one NATS message could never be sent, and would hold every
    event after it in the outbox: refused before anything is recorded."""
    if size > MAX_EVENT_BYTES:
        raise Rejected(
            f"the event would take {size:,} bytes, more than the {MAX_EVENT_BYTES:,} one "
            "message may carry: shorten its texts or post fewer lines"
        )


def check_event(body: BranchEvent) -> None:
    """Rejected (422, naming the field) when central would refuse this event: a value
    beyond a limit of its wire Struct, whether it came from the till, the catalog, a
    device or the agent's own arithmetic. For a fact whose event is written only later
    (once the fiscal printer has printed it): refused before anything is recorded.
    :func:`append_event` checks every event it writes the same way."""
    try:
        check(body)
    except WireDecodeError as exc:
        raise _refused(exc) from exc
    _check_size(len(encode(body)) + _ENVELOPE_BYTES)


async def append_event(
    db: AsyncSession | DirectUnit,
    *,
    branch: str,
    timezone: str,
    body: BranchEvent,
    occurred_at: datetime | None = None,
) -> EventEnvelope:
    occurred_at = occurred_at or datetime.now(UTC)
    envelope = EventEnvelope(
        event_id=new_event_id(),
        branch=branch,
        seq=await next_counter(db, EVENT_SEQ),
        occurred_at=occurred_at,
        utc_offset_min=utc_offset_min(timezone, occurred_at),
        body=body,
    )
    payload = encode(envelope)
    try:
        # What central will decode: an event it would refuse is never written (the
        # caller's transaction, with the fact, is rolled back).
        decode_envelope(payload)
    except WireDecodeError as exc:
        raise _refused(exc) from exc
    _check_size(len(payload))
    await run(
        db,
        _INSERT_OUTBOX,
        {
            "seq": envelope.seq,
            "event_id": envelope.event_id,
            "subject": up_subject(branch, event_kind(body)),
            "kind": event_kind(body),
            "payload": payload,
            "created_at": occurred_at,
        },
    )
    return envelope


async def backlog(session: AsyncSession) -> int:
    count = await session.scalar(
        select(func.count()).select_from(OutboxEvent).where(OutboxEvent.sent_at.is_(None))
    )
    return count or 0


async def mark_unsent_from(session: AsyncSession, from_seq: int) -> int:
    """Central asked for a resend: everything from ``from_seq`` goes out again (the same
    event ids; a new message id for the stream, see ``branch_agent.sender``)."""
    result = await session.execute(
        update(OutboxEvent).where(OutboxEvent.seq >= from_seq).values(sent_at=None)
    )
    return int(getattr(result, "rowcount", 0) or 0)
