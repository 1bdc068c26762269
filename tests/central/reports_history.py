"""A small, fully known chain history for the report tests (figures worked out by hand).

Branch B1 is at UTC+1, B2 at UTC. Products: A (pieces, VAT 20 %), B (pieces, VAT
10 %), W (weighed, per kg, VAT 10 %). The period under test is 2026-11-02..03 (B1's
local days); 2026-10-31..11-01 is the previous period.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from central.ingest.worker import MessageIn
from protocol import EventEnvelope, Payment, ReceiptLine, ReceiptRecorded, encode, up_subject
from protocol.events import (
    CustomerReturnRecorded,
    ShiftClosed,
    StockDocumentLine,
    StockDocumentPosted,
    ZReportTotals,
    event_kind,
)
from protocol.ids import new_event_id

OFFSETS = {"B1": 60, "B2": 0}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class History:
    def __init__(self) -> None:
        self.seq: dict[str, int] = {}
        self.events: list[EventEnvelope] = []

    def add(self, branch: str, when: str, body: Any) -> EventEnvelope:
        self.seq[branch] = self.seq.get(branch, 0) + 1
        envelope = EventEnvelope(
            event_id=new_event_id(),
            branch=branch,
            seq=self.seq[branch],
            occurred_at=at(when),
            utc_offset_min=OFFSETS[branch],
            body=body,
        )
        self.events.append(envelope)
        return envelope

    def messages(self, events: list[EventEnvelope] | None = None) -> list[MessageIn]:
        return [
            MessageIn(subject=up_subject(e.branch, event_kind(e.body)), data=encode(e))
            for e in (self.events if events is None else events)
        ]

    def batches(self, size: int) -> Iterator[list[MessageIn]]:
        messages = self.messages()
        for start in range(0, len(messages), size):
            yield messages[start : start + size]


def line(
    no: int,
    sku: str,
    qty_milli: int,
    price: int,
    total: int,
    vat: int,
    discount: int = 0,
    manual: bool = False,
) -> ReceiptLine:
    return ReceiptLine(
        line_no=no,
        sku=sku,
        quantity_milli=qty_milli,
        unit_price=price,
        discount=discount,
        manual_discount=manual,
        vat_rate_bp=vat,
        line_total=total,
    )


def sale(
    sale_id: str,
    shift: str,
    cashier: str,
    lines: tuple[ReceiptLine, ...],
    payments: tuple[Payment, ...],
    change: int = 0,
    till: str = "T1",
    voided: int = 0,
) -> ReceiptRecorded:
    return ReceiptRecorded(
        till=till,
        shift_id=shift,
        receipt_number=int(sale_id[1:]),
        sale_id=sale_id,
        cashier=cashier,
        lines=lines,
        payments=payments,
        total=sum(x.line_total for x in lines),
        change=change,
        voided_lines=voided,
    )


def doc(
    doc_id: str, doc_type: Any, lines: tuple[StockDocumentLine, ...], **kw: Any
) -> StockDocumentPosted:
    return StockDocumentPosted(document_id=doc_id, doc_type=doc_type, lines=lines, **kw)


def build_history() -> History:
    h = History()
    # Goods in: A 10 @ 1.20, B 5 @ 3.00, W 2 kg @ 4.50/kg.
    h.add(
        "B1",
        "2026-10-30T07:00:00",
        doc(
            "G1",
            "goods_receipt",
            (
                StockDocumentLine(sku="A", quantity_milli=10000, unit_cost=120),
                StockDocumentLine(sku="B", quantity_milli=5000, unit_cost=300),
                StockDocumentLine(sku="W", quantity_milli=2000, unit_cost=450),
            ),
            supplier="Acme",
        ),
    )
    # Previous period: r1, A x2 @ 1.99 = 3.98 (VAT 0.66), cash 5.00 change 1.02.
    h.add(
        "B1",
        "2026-11-01T09:00:00",
        sale(
            "r1",
            "S1",
            "ann",
            (line(1, "A", 2000, 199, 398, 2000),),
            (Payment(type="cash", amount=500),),
            change=102,
        ),
    )
    # r2 at 09:30 local: A x3 manual discount 0.60 -> 5.37 (VAT 0.895 -> 0.90),
    # B x1 4.50 (VAT 0.409 -> 0.41), W 0.754 kg @ 12.99 -> 9.79 (VAT 0.89); card 19.66.
    h.add(
        "B1",
        "2026-11-02T08:30:00",
        sale(
            "r2",
            "S2",
            "ann",
            (
                line(1, "A", 3000, 199, 537, 2000, discount=60, manual=True),
                line(2, "B", 1000, 450, 450, 1000),
                line(3, "W", 754, 1299, 979, 1000),
            ),
            (Payment(type="credit_card", amount=1966),),
            voided=1,
        ),
    )
    # r3 at 23:30 local on the 2nd: B x2 = 9.00 (VAT 0.82), cash 10.00 change 1.00.
    h.add(
        "B1",
        "2026-11-02T22:30:00",
        sale(
            "r3",
            "S3",
            "bob",
            (line(1, "B", 2000, 450, 900, 1000),),
            (Payment(type="cash", amount=1000),),
            change=100,
            till="T2",
        ),
    )
    # r4 at 00:30 local: already the 3rd. A x1 = 1.99 (VAT 0.33), cash.
    h.add(
        "B1",
        "2026-11-02T23:30:00",
        sale(
            "r4",
            "S3",
            "bob",
            (line(1, "A", 1000, 199, 199, 2000),),
            (Payment(type="cash", amount=199),),
            till="T2",
        ),
    )
    # A customer brings one B back (4.50, VAT 0.41), refunded in cash.
    h.add(
        "B1",
        "2026-11-03T10:00:00",
        CustomerReturnRecorded(
            till="T1",
            shift_id="S4",
            return_number=1,
            return_id="cr1",
            original_sale_id="r2",
            cashier="ann",
            lines=(line(1, "B", 1000, 450, 450, 1000),),
            refunds=(Payment(type="cash", amount=450),),
            total=450,
        ),
    )
    h.add(
        "B1",
        "2026-11-03T11:00:00",
        doc(
            "WO1",
            "write_off",
            (StockDocumentLine(sku="A", quantity_milli=-1000),),
            reason="damaged",
        ),
    )
    h.add(
        "B1",
        "2026-11-03T12:00:00",
        doc(
            "ST1",
            "stocktake",
            (
                StockDocumentLine(
                    sku="B", quantity_milli=-1000, expected_milli=3000, counted_milli=2000
                ),
            ),
        ),
    )
    h.add(
        "B1",
        "2026-11-03T13:00:00",
        doc(
            "TO1",
            "transfer_out",
            (StockDocumentLine(sku="A", quantity_milli=-2000),),
            counterpart_branch="B2",
            transfer_ref="TR1",
        ),
    )
    h.add(
        "B1",
        "2026-11-03T14:00:00",
        doc(
            "SR1",
            "supplier_return",
            (StockDocumentLine(sku="B", quantity_milli=-1000),),
            supplier="Acme",
        ),
    )
    # S2 closes in agreement; S3's printer counted one receipt and 10.00 only.
    h.add(
        "B1",
        "2026-11-02T20:00:00",
        ShiftClosed(
            till="T1",
            shift_id="S2",
            cashier="ann",
            receipts_count=1,
            sales_total=1966,
            payments_by_type={"credit_card": 1966},
            z_report=ZReportTotals(
                report_number=7, turnover_by_vat_group={"A": 537, "B": 1429}, receipts_count=1
            ),
        ),
    )
    h.add(
        "B1",
        "2026-11-03T06:00:00",
        ShiftClosed(
            till="T2",
            shift_id="S3",
            cashier="bob",
            receipts_count=2,
            sales_total=1099,
            payments_by_type={"cash": 1000},
            z_report=ZReportTotals(
                report_number=8, turnover_by_vat_group={"B": 1000}, receipts_count=1
            ),
        ),
    )
    # B2 receives the transfer (at the sender's cost) and sells one A.
    h.add(
        "B2",
        "2026-11-03T15:00:00",
        doc(
            "TI1",
            "transfer_in",
            (StockDocumentLine(sku="A", quantity_milli=2000),),
            counterpart_branch="B1",
            transfer_ref="TR1",
        ),
    )
    h.add(
        "B2",
        "2026-11-03T16:00:00",
        sale(
            "r5",
            "S9",
            "cy",
            (line(1, "A", 1000, 249, 249, 2000),),
            (Payment(type="debit_card", amount=249),),
        ),
    )
    return h
