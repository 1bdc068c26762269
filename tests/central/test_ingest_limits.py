"""A value beyond the limit of the column that would store it is refused when the
message is decoded: one dead letter naming the field, nothing of it stored, the rest
of its batch stored, the same on SQLite and PostgreSQL (where the database itself
would refuse it only at the end of the batch, and SQLite would keep it)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from sqlalchemy import BigInteger, Integer, String, Text, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from central.db import create_sessionmaker
from central.ingest.worker import IngestWorker, MessageIn
from central.models import Base, BranchStatus, BranchSyncState, DeadLetter, IngestedEvent
from protocol.events import (
    CashMoved,
    CustomerReturnRecorded,
    EventEnvelope,
    Payment,
    ReceiptLine,
    ReceiptRecorded,
    ShiftClosed,
    ShiftOpened,
    StockDocumentLine,
    StockDocumentPosted,
    ZReportTotals,
)
from protocol.limits import INT32_MAX, INT64_MAX, INT64_MIN
from protocol.messages import BranchHeartbeat
from protocol.subjects import up_subject
from tests.central.chain_events import BranchBooks, message

# The batch: one event of every kind, and where each kind sits in it.
SEQ_OF = {
    "shift_opened": 1,
    "receipt_recorded": 2,
    "customer_return_recorded": 4,
    "cash_moved": 5,
    "stock_document_posted": 6,
    "shift_closed": 9,
}


def _books() -> BranchBooks:
    books = BranchBooks("B1")
    books.open_shift()
    sold = books.sale([("MILK", 2000, 119), ("BREAD", 1000, 250)])
    books.sale([("MILK", 1000, 119)])
    assert isinstance(sold.body, ReceiptRecorded)
    books.customer_return("MILK", 1000, 119, sold.body.sale_id)
    books.cash("in", 1000)
    books.document("goods_receipt", [("MILK", 12000, 80)])
    books.sale([("BREAD", 2000, 250)])
    books.document("write_off", [("BREAD", -1000, None)])
    books.close_shift()
    assert [e.seq for e in books.events] == list(range(1, 10))
    return books


def _breaking(envelope: EventEnvelope, path: tuple[str | int, ...], value: Any) -> MessageIn:
    """The event's message with ``path`` set to ``value`` (a Struct built in code is not
    checked; what central decodes is)."""
    raw = msgspec.to_builtins(envelope, builtin_types=(datetime, uuid.UUID))
    target = raw
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    good = message(envelope)
    return dataclasses.replace(good, data=msgspec.msgpack.encode(raw))


CASES = [
    # (event kind, path of the value, a value one beyond its limit)
    ("receipt_recorded", ("body", "till"), "T" * 33),
    ("receipt_recorded", ("body", "sale_id"), "S" * 65),
    ("receipt_recorded", ("body", "lines", 1, "name"), "n" * 201),
    ("receipt_recorded", ("body", "lines", 0, "sku"), "K" * 65),
    ("receipt_recorded", ("body", "currency"), "EURO"),
    ("receipt_recorded", ("body", "receipt_number"), INT64_MAX + 1),
    ("receipt_recorded", ("body", "voided_lines"), INT32_MAX + 1),
    ("receipt_recorded", ("body", "lines", 0, "line_no"), INT32_MAX + 1),
    ("receipt_recorded", ("body", "payments", 0, "amount"), INT64_MAX + 1),
    ("customer_return_recorded", ("body", "cashier"), "c" * 65),
    ("customer_return_recorded", ("body", "return_number"), -1),
    ("shift_opened", ("body", "shift_id"), "s" * 65),
    ("shift_closed", ("body", "z_report", "report_number"), INT32_MAX + 1),
    ("cash_moved", ("body", "amount"), INT64_MAX + 1),
    # (MessagePack itself cannot carry an integer below -2**63.)
    ("stock_document_posted", ("body", "lines", 0, "quantity_milli"), INT64_MAX + 1),
    ("stock_document_posted", ("body", "document_id"), "d" * 65),
    ("stock_document_posted", ("body", "author"), "a" * 65),
    ("stock_document_posted", ("body", "supplier"), "p" * 201),
    ("stock_document_posted", ("body", "counterpart_branch"), "b" * 33),
    ("stock_document_posted", ("body", "transfer_ref"), "r" * 65),
    ("stock_document_posted", ("schema_version",), INT32_MAX + 1),
    # NUL: a text PostgreSQL cannot store (SQLite could): refused on either database.
    ("receipt_recorded", ("body", "cashier"), "anna\x00\x00\x00"),
    ("cash_moved", ("body", "reason"), "float\x00"),
    ("stock_document_posted", ("body", "lines", 0, "sku"), "MILK\x00"),
]


@pytest.mark.parametrize(
    ("kind", "path", "value"), CASES, ids=[f"{k}:{'.'.join(map(str, p))}" for k, p, _ in CASES]
)
async def test_a_value_beyond_its_limit_is_one_dead_letter_and_the_batch_flows(
    engine: AsyncEngine, kind: str, path: tuple[str | int, ...], value: Any
) -> None:
    sessionmaker = create_sessionmaker(engine)
    events = _books().events
    bad_seq = SEQ_OF[kind]
    bad = events[bad_seq - 1]
    assert bad.body.__struct_config__.tag == kind
    batch = [
        dataclasses.replace(_breaking(e, path, value) if e is bad else message(e), stream_seq=e.seq)
        for e in events
    ]
    stats = await IngestWorker(sessionmaker).process(batch)
    assert (stats.stored, stats.dead_letters) == (8, 1)
    async with sessionmaker() as session:
        letter = (await session.scalars(select(DeadLetter))).one()
        stored = set((await session.scalars(select(IngestedEvent.seq))).all())
        state = await session.get(BranchSyncState, "B1")
        # Nothing of it anywhere: no table holds a row of its event id.
        for table in Base.metadata.sorted_tables:
            for column in table.columns:
                if column.name.endswith("event_id"):
                    found = await session.scalar(
                        select(func.count()).select_from(table).where(column == bad.event_id)
                    )
                    assert found == 0, f"{table.name}.{column.name} holds the refused event"
    field = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")
    assert letter.reason.startswith("malformed event: "), letter.reason
    assert f"`$.{field}`" in letter.reason
    assert letter.raw == batch[bad_seq - 1].data
    # Its place in the branch's sequence is kept: the gap is held by the letter.
    assert (letter.branch, letter.seq, letter.stream_seq) == ("B1", bad_seq, bad_seq)
    assert stored == set(range(1, 10)) - {bad_seq}
    assert state is not None
    assert state.contiguous_seq == bad_seq - 1


@pytest.mark.parametrize(
    ("name", "value"),
    [("agent_version", "v" * 65), ("outbox_backlog", INT32_MAX + 1), ("applied_version", -1)],
    ids=["agent_version", "outbox_backlog", "applied_version"],
)
async def test_a_heartbeat_beyond_a_limit_is_a_dead_letter_and_the_batch_flows(
    engine: AsyncEngine, name: str, value: Any
) -> None:
    """Heartbeats are stored too (``branch_status``), with the same rule."""
    sessionmaker = create_sessionmaker(engine)
    heartbeat = BranchHeartbeat(branch="B1", sent_at=datetime(2026, 11, 27, 9, 0, tzinfo=UTC))
    raw = msgspec.to_builtins(heartbeat, builtin_types=(datetime,))
    raw[name] = value
    beat = MessageIn(subject=up_subject("B1", "heartbeat"), data=msgspec.msgpack.encode(raw))
    events = _books().events
    stats = await IngestWorker(sessionmaker).process([beat, *map(message, events)])
    assert (stats.stored, stats.dead_letters, stats.heartbeats) == (9, 1, 0)
    async with sessionmaker() as session:
        letter = (await session.scalars(select(DeadLetter))).one()
        assert await session.get(BranchStatus, "B1") is None
    assert letter.reason.startswith("malformed heartbeat: "), letter.reason
    assert f"`$.{name}`" in letter.reason


async def test_a_message_at_every_limit_is_stored(engine: AsyncEngine) -> None:
    """The limits are the columns' sizes: a value exactly at each one is stored."""
    sessionmaker = create_sessionmaker(engine)
    events = _books().events
    at_limit: dict[int, list[tuple[tuple[str | int, ...], Any]]] = {
        2: [
            (("body", "till"), "T" * 32),
            (("body", "sale_id"), "S" * 64),
            (("body", "cashier"), "c" * 64),
            (("body", "lines", 1, "name"), "n" * 200),
            (("body", "lines", 0, "barcode"), "9" * 64),
            (("body", "fiscal_number"), "F" * 64),
            (("body", "receipt_number"), INT64_MAX),
            (("body", "voided_lines"), INT32_MAX),
            (("body", "lines", 1, "line_no"), INT32_MAX),
        ],
        6: [
            (("body", "document_id"), "d" * 64),
            (("body", "supplier"), "p" * 200),
            (("body", "lines", 0, "sku"), "K" * 64),
        ],
        9: [(("body", "z_report", "report_number"), INT32_MAX)],
    }
    batch = []
    for e in events:
        raw = msgspec.to_builtins(e, builtin_types=(datetime, uuid.UUID))
        for path, value in at_limit.get(e.seq, []):
            target = raw
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = value
        batch.append(dataclasses.replace(message(e), data=msgspec.msgpack.encode(raw)))
    stats = await IngestWorker(sessionmaker).process(batch)
    assert (stats.stored, stats.dead_letters) == (9, 0)


