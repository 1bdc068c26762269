"""Builders of branch events as an agent would send them (a per-branch gapless sequence)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from central.ingest.worker import MessageIn
from protocol import (
    CashMoved,
    CustomerReturnRecorded,
    EventEnvelope,
    FiscalInterventionRecorded,
    LateFiscalNumber,
    Payment,
    ReceiptLine,
    ReceiptRecorded,
    ShiftClosed,
    ShiftOpened,
    StockDocumentLine,
    StockDocumentPosted,
    ZReportTotals,
    encode,
    event_kind,
    new_event_id,
    up_subject,
)
from protocol.events import BranchEvent


def message(envelope: EventEnvelope) -> MessageIn:
    return MessageIn(
        subject=up_subject(envelope.branch, event_kind(envelope.body)), data=encode(envelope)
    )


@dataclass
class BranchBooks:
    """One branch's outbox: every event it recorded, and its own totals to compare."""

    branch: str
    start: datetime = field(default_factory=lambda: datetime(2026, 11, 27, 9, 0, tzinfo=UTC))
    events: list[EventEnvelope] = field(default_factory=list)
    sales_total: int = 0
    returns_total: int = 0
    sold_milli: dict[str, int] = field(default_factory=dict)
    stock_milli: dict[str, int] = field(default_factory=dict)
    receipts: int = 0

    def _add(self, body: BranchEvent) -> EventEnvelope:
        envelope = EventEnvelope(
            event_id=new_event_id(),
            branch=self.branch,
            seq=len(self.events) + 1,
            occurred_at=self.start + timedelta(minutes=len(self.events)),
            utc_offset_min=60,
            body=body,
        )
        self.events.append(envelope)
        return envelope

    def _move(self, sku: str, milli: int) -> None:
        self.stock_milli[sku] = self.stock_milli.get(sku, 0) + milli

    def open_shift(self, shift: str = "S1") -> EventEnvelope:
        return self._add(ShiftOpened(till="T1", shift_id=shift, cashier="anna", opening_float=5000))

    def sale(
        self, items: list[tuple[str, int, int]], shift: str = "S1", *, unfiscal: bool = False
    ) -> EventEnvelope:
        """items: (sku, quantity_milli, unit_price); ``unfiscal``: completed without the
        fiscal printer (no fiscal number)."""
        lines = []
        for n, (sku, qty, price) in enumerate(items, start=1):
            total = price * qty // 1000
            lines.append(
                ReceiptLine(
                    line_no=n,
                    sku=sku,
                    quantity_milli=qty,
                    unit_price=price,
                    vat_rate_bp=1900,
                    line_total=total,
                )
            )
            self.sold_milli[sku] = self.sold_milli.get(sku, 0) + qty
            self._move(sku, -qty)
        total = sum(line.line_total for line in lines)
        self.sales_total += total
        self.receipts += 1
        return self._add(
            ReceiptRecorded(
                till="T1",
                shift_id=shift,
                receipt_number=self.receipts,
                sale_id=f"{self.branch}-sale-{len(self.events) + 1}",
                lines=tuple(lines),
                payments=(Payment(type="cash", amount=total),),
                total=total,
                fiscal_number=None if unfiscal else f"F{len(self.events) + 1}",
            )
        )

    def late_fiscal_number(self, receipt: EventEnvelope, number: str) -> EventEnvelope:
        """The agent found that the printer had printed ``receipt`` (sent unfiscal)."""
        body = receipt.body
        assert isinstance(body, ReceiptRecorded)
        return self._add(
            LateFiscalNumber(
                till=body.till,
                document_id=body.sale_id,
                document_event_id=receipt.event_id,
                document_seq=receipt.seq,
                fiscal_number=number,
                fiscalized_at=receipt.occurred_at,
            )
        )

    def intervention(
        self, action: str, *, receipt_number: int | None = None, document: str = ""
    ) -> EventEnvelope:
        return self._add(
            FiscalInterventionRecorded(
                till="T1",
                shift_id="S1",
                action=action,
                receipt_number=receipt_number,
                amount=1000,
                paid_before=400 if action == "closed" else 0,
                cash_added=600 if action == "closed" else 0,
                document=document,
                reason="payment refused",
            )
        )

    def customer_return(
        self, sku: str, qty: int, price: int, original: str | None, *, approved_by: str = ""
    ) -> EventEnvelope:
        """``original`` None: a return without receipt (approved by ``approved_by``)."""
        total = price * qty // 1000
        self.returns_total += total
        self._move(sku, qty)
        return self._add(
            CustomerReturnRecorded(
                till="T1",
                shift_id="S1",
                return_number=len(self.events) + 1,
                return_id=f"{self.branch}-ret-{len(self.events) + 1}",
                original_sale_id=original,
                lines=(
                    ReceiptLine(
                        line_no=1,
                        sku=sku,
                        quantity_milli=qty,
                        unit_price=price,
                        vat_rate_bp=1900,
                        line_total=total,
                    ),
                ),
                refunds=(Payment(type="cash", amount=total),),
                total=total,
                without_receipt=original is None,
                approved_by=approved_by or ("maria" if original is None else ""),
            )
        )

    def document(
        self,
        doc_type: str,
        lines: list[tuple[str, int, int | None]],
        *,
        counterpart: str | None = None,
        transfer_ref: str | None = None,
        document_id: str | None = None,
    ) -> EventEnvelope:
        """lines: (sku, signed quantity_milli, unit_cost or None)."""
        for sku, qty, _ in lines:
            self._move(sku, qty)
        return self._add(
            StockDocumentPosted(
                document_id=document_id or f"{self.branch}-doc-{len(self.events) + 1}",
                doc_type=doc_type,  # type: ignore[arg-type]
                lines=tuple(
                    StockDocumentLine(sku=sku, quantity_milli=qty, unit_cost=cost)
                    for sku, qty, cost in lines
                ),
                counterpart_branch=counterpart,
                transfer_ref=transfer_ref,
            )
        )

    def document_in_parts(
        self,
        doc_type: str,
        lines: list[tuple[str, int, int | None]],
        *,
        per_part: int,
        counterpart: str | None = None,
        transfer_ref: str | None = None,
        document_id: str | None = None,
    ) -> list[EventEnvelope]:
        """A document sent as the agent sends one too big for a message: the header in
        every part, ``per_part`` lines each, numbered across the document."""
        for sku, qty, _ in lines:
            self._move(sku, qty)
        document_id = document_id or f"{self.branch}-doc-{len(self.events) + 1}"
        parts = -(-len(lines) // per_part)
        return [
            self._add(
                StockDocumentPosted(
                    document_id=document_id,
                    doc_type=doc_type,  # type: ignore[arg-type]
                    lines=tuple(
                        StockDocumentLine(sku=sku, quantity_milli=qty, unit_cost=cost)
                        for sku, qty, cost in lines[(k - 1) * per_part : k * per_part]
                    ),
                    counterpart_branch=counterpart,
                    transfer_ref=transfer_ref,
                    part=k,
                    parts=parts,
                    first_line_no=(k - 1) * per_part + 1,
                )
            )
            for k in range(1, parts + 1)
        ]

    def cash(self, direction: str, amount: int) -> EventEnvelope:
        return self._add(
            CashMoved(till="T1", shift_id="S1", direction=direction, amount=amount)  # type: ignore[arg-type]
        )

    def close_shift(
        self,
        shift: str = "S1",
        *,
        z_total: int | None = None,
        z_storno: int | None = None,
        counted_cash: int | None = None,
    ) -> EventEnvelope:
        total = self.sales_total if z_total is None else z_total
        storno = self.returns_total if z_storno is None else z_storno
        return self._add(
            ShiftClosed(
                till="T1",
                shift_id=shift,
                receipts_count=self.receipts,
                sales_total=self.sales_total,
                returns_total=self.returns_total,
                payments_by_type={"cash": self.sales_total},
                z_report=ZReportTotals(
                    report_number=1,
                    turnover_by_vat_group={"B": total},
                    storno_by_vat_group={"B": storno} if storno else {},
                    receipts_count=self.receipts,
                ),
                # the float (open_shift) and the sales, paid in cash
                counted_cash=counted_cash,
                expected_cash=5000 + self.sales_total,
            )
        )


def ingest_env(db_url: str, nats_url: str, tmp: str, **extra: str) -> dict[str, str]:
    """Environment of a ``python -m central ingest`` process for the tests."""
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BACKROOM_") or k == "BACKROOM_TEST_PG_URL"
    }
    env.update(
        {
            "BACKROOM_DATABASE_URL": db_url,
            "BACKROOM_NATS_URL": nats_url,
            "BACKROOM_DATA_DIR": tmp,
            "BACKROOM_INGEST_FETCH_TIMEOUT_S": "0.2",
            "BACKROOM_INGEST_ACK_WAIT_S": "2",
            "BACKROOM_RESEND_GAP_AFTER_S": "3600",
        }
    )
    env.update(extra)
    return env


def outbox_items(*books: BranchBooks) -> list[tuple[str, bytes, str]]:
    """What the branches' senders publish: (subject, payload, Nats-Msg-Id = event id)."""
    return [
        (up_subject(e.branch, event_kind(e.body)), encode(e), str(e.event_id))
        for b in books
        for e in b.events
    ]


async def publish_books(nats_url: str, *books: BranchBooks) -> None:
    await publish_raw(nats_url, outbox_items(*books))


async def publish_raw(nats_url: str, items: list[tuple[str, bytes, str]]) -> None:
    """JetStream publishes (subject, payload, Nats-Msg-Id), acked one by one."""
    from central.sync.jetstream import connect, ensure_ingest_consumer, ensure_streams

    nc = await connect(nats_url, name="test-branches")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await ensure_ingest_consumer(js, ack_wait_s=2.0)
        for subject, payload, msg_id in items:
            await js.publish(subject, payload, timeout=10, headers={"Nats-Msg-Id": msg_id})
    finally:
        await nc.drain()
