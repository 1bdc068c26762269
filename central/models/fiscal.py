"""What a branch learns late about its fiscal printers: fiscal numbers of documents
completed without the printer that it had printed after all, and managers'
interventions on the printers."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from central.models.base import Base, utcnow

__all__ = ["FiscalInterventionRow", "LateFiscalNumberRow"]


class LateFiscalNumberRow(Base):
    """One ``late_fiscal_number`` event: applied to its receipt (or return), or waiting
    for a document that has not reached central yet (applied when it does)."""

    __tablename__ = "late_fiscal_numbers"
    __table_args__ = (
        Index("ix_late_fiscal_numbers_branch_till_document_id", "branch", "till", "document_id"),
    )

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    branch: Mapped[str] = mapped_column(String(32))
    # sale | return
    document: Mapped[str] = mapped_column(String(8))
    till: Mapped[str] = mapped_column(String(32))
    document_id: Mapped[str] = mapped_column(String(64))
    document_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    fiscal_number: Mapped[str] = mapped_column(String(64))
    fiscalized_at: Mapped[datetime] = mapped_column()
    fiscal_memory_number: Mapped[str | None] = mapped_column(String(32), default=None)
    # applied (set on the document) | already (the document had this number) |
    # waiting (the document is not at central yet) | conflict (it came with another)
    status: Mapped[str] = mapped_column(String(8))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column(default=None)


class FiscalInterventionRow(Base):
    """A manager's intervention on a till's fiscal printer, as the branch recorded it."""

    __tablename__ = "fiscal_interventions"
    __table_args__ = (
        Index("ix_fiscal_interventions_branch_shift_id", "branch", "shift_id"),
        Index("ix_fiscal_interventions_local_date_branch", "local_date", "branch"),
    )

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    branch: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(BigInteger)
    till: Mapped[str] = mapped_column(String(32))
    shift_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # cancelled | closed (finish-open-receipt) | completed_unfiscal |
    # printed_on_new_printer (a swap's held-back document) | a settle-pending decision, <intent>_<outcome> (cash_move_printed, z_report_not_printed, ...)
    action: Mapped[str] = mapped_column(String(32))
    receipt_number: Mapped[int | None] = mapped_column(BigInteger, default=None)
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
    paid_before: Mapped[int] = mapped_column(BigInteger, default=0)
    cash_added: Mapped[int] = mapped_column(BigInteger, default=0)
    document: Mapped[str] = mapped_column(String(200), default="")
    reason: Mapped[str] = mapped_column(String(200), default="")
    occurred_at: Mapped[datetime] = mapped_column()
    local_date: Mapped[date] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