# --- every wire field against the central columns that store it -------------------------


def _column(name: str) -> Any:
    table, column = name.split(".")
    return Base.metadata.tables[table].c[column]


# (Struct, field) -> the columns of the tables the ingest writes it to.
STORED_IN: dict[tuple[type[msgspec.Struct], str], tuple[str, ...]] = {
    (EventEnvelope, "seq"): ("ingested_events.seq", "dead_letters.seq"),
    (EventEnvelope, "schema_version"): ("ingested_events.schema_version",),
    (ReceiptRecorded, "till"): ("receipts.till", "rpt_shifts.till"),
    (ReceiptRecorded, "shift_id"): (
        "receipts.shift_id",
        "rpt_shifts.shift_id",
        "rpt_shift_payments.shift_id",
    ),
    (ReceiptRecorded, "receipt_number"): ("receipts.receipt_number",),
    (ReceiptRecorded, "sale_id"): ("receipts.sale_id", "stock_ledger.doc_ref"),
    (ReceiptRecorded, "cashier"): ("receipts.cashier", "rpt_sales_cashier_daily.cashier"),
    (ReceiptRecorded, "total"): ("receipts.total",),
    (ReceiptRecorded, "change"): ("receipts.change",),
    (ReceiptRecorded, "currency"): ("receipts.currency",),
    (ReceiptRecorded, "fiscal_number"): ("receipts.fiscal_number",),
    (ReceiptRecorded, "voided_lines"): (
        "receipts.voided_lines",
        "rpt_sales_cashier_daily.voided_lines",
    ),
    (ReceiptLine, "line_no"): (
        "receipt_lines.line_no",
        "customer_return_lines.line_no",
        "stock_ledger.line_no",
    ),
    (ReceiptLine, "sku"): (
        "receipt_lines.sku",
        "customer_return_lines.sku",
        "stock_ledger.sku",
        "stock_balances.sku",
        "rpt_sales_product_daily.sku",
        "rpt_last_selling_price.sku",
    ),
    (ReceiptLine, "name"): ("receipt_lines.name", "customer_return_lines.name"),
    (ReceiptLine, "barcode"): ("receipt_lines.barcode",),
    (ReceiptLine, "quantity_milli"): (
        "receipt_lines.quantity_milli",
        "customer_return_lines.quantity_milli",
        "stock_ledger.quantity_milli",
    ),
    (ReceiptLine, "unit_price"): (
        "receipt_lines.unit_price",
        "customer_return_lines.unit_price",
        "rpt_last_selling_price.unit_price",
    ),
    (ReceiptLine, "discount"): ("receipt_lines.discount", "customer_return_lines.discount"),
    (ReceiptLine, "promotion_id"): ("receipt_lines.promotion_id",),
    (ReceiptLine, "vat_rate_bp"): (
        "receipt_lines.vat_rate_bp",
        "customer_return_lines.vat_rate_bp",
    ),
    (ReceiptLine, "line_total"): ("receipt_lines.line_total", "customer_return_lines.line_total"),
    (Payment, "amount"): ("receipt_payments.amount",),
    (CustomerReturnRecorded, "till"): ("customer_returns.till", "rpt_shifts.till"),
    (CustomerReturnRecorded, "shift_id"): ("customer_returns.shift_id", "rpt_shifts.shift_id"),
    (CustomerReturnRecorded, "return_number"): ("customer_returns.return_number",),
    (CustomerReturnRecorded, "return_id"): ("customer_returns.return_id", "stock_ledger.doc_ref"),
    (CustomerReturnRecorded, "original_sale_id"): ("customer_returns.original_sale_id",),
    (CustomerReturnRecorded, "original_till"): ("customer_returns.original_till",),
    (CustomerReturnRecorded, "cashier"): (
        "customer_returns.cashier",
        "rpt_sales_cashier_daily.cashier",
    ),
    (CustomerReturnRecorded, "total"): ("customer_returns.total",),
    (CustomerReturnRecorded, "currency"): ("customer_returns.currency",),
    (CustomerReturnRecorded, "fiscal_number"): ("customer_returns.fiscal_number",),
    (CustomerReturnRecorded, "reason"): ("customer_returns.reason",),
    (CustomerReturnRecorded, "approved_by"): ("customer_returns.approved_by",),
    (ShiftOpened, "till"): ("shifts.till",),
    (ShiftOpened, "shift_id"): ("shifts.shift_id",),
    (ShiftOpened, "cashier"): ("shifts.cashier",),
    (ShiftOpened, "opening_float"): ("shifts.opening_float",),
    (ShiftClosed, "till"): ("shifts.till",),
    (ShiftClosed, "shift_id"): ("shifts.shift_id",),
    (ShiftClosed, "cashier"): ("shifts.cashier",),
    (ShiftClosed, "receipts_count"): ("shifts.receipts_count",),
    (ShiftClosed, "sales_total"): ("shifts.sales_total",),
    (ShiftClosed, "returns_total"): ("shifts.returns_total",),
    (ShiftClosed, "cash_in"): ("shifts.cash_in",),
    (ShiftClosed, "cash_out"): ("shifts.cash_out",),
    (ShiftClosed, "counted_cash"): ("shifts.counted_cash",),
    (ShiftClosed, "expected_cash"): ("shifts.expected_cash",),
    (ZReportTotals, "report_number"): ("shifts.z_report_number",),
    (ZReportTotals, "receipts_count"): ("shifts.z_receipts_count",),
    (CashMoved, "till"): ("cash_movements.till",),
    (CashMoved, "shift_id"): ("cash_movements.shift_id",),
    (CashMoved, "amount"): ("cash_movements.amount",),
    (CashMoved, "reason"): ("cash_movements.reason",),
    (CashMoved, "cashier"): ("cash_movements.cashier",),
    (StockDocumentPosted, "document_id"): (
        "stock_documents.document_id",
        "stock_ledger.doc_ref",
        "stock_transfers.transfer_ref",
    ),
    (StockDocumentPosted, "number"): ("stock_documents.number",),
    (StockDocumentPosted, "supplier"): ("stock_documents.supplier",),
    (StockDocumentPosted, "counterpart_branch"): (
        "stock_documents.counterpart_branch",
        "stock_transfers.from_branch",
        "stock_transfers.to_branch",
    ),
    (StockDocumentPosted, "transfer_ref"): (
        "stock_documents.transfer_ref",
        "stock_transfers.transfer_ref",
        "stock_transfer_lines.transfer_ref",
    ),
    (StockDocumentPosted, "reason"): ("stock_documents.reason",),
    (StockDocumentPosted, "author"): ("stock_documents.author",),
    (StockDocumentPosted, "part"): ("stock_documents.part",),
    (StockDocumentPosted, "parts"): ("stock_documents.parts",),
    # The first line's number; the part's lines follow it.
    (StockDocumentPosted, "first_line_no"): ("stock_document_lines.line_no",),
    (StockDocumentLine, "sku"): (
        "stock_document_lines.sku",
        "stock_transfer_lines.sku",
        "stock_ledger.sku",
        "stock_balances.sku",
    ),
    (StockDocumentLine, "quantity_milli"): (
        "stock_document_lines.quantity_milli",
        "stock_ledger.quantity_milli",
    ),
    (StockDocumentLine, "unit_cost"): ("stock_document_lines.unit_cost",),
    (StockDocumentLine, "expected_milli"): ("stock_document_lines.expected_milli",),
    (StockDocumentLine, "counted_milli"): ("stock_document_lines.counted_milli",),
    (BranchHeartbeat, "outbox_backlog"): ("branch_status.outbox_backlog",),
    (BranchHeartbeat, "last_acked_seq"): ("branch_status.last_acked_seq",),
    (BranchHeartbeat, "last_recorded_seq"): ("branch_status.last_recorded_seq",),
    (BranchHeartbeat, "clock_offset_ms"): ("branch_status.clock_offset_ms",),
    (BranchHeartbeat, "agent_instance"): ("branch_status.agent_instance",),
    (BranchHeartbeat, "agent_server"): ("branch_status.agent_server",),
    (BranchHeartbeat, "first_seq"): ("branch_status.first_seq",),
    (BranchHeartbeat, "applied_version"): ("branch_status.applied_version",),
    (BranchHeartbeat, "agent_version"): ("branch_status.agent_version",),
    (BranchHeartbeat, "timezone"): ("branch_status.agent_timezone",),
}


