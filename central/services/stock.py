"""Reading the stock ledger and balances; rebuilding the balances from the ledger."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import msgspec
from sqlalchemy import (
    BigInteger,
    and_,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from central.api.schemas import Page
from central.ingest.documents import is_whole
from central.ingest.stock import div_half_up
from central.models import (
    CustomerReturn,
    Receipt,
    StockBalance,
    StockMovement,
    StockTransfer,
    StockTransferDiscrepancy,
    StockTransferLine,
)
from central.services.paging import check_branch, check_period, paged
from protocol.units import format_milli

__all__ = [
    "RebuildReport",
    "StockBalanceOut",
    "StockMovementOut",
    "TransferDiscrepancyOut",
    "TransferLineOut",
    "TransferOut",
    "list_balances",
    "list_ledger",
    "list_transfers",
    "rebuild_balances",
    "transfer_status",
]


class StockBalanceOut(msgspec.Struct, kw_only=True):
    branch: str
    sku: str
    quantity: str
    quantity_milli: int
    value: int
    avg_cost: int
    movements: int


class StockMovementOut(msgspec.Struct, kw_only=True):
    id: int
    branch: str
    sku: str
    doc_type: str
    doc_ref: str
    event_id: str
    line_no: int
    quantity: str
    quantity_milli: int
    unit_cost: int
    value: int
    quantity_after_milli: int
    value_after: int
    avg_cost_after: int
    occurred_at: datetime
    local_date: date
    # The till of a sale or customer return: doc_ref is the till's own id, which two
    # tills of a branch may share. None for stock documents.
    till: str | None = None


class TransferLineOut(msgspec.Struct, kw_only=True):
    sku: str
    sent_milli: int
    received_milli: int
    # Sent and not received by the receiver yet (0 once the transfer is received:
    # what did not arrive is then a difference).
    in_transit_milli: int
    sent_value: int
    received_value: int
    # received - sent once both documents are whole at central (else null): negative
    # short, positive over (or not sent at all); its value at the value it left with
    # (the received value for goods never sent).
    difference_milli: int | None = None
    difference_value: int | None = None


class TransferDiscrepancyOut(msgspec.Struct, kw_only=True):
    # wrong_receiver, wrong_sender, received_twice, sent_twice, unknown_branch (stored
    # when central saw them), short, over, not_sent (a line's difference).
    kind: str
    # The document at fault (its branch and id; null for a line's difference).
    branch: str | None = None
    document_id: str | None = None
    # The branch the document names, and what central expected instead.
    counterpart: str | None = None
    expected: str | None = None
    sku: str | None = None
    # The goods of a document kept apart from the transfer's lines, or a line's
    # difference (signed).
    quantity_milli: int = 0
    value: int = 0
    detected_at: datetime | None = None


class TransferOut(msgspec.Struct, kw_only=True):
    transfer_ref: str
    from_branch: str | None
    to_branch: str | None
    # in_transit (sent, not received), received, received_with_differences (a line's
    # received differs from its sent), receiving (both sides in, a document's parts
    # still arriving), received_unsent (the receipt came first).
    status: str
    sent_at: datetime | None
    received_at: datetime | None
    # The documents: the transfer out, and the transfer in that received it.
    out_document_id: str | None = None
    in_document_id: str | None = None
    # Whole days since the first side was recorded at its store, while one is missing.
    waiting_days: int | None = None
    lines: list[TransferLineOut]
    discrepancies: list[TransferDiscrepancyOut] = msgspec.field(default_factory=list)


def _balance_out(b: StockBalance) -> StockBalanceOut:
    return StockBalanceOut(
        branch=b.branch,
        sku=b.sku,
        quantity=format_milli(b.quantity_milli),
        quantity_milli=b.quantity_milli,
        value=b.value,
        avg_cost=b.avg_cost,
        movements=b.movements,
    )


async def list_balances(
    session: AsyncSession,
    *,
    branch: str | None,
    sku: str | None,
    negative_only: bool = False,
    limit: int,
    offset: int,
) -> Page[StockBalanceOut]:
    await check_branch(session, branch)
    stmt = select(StockBalance)
    conditions = []
    if branch:
        conditions.append(StockBalance.branch == branch)
    if sku:
        conditions.append(StockBalance.sku == sku)
    if negative_only:
        conditions.append(StockBalance.quantity_milli < 0)
    stmt = stmt.where(*conditions)
    rows = (
        await session.scalars(
            stmt.order_by(StockBalance.branch, StockBalance.sku).limit(limit).offset(offset)
        )
    ).all()
    return await paged(
        session,
        [_balance_out(b) for b in rows],
        select(StockBalance.branch).where(*conditions),
        limit=limit,
        offset=offset,
    )


async def _tills_of(session: AsyncSession, rows: Sequence[StockMovement]) -> dict[uuid.UUID, str]:
    """Event id -> till, for the page's sales and customer returns (one query each)."""
    out: dict[uuid.UUID, str] = {}
    for model, doc_type in ((Receipt, "sale"), (CustomerReturn, "customer_return")):
        ids = sorted({m.event_id for m in rows if m.doc_type == doc_type})
        if ids:
            out.update(
                (event_id, till)
                for event_id, till in await session.execute(
                    select(model.event_id, model.till).where(model.event_id.in_(ids))
                )
            )
    return out


