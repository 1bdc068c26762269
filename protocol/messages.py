"""Messages that are not sequenced branch facts: heartbeats and commands."""

from __future__ import annotations

from typing import Annotated

import msgspec

from protocol.events import SCHEMA_VERSION, UtcDateTime

__all__ = ["BranchHeartbeat", "DeviceStatus", "ResendRequested"]


class DeviceStatus(msgspec.Struct, frozen=True, kw_only=True):
    till: str
    device: str  # fiscal, printer, scale, display, scanner
    state: str  # ok, or the condition name (paper_end, no_answer, ...)
    detail: str = ""


class BranchHeartbeat(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="branch_heartbeat"
):
    """Sent every few seconds on ``up.<branch>.heartbeat``; latest one wins at central."""

    branch: str
    sent_at: UtcDateTime
    utc_offset_min: int = 0
    outbox_backlog: Annotated[int, msgspec.Meta(ge=0)] = 0
    last_acked_seq: int = 0
    last_recorded_seq: int = 0
    applied_version: int = 0
    devices: tuple[DeviceStatus, ...] = ()
    agent_version: str = ""
    schema_version: int = SCHEMA_VERSION


class ResendRequested(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="resend_requested"
):
    """Central asks a branch to publish its events again from ``from_seq`` on."""

    branch: str
    from_seq: Annotated[int, msgspec.Meta(ge=1)]
    requested_at: UtcDateTime
    request_id: str = ""