def _fields(struct: type[msgspec.Struct]) -> tuple[msgspec.inspect.Field, ...]:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return info.fields


def _wire_type(struct: type[msgspec.Struct], name: str) -> Any:
    (field,) = [f for f in _fields(struct) if f.name == name]
    kind = field.type
    if isinstance(kind, msgspec.inspect.UnionType):
        members = [t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(members) == 1:
            return members[0]
    return kind


@pytest.mark.parametrize(
    ("struct", "name"), list(STORED_IN), ids=[f"{s.__name__}.{n}" for s, n in STORED_IN]
)
def test_each_wire_field_has_the_limit_of_its_columns(
    struct: type[msgspec.Struct], name: str
) -> None:
    kind = _wire_type(struct, name)
    for column in map(_column, STORED_IN[(struct, name)]):
        where = f"{struct.__name__}.{name} -> {column.table.name}.{column.name}"
        if isinstance(column.type, String) and not isinstance(column.type, Text):
            assert isinstance(kind, msgspec.inspect.StrType), where
            assert kind.max_length == column.type.length, where
        elif isinstance(column.type, Text):
            assert isinstance(kind, msgspec.inspect.StrType), where
        elif isinstance(column.type, BigInteger):
            assert isinstance(kind, msgspec.inspect.IntType), where
            assert kind.le == INT64_MAX, where
            assert kind.ge is not None, where
            assert kind.ge >= INT64_MIN, where
        elif isinstance(column.type, Integer):
            assert isinstance(kind, msgspec.inspect.IntType), where
            assert kind.le is not None, where
            assert kind.le <= INT32_MAX, where
            assert kind.ge is not None, where
            assert kind.ge >= -(2**31), where
        else:
            raise AssertionError(f"{where}: no rule for {column.type!r}")


def test_every_stored_text_and_integer_field_is_mapped() -> None:
    """A new field of an event or a heartbeat must be added to STORED_IN (with its limit)."""
    structs = {s for s, _ in STORED_IN}
    # Not stored in a sized column: JSON, literals, flags, times, nested Structs, the
    # branch (a pattern), the event id; the original receipt number, the price version
    # and the discount flag are not stored.
    unsized = {
        (EventEnvelope, "branch"),
        (EventEnvelope, "utc_offset_min"),
        # Equal to the subject's branch (a branch code), the offset and the version of
        # a heartbeat are not stored.
        (BranchHeartbeat, "branch"),
        (BranchHeartbeat, "utc_offset_min"),
        (BranchHeartbeat, "schema_version"),
        (ReceiptRecorded, "price_version"),
        (CustomerReturnRecorded, "original_receipt_number"),
    }
    for struct in structs:
        for field in _fields(struct):
            if (struct, field.name) in STORED_IN or (struct, field.name) in unsized:
                continue
            kind = _wire_type(struct, field.name)
            assert not isinstance(kind, msgspec.inspect.StrType | msgspec.inspect.IntType), (
                f"{struct.__name__}.{field.name} is not mapped to the columns that store it"
            )