async def list_ledger(
    session: AsyncSession,
    *,
    branch: str,
    sku: str,
    date_from: date | None = None,
    date_to: date | None = None,
    limit: int,
    offset: int,
) -> Page[StockMovementOut]:
    await check_branch(session, branch)
    check_period(date_from, date_to)
    conditions = [StockMovement.branch == branch, StockMovement.sku == sku]
    if date_from:
        conditions.append(StockMovement.local_date >= date_from)
    if date_to:
        conditions.append(StockMovement.local_date <= date_to)
    rows = (
        await session.scalars(
            select(StockMovement)
            .where(*conditions)
            .order_by(StockMovement.id)
            .limit(limit)
            .offset(offset)
        )
    ).all()
    till_of = await _tills_of(session, rows)
    return await paged(
        session,
        [
            StockMovementOut(
                id=m.id,
                branch=m.branch,
                sku=m.sku,
                doc_type=m.doc_type,
                doc_ref=m.doc_ref,
                event_id=str(m.event_id),
                line_no=m.line_no,
                quantity=format_milli(m.quantity_milli),
                quantity_milli=m.quantity_milli,
                unit_cost=m.unit_cost,
                value=m.value,
                quantity_after_milli=m.quantity_after,
                value_after=m.value_after,
                avg_cost_after=m.avg_cost_after,
                occurred_at=m.occurred_at,
                local_date=m.local_date,
                till=till_of.get(m.event_id),
            )
            for m in rows
        ],
        select(StockMovement.id).where(*conditions),
        limit=limit,
        offset=offset,
    )


def transfer_status(t: StockTransfer, whole: bool, differs: bool) -> str:
    """``whole``: both documents at central with all their parts (:func:`is_whole`)."""
    if t.in_document_id is None:
        return "in_transit"
    if t.out_document_id is None:
        return "received_unsent"
    if not whole:
        return "receiving"
    return "received_with_differences" if differs else "received"


_WHOLE_COLUMNS = (
    "out_document_id",
    "in_document_id",
    "out_parts",
    "out_parts_received",
    "in_parts",
    "in_parts_received",
)


def _line_out(line: StockTransferLine, status: str, whole: bool) -> TransferLineOut:
    out = TransferLineOut(
        sku=line.sku,
        sent_milli=line.sent_milli,
        received_milli=line.received_milli,
        in_transit_milli=line.sent_milli if status == "in_transit" else 0,
        sent_value=line.sent_value,
        received_value=line.received_value,
    )
    if whole:
        out.difference_milli = line.received_milli - line.sent_milli
        out.difference_value = (
            div_half_up(line.sent_value * out.difference_milli, line.sent_milli)
            if line.sent_milli > 0
            else line.received_value
        )
    return out


