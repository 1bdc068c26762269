"""Till shifts with the fiscal printer's Z totals, cash moves, and days closed at central."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from central.models.base import Base, utcnow

__all__ = ["CashMovement", "ClosedDay", "Shift", "ShiftIdConflict"]


class Shift(Base):
    """One till session. Opened and closed events may arrive in either order."""

    __tablename__ = "shifts"
    __table_args__ = (Index("ix_shifts_branch_local_date", "branch", "local_date"),)

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    shift_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    till: Mapped[str] = mapped_column(String(32))
    cashier: Mapped[str] = mapped_column(String(64), default="")
    # Local day of the opening (of the closing while the opening has not arrived).
    local_date: Mapped[date] = mapped_column()
    utc_offset_min: Mapped[int] = mapped_column(default=0)
    opened_at: Mapped[datetime | None] = mapped_column(default=None)
    opening_float: Mapped[int] = mapped_column(BigInteger, default=0)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)
    # The branch's UTC offset at the close (``utc_offset_min`` is the opening's: a shift
    # across a daylight-saving change closes at another one). None: closings from before.
    close_utc_offset_min: Mapped[int | None] = mapped_column(default=None)
    # When central learned of the close: sales stored after it are late.
    close_received_at: Mapped[datetime | None] = mapped_column(default=None)
    # What the agent counted at close.
    receipts_count: Mapped[int | None] = mapped_column(default=None)
    sales_total: Mapped[int | None] = mapped_column(BigInteger, default=None)
    returns_total: Mapped[int | None] = mapped_column(BigInteger, default=None)
    payments_by_type: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    cash_in: Mapped[int | None] = mapped_column(BigInteger, default=None)
    cash_out: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # What the fiscal printer counted (Z report).
    z_report_number: Mapped[int | None] = mapped_column(default=None)
    z_turnover_by_vat_group: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    z_storno_by_vat_group: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    z_receipts_count: Mapped[int | None] = mapped_column(default=None)
    # What the cashier counted in the drawer at the close and what the till's records
    # said should be there (None: not counted, or an agent from before counted cash).
    counted_cash: Mapped[int | None] = mapped_column(BigInteger, default=None)
    expected_cash: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # A close without Z figures decided by the store's manager: whether a Z report was
    # printed at all (ShiftClosed.z_printed). None: it carries the Z, no fiscal printer,
    # or an agent from before.
    z_printed: Mapped[bool | None] = mapped_column(default=None)
    open_event_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    close_event_id: Mapped[uuid.UUID | None] = mapped_column(default=None)

    @property
    def cash_difference(self) -> int | None:
        """Counted - expected cash: over (> 0) or short (< 0); None when not counted."""
        if self.counted_cash is None or self.expected_cash is None:
            return None
        return self.counted_cash - self.expected_cash


class ShiftIdConflict(Base):
    """An opening or closing central did not file into the shift of its id: the shift
    already has another opening (another shift under the same id: an agent database
    restored or replaced before shift ids were made unique), or another closing (the
    same shift closed a second time, by a restored database). Kept whole, beside the
    shift, instead of overwriting it."""

    __tablename__ = "shift_id_conflicts"
    __table_args__ = (Index("ix_shift_id_conflicts_branch_shift_id", "branch", "shift_id"),)

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    branch: Mapped[str] = mapped_column(String(32))
    shift_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(6))  # opened, closed
    till: Mapped[str] = mapped_column(String(32))
    cashier: Mapped[str] = mapped_column(String(64), default="")
    occurred_at: Mapped[datetime] = mapped_column()
    local_date: Mapped[date] = mapped_column()
    # The event's body as the agent sent it (float, or the closing counts and Z).
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class CashMovement(Base):
    __tablename__ = "cash_movements"
    __table_args__ = (
        Index("ix_cash_movements_branch_shift_id", "branch", "shift_id"),
        Index("ix_cash_movements_branch_local_date", "branch", "local_date"),
    )

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    branch: Mapped[str] = mapped_column(String(32))
    till: Mapped[str] = mapped_column(String(32))
    shift_id: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text, default="")
    cashier: Mapped[str] = mapped_column(String(64), default="")
    occurred_at: Mapped[datetime] = mapped_column()
    local_date: Mapped[date] = mapped_column()


class ClosedDay(Base):
    """A branch's business day closed by head office: sales filed into it later are late."""

    __tablename__ = "closed_days"

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    local_date: Mapped[date] = mapped_column(primary_key=True)
    closed_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_by: Mapped[str] = mapped_column(String(64), default="")
