"""A branch event that records again what central holds under another event (a sale or
customer return whose till id is taken, a stock document part): the dead letter says
so in words, with the stored record beside the new one, the likely cause and how to
settle it, instead of the database's unique-constraint message."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from central.models import BranchSyncState, CustomerReturn, IngestedEvent, Receipt, StockDocument
from protocol.codec import WireDecodeError, decode_envelope
from protocol.events import (
    CustomerReturnRecorded,
    EventEnvelope,
    ReceiptRecorded,
    StockDocumentPosted,
)
from protocol.units import format_minor

__all__ = ["RECORDED_AGAIN", "conflict_in_words"]

# How the letter of a till's retry recorded again by a restored agent database begins
# (``GET /api/v1/sync/branches`` counts the open ones, ``recorded_again_open``): the
# customer may have been charged twice, which a generic conflict would not say.
RECORDED_AGAIN = "a retry recorded again by a restored agent database"

_SETTLE = (
    "The record central holds stays. Replaying this letter fails the same way: discard it "
    "(`python -m central dead-letters discard ID`, or POST /api/v1/dead-letters/ID/discard); "
    "its sequence number then counts as settled (README: Dead letters)."
)


def _moment(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


async def _seq_of(session: AsyncSession, event_id: object) -> int | None:
    seq: int | None = await session.scalar(
        select(IngestedEvent.seq).where(IngestedEvent.event_id == event_id)
    )
    return seq


async def _restored_between(
    session: AsyncSession, envelope: EventEnvelope, stored_seq: int | None
) -> BranchSyncState | None:
    """The branch's state when its agent database was restored from a backup after
    the stored event was numbered and before this one (else None)."""
    state = await session.get(BranchSyncState, envelope.branch)
    restarted = state.restarted_at_seq if state is not None else None
    if (
        state is not None
        and state.restart_reason == "restored_database"
        and restarted is not None
        and (stored_seq or 0) < restarted <= envelope.seq
    ):
        return state
    return None


# What the second record may have done, by what it records.
_TWICE = {
    "sale": "the customer may have been charged twice",
    "return": "the customer may have been refunded twice",
    "stock document": "the stock may have been booked twice",
}


def _restore_cause(state: BranchSyncState, what: str) -> str:
    at = f" at {_moment(state.restarted_at)}" if state.restarted_at else ""
    second = {"sale": "receipt", "return": "refund"}.get(what, "")
    correct = (
        f"if the till's fiscal printer printed it again, correct the second fiscal {second} "
        "at the store (the agent lists it: GET /api/v1/manager/sales/recorded-again)"
        if second
        else "correct the stock at the store"
    )
    return (
        f"the agent database was restored from a backup{at} (numbered again from "
        f"{state.restarted_at_seq}) that did not hold it, and recorded the till's retry of "
        f"the {what} as a new one before central could list what the restore lost (the "
        f"store's link was down): {correct}"
    )


_OTHER_CAUSE = (
    "the branch recorded one {what} id twice (a till reusing its ids, or an agent "
    "database put back in service)"
)


class _Stored(NamedTuple):
    """The record central holds under the key an event records again, in words."""

    event_id: object
    what: str  # for the cause: "the till's retry of the {what}"
    name: str  # "sale 1/42"
    then: str  # the stored record's details, after its event number
    now: str  # the new event's details


async def conflict_in_words(session: AsyncSession, data: bytes) -> str | None:
    """The reason for a dead letter of an event refused by a unique key of the record it
    carries; None when it is none of those (the database's message is used then)."""
    try:
        envelope = decode_envelope(data)
    except WireDecodeError:
        return None
    stored = await _stored_under_key(session, envelope)
    if stored is None or stored.event_id == envelope.event_id:
        return None
    seq = await _seq_of(session, stored.event_id)
    facts = (
        f"{stored.name} of branch {envelope.branch} is already recorded at central "
        f"(event {seq}{stored.then}); this event {envelope.seq} records it again{stored.now}"
    )
    restored = await _restored_between(session, envelope, seq)
    if restored is None:
        return f"{facts}: {_OTHER_CAUSE.format(what=stored.what)}. {_SETTLE}"
    return (
        f"{RECORDED_AGAIN}: {_TWICE.get(stored.what, _TWICE['sale'])}. {facts}: "
        f"{_restore_cause(restored, stored.what)}. {_SETTLE}"
    )


async def _stored_under_key(session: AsyncSession, envelope: EventEnvelope) -> _Stored | None:
    body = envelope.body
    branch = envelope.branch
    if isinstance(body, ReceiptRecorded):
        receipt = await session.scalar(
            select(Receipt).where(
                Receipt.branch == branch, Receipt.till == body.till, Receipt.sale_id == body.sale_id
            )
        )
        if receipt is None:
            return None
        return _Stored(
            receipt.event_id,
            "sale",
            f"sale {body.till}/{body.sale_id}",
            f", receipt {receipt.receipt_number} of shift {receipt.shift_id}, total "
            f"{format_minor(receipt.total)}, fiscal number {receipt.fiscal_number or '-'}, "
            f"{_moment(receipt.occurred_at)}",
            f" (receipt {body.receipt_number} of shift {body.shift_id}, total {format_minor(body.total)}, "
            f"fiscal number {body.fiscal_number or '-'}, {_moment(envelope.occurred_at)})",
        )
    if isinstance(body, CustomerReturnRecorded):
        customer_return = await session.scalar(
            select(CustomerReturn).where(
                CustomerReturn.branch == branch,
                CustomerReturn.till == body.till,
                CustomerReturn.return_id == body.return_id,
            )
        )
        if customer_return is None:
            return None
        return _Stored(
            customer_return.event_id,
            "return",
            f"customer return {body.till}/{body.return_id}",
            f", total {format_minor(customer_return.total)}, {_moment(customer_return.occurred_at)}",
            f" (total {format_minor(body.total)}, {_moment(envelope.occurred_at)})",
        )
    if isinstance(body, StockDocumentPosted):
        document = await session.scalar(
            select(StockDocument).where(
                StockDocument.branch == branch,
                StockDocument.document_id == body.document_id,
                StockDocument.part == body.part,
            )
        )
        if document is None:
            return None
        return _Stored(
            document.event_id,
            "stock document",
            f"stock document {body.document_id} (part {body.part})",
            "",
            "",
        )
    return None