def _line_discrepancy(line: TransferLineOut) -> TransferDiscrepancyOut | None:
    if not line.difference_milli:
        return None
    kinds = ("short", "over") if line.sent_milli else ("not_sent", "not_sent")
    kind = kinds[0] if line.difference_milli < 0 else kinds[1]
    return TransferDiscrepancyOut(
        kind=kind,
        sku=line.sku,
        quantity_milli=line.difference_milli,
        value=line.difference_value or 0,
    )


async def list_transfers(
    session: AsyncSession,
    *,
    branch: str | None,
    in_transit_only: bool,
    discrepancies_only: bool = False,
    limit: int,
    offset: int,
) -> Page[TransferOut]:
    await check_branch(session, branch)
    stmt = select(StockTransfer)
    if branch:
        stmt = stmt.where(
            (StockTransfer.from_branch == branch)
            | (StockTransfer.to_branch == branch)
            # A branch whose document was kept apart (a wrong receiver, a second one).
            | StockTransfer.transfer_ref.in_(
                select(StockTransferDiscrepancy.transfer_ref).where(
                    StockTransferDiscrepancy.branch == branch
                )
            )
        )
    if in_transit_only:
        # Goods that left and no receiver has taken in; a receipt central holds before
        # the sender's record (received, not yet "sent") is not, nor a short one.
        stmt = stmt.where(
            StockTransfer.out_document_id.is_not(None), StockTransfer.in_document_id.is_(None)
        )
    if discrepancies_only:
        stmt = stmt.where(StockTransfer.has_discrepancies)
    total = await session.scalar(select(func.count()).select_from(stmt.subquery()))
    transfers = (
        await session.scalars(
            stmt.order_by(StockTransfer.created_at, StockTransfer.transfer_ref)
            .limit(limit)
            .offset(offset)
        )
    ).all()
    refs = [t.transfer_ref for t in transfers]
    lines: dict[str, list[StockTransferLine]] = {}
    found: dict[str, list[TransferDiscrepancyOut]] = {}
    if refs:
        for line in await session.scalars(
            select(StockTransferLine)
            .where(StockTransferLine.transfer_ref.in_(refs))
            .order_by(StockTransferLine.sku)
        ):
            lines.setdefault(line.transfer_ref, []).append(line)
        for d in await session.scalars(
            select(StockTransferDiscrepancy)
            .where(StockTransferDiscrepancy.transfer_ref.in_(refs))
            .order_by(StockTransferDiscrepancy.detected_at, StockTransferDiscrepancy.kind)
        ):
            found.setdefault(d.transfer_ref, []).append(
                TransferDiscrepancyOut(
                    kind=d.kind,
                    branch=d.branch,
                    document_id=d.document_id,
                    counterpart=d.counterpart,
                    expected=d.expected,
                    quantity_milli=d.quantity_milli,
                    value=d.value,
                    detected_at=d.detected_at,
                )
            )
    now = datetime.now(UTC)
    items = []
    for t in transfers:
        stored = lines.get(t.transfer_ref, [])
        whole = is_whole({c: getattr(t, c) for c in _WHOLE_COLUMNS})
        differs = whole and any(x.sent_milli != x.received_milli for x in stored)
        status = transfer_status(t, whole, differs)
        out_lines = [_line_out(x, status, whole) for x in stored]
        listed = found.get(t.transfer_ref, [])
        listed += [d for d in map(_line_discrepancy, out_lines) if d is not None]
        waiting = None
        if status in ("in_transit", "received_unsent"):
            since = t.sent_at if status == "in_transit" else t.received_at
            if since is not None:
                waiting = max(0, (now - since).days)
        items.append(
            TransferOut(
                transfer_ref=t.transfer_ref,
                from_branch=t.from_branch,
                to_branch=t.to_branch,
                status=status,
                sent_at=t.sent_at,
                received_at=t.received_at,
                out_document_id=t.out_document_id,
                in_document_id=t.in_document_id,
                waiting_days=waiting,
                lines=out_lines,
                discrepancies=listed,
            )
        )
    return Page(items=items, total=total or 0, limit=limit, offset=offset)


