"""Stock effects of sales, customer returns and stock documents: the ledger and balances.

Movements of one batch are applied in (branch, seq, line) order. The balances they
touch are locked first, in (branch, sku) order (``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite has one writer anyway), so concurrent workers neither lose an
update nor deadlock on each other; then the ledger rows go in with one COPY and the
balances are written back with one executemany.

Valuation: moving average cost per branch and product. Incoming goods with a cost
(goods receipts, transfers in) add ``quantity x cost`` to the stock value; incoming
goods without one (customer returns, stocktake surplus) come in at the current
average; outgoing goods leave at the average (the proportional share of the value,
so selling everything leaves exactly zero). While stock is zero or negative the last
average is kept; a sale is never refused, it is flagged when it drives stock negative.

Goods with a cost arriving on a negative balance first revalue the units they cover
(sold before they were received, at whatever average there was, 0 if none) at the
incoming cost: a ``cost_correction`` ledger row of quantity 0 whose value is the
difference, charged to the cost of goods sold (the gross margin report adds it). So
the goods received stay at their invoice value and the stock after them is at their
cost, not blended with the units that left at the old average. Goods without a cost
of their own (a stocktake surplus, a customer return) covering negative units do the
same at the average: units sold at 0 before the first receipt, left uncovered by it,
would otherwise blend with the surplus (2 coffees at an average of 18.00 where they
cost 4.50). With no average yet (never received) there is nothing to revalue at.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import bindparam, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from central.ingest.bulk import (
    Stage,
    dialect_insert,
    fetch_records,
    insert_tuples,
    is_postgresql,
    table_of,
)
from central.ingest.registry import EventContext, IngestBatch, register_batch_handler
from central.ingest.transfers import (
    TRANSFER_DOC_TYPES,
    TRANSFER_HEADERS,
    lock_transfer_headers,
    transfer_ref_of,
)
from central.models import StockBalance, StockMovement, StockTransferLine
from protocol.events import CustomerReturnRecorded, ReceiptRecorded, StockDocumentPosted

__all__ = [
    "COST_CORRECTION",
    "LEDGER_SUMS",
    "LedgerSums",
    "Movement",
    "Valued",
    "apply_movement",
    "cover_correction",
    "div_half_up",
    "post_movements",
    "transfer_ref_of",
]

_KEY_CHUNK = 2000
# Key in IngestBatch.notes of the batch's ledger rows summed per event, document type
# and sku (what the summary projection needs of them): (event id, document type) ->
# (branch, local day, sku -> [quantity_milli, value]); an event has one branch and day,
# and one document type besides its cost corrections.
LEDGER_SUMS = "stock_ledger_sums"
LedgerSums = dict[tuple[uuid.UUID, str], tuple[str, date, dict[str, list[int]]]]
# Ledger document type of the revaluation of units sold below zero (see above).
COST_CORRECTION = "cost_correction"
# Ledger document types of sales and customer returns (not stock documents).
_SALE_DOC_TYPES = frozenset({"sale", "customer_return"})


def div_half_up(numerator: int, denominator: int) -> int:
    """Integer division rounded half away from zero (denominator > 0)."""
    assert denominator > 0
    if numerator >= 0:
        return (2 * numerator + denominator) // (2 * denominator)
    return -((-2 * numerator + denominator) // (2 * denominator))


@dataclass(slots=True)
class Movement:
    branch: str
    sku: str
    quantity_milli: int
    # Cost per whole unit when the document carries one; None: at moving average.
    unit_cost: int | None
    doc_type: str
    doc_ref: str
    event_id: uuid.UUID
    line_no: int
    occurred_at: datetime
    local_date: date
    # Value of incoming goods when it is known as a whole (a transfer received: its
    # share of what left the sender); None: quantity x unit_cost (or the average).
    value: int | None = None


@dataclass(slots=True)
class Valued:
    unit_cost: int
    value: int
    quantity_after: int
    value_after: int
    avg_cost_after: int
    # The cost correction posted just before this movement, if it covered negative stock.
    correction: Valued | None = None

    @property
    def negative(self) -> bool:
        return self.quantity_after < 0


def apply_movement(
    quantity: int,
    value: int,
    avg_cost: int,
    delta_milli: int,
    unit_cost: int | None,
    in_value: int | None = None,
) -> Valued:
    """Value one movement against a balance; returns the movement's cost and the new balance.

    ``in_value``: the value of incoming goods when known as a whole (``unit_cost`` is
    then only what the ledger shows per unit); rounding a unit cost first and
    multiplying after would change the value by the rounding times the quantity.

    Invariant (what the rebuild checks): ``value_after == value + result.value``.
    """
    if delta_milli >= 0:
        cost = avg_cost if unit_cost is None else unit_cost
        moved = div_half_up(delta_milli * cost, 1000) if in_value is None else in_value
    else:
        out = -delta_milli
        cost = avg_cost
        if quantity > 0 and out <= quantity:
            moved = -value if out == quantity else -div_half_up(value * out, quantity)
        elif quantity > 0:
            moved = -value - div_half_up((out - quantity) * avg_cost, 1000)
        else:
            moved = -div_half_up(out * avg_cost, 1000)
    quantity_after = quantity + delta_milli
    value_after = value + moved
    if quantity_after > 0:
        avg_after = div_half_up(value_after * 1000, quantity_after)
    elif delta_milli > 0 and unit_cost is not None:
        avg_after = unit_cost
    else:
        avg_after = avg_cost
    return Valued(cost, moved, quantity_after, value_after, avg_after)


def cover_correction(
    quantity: int,
    value: int,
    delta_milli: int,
    unit_cost: int | None,
    in_value: int | None,
    avg_cost: int = 0,
) -> int:
    """The revaluation of the units incoming goods cover on a negative balance: their
    share of the balance's value brought to the incoming cost (``unit_cost``, or the
    average ``avg_cost`` for goods without a cost of their own).

    Added to the balance before the incoming movement (same arguments as
    :func:`apply_movement`), it leaves the stock after that movement at the incoming
    cost when all the negative units are covered, and the rest of a negative balance at
    its own cost per unit when not. 0 when there is nothing to revalue.
    """
    cost = avg_cost if unit_cost is None else unit_cost
    if delta_milli <= 0 or quantity >= 0 or (unit_cost is None and avg_cost <= 0):
        return 0
    covered = min(delta_milli, -quantity)
    incoming = div_half_up(delta_milli * cost, 1000) if in_value is None else in_value
    covered_in = (
        incoming if covered == delta_milli else div_half_up(incoming * covered, delta_milli)
    )
    share = value if covered == -quantity else div_half_up(value * covered, -quantity)
    # The covered units hold -covered_in at the incoming cost, ``share`` now.
    return -covered_in - share


# The batch's keys and new balances, COPYed (see Stage): arrays of ~13,000 keys cost
# several times as much to send.
_KEYS_STAGE = Stage("ingest_balance_keys", (("branch", "text"), ("sku", "text")))
_VALUES_STAGE = Stage(
    "ingest_balance_values",
    (
        ("branch", "text"),
        ("sku", "text"),
        ("q", "bigint"),
        ("v", "bigint"),
        ("a", "bigint"),
        ("m", "bigint"),
    ),
)
_PG_ENSURE_STAGED = text(
    "INSERT INTO stock_balances (branch, sku, quantity_milli, value, avg_cost, movements) "
    f"SELECT k.branch, k.sku, 0, 0, 0, 0 FROM {_KEYS_STAGE.name} AS k "
    "ORDER BY k.branch, k.sku ON CONFLICT (branch, sku) DO NOTHING"
)
_PG_LOCK_STAGED = (
    "SELECT t.branch, t.sku, t.quantity_milli, t.value, t.avg_cost, t.movements "
    f"FROM stock_balances AS t JOIN {_KEYS_STAGE.name} AS k "
    "ON t.branch = k.branch AND t.sku = k.sku "
    "ORDER BY t.branch, t.sku FOR UPDATE OF t"
)
_PG_WRITE_STAGED = text(
    "UPDATE stock_balances AS t SET quantity_milli = u.q, value = u.v, avg_cost = u.a, "
    f"movements = u.m FROM {_VALUES_STAGE.name} AS u "
    "WHERE t.branch = u.branch AND t.sku = u.sku"
)


async def _lock_balances(
    session: AsyncSession, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], list[int]]:
    """Create missing balances, then lock all of them, in (branch, sku) order.

    Each balance is a plain ``[quantity_milli, value, avg_cost, movements]`` list:
    thousands of ORM objects per batch cost more than the SQL around them.
    """
    if is_postgresql(session):
        # Missing ones created first, then every key locked, both in key order (locking
        # the existing ones first and creating the rest after let two workers that
        # both met new keys deadlock).
        await _KEYS_STAGE.fill(session, keys)
        await session.execute(_PG_ENSURE_STAGED)
        rows = await fetch_records(session, _PG_LOCK_STAGED)
        return {(r[0], r[1]): [r[2], r[3], r[4], r[5]] for r in rows}
    table = table_of(StockBalance)
    await session.execute(
        dialect_insert(session, table).on_conflict_do_nothing(index_elements=["branch", "sku"]),
        [
            {"branch": b, "sku": s, "quantity_milli": 0, "value": 0, "avg_cost": 0}
            | {"movements": 0}
            for b, s in keys
        ],
    )
    locked: dict[tuple[str, str], list[int]] = {}
    for start in range(0, len(keys), _KEY_CHUNK):
        chunk = keys[start : start + _KEY_CHUNK]
        for r in await session.execute(
            select(
                StockBalance.branch,
                StockBalance.sku,
                StockBalance.quantity_milli,
                StockBalance.value,
                StockBalance.avg_cost,
                StockBalance.movements,
            ).where(tuple_(StockBalance.branch, StockBalance.sku).in_(chunk))
        ):
            locked[(r[0], r[1])] = [r[2], r[3], r[4], r[5]]
    return locked


async def _write_balances(
    session: AsyncSession, keys: list[tuple[str, str]], balances: dict[tuple[str, str], list[int]]
) -> None:
    rows = [balances[k] for k in keys]
    if is_postgresql(session):
        await _VALUES_STAGE.fill(
            session, [(k[0], k[1], r[0], r[1], r[2], r[3]) for k, r in zip(keys, rows, strict=True)]
        )
        await session.execute(_PG_WRITE_STAGED)
        return
    table = table_of(StockBalance)
    await session.execute(
        update(table)
        .where(table.c.branch == bindparam("k_branch"), table.c.sku == bindparam("k_sku"))
        .values(
            quantity_milli=bindparam("v_quantity"),
            value=bindparam("v_value"),
            avg_cost=bindparam("v_avg"),
            movements=bindparam("v_movements"),
        ),
        [
            {
                "k_branch": k[0],
                "k_sku": k[1],
                "v_quantity": r[0],
                "v_value": r[1],
                "v_avg": r[2],
                "v_movements": r[3],
            }
            for k, r in zip(keys, rows, strict=True)
        ],
    )


async def _sent_costs(
    session: AsyncSession, refs: set[str]
) -> dict[tuple[str, str], tuple[int, int]]:
    """(quantity_milli, value) with which already-stored outbound transfers left the sender."""
    if not refs:
        return {}
    rows = await session.execute(
        select(
            StockTransferLine.transfer_ref,
            StockTransferLine.sku,
            StockTransferLine.sent_milli,
            StockTransferLine.sent_value,
        ).where(StockTransferLine.transfer_ref.in_(refs), StockTransferLine.sent_milli > 0)
    )
    return {(r.transfer_ref, r.sku): (r.sent_milli, r.sent_value) for r in rows}


_LEDGER_COLUMNS = (
    "branch",
    "sku",
    "doc_type",
    "doc_ref",
    "event_id",
    "line_no",
    "quantity_milli",
    "unit_cost",
    "value",
    "quantity_after",
    "value_after",
    "avg_cost_after",
    "occurred_at",
    "local_date",
)


async def post_movements(
    session: AsyncSession,
    movements: Sequence[Movement],
    *,
    locked: dict[tuple[str, str], list[int]] | None = None,
) -> list[Valued]:
    """Append movements to the ledger and update the balances; results in input order
    (a movement's cost correction, when it needed one, in its ``correction``).

    ``locked``: the balances of every movement's key, already locked by the caller
    (see :func:`_lock_balances`); they are updated in place."""
    if not movements:
        return []
    keys = sorted({(m.branch, m.sku) for m in movements})
    balances = locked if locked is not None else await _lock_balances(session, keys)
    results: list[Valued] = []
    # Ledger rows as tuples in _LEDGER_COLUMNS order (COPY takes them as they are).
    ledger: list[tuple[Any, ...]] = []
    for m in movements:
        bal = balances[(m.branch, m.sku)]
        corrected: Valued | None = None
        # Checked inline first: most movements are sales (outgoing), 16,000 a batch.
        correction = (
            cover_correction(bal[0], bal[1], m.quantity_milli, m.unit_cost, m.value, bal[2])
            if m.quantity_milli > 0 and bal[0] < 0
            else 0
        )
        if correction:
            bal[1] += correction
            bal[3] += 1
            cost = bal[2] if m.unit_cost is None else m.unit_cost
            corrected = Valued(cost, correction, bal[0], bal[1], bal[2])
            ledger.append(
                (
                    m.branch,
                    m.sku,
                    COST_CORRECTION,
                    m.doc_ref,
                    m.event_id,
                    m.line_no,
                    0,
                    corrected.unit_cost,
                    correction,
                    bal[0],
                    bal[1],
                    bal[2],
                    m.occurred_at,
                    m.local_date,
                )
            )
        valued = apply_movement(bal[0], bal[1], bal[2], m.quantity_milli, m.unit_cost, m.value)
        valued.correction = corrected
        bal[0] = valued.quantity_after
        bal[1] = valued.value_after
        bal[2] = valued.avg_cost_after
        bal[3] += 1
        results.append(valued)
        ledger.append(
            (
                m.branch,
                m.sku,
                m.doc_type,
                m.doc_ref,
                m.event_id,
                m.line_no,
                m.quantity_milli,
                valued.unit_cost,
                valued.value,
                valued.quantity_after,
                valued.value_after,
                valued.avg_cost_after,
                m.occurred_at,
                m.local_date,
            )
        )
    await insert_tuples(session, table_of(StockMovement), _LEDGER_COLUMNS, ledger)
    await _write_balances(session, keys, balances)
    return results


def _batch_keys(contexts: Sequence[EventContext]) -> list[tuple[str, str]]:
    """The (branch, sku) of every stock movement of the batch, in key order."""
    keys: set[tuple[str, str]] = set()
    for ctx in contexts:
        body = ctx.envelope.body
        if isinstance(body, ReceiptRecorded | CustomerReturnRecorded | StockDocumentPosted):
            branch = ctx.envelope.branch
            keys.update((branch, line.sku) for line in body.lines)
    return sorted(keys)


def _sums_of(sums: LedgerSums, movement: Movement, doc_type: str) -> dict[str, list[int]]:
    entry = sums.get((movement.event_id, doc_type))
    if entry is None:
        entry = sums[(movement.event_id, doc_type)] = (movement.branch, movement.local_date, {})
    return entry[2]


def _add_sum(per_sku: dict[str, list[int]], sku: str, quantity_milli: int, value: int) -> None:
    summed = per_sku.get(sku)
    if summed is None:
        per_sku[sku] = [quantity_milli, value]
    else:
        summed[0] += quantity_milli
        summed[1] += value


@dataclass(slots=True)
class _EarlyReceipt:
    """A transfer's receipt valued before the transfer's out reached central."""

    branch: str
    document_id: str
    occurred_at: datetime
    local_date: date
    # sku -> (quantity_milli received, value it came in at), of the skus nothing of
    # which had been sent (at central) when it came in.
    lines: dict[str, tuple[int, int]]


async def _early_receipts(
    session: AsyncSession,
    headers: dict[str, dict[str, Any]],
    outs: dict[str, tuple[str, str, str | None]],
) -> dict[str, _EarlyReceipt]:
    """The receipts, by ref, that the transfer outs of this batch (``outs``: ref ->
    (branch, document id, receiver named) of the batch's first out) will revalue: the
    transfer's receipt by the branch the out names, stored before any of the out's
    goods of a sku were (the out not at central, or only other parts of it)."""
    found: dict[str, dict[str, Any]] = {}
    for ref, (branch, document_id, receiver) in outs.items():
        t = headers.get(ref)
        if t is None or t["in_document_id"] is None or t["in_event_id"] is None:
            continue
        if t["out_document_id"] is not None and (t["from_branch"], t["out_document_id"]) != (
            branch,
            document_id,
        ):
            continue  # the transfer's out is another document: this one is sent twice
        if t["in_branch"] == receiver:
            found[ref] = t
    if not found:
        return {}
    line_table = table_of(StockTransferLine)
    lines: dict[str, dict[str, tuple[int, int]]] = {}
    for ref, sku, quantity, value in await session.execute(
        select(
            line_table.c.transfer_ref,
            line_table.c.sku,
            line_table.c.received_milli,
            line_table.c.received_value,
        ).where(
            line_table.c.transfer_ref.in_(sorted(found)),
            line_table.c.sent_milli == 0,
            line_table.c.received_milli > 0,
        )
    ):
        lines.setdefault(ref, {})[sku] = (int(quantity), int(value))
    if not lines:
        return {}
    # The receipt's day and time: its (first part's) ledger rows'.
    event_ids = {found[ref]["in_event_id"] for ref in lines}
    moments = {
        r[0]: (r[1], r[2])
        for r in await session.execute(
            select(StockMovement.event_id, StockMovement.occurred_at, StockMovement.local_date)
            .where(StockMovement.event_id.in_(event_ids))
            .distinct()
        )
    }
    early: dict[str, _EarlyReceipt] = {}
    for ref, per_sku in lines.items():
        t = found[ref]
        moment = moments.get(t["in_event_id"])
        if moment is not None:
            early[ref] = _EarlyReceipt(
                t["in_branch"], t["in_document_id"], moment[0], moment[1], per_sku
            )
    return early


def _revaluations(
    early: dict[str, _EarlyReceipt],
    sent_costs: dict[tuple[str, str], tuple[int, int]],
    posted_outs: dict[str, tuple[uuid.UUID, dict[str, int]]],
    balances: dict[tuple[str, str], list[int]],
) -> list[Movement]:
    """Receipts valued before their out arrived, brought to what the sender let go.

    The difference is a ``transfer_in`` row of quantity 0 on the receipt's day, so the
    transfer moves the sender's value whichever side central saw first. The share of
    it that belongs to units no longer on hand (sold, written off: they left at the
    old cost) is cost of goods sold: a ``cost_correction`` row taking it out again.
    ``posted_outs``: ref -> (event id of the out, sku -> its first line number).
    """
    out: list[Movement] = []
    for ref, receipt in early.items():
        posted = posted_outs.get(ref)
        if posted is None:
            continue
        event_id, line_nos = posted
        for sku, (received, booked) in receipt.lines.items():
            sent_milli, sent_value = sent_costs.get((ref, sku), (0, 0))
            if sent_milli <= 0 or sku not in line_nos:
                continue
            difference = div_half_up(sent_value * received, sent_milli) - booked
            if not difference:
                continue
            on_hand = balances[(receipt.branch, sku)][0]
            if on_hand >= received:
                kept = difference
            else:
                kept = div_half_up(difference * on_hand, received) if on_hand > 0 else 0
            for doc_type, value in (
                ("transfer_in", difference),
                (COST_CORRECTION, kept - difference),
            ):
                if value:
                    out.append(
                        Movement(
                            branch=receipt.branch,
                            sku=sku,
                            quantity_milli=0,
                            unit_cost=div_half_up(sent_value * 1000, sent_milli),
                            doc_type=doc_type,
                            doc_ref=receipt.document_id,
                            event_id=event_id,
                            line_no=line_nos[sku],
                            occurred_at=receipt.occurred_at,
                            local_date=receipt.local_date,
                            value=value,
                        )
                    )
    return out


async def _revalue_lines(
    session: AsyncSession, early: dict[str, _EarlyReceipt], revalued: Sequence[Movement]
) -> None:
    """The transfers' received values follow their receipts' revaluation."""
    # Document ids are the branch's own: two receivers may use the same one.
    ref_of = {(receipt.branch, receipt.document_id): ref for ref, receipt in early.items()}
    rows = [
        {"k_ref": ref_of[(m.branch, m.doc_ref)], "k_sku": m.sku, "v_difference": m.value}
        for m in revalued
        if m.doc_type == "transfer_in"
    ]
    if rows:
        line_table = table_of(StockTransferLine)
        await session.execute(
            update(line_table)
            .where(
                line_table.c.transfer_ref == bindparam("k_ref"),
                line_table.c.sku == bindparam("k_sku"),
            )
            .values(received_value=line_table.c.received_value + bindparam("v_difference")),
            rows,
        )


@register_batch_handler(ReceiptRecorded, CustomerReturnRecorded, StockDocumentPosted, stage=10)
async def apply_stock(
    session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
) -> None:
    """Post the batch's stock movements; leave per-line values and negative flags in notes.

    A transfer in is received at the value with which its transfer out left the sender.
    When the out is in the same batch, the in waits for it: the batch is posted in
    rounds, each branch's events in order up to the first transfer in whose out (of
    this batch) has not been valued yet; the outs valued in a round value the ins of
    the next. A cycle (two branches each receiving what the other sends later in the
    batch) is broken by taking the earliest waiting in at what is known, as when its
    out has not reached central at all. An in that central received before its out (in
    an earlier batch: the sender was offline) is revalued when the out is posted (see
    :func:`_revaluations`).
    """
    transfer_docs = [
        (ctx, body)
        for ctx in contexts
        if isinstance(body := ctx.envelope.body, StockDocumentPosted)
        and body.doc_type in TRANSFER_DOC_TYPES
    ]
    # Locked before any balance (see central.ingest.transfers); the matching takes them.
    headers = await lock_transfer_headers(
        session, {transfer_ref_of(body) for _, body in transfer_docs}
    )
    if headers:
        batch.notes[TRANSFER_HEADERS] = headers
    inbound_refs = {
        transfer_ref_of(body) for _, body in transfer_docs if body.doc_type == "transfer_in"
    }
    # The batch's first out of each ref: (branch, document, receiver it names).
    first_outs: dict[str, tuple[str, str, str | None]] = {}
    for ctx, body in transfer_docs:
        if body.doc_type == "transfer_out":
            first_outs.setdefault(
                transfer_ref_of(body),
                (ctx.envelope.branch, body.document_id, body.counterpart_branch),
            )
    early = await _early_receipts(session, headers, first_outs)
    sent_costs = await _sent_costs(session, inbound_refs)
    # The transfer's out of each ref an in of the batch quotes or an early receipt
    # waits for, (branch, document): the one central holds, else the batch's first, as
    # the transfer matching files them; another out under the ref is a discrepancy
    # (sent twice) and values nothing.
    tracked = inbound_refs | early.keys()
    real_out = {
        ref: (str(t["from_branch"]), str(t["out_document_id"]))
        for ref, t in headers.items()
        if ref in tracked and t["out_document_id"] is not None and t["from_branch"] is not None
    }
    for ref, (branch, document_id, _) in first_outs.items():
        if ref in tracked:
            real_out.setdefault(ref, (branch, document_id))
    # Refs whose transfer out (some part of it) is in this batch and not yet posted.
    unposted_outs: dict[str, int] = {}
    for ctx, body in transfer_docs:
        if body.doc_type == "transfer_out":
            ref = transfer_ref_of(body)
            if ref in inbound_refs and real_out[ref] == (ctx.envelope.branch, body.document_id):
                unposted_outs[ref] = unposted_outs.get(ref, 0) + 1
    # Every balance of the batch locked at once, in key order, even when it is posted
    # in rounds: locking each round's keys would take them out of order across rounds
    # and let two workers deadlock.
    keys = sorted(
        set(_batch_keys(contexts))
        | {(receipt.branch, sku) for receipt in early.values() for sku in receipt.lines}
    )
    locked = await _lock_balances(session, keys) if keys else {}
    movements: list[Movement] = []
    results: list[Valued] = []
    # ref -> (event id, sku -> first line number) of the transfer's out posted here.
    posted_outs: dict[str, tuple[uuid.UUID, dict[str, int]]] = {}
    waiting = list(contexts)
    while waiting:
        now: list[EventContext] = []
        later: list[EventContext] = []
        held: set[str] = set()  # branches whose next event waits for a transfer out
        for ctx in waiting:
            body = ctx.envelope.body
            if ctx.envelope.branch in held or (
                isinstance(body, StockDocumentPosted)
                and body.doc_type == "transfer_in"
                and unposted_outs.get(transfer_ref_of(body), 0) > 0
            ):
                held.add(ctx.envelope.branch)
                later.append(ctx)
            else:
                now.append(ctx)
        if not now:
            # A cycle: nothing can go first. The earliest waiting in goes with what is
            # known (as if its out had not reached central), which may free the rest.
            now, later = later[:1], later[1:]
        round_movements = [m for ctx in now for m in _movements(ctx, sent_costs)]
        round_results = await post_movements(session, round_movements, locked=locked)
        # What the round's transfers out that an in of this batch waits for let go.
        awaited: dict[uuid.UUID, str] = {}
        for ctx in now:
            body = ctx.envelope.body
            if isinstance(body, StockDocumentPosted) and body.doc_type == "transfer_out":
                ref = transfer_ref_of(body)
                if real_out.get(ref) == (ctx.envelope.branch, body.document_id):
                    if ref in unposted_outs:
                        unposted_outs[ref] -= 1
                    awaited[ctx.envelope.event_id] = ref
        for movement, valued in zip(round_movements, round_results, strict=True):
            ref_of_out = awaited.get(movement.event_id)
            if ref_of_out is not None:
                key = (ref_of_out, movement.sku)
                sent_milli, sent_value = sent_costs.get(key, (0, 0))
                # Outgoing: negative quantity and value.
                sent_costs[key] = (sent_milli - movement.quantity_milli, sent_value - valued.value)
                _, line_nos = posted_outs.setdefault(ref_of_out, (movement.event_id, {}))
                line_nos.setdefault(movement.sku, movement.line_no)
        movements.extend(round_movements)
        results.extend(round_results)
        waiting = later
    revalued = _revaluations(early, sent_costs, posted_outs, locked)
    revalued_results = await post_movements(session, revalued, locked=locked)
    await _revalue_lines(session, early, revalued)
    values: dict[tuple[uuid.UUID, int], int] = batch.notes.setdefault("stock_values", {})
    negative: set[uuid.UUID] = batch.notes.setdefault("negative_stock", set())
    # The ledger rows just written, summed as the report projection files them, so it
    # need not read them back (see LedgerSums). Movements come event by event.
    sums: LedgerSums = batch.notes.setdefault(LEDGER_SUMS, {})
    current: uuid.UUID | None = None
    per_sku: dict[str, list[int]] = {}
    went_negative = False
    for movement, valued in zip(movements, results, strict=True):
        if movement.event_id != current:
            if went_negative and current is not None:
                negative.add(current)
            current = movement.event_id
            went_negative = False
            per_sku = _sums_of(sums, movement, movement.doc_type)
        if movement.doc_type not in _SALE_DOC_TYPES:
            # Only stock documents read their lines' values back.
            values[(movement.event_id, movement.line_no)] = valued.value
        if valued.quantity_after < 0 and movement.quantity_milli < 0:
            went_negative = True
        _add_sum(per_sku, movement.sku, movement.quantity_milli, valued.value)
        if valued.correction is not None:
            corrections = _sums_of(sums, movement, COST_CORRECTION)
            _add_sum(corrections, movement.sku, 0, valued.correction.value)
    if went_negative and current is not None:
        negative.add(current)
    # Revaluations: filed under the out's event, at the receiver on the receipt's day
    # (one receiver per out), not among the out's line values.
    for movement, valued in zip(revalued, revalued_results, strict=True):
        _add_sum(_sums_of(sums, movement, movement.doc_type), movement.sku, 0, valued.value)


def _movements(
    ctx: EventContext, sent_costs: dict[tuple[str, str], tuple[int, int]]
) -> list[Movement]:
    """The stock movements of one event (none for events that move no stock)."""
    env = ctx.envelope
    body = env.body
    branch, event_id, at, day = env.branch, env.event_id, env.occurred_at, ctx.local_date
    # Positional: keyword construction of 16,000 movements a batch showed in profiles.
    if isinstance(body, ReceiptRecorded):
        ref = body.sale_id
        return [
            Movement(
                branch,
                line.sku,
                -line.quantity_milli,
                None,
                "sale",
                ref,
                event_id,
                line.line_no,
                at,
                day,
            )
            for line in body.lines
        ]
    if isinstance(body, CustomerReturnRecorded):
        ref = body.return_id
        return [
            Movement(
                branch,
                line.sku,
                line.quantity_milli,
                None,
                "customer_return",
                ref,
                event_id,
                line.line_no,
                at,
                day,
            )
            for line in body.lines
        ]
    if not isinstance(body, StockDocumentPosted):
        return []
    ref = transfer_ref_of(body)
    out: list[Movement] = []
    for line_no, line in enumerate(body.lines, start=1):
        unit_cost = line.unit_cost if line.quantity_milli > 0 else None
        in_value: int | None = None
        sent = sent_costs.get((ref, line.sku))
        if body.doc_type == "transfer_in" and sent is not None and sent[0] > 0:
            # Received at the value with which the sender let it go, when known (a
            # cost the receiver typed does not count): its share of the sent value,
            # rounded once (all of it when all arrives), so a transfer moves value
            # between branches, creating none; the ledger's unit cost is the rounded one.
            sent_milli, sent_value = sent
            unit_cost = div_half_up(sent_value * 1000, sent_milli)
            in_value = div_half_up(sent_value * line.quantity_milli, sent_milli)
        out.append(
            Movement(
                branch=branch,
                sku=line.sku,
                quantity_milli=line.quantity_milli,
                unit_cost=unit_cost,
                doc_type=body.doc_type,
                doc_ref=body.document_id,
                event_id=event_id,
                line_no=line_no,
                occurred_at=at,
                local_date=day,
                value=in_value,
            )
        )
    return out
