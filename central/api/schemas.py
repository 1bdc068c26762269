"""HTTP bodies of the head-office API (msgspec Structs, shown in the OpenAPI schema)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Generic, TypeVar

import msgspec

__all__ = [
    "DeadLetterOut",
    "Health",
    "Page",
    "PaymentOut",
    "ReceiptLineOut",
    "ReceiptOut",
]

T = TypeVar("T")


class Page(msgspec.Struct, Generic[T], kw_only=True):
    items: list[T]
    total: Annotated[
        int,
        msgspec.Meta(
            description="Matching rows; counted at most 10,000 past the page on lists of "
            "receipts, documents, returns, shifts, stock and dead letters (then a lower bound)"
        ),
    ]
    limit: int
    offset: int
    total_exact: Annotated[
        bool, msgspec.Meta(description="false: total is a lower bound; more rows follow")
    ] = True


class Health(msgspec.Struct, kw_only=True):
    # "ok", or "degraded" when the database does not answer, central's streams cannot
    # be set up, NATS is not connected or JetStream not ready (past a grace at start),
    # or ingestion is stalled (nothing flows between branches and central then).
    status: str
    database: str
    nats: str
    # "ready", "connecting" (NATS not reached yet), or "error: ..." (set-up failing).
    jetstream: str
    ingest_workers: int
    # The shared ingest consumer's backlog (every ingest process's): messages not yet
    # delivered + delivered and not acked; None while its info cannot be read.
    ingest_pending: int | None = None
    # Seconds since an ingest worker (any process) last acknowledged a message (since
    # the consumer was created when none ever did); None as above.
    ingest_last_ack_age_s: float | None = None
    # "ok", "stalled" (a backlog and no acknowledgement for INGEST_STALL_S) or "unknown".
    ingest: str = "unknown"
    # "ok", "none" (no NATS issuer yet), or "error: ..." when this host's issuer is not
    # the chain's (it refuses to issue or revoke branch credentials).
    nats_issuer: str = "ok"


class ReceiptLineOut(msgspec.Struct, kw_only=True):
    line_no: int
    sku: str
    name: str
    barcode: str | None
    quantity: str  # decimal text, e.g. "1.234"
    quantity_milli: int
    unit_price: int
    discount: int
    vat_rate_bp: int
    line_total: int


class PaymentOut(msgspec.Struct, kw_only=True):
    type: str
    amount: int


class ReceiptOut(msgspec.Struct, kw_only=True):
    id: int
    event_id: str
    branch: str
    till: str
    shift_id: str
    receipt_number: int
    sale_id: str
    cashier: str
    occurred_at: datetime
    # The branch's local time, for people reading it.
    occurred_at_local: str
    local_date: date
    total: int
    change: int
    currency: str
    fiscal_number: str | None
    late: bool
    negative_stock: bool
    lines: list[ReceiptLineOut]
    payments: list[PaymentOut]
    # Set only when the fiscal number came late (completed without the printer, which
    # had printed it after all): when the printer printed it.
    fiscalized_at: datetime | None = None


class DeadLetterOut(msgspec.Struct, kw_only=True):
    id: int
    subject: str
    branch: str | None
    reason: str
    status: str
    received_at: datetime
    stream_seq: int | None
    # The raw bytes: on GET /dead-letters/{id} (and replays), not in the list.
    raw_base64: str | None
    size: int
    # The branch's sequence number of the event, when it decoded; a gap at this number
    # is held by this letter (no resend is asked for it).
    seq: int | None = None
    attempts: int = 1