@dataclass(slots=True)
class RebuildReport:
    balances: int = 0
    movements: int = 0
    # (branch, sku, what, projection, ledger) for every disagreement found.
    mismatches: list[tuple[str, str, str, int | None, int | None]] = field(default_factory=list)
    rebuilt: bool = False

    @property
    def agree(self) -> bool:
        return not self.mismatches


async def rebuild_balances(session: AsyncSession, *, verify_only: bool) -> RebuildReport:
    """Recompute every balance from the ledger; compare, and (unless verifying) replace.

    Quantity, value and movement count are sums over the ledger; the average cost is
    the one the last movement left. The comparison is one statement (one snapshot of
    ledger and balances, both written by the same ingest transactions) that returns
    only the disagreeing balances, so verifying neither blocks ingestion nor holds a
    chain's balances in memory. Rebuilding locks the balance table against ingestion
    (PostgreSQL) and replaces it with one INSERT ... SELECT. Runs in the caller's
    transaction.
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres and not verify_only:
        await session.execute(text("LOCK TABLE stock_balances IN EXCLUSIVE MODE"))
    m, b = StockMovement, StockBalance
    sums = (
        select(
            m.branch,
            m.sku,
            func.sum(m.quantity_milli).label("quantity"),
            func.sum(m.value).label("value"),
            func.count(m.id).label("movements"),
            func.max(m.id).label("last_id"),
        )
        .group_by(m.branch, m.sku)
        .subquery("sums")
    )
    last = aliased(StockMovement, name="last_movement")
    ledger = (
        select(
            sums.c.branch,
            sums.c.sku,
            sums.c.quantity,
            sums.c.value,
            last.avg_cost_after.label("avg_cost"),
            sums.c.movements,
        )
        .join(last, last.id == sums.c.last_id)
        .subquery("ledger")
    )
    differs = or_(
        b.branch.is_(None),
        b.quantity_milli != ledger.c.quantity,
        b.value != ledger.c.value,
        b.avg_cost != ledger.c.avg_cost,
        b.movements != ledger.c.movements,
    )
    null = literal(None, BigInteger)
    # Balances the ledger disagrees with or lacks, then balances without any movement
    # (an all-zero one is left over from a rolled-back batch's creation: empty, fine).
    mismatching = union_all(
        select(
            ledger.c.branch,
            ledger.c.sku,
            b.quantity_milli,
            b.value,
            b.avg_cost,
            b.movements,
            ledger.c.quantity,
            ledger.c.value,
            ledger.c.avg_cost,
            ledger.c.movements,
        )
        .select_from(ledger)
        .outerjoin(b, and_(b.branch == ledger.c.branch, b.sku == ledger.c.sku))
        .where(differs),
        select(
            b.branch,
            b.sku,
            b.quantity_milli,
            b.value,
            b.avg_cost,
            b.movements,
            null,
            null,
            null,
            null,
        ).where(
            ~select(m.id).where(m.branch == b.branch, m.sku == b.sku).exists(),
            or_(b.quantity_milli != 0, b.value != 0, b.avg_cost != 0, b.movements != 0),
        ),
    ).subquery("mismatching")
    rows = (
        await session.execute(select(mismatching).order_by(mismatching.c[0], mismatching.c[1]))
    ).all()
    counts = (
        await session.execute(select(func.count(), func.coalesce(func.sum(ledger.c.movements), 0)))
    ).one()
    report = RebuildReport(balances=int(counts[0]), movements=int(counts[1]))
    names = ("quantity_milli", "value", "avg_cost", "movements")
    for row in rows:
        for i, name in enumerate(names):
            have = None if row[2 + i] is None else int(row[2 + i])
            want = None if row[6 + i] is None else int(row[6 + i])
            if have != want:
                report.mismatches.append((row[0], row[1], name, have, want))
    if not verify_only:
        await session.execute(delete(StockBalance))
        await session.execute(
            insert(StockBalance).from_select(
                ["branch", "sku", "quantity_milli", "value", "avg_cost", "movements"],
                select(ledger),
            )
        )
        report.rebuilt = True
    return report
