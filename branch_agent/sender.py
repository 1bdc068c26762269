"""The outbox sender: publishes unsent events in sequence order, marks them sent on ack.

Each event is published with ``Nats-Msg-Id`` = its event id. A timeout does not
mean "not stored", so a row stays unsent and is published again with the same id
(JetStream answers ``duplicate``, central's unique keys are the guarantee). An event
central asked for again (a resend: central lacks it, e.g. its database was restored
from a backup) was acked before, and the stream's duplicate window (a day) would drop
it under its old id: it goes with the id and the count of its earlier acks
(``<event id>.<n>``), so the resend is stored and a retry of the resend is not. The
sender never blocks a sale: it reads committed rows and works while the link is
down by waiting with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from nats.aio.client import Client
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from branch_agent.models import OutboxEvent

if TYPE_CHECKING:
    from branch_agent.numbering import EventNumbering

__all__ = ["OutboxSender", "SenderState", "message_id"]

log = logging.getLogger(__name__)

# Room for a message's headers (Nats-Msg-Id and the protocol line's share): ~70 bytes.
_HEADER_BYTES = 256


@dataclass(slots=True)
class SenderState:
    last_acked_seq: int = 0
    last_sent_at: datetime | None = None
    published: int = 0
    duplicates: int = 0
    failures: int = 0
    last_error: str = ""
    # Rows bigger than the server lets a message be (seq -> bytes): set aside so the
    # rows after them still go, and sent once the server's max_payload allows them.
    held: dict[int, int] = field(default_factory=dict)


def message_id(event_id: object, acks: int) -> str:
    """The ``Nats-Msg-Id`` of an event acked ``acks`` times before (see above)."""
    return f"{event_id}.{acks}" if acks else str(event_id)


class OutboxSender:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        write_lock: asyncio.Lock,
        *,
        batch: int = 500,
        publish_timeout_s: float = 5.0,
        max_backoff_s: float = 10.0,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._write_lock = write_lock
        self.batch = batch
        self.publish_timeout_s = publish_timeout_s
        self.max_backoff_s = max_backoff_s
        self.state = SenderState()
        self._wake = asyncio.Event()
        # Set by the agent: nothing goes out before central has numbered a new database.
        self.numbering: EventNumbering | None = None
        # Told the subjects of each acked batch (the agent clears their denials).
        self.on_acked: Callable[[list[str]], None] | None = None

    def wake(self) -> None:
        """A new event was committed: send without waiting for the poll interval."""
        self._wake.set()

    async def run(self, nc: Client, js: JetStreamContext, stop: asyncio.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            try:
                sent = await self.send_once(nc, js)
            except Exception as exc:
                self.state.failures += 1
                self.state.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("outbox send failed, retrying in %.1fs: %s", backoff, exc)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            backoff = 0.2
            if not self.state.held:
                # Sending works again: an earlier failure is no longer the link's state
                # (a held event's reason stays while it is held).
                self.state.last_error = ""
            if sent == 0:
                self._wake.clear()
                await _wait_any(self._wake, stop, seconds=1.0)

    async def send_once(self, nc: Client, js: JetStreamContext) -> int:
        """Publish one batch of unsent rows; returns how many were acked."""
        if not nc.is_connected:
            raise ConnectionError("not connected to NATS")
        # Until central has answered for this run's numbers, only the events recorded
        # before it asked go (a new database: none).
        through = self.numbering.sendable_through if self.numbering is not None else None
        if through == 0:
            return 0
        held = self.state.held

        def too_big(size: int) -> bool:
            # The server counts the headers too, and closes the connection of a client
            # that sends more than its max_payload: never sent, held instead.
            return size + _HEADER_BYTES > nc.max_payload

        for seq, size in list(held.items()):
            if not too_big(size):
                del held[seq]
        query = select(
            OutboxEvent.seq,
            OutboxEvent.event_id,
            OutboxEvent.subject,
            OutboxEvent.payload,
            OutboxEvent.attempts,
        ).where(OutboxEvent.sent_at.is_(None))
        if held:
            query = query.where(OutboxEvent.seq.not_in(sorted(held)))
        if through is not None:
            query = query.where(OutboxEvent.seq <= through)
        async with self._sessionmaker() as session:
            rows = (await session.execute(query.order_by(OutboxEvent.seq).limit(self.batch))).all()
        # Retrying a row too big for the server cannot help, and it must not hold the
        # rows after it.
        sendable = []
        for row in rows:
            if too_big(len(row.payload)):
                self._hold(row.seq, len(row.payload), nc.max_payload)
            else:
                sendable.append(row)
        if not sendable:
            return 0
        # Publishes go out in sequence order; the acks are awaited together.
        results = await asyncio.gather(
            *(
                js.publish(
                    row.subject,
                    row.payload,
                    timeout=self.publish_timeout_s,
                    headers={"Nats-Msg-Id": message_id(row.event_id, row.attempts)},
                )
                for row in sendable
            ),
            return_exceptions=True,
        )
        acked: list[int] = []
        first_error: BaseException | None = None
        for row, result in zip(sendable, results, strict=True):
            if isinstance(result, MaxPayloadError):  # the server's limit just changed
                self._hold(row.seq, len(row.payload), nc.max_payload)
                continue
            if isinstance(result, BaseException):
                first_error = first_error or result
                continue
            acked.append(row.seq)
            if result.duplicate:
                self.state.duplicates += 1
        if acked:
            now = datetime.now(UTC)
            async with self._write_lock, self._sessionmaker() as session, session.begin():
                await session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.seq.in_(acked))
                    .values(sent_at=now, attempts=OutboxEvent.attempts + 1)
                )
            self.state.published += len(acked)
            self.state.last_acked_seq = max(self.state.last_acked_seq, max(acked))
            self.state.last_sent_at = now
            if self.on_acked is not None:
                self.on_acked(sorted({row.subject for row in sendable if row.seq in acked}))
        if first_error is not None:
            raise ConnectionError(
                f"{len(sendable) - len(acked)} publishes not acked: {first_error}"
            )
        return len(acked)

    def _hold(self, seq: int, size: int, max_payload: int) -> None:
        self.state.held[seq] = size
        self.state.last_error = (
            f"event {seq} ({size:,} bytes) is bigger than the NATS server's max_payload "
            f"({max_payload:,}) allows: held until it is raised"
        )
        log.error("outbox: %s", self.state.last_error)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _wait_any(wake: asyncio.Event, stop: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
