"""The ingestion log: every stored branch event once, and the dead letters."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import JSON, BigInteger, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from central.models.base import Base, BigIntPK, utcnow

__all__ = ["DeadLetter", "IngestedEvent"]


class IngestedEvent(Base):
    """One row per branch fact: the unique keys are the exactly-once guarantee."""

    __tablename__ = "ingested_events"
    __table_args__ = (UniqueConstraint("branch", "seq"),)

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    branch: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column()
    utc_offset_min: Mapped[int] = mapped_column(default=0)
    local_date: Mapped[date] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    schema_version: Mapped[int] = mapped_column(default=1)


class DeadLetter(Base):
    """A message that could not be processed, kept whole so it can be replayed."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        Index("ix_dead_letters_status_id", "status", "id"),
        Index("ix_dead_letters_branch_seq", "branch", "seq"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(255))
    branch: Mapped[str | None] = mapped_column(String(64), default=None)
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    stream_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The branch's sequence number of the event, when its envelope decoded.
    seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # open -> replayed (stored after a fix) or discarded (by a person)
    status: Mapped[str] = mapped_column(String(16), default="open")
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(default=1)
