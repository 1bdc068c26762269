"""The down-stream reader: master data and commands from central, in stream order.

The branch reads through its own durable consumer (``branch-<code>``, created by
central, filtered to the scopes the branch belongs to). Each message is handed to
the handler registered for its kind (the token after the scope in the subject)
and acked only after the handler returned, so a crash re-delivers it; handlers
must therefore be idempotent. A message no handler knows is acked and counted:
an older agent skips kinds a newer central publishes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from protocol.subjects import DOWN_STREAM, down_consumer_name, parse_down_subject

__all__ = ["DownMessage", "DownstreamReader", "DownstreamState"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DownMessage:
    subject: str
    scope: str
    scope_id: str | None
    kind: str
    key: str
    data: bytes
    stream_seq: int


DownHandler = Callable[[DownMessage], Awaitable[None]]


@dataclass(slots=True)
class DownstreamState:
    last_stream_seq: int = 0
    applied: int = 0
    skipped: int = 0
    failures: int = 0
    last_error: str = ""
    handlers: dict[str, DownHandler] = field(default_factory=dict)


class DownstreamReader:
    # A master-data bucket is up to ~1 MB and a fetch holds its whole batch in memory:
    # 32 keeps a full catalog sync well inside the agent's memory budget.
    def __init__(self, branch: str, *, batch: int = 32, fetch_timeout_s: float = 1.0) -> None:
        self.branch = branch
        self.batch = batch
        self.fetch_timeout_s = fetch_timeout_s
        self.state = DownstreamState()

    def register(self, kind: str, handler: DownHandler) -> None:
        self.state.handlers[kind] = handler

    async def run(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        sub = None
        while not stop.is_set():
            if sub is None:
                try:
                    sub = await js.pull_subscribe_bind(
                        down_consumer_name(self.branch), stream=DOWN_STREAM
                    )
                except (NotFoundError, Exception) as exc:
                    # Central creates the consumer when the branch is registered.
                    log.debug("down consumer not available yet: %s", exc)
                    await _pause(stop, 2.0)
                    continue
            try:
                msgs = await sub.fetch(self.batch, timeout=self.fetch_timeout_s)
            except NatsTimeoutError:
                continue
            except Exception as exc:
                log.warning("down-stream fetch failed: %s", exc)
                await _pause(stop, 1.0)
                continue
            for msg in msgs:
                seq = msg.metadata.sequence.stream if msg.metadata else 0
                try:
                    await self._dispatch(msg.subject, msg.data, seq)
                except Exception as exc:
                    # Not acked: redelivered after ack_wait; later messages wait for it
                    # because order matters for master data.
                    self.state.failures += 1
                    self.state.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("down-stream message %s failed", msg.subject)
                    await _pause(stop, 1.0)
                    break
                await msg.ack()
                self.state.last_stream_seq = max(self.state.last_stream_seq, seq)
        if sub is not None:
            await sub.unsubscribe()

    async def _dispatch(self, subject: str, data: bytes, stream_seq: int) -> None:
        try:
            scope, scope_id, kind, key = parse_down_subject(subject)
        except ValueError:
            self.state.skipped += 1
            return
        handler = self.state.handlers.get(kind)
        if handler is None:
            self.state.skipped += 1
            return
        await handler(DownMessage(subject, scope, scope_id, kind, key, data, stream_seq))
        self.state.applied += 1


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return
