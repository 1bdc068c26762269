"""Where this agent database's event numbers start.

Central keeps each branch's events by number and takes a number it holds already for
a duplicate. A new agent database (the store's server replaced, its disk lost) would
number from 1 again, so until central has said where to start (its answer to the
position report, ``SnapshotReply.event_seq_start``) its events wait in the outbox:
recorded as usual (the store keeps trading), not sent, no heartbeat, no resend taken.
Then, in one transaction under the write lock, they are renumbered from that start
(each payload re-encoded with its number) and the counter follows. A database that
numbered events before this existed is settled as it is (migration a1701).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from branch_agent.models import Counter, OutboxEvent
from branch_agent.outbox import EVENT_SEQ
from protocol.codec import decode_envelope, encode

__all__ = ["AGENT_INSTANCE", "EVENT_SEQ_SETTLED", "EventNumbering", "renumber_outbox"]

log = logging.getLogger(__name__)

AGENT_INSTANCE = "agent_instance"
# The number of the database's first event, once central has said it.
EVENT_SEQ_SETTLED = "event_seq_settled"


async def renumber_outbox(session: AsyncSession, start: int) -> int:
    """Shift every outbox event (and the counter) so the first is numbered ``start``;
    how many moved. In the caller's transaction."""
    offset = start - 1
    if offset <= 0:
        return 0
    rows = (
        await session.execute(
            select(OutboxEvent.seq, OutboxEvent.payload).order_by(OutboxEvent.seq.desc())
        )
    ).all()
    # Highest first: a number is free before the row below moves onto it.
    for seq, payload in rows:
        envelope = msgspec.structs.replace(decode_envelope(payload), seq=seq + offset)
        await session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.seq == seq)
            .values(seq=seq + offset, payload=encode(envelope))
        )
    counter = await session.get(Counter, EVENT_SEQ)
    if counter is None:
        session.add(Counter(name=EVENT_SEQ, value=offset))
    else:
        counter.value += offset
    return len(rows)


class EventNumbering:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        write_lock: asyncio.Lock,
        on_settled: Callable[[], None],
    ) -> None:
        self._sessionmaker = sessionmaker
        self._write_lock = write_lock
        self._on_settled = on_settled
        self.instance = ""
        # The number of the database's first event once central has said it (0: not yet).
        self.start = 0

    @property
    def settled(self) -> bool:
        """Central has numbered this database (or it has no id: nothing to ask)."""
        return self.start > 0 or not self.instance

    async def load(self) -> None:
        async with self._sessionmaker() as session:
            instance = await session.get(Counter, AGENT_INSTANCE)
            settled = await session.get(Counter, EVENT_SEQ_SETTLED)
        self.instance = f"{instance.value:016x}" if instance is not None else ""
        self.start = settled.value if settled is not None else 0

    def wanted(self) -> str:
        """The database's id while central has not numbered it yet, else ""."""
        return "" if self.settled else self.instance

    async def settle(self, start: int) -> None:
        """Central's answer: renumber what waits from ``start``, then let it go."""
        if self.settled:
            return
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            moved = await renumber_outbox(session, start)
            session.add(Counter(name=EVENT_SEQ_SETTLED, value=start))
        self.start = start
        if start > 1:
            log.warning(
                "new agent database: central numbers its events from %d (%d renumbered)",
                start,
                moved,
            )
        self._on_settled()
