"""The handler registry: effects of each event kind, applied in the ingesting transaction.

Several handlers may be registered for one event type; they run by ``stage``, then in
registration order. Central's own effects use stages 10-40 (stock first: it leaves
values and negative-stock flags for the others); the default stage 100 puts
projections such as report summaries after them.

Lock order: rows that concurrent workers share (transfers, then stock balances, from
stage 10 on, report summaries, each branch's sync state last) stay locked until the commit, so
whatever needs no shared row lock runs before them, at ``EARLY_STAGE``: inserts of
new rows (receipts, returns) and pure computation. Every worker then takes the shared
locks in the same order (stage by stage, keys sorted within one), so they wait on each
other only for the short end of the transaction and never deadlock. Two kinds:

- ``@register_handler(EventType)``: ``async def h(session, ctx)``, called once per new
  event. Simple, but one call per event.
- ``@register_batch_handler(EventType, ...)``: ``async def h(session, batch, contexts)``,
  called once per batch with every new event of those types in (branch, seq) order.
  Use it for anything on the hot path: bulk inserts, one lock per row per batch.

Handlers must only add or update rows; the worker commits, then acks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from protocol.events import BranchEvent, EventEnvelope

__all__ = [
    "DEFAULT_STAGE",
    "EARLY_STAGE",
    "BatchHandler",
    "EventContext",
    "EventHandler",
    "Handler",
    "IngestBatch",
    "apply_handlers",
    "handlers_for",
    "register_batch_handler",
    "register_handler",
]


@dataclass(frozen=True, slots=True)
class EventContext:
    envelope: EventEnvelope
    # The branch's local day of the event (its UTC offset applied).
    local_date: date

    @property
    def body(self) -> BranchEvent:
        return self.envelope.body


@dataclass(slots=True)
class IngestBatch:
    """The new (never stored before) events of one transaction, in (branch, seq) order."""

    events: list[EventContext]
    received_at: datetime
    # Results one handler leaves for a later one in the same batch (e.g. stock values).
    notes: dict[str, Any] = field(default_factory=dict)


EventHandler = Callable[[AsyncSession, EventContext], Awaitable[None]]
BatchHandler = Callable[[AsyncSession, IngestBatch, Sequence[EventContext]], Awaitable[None]]
Handler = EventHandler

EH = TypeVar("EH", bound=EventHandler)
BH = TypeVar("BH", bound=BatchHandler)


@dataclass(frozen=True, slots=True)
class _Registration:
    event_types: tuple[type[BranchEvent], ...]
    handler: EventHandler | BatchHandler
    batched: bool
    stage: int


_REGISTRY: list[_Registration] = []


DEFAULT_STAGE = 100
# Before any handler that locks rows other workers also write (see the module doc).
EARLY_STAGE = 5


def _add(registration: _Registration) -> None:
    _REGISTRY.append(registration)
    # Stable: equal stages keep registration order.
    _REGISTRY.sort(key=lambda r: r.stage)


def register_handler(
    *event_types: type[BranchEvent], stage: int = DEFAULT_STAGE
) -> Callable[[EH], EH]:
    """Register ``async def h(session, ctx)`` for each new event of these types."""

    def decorate(handler: EH) -> EH:
        _add(_Registration(tuple(event_types), handler, batched=False, stage=stage))
        return handler

    return decorate


def register_batch_handler(
    *event_types: type[BranchEvent], stage: int = DEFAULT_STAGE
) -> Callable[[BH], BH]:
    """Register ``async def h(session, batch, contexts)`` once per batch for these types."""

    def decorate(handler: BH) -> BH:
        _add(_Registration(tuple(event_types), handler, batched=True, stage=stage))
        return handler

    return decorate


def handlers_for(event_type: type[BranchEvent]) -> list[EventHandler | BatchHandler]:
    return [r.handler for r in _REGISTRY if event_type in r.event_types]


async def apply_handlers(session: AsyncSession, batch: IngestBatch) -> None:
    for registration in list(_REGISTRY):
        contexts = [
            c for c in batch.events if isinstance(c.envelope.body, registration.event_types)
        ]
        if not contexts:
            continue
        if registration.batched:
            batch_handler: BatchHandler = registration.handler  # type: ignore[assignment]
            await batch_handler(session, batch, contexts)
        else:
            event_handler: EventHandler = registration.handler  # type: ignore[assignment]
            for ctx in contexts:
                await event_handler(session, ctx)
