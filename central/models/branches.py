"""Branches (stores) and what central knows of each one's sync."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Index, String
from sqlalchemy import false as sa_false
from sqlalchemy.orm import Mapped, mapped_column

from central.models.base import Base, BigIntPK, utcnow

__all__ = ["Branch", "BranchScopeHistory", "BranchStatus", "BranchSyncState"]


class Branch(Base):
    __tablename__ = "branches"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # IANA zone name: the branch's local day and the times shown to people.
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    format_code: Mapped[str | None] = mapped_column(String(32), default=None)
    price_zone: Mapped[str | None] = mapped_column(String(32), default=None)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class BranchScopeHistory(Base):
    """A branch's format and price zone from ``valid_from`` on (until the next row of
    the branch): which prices reached it at a past moment (expected price, till-price
    mismatches). A row per registration and per change of either."""

    __tablename__ = "branch_scope_history"
    __table_args__ = (Index("ix_branch_scope_history_branch_from", "branch", "valid_from"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    branch: Mapped[str] = mapped_column(String(32))
    valid_from: Mapped[datetime] = mapped_column()
    format_code: Mapped[str | None] = mapped_column(String(32), default=None)
    price_zone: Mapped[str | None] = mapped_column(String(32), default=None)


class BranchSyncState(Base):
    """Per-branch sequence bookkeeping of the ingested events."""

    __tablename__ = "branch_sync_state"

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Highest n such that events 1..n are all stored.
    contiguous_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    max_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_event_at: Mapped[datetime | None] = mapped_column(default=None)
    last_received_at: Mapped[datetime | None] = mapped_column(default=None)
    resend_requested_from: Mapped[int | None] = mapped_column(BigInteger, default=None)
    resend_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    # The branch's agent database whose numbering central set last (a new database,
    # e.g. the store's server replaced, or one restored from a backup): its id, its
    # first number, when; and the
    # numbers the earlier database had used without central receiving them, given up
    # as lost with it (from the contiguous run to its last recorded one).
    agent_instance: Mapped[str | None] = mapped_column(String(64), default=None)
    restarted_at_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    restarted_at: Mapped[datetime | None] = mapped_column(default=None)
    lost_from_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    lost_to_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Why the numbering restarted: "new_database", or "restored_database" (a database
    # that went back in time: its later numbers were central's already).
    restart_reason: Mapped[str | None] = mapped_column(String(32), default=None)
    # Another agent database of the branch asked to be numbered while this one ran:
    # refused (its events would collide); its id, and when it last asked; its server
    # (a copy of the running database on another server has the running one's id).
    refused_instance: Mapped[str | None] = mapped_column(String(64), default=None)
    refused_at: Mapped[datetime | None] = mapped_column(default=None)
    refused_server: Mapped[str | None] = mapped_column(String(64), default=None)


class BranchStatus(Base):
    """The latest heartbeat of each branch."""

    __tablename__ = "branch_status"

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime] = mapped_column()
    outbox_backlog: Mapped[int] = mapped_column(default=0)
    last_acked_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_recorded_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    applied_version: Mapped[int] = mapped_column(BigInteger, default=0)
    devices: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    # Events too big for the NATS server, held at the branch (their sequence numbers).
    outbox_held: Mapped[list[int]] = mapped_column(JSON, default=list, server_default="[]")
    # The store server's clock ahead of central's (ms; negative: behind), as the agent
    # measured it (None: not measured, or an agent from before).
    clock_offset_ms: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The agent database that sent it, and whether it was its last before stopping.
    agent_instance: Mapped[str | None] = mapped_column(String(64), default=None)
    agent_stopped: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    # The server the agent runs on (host name and boot id; None: an agent from before).
    agent_server: Mapped[str | None] = mapped_column(String(64), default=None)
    # The number of that database's first event (0: not said); numbers below it cannot
    # be resent by it.
    first_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Numbers that database skipped (restored from a backup), [first, last] pairs: a
    # resend cannot bring them either.
    skipped_seqs: Mapped[list[list[int]]] = mapped_column(JSON, default=list, server_default="[]")
    # The time zone the branch's agent is configured with (None: not said, an agent
    # from before); one other than ``Branch.timezone`` is flagged in sync health.
    agent_timezone: Mapped[str | None] = mapped_column(String(64), default=None)
