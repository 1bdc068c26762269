"""The sender never publishes a row the server would refuse (its payload and headers
above the server's max_payload): it holds it, sends the rows after it, and lets it go
once the server allows it. Unit test: a fake NATS client, the agent's real database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from branch_agent.db import create_sessionmaker
from branch_agent.models import OutboxEvent
from branch_agent.sender import OutboxSender


@dataclass
class FakeNats:
    max_payload: int
    is_connected: bool = True
    published: list[bytes] = field(default_factory=list)

    async def publish(self, subject: str, payload: bytes, **_: Any) -> Any:
        if len(payload) > self.max_payload:  # what nats-py itself checks
            raise AssertionError("the client would refuse it")
        self.published.append(payload)
        return type("Ack", (), {"duplicate": False})()


async def test_a_row_within_the_header_room_of_the_limit_is_held_not_sent(
    agent_engine: Callable[..., AsyncEngine],
) -> None:
    sessionmaker = create_sessionmaker(agent_engine())
    # Seq 2 is below max_payload by itself, but not with its headers.
    sizes = {1: 100, 2: 990, 3: 100}
    async with sessionmaker() as session, session.begin():
        await session.execute(
            insert(OutboxEvent),
            [
                {
                    "seq": seq,
                    "event_id": uuid.uuid4(),
                    "subject": "up.B1.cash_moved",
                    "kind": "cash_moved",
                    "payload": bytes([seq]) * size,
                }
                for seq, size in sizes.items()
            ],
        )
    nats = FakeNats(max_payload=1000)
    sender = OutboxSender(sessionmaker, asyncio.Lock())
    assert await sender.send_once(nats, nats) == 2  # type: ignore[arg-type]
    assert [p[0] for p in nats.published] == [1, 3]
    assert sender.state.held == {2: 990}
    assert "event 2 (990 bytes)" in sender.state.last_error
    assert await sender.send_once(nats, nats) == 0  # type: ignore[arg-type]
    # The server's limit is raised (a reconnect reads it): the held row goes.
    nats.max_payload = 1024 * 1024
    assert await sender.send_once(nats, nats) == 1  # type: ignore[arg-type]
    assert [p[0] for p in nats.published] == [1, 3, 2]
    assert sender.state.held == {}
    async with sessionmaker() as session:
        unsent = (
            await session.scalars(select(OutboxEvent.seq).where(OutboxEvent.sent_at.is_(None)))
        ).all()
    assert unsent == []
