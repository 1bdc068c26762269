"""Messages that are not sequenced branch facts: heartbeats and commands."""

from __future__ import annotations

from typing import Annotated

import msgspec

from protocol.events import SCHEMA_VERSION, UtcDateTime
from protocol.limits import Code64, Int64, NonNegativeInt32, NonNegativeInt64, PositiveInt64

__all__ = ["BranchHeartbeat", "DeviceStatus", "ResendRequested"]


class DeviceStatus(msgspec.Struct, frozen=True, kw_only=True):
    till: str
    device: str  # fiscal, printer, scale, display, scanner
    state: str  # ok, or the condition name (paper_end, no_answer, ...)
    detail: str = ""


class BranchHeartbeat(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="branch_heartbeat"
):
    """Sent every few seconds on ``up.<branch>.heartbeat``; latest one wins at central
    (``branch_status``: its numbers and version carry that table's limits)."""

    branch: str
    sent_at: UtcDateTime
    utc_offset_min: int = 0
    outbox_backlog: NonNegativeInt32 = 0
    last_acked_seq: NonNegativeInt64 = 0
    last_recorded_seq: NonNegativeInt64 = 0
    applied_version: NonNegativeInt64 = 0
    # Stored as JSON.
    devices: tuple[DeviceStatus, ...] = ()
    agent_version: Code64 = ""
    schema_version: int = SCHEMA_VERSION
    # Outbox events too big for the NATS server, held at the branch (the first 100;
    # stored as JSON): central does not ask for them again, it shows them.
    outbox_held: Annotated[tuple[PositiveInt64, ...], msgspec.Meta(max_length=100)] = ()
    # How far the store server's clock is ahead of central's (negative: behind), in ms,
    # as the agent last measured it on a request to central (None: not measured).
    clock_offset_ms: Int64 | None = None
    # The agent database's id (central numbers one running database per branch), and
    # whether this is its last heartbeat before the agent stops.
    agent_instance: Code64 = ""
    stopping: bool = False
    # The server the agent runs on (host name and boot id): a copy of the database on a
    # second server (a cloned disk) has the same ``agent_instance``.
    agent_server: Code64 = ""
    # The number of this agent database's first event (1: the branch's first database;
    # higher: a replacement, numbered by central after the earlier one's). Numbers
    # below it are not at the branch: a resend cannot bring them (0: not said).
    first_seq: NonNegativeInt64 = 0
    # Numbers between ``first_seq`` and the last recorded that this database never had,
    # as (first, last) ranges, lowest first (the latest 100; stored as JSON): a database
    # restored from a backup continues after central's numbers, skipping those it gave
    # after the backup. A resend cannot bring them either.
    skipped_seqs: Annotated[
        tuple[tuple[PositiveInt64, PositiveInt64], ...], msgspec.Meta(max_length=100)
    ] = ()
    # The IANA zone the agent is configured with (its local days, local-time prices):
    # central flags one that differs from its record of the branch ("": not said).
    timezone: Code64 = ""


class ResendRequested(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="resend_requested"
):
    """Central asks a branch to publish its events again from ``from_seq`` on."""

    branch: str
    from_seq: Annotated[int, msgspec.Meta(ge=1)]
    requested_at: UtcDateTime
    request_id: str = ""
