"""The audit log: every change made through the head-office API (append-only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from central.models.base import Base, BigIntPK, utcnow

__all__ = ["AuditEntry"]


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # API user name (or "cli:<name>" for the command line)
    actor: Mapped[str] = mapped_column(String(100), index=True)
    actor_role: Mapped[str] = mapped_column(String(32), default="")
    method: Mapped[str] = mapped_column(String(10), default="")
    path: Mapped[str] = mapped_column(String(500), default="")
    # what was done, e.g. "branch.add", "user.revoke", or "request" for the generic record
    action: Mapped[str] = mapped_column(String(100), index=True)
    # what it was done to, e.g. "branch:B003"
    target: Mapped[str] = mapped_column(String(200), default="", index=True)
    before: Mapped[Any | None] = mapped_column(JSON, default=None)
    after: Mapped[Any | None] = mapped_column(JSON, default=None)
