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
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from protocol.subjects import DOWN_STREAM, down_consumer_name, parse_down_subject

__all__ = [
    "DownBatchHandler",
    "DownHandler",
    "DownMessage",
    "DownstreamReader",
    "DownstreamState",
]

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
    # How many times the stream handed it out (1: never before).
    delivered: int = 1


DownHandler = Callable[[DownMessage], Awaitable[None]]
# Applies a run of consecutive messages of its kinds at once (one transaction).
DownBatchHandler = Callable[[list[DownMessage]], Awaitable[None]]


@dataclass(slots=True)
class DownstreamState:
    last_stream_seq: int = 0
    applied: int = 0
    skipped: int = 0
    failures: int = 0
    last_error: str = ""
    handlers: dict[str, DownHandler] = field(default_factory=dict)
    batch_handlers: dict[str, DownBatchHandler] = field(default_factory=dict)


class DownstreamReader:
    # A master-data bucket is up to ~1 MB and a fetch holds its whole batch in memory:
    # 32 keeps a full catalog sync well inside the agent's memory budget.
    def __init__(self, branch: str, *, batch: int = 32, fetch_timeout_s: float = 1.0) -> None:
        self.branch = branch
        self.batch = batch
        self.fetch_timeout_s = fetch_timeout_s
        self.state = DownstreamState()
        # Hooks of the master-data part: the position of acked messages no batch handler
        # recorded (commands), fetch failures (a deleted consumer), and a wait before
        # the first fetch (until central has seen the branch's position).
        self.on_position: Callable[[int], Awaitable[None]] | None = None
        self.on_fetch_error: Callable[[BaseException], None] | None = None
        # Called when a fetch delivered messages (the consumer is readable).
        self.on_fetched: Callable[[], None] | None = None
        self.before_first_fetch: Callable[[], Awaitable[None]] | None = None
        # Why this database must not read now ("": it may), and what to do once it may
        # again: another database of the branch runs and reads the same durable
        # consumer; reading both would split the stream (a snapshot's parts, price
        # changes) between two servers.
        self.hold: Callable[[], str] | None = None
        self.on_hold: Callable[[], None] | None = None
        self.on_release: Callable[[], None] | None = None
        self.held = ""

    def register(self, kind: str, handler: DownHandler) -> None:
        self.state.handlers[kind] = handler

    def register_batch(self, kinds: tuple[str, ...], handler: DownBatchHandler) -> None:
        """Consecutive messages of these kinds in one fetch go to ``handler`` together."""
        for kind in kinds:
            self.state.batch_handlers[kind] = handler

    async def _fetch(self, sub: Any) -> list[Any]:
        """Wait for the first message, then take what is there already.

        nats-py's ``fetch(n)`` on an idle stream lingers until n messages or the
        timeout, which would delay a single price change by the whole timeout.
        """
        msgs: list[Any] = await sub.fetch(1, timeout=self.fetch_timeout_s)
        if self.batch > 1:
            # nats-py raises the builtin TimeoutError (not its own) when the short
            # deadline has passed before its second pull: the message in hand must
            # still be handled, or it waits for the consumer's ack_wait (30 s).
            with contextlib.suppress(NatsTimeoutError, TimeoutError):
                msgs += await sub.fetch(self.batch - 1, timeout=0.02)
        return msgs

    async def wait_for_unacked(self, js: JetStreamContext, stop: asyncio.Event) -> float:
        """Hold the first fetch while messages handed to a previous process (killed
        before it acked them) are not due for redelivery; returns the seconds waited.

        JetStream gives them out again only after the consumer's ack_wait, and a fetch
        before that returns the *later* messages: a version mark would then be applied
        (and reported) while an older bucket message is still outstanding.
        """
        try:
            info = await js.consumer_info(DOWN_STREAM, down_consumer_name(self.branch))
        except Exception as exc:
            log.debug("down consumer info not available: %s", exc)
            return 0.0
        if not info.num_ack_pending:
            return 0.0
        ack_wait = float(info.config.ack_wait or 30.0)
        last = info.delivered.last_active
        elapsed = (datetime.now(UTC) - last).total_seconds() if last is not None else 0.0
        wait = min(ack_wait, max(0.0, ack_wait - elapsed)) + 0.5
        log.warning(
            "%s down-stream messages delivered before and not acked: waiting %.1f s for "
            "their redelivery to keep stream order",
            info.num_ack_pending,
            wait,
        )
        await _pause(stop, wait)
        return wait

    async def run(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        sub = None
        if self.before_first_fetch is not None:
            await self.before_first_fetch()
        while not stop.is_set():
            reason = self.hold() if self.hold is not None else ""
            if reason:
                if not self.held:
                    log.warning("down stream not read while %s", reason)
                    if self.on_hold is not None:
                        self.on_hold()
                self.held = reason
                await _pause(stop, 1.0)
                continue
            if self.held:
                self.held = ""
                log.warning("down stream read again")
                if self.on_release is not None:
                    self.on_release()
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
                await self.wait_for_unacked(js, stop)
            try:
                msgs = await self._fetch(sub)
            except NatsTimeoutError:
                continue
            except Exception as exc:
                log.warning("down-stream fetch failed: %s", exc)
                if self.on_fetch_error is not None:
                    self.on_fetch_error(exc)
                await _pause(stop, 1.0)
                continue
            if msgs and self.on_fetched is not None:
                self.on_fetched()
            groups = self._groups(msgs)
            for index, group in enumerate(groups):
                try:
                    await self._dispatch_group(group)
                except Exception as exc:
                    self.state.failures += 1
                    self.state.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("down-stream message %s failed", group[0][0].subject)
                    # Order matters for master data: this group and the rest of the fetch
                    # are handed out again at once (a nak), ahead of any later message;
                    # left unacked, the next fetch would return later messages first.
                    await _nak([m for g in groups[index:] for m, _ in g])
                    await _pause(stop, 1.0)
                    break
                for msg, down in group:
                    await msg.ack()
                    if down is not None:
                        self.state.last_stream_seq = max(
                            self.state.last_stream_seq, down.stream_seq
                        )
                batch_handled = group[0][1] is not None and (
                    group[0][1].kind in self.state.batch_handlers
                )
                if not batch_handled and self.on_position is not None:
                    seq = max((m.metadata.sequence.stream if m.metadata else 0) for m, _ in group)
                    try:
                        await self.on_position(seq)
                    except Exception as exc:
                        log.warning("down-stream position not recorded: %s", exc)
        if sub is not None:
            await sub.unsubscribe()

    def _groups(self, msgs: list[Any]) -> list[list[tuple[Any, DownMessage | None]]]:
        """Split a fetch into runs: consecutive messages of one batch handler stay together."""
        groups: list[list[tuple[Any, DownMessage | None]]] = []
        current_handler: object = None
        for msg in msgs:
            seq = msg.metadata.sequence.stream if msg.metadata else 0
            down: DownMessage | None
            try:
                scope, scope_id, kind, key = parse_down_subject(msg.subject)
                delivered = msg.metadata.num_delivered if msg.metadata else None
                down = DownMessage(
                    msg.subject, scope, scope_id, kind, key, msg.data, seq, delivered or 1
                )
            except ValueError:
                down = None
            handler = self.state.batch_handlers.get(down.kind) if down else None
            if handler is not None and handler is current_handler and groups:
                groups[-1].append((msg, down))
            else:
                groups.append([(msg, down)])
            current_handler = handler
        return groups

    async def _dispatch_group(self, group: list[tuple[Any, DownMessage | None]]) -> None:
        downs = [d for _, d in group if d is not None]
        if len(downs) < len(group) or not downs:
            self.state.skipped += 1  # a subject that is not a down-stream subject
            return
        batch_handler = self.state.batch_handlers.get(downs[0].kind)
        if batch_handler is not None:
            await batch_handler(downs)
            self.state.applied += len(downs)
            return
        handler = self.state.handlers.get(downs[0].kind)
        if handler is None:
            self.state.skipped += 1
            return
        await handler(downs[0])
        self.state.applied += 1


async def _nak(msgs: list[Any]) -> None:
    for msg in msgs:
        try:
            await msg.nak()
        except Exception as exc:
            # Then it comes back after ack_wait instead.
            log.warning("down-stream nak failed: %s", exc)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return
