"""Reading both sets of books: each agent's SQLite and central's database.

The agent side is read straight from its SQLite file (read-only, beside the running
agent: WAL lets a reader in at any time); central's through SQLAlchemy on SQLite or
PostgreSQL. Plain SQL on a few columns keeps the harness independent of how each
side's code is organised. Tables that a part of the system does not have yet
(stock, fiscal numbers) are reported as not compared, never silently passed.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "AgentBooks",
    "CentralBooks",
    "OutboxProgress",
    "SaleRecord",
    "as_uuid",
    "read_agent_books",
    "read_central_books",
    "read_central_progress",
    "read_outbox_progress",
]


def as_uuid(value: Any) -> uuid.UUID:
    """UUIDs as stored: 32 hex chars on SQLite, native on PostgreSQL."""
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


@dataclass(frozen=True, slots=True)
class SaleRecord:
    till: str
    sale_id: str
    receipt_number: int
    total: int
    change: int
    fiscal_number: str | None
    event_id: uuid.UUID | None
    # Agent side only: recorded, pending_fiscal, fiscalized, completed_unfiscal.
    status: str = ""


@dataclass(slots=True)
class OutboxProgress:
    max_seq: int
    events: int
    unsent: int
    # Sales waiting for the fiscal printer: their event is written once printed.
    pending_fiscal: int = 0


@dataclass(slots=True)
class AgentBooks:
    branch: str
    # event id -> (seq, kind), from the outbox: every fact the agent ever recorded.
    events: dict[uuid.UUID, tuple[int, str]] = field(default_factory=dict)
    seqs: list[int] = field(default_factory=list)
    unsent: int = 0
    sales: list[SaleRecord] = field(default_factory=list)
    # Payments by type, cash net of change: what the branch took in.
    revenue: dict[str, int] = field(default_factory=dict)
    # sku -> quantity_milli; None when this agent keeps no stock balances yet.
    stock: dict[str, int] | None = None
    tables: frozenset[str] = frozenset()
    # SQLite's own verdict on the file: "ok" or the first damage found.
    integrity: str = ""
    # Posted stock documents: document id -> doc type.
    documents: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class CentralBooks:
    events: dict[str, list[tuple[uuid.UUID, int, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    receipts: dict[str, list[SaleRecord]] = field(default_factory=lambda: defaultdict(list))
    revenue: dict[str, dict[str, int]] = field(default_factory=dict)
    contiguous_seq: dict[str, int] = field(default_factory=dict)
    stock: dict[str, dict[str, int]] | None = None
    dead_letters: int = 0
    tables: frozenset[str] = frozenset()
    # Report summary tables whose rows differ from their rebuild from the raw records
    # (None: not compared, the schema has none).
    summaries_differ: list[str] | None = None
    # Transfers central flagged (ref: what), None: the schema predates them (1710).
    transfer_discrepancies: dict[str, list[str]] | None = None


def _connect_ro(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def read_outbox_progress(path: Path) -> OutboxProgress:
    conn = _connect_ro(path)
    try:
        max_seq, events, unsent = conn.execute(
            "SELECT coalesce(max(seq), 0), count(*), coalesce(sum(sent_at IS NULL), 0) FROM outbox"
        ).fetchone()
        (pending,) = conn.execute(
            "SELECT count(*) FROM sales WHERE status = 'pending_fiscal'"
        ).fetchone()
    finally:
        conn.close()
    return OutboxProgress(
        max_seq=int(max_seq), events=int(events), unsent=int(unsent), pending_fiscal=int(pending)
    )


def read_agent_books(branch: str, path: Path) -> AgentBooks:
    conn = _connect_ro(path)
    try:
        tables = frozenset(
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        )
        books = AgentBooks(branch=branch, tables=tables)
        for seq, event_id, kind, unsent in conn.execute(
            "SELECT seq, event_id, kind, sent_at IS NULL FROM outbox ORDER BY seq"
        ):
            books.events[as_uuid(event_id)] = (int(seq), str(kind))
            books.seqs.append(int(seq))
            books.unsent += int(unsent)
        revenue: Counter[str] = Counter()
        for row in conn.execute(
            'SELECT till, sale_id, receipt_number, total, "change", fiscal_number, event_id, '
            "receipt, status FROM sales"
        ):
            till, sale_id, number, total, change, fiscal, event_id, receipt, status = row
            books.sales.append(
                SaleRecord(
                    till=till,
                    sale_id=sale_id,
                    receipt_number=int(number),
                    total=int(total),
                    change=int(change),
                    fiscal_number=fiscal,
                    event_id=as_uuid(event_id) if event_id is not None else None,
                    status=str(status),
                )
            )
            for payment in json.loads(receipt).get("payments", []):
                revenue[payment["type"]] += int(payment["amount"])
            revenue["cash"] -= int(change)
        books.revenue = {k: v for k, v in revenue.items() if v}
        books.integrity = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        if "stock_documents" in tables:
            books.documents = {
                doc_id: doc_type
                for doc_id, doc_type in conn.execute(
                    "SELECT document_id, doc_type FROM stock_documents WHERE status = 'posted'"
                )
            }
        if "stock_balances" in tables:
            books.stock = {
                sku: int(q)
                for sku, q in conn.execute("SELECT sku, quantity_milli FROM stock_balances")
                if q
            }
    finally:
        conn.close()
    return books


async def _tables(engine: AsyncEngine) -> frozenset[str]:
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
    return frozenset(names)


async def read_central_progress(engine: AsyncEngine) -> tuple[dict[str, int], dict[str, int]]:
    """(contiguous seq, stored events) per branch: cheap enough to poll."""
    async with engine.connect() as conn:
        contiguous = {
            r[0]: int(r[1] or 0)
            for r in await conn.execute(
                text("SELECT branch, contiguous_seq FROM branch_sync_state")
            )
        }
        counts = {
            r[0]: int(r[1])
            for r in await conn.execute(
                text("SELECT branch, count(*) FROM ingested_events GROUP BY branch")
            )
        }
    return contiguous, counts


async def read_central_books(engine: AsyncEngine) -> CentralBooks:
    books = CentralBooks(tables=await _tables(engine))
    async with engine.connect() as conn:
        for branch, event_id, seq, kind in await conn.execute(
            text("SELECT branch, event_id, seq, kind FROM ingested_events")
        ):
            books.events[branch].append((as_uuid(event_id), int(seq), str(kind)))
        for row in await conn.execute(
            text(
                'SELECT branch, till, sale_id, receipt_number, total, "change", fiscal_number, '
                "event_id FROM receipts"
            )
        ):
            branch, till, sale_id, number, total, change, fiscal, event_id = row
            books.receipts[branch].append(
                SaleRecord(
                    till=till,
                    sale_id=sale_id,
                    receipt_number=int(number),
                    total=int(total),
                    change=int(change),
                    fiscal_number=fiscal,
                    event_id=as_uuid(event_id),
                )
            )
        revenue: dict[str, Counter[str]] = defaultdict(Counter)
        for branch, kind, amount in await conn.execute(
            text(
                "SELECT r.branch, p.type, sum(p.amount) FROM receipt_payments p "
                "JOIN receipts r ON r.id = p.receipt_id GROUP BY r.branch, p.type"
            )
        ):
            revenue[branch][kind] += int(amount)
        for branch, change in await conn.execute(
            text('SELECT branch, sum("change") FROM receipts GROUP BY branch')
        ):
            revenue[branch]["cash"] -= int(change or 0)
        books.revenue = {b: {k: v for k, v in c.items() if v} for b, c in revenue.items()}
        contiguous, _counts = await read_central_progress(engine)
        books.contiguous_seq = contiguous
        books.dead_letters = int(
            (await conn.execute(text("SELECT count(*) FROM dead_letters"))).scalar_one()
        )
        if "stock_balances" in books.tables:
            stock: dict[str, dict[str, int]] = defaultdict(dict)
            for branch, sku, quantity in await conn.execute(
                text("SELECT branch, sku, quantity_milli FROM stock_balances")
            ):
                if quantity:
                    stock[branch][sku] = int(quantity)
            books.stock = stock
        if "stock_transfer_discrepancies" in books.tables:
            flagged: dict[str, list[str]] = defaultdict(list)
            for ref, kind, branch, document_id in await conn.execute(
                text(
                    "SELECT transfer_ref, kind, branch, document_id "
                    "FROM stock_transfer_discrepancies"
                )
            ):
                flagged[ref].append(f"{kind} ({branch}/{document_id})")
            for (ref,) in await conn.execute(
                text("SELECT transfer_ref FROM stock_transfers WHERE has_discrepancies")
            ):
                flagged[ref] = flagged.get(ref) or ["a line received short or over"]
            books.transfer_discrepancies = dict(flagged)
    if "rpt_sales_branch_daily" in books.tables:
        books.summaries_differ = await _summaries_differ(engine)
    return books


async def _summaries_differ(engine: AsyncEngine) -> list[str]:
    """The summary tables as kept (the backlog applied first) against their rebuild,
    computed in a transaction that is rolled back: the database is left as it was."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from central.reports.backlog import apply_summary_backlog
    from central.reports.rebuild import rebuild_summaries, summary_rows

    await apply_summary_backlog(engine, wait=True)
    async with AsyncSession(engine) as session, session.begin():
        kept = await summary_rows(session)
        await rebuild_summaries(session)
        rebuilt = await summary_rows(session)
        await session.rollback()
    return [name for name in kept if kept[name] != rebuilt[name]]
