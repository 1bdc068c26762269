"""Sales and customer returns this database lost by going back in time, as central
holds them: refused when a till retries them, and numbered past.

A database restored from a backup does not hold what was recorded after the backup.
A till that heard nothing back for such a sale retries it with the same ``sale_id``
until answered; recorded again, it would be printed again (a second fiscal receipt for
one payment) and central would refuse the second record. So when central answers the
numbering question with a start past this database's numbers, it also lists the sales
and returns it holds numbered in between (``central.services.held_records``); the agent
fetches them page by page and keeps their keys here before it takes the answer (a
crash in between asks the same question again and fetches again: storing is
idempotent). Then:

- a till's retry of one is a 409 naming ``sale_id`` (``return_id``) that gives the
  original's receipt number, shift, total and fiscal number: nothing is recorded or
  printed, the till stops retrying, the cashier knows the customer paid once;
- every till's receipt and return numbers go on past the highest central holds, so a
  shift open in the backup does not give a number twice.

- ``GET`` of such a sale (return) is a 410 naming it with the same words: this agent
  no longer has it, central does.

Until central has answered (the store offline after the restore, the restore hold
expired) this cannot be checked: a till's retry is then recorded and printed again.
So in the transaction that takes central's answer the agent compares the list with
what it holds (``flag_recorded_again``): each sale or return central listed that this
database recorded again (same till and ``sale_id`` / ``return_id``) is flagged on its
row, once, with the second record beside it: the store manager refunds the second
charge (see the README's restore section). Central dead-letters the second record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

import msgspec
from nats.aio.client import Client
from sqlalchemy import bindparam, exists, func, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from branch_agent.db import table_of
from branch_agent.direct_sql import DirectStatement, DirectUnit, run
from branch_agent.errors import Conflict, Gone, NotFound, Rejected
from branch_agent.models import (
    Counter,
    CustomerReturn,
    OutboxEvent,
    RestoredRecord,
    Sale,
    utcnow,
)
from protocol import masterdata as md
from protocol.masterdata import HeldRecordsReply, HeldReturn, HeldSale
from protocol.units import format_minor

__all__ = [
    "RETURN",
    "SALE",
    "RecordedAgainOut",
    "fetch_held_records",
    "flag_recorded_again",
    "gone_if_restored",
    "keep_held_records",
    "recorded_again",
    "recorded_again_line",
    "refuse_if_restored",
    "settle_recorded_again",
    "unchecked_since",
]

SALE = "sale"
RETURN = "return"

_records = table_of(RestoredRecord)
_counters = table_of(Counter)
_FIND = DirectStatement(
    select(
        RestoredRecord.number,
        RestoredRecord.shift_id,
        RestoredRecord.total,
        RestoredRecord.fiscal_number,
    ).where(
        RestoredRecord.kind == bindparam("kind"),
        RestoredRecord.till == bindparam("till"),
        RestoredRecord.record_id == bindparam("record_id"),
    )
)


async def _restored(
    db: AsyncSession | DirectUnit, kind: str, till: str, key: str
) -> tuple[str, str, dict[str, object]] | None:
    """(field, the words, what is known) of a sale (``kind`` "sale") or return central
    holds from before this database was restored; None for any other."""
    rows = await run(db, _FIND, {"kind": kind, "till": till, "record_id": key})
    if not rows:
        return None
    number, shift_id, total, fiscal_number = rows[0]
    field, what = ("sale_id", "sale") if kind == SALE else ("return_id", "return")
    fiscal = f", fiscal number {fiscal_number}" if fiscal_number else ", not fiscalized"
    words = (
        f"{what} {key} was recorded before this agent's database was restored from a backup"
        f" ({what} number {number} of shift {shift_id}, total {format_minor(total)}{fiscal}):"
        " central holds it"
    )
    known: dict[str, object] = {
        field: key,
        "till": till,
        ("receipt_number" if kind == SALE else "return_number"): number,
        "shift_id": shift_id,
        "total": total,
        "fiscal_number": fiscal_number,
    }
    return field, words, known


async def _raise_if_restored(
    db: AsyncSession | DirectUnit,
    kind: str,
    till: str,
    key: str,
    error: type[Conflict | Gone],
    then: str,
) -> None:
    found = await _restored(db, kind, till, key)
    if found is not None:
        field, words, known = found
        raise error(f"{words}; {then}", field=field, extra={"recorded_before_restore": known})


async def refuse_if_restored(db: AsyncSession | DirectUnit, kind: str, till: str, key: str) -> None:
    """Raise the 409 for a sale (``kind`` "sale") or return central holds from before
    this database was restored; in the caller's transaction, before anything is written."""
    await _raise_if_restored(
        db, kind, till, key, Conflict, "it is not recorded or printed again, do not charge it again"
    )


async def gone_if_restored(db: AsyncSession, kind: str, till: str, key: str) -> None:
    """Raise the 410 for a look-up of such a record: the till learns it was recorded
    (and what is known of it) instead of a plain 404 that reads as never recorded."""
    await _raise_if_restored(
        db, kind, till, key, Gone, "this agent no longer has its lines and payments"
    )


def _rows(page: HeldRecordsReply) -> Iterable[dict[str, object]]:
    held: list[tuple[str, HeldSale | HeldReturn, str, int]] = [
        (SALE, s, s.sale_id, s.receipt_number) for s in page.sales
    ]
    held += [(RETURN, r, r.return_id, r.return_number) for r in page.returns]
    for kind, record, key, number in held:
        yield {
            "kind": kind,
            "till": record.till,
            "record_id": key,
            "seq": record.seq,
            "number": number,
            "shift_id": record.shift_id,
            "total": record.total,
            "fiscal_number": record.fiscal_number,
        }


async def keep_held_records(session: AsyncSession, page: HeldRecordsReply) -> None:
    """Store one page (again: nothing changes) and raise each till's receipt and
    return counters to its highest number there; in the caller's transaction."""
    rows = list(_rows(page))
    if not rows:
        return
    await session.execute(sqlite_insert(_records).on_conflict_do_nothing(), rows)
    highest: dict[str, int] = {}
    for row in rows:
        name = f"{'receipt' if row['kind'] == SALE else 'return'}_number:{row['till']}"
        number = row["number"]
        assert isinstance(number, int)
        highest[name] = max(highest.get(name, 0), number)
    for name, number in highest.items():
        # The counter holds the last number given: the next is one past central's.
        upsert = sqlite_insert(_counters).values(name=name, value=number)
        await session.execute(
            upsert.on_conflict_do_update(
                index_elements=["name"],
                set_={"value": func.max(_counters.c.value, upsert.excluded.value)},
            )
        )


async def fetch_held_records(
    nc: Client,
    branch: str,
    after: int,
    through: int,
    keep: Callable[[HeldRecordsReply], Awaitable[None]],
    *,
    timeout_s: float,
) -> int:
    """Ask central for every page of the records numbered in (after, through] and
    ``keep`` each; how many. Raises when central does not answer (asked again later)."""
    count = 0
    while True:
        request = md.HeldRecordsRequest(branch=branch, after_seq=after, through_seq=through)
        msg = await nc.request(
            md.snapshot_request_subject(branch), md.encode_snapshot_rpc(request), timeout=timeout_s
        )
        page = md.decode_held_records_reply(msg.data)
        if page.error:
            raise RuntimeError(f"central did not list the records the restore lost: {page.error}")
        await keep(page)
        count += len(page.sales) + len(page.returns)
        if page.done or page.next_after_seq <= after:
            return count
        after = page.next_after_seq


class RecordedAgainOut(msgspec.Struct, kw_only=True):
    """A sale (``kind`` "sale", ``record_id`` its ``sale_id``) or customer return
    ("return", its ``return_id``) central holds from before this database was restored
    and that this database recorded again, unchecked: the customer may have been
    charged (refunded) twice. ``number`` is the receipt (return) number."""

    kind: str
    till: str
    record_id: str
    # The original, as central holds it (its event number there).
    number: int
    shift_id: str
    total: int
    fiscal_number: str | None
    seq: int
    # The second record, as this agent holds it (event_seq: None until numbered).
    again_number: int
    again_shift_id: str
    again_total: int
    again_fiscal_number: str | None
    again_seq: int | None
    found_at: datetime
    # Settled by the store manager (``settle_recorded_again``); None while open.
    settled_at: datetime | None = None
    settled_by: str = ""
    settled_note: str = ""


def recorded_again_line(r: RecordedAgainOut) -> str:
    """One flagged record in words, for the status and the log."""
    what = "receipt" if r.kind == SALE else "return"

    def fiscal(number: str | None) -> str:
        return f"fiscal number {number}" if number else "not fiscalized"

    return (
        f"{r.till} {r.kind} {r.record_id}: recorded again as {what} {r.again_number} of "
        f"shift {r.again_shift_id}, total {format_minor(r.again_total)}, "
        f"{fiscal(r.again_fiscal_number)}; central holds {what} {r.number} of shift "
        f"{r.shift_id}, total {format_minor(r.total)}, {fiscal(r.fiscal_number)}: "
        + (
            "the customer may have been charged twice, refund the second receipt"
            if r.kind == SALE
            else "the customer may have been refunded twice"
        )
    )


def _second_records() -> Iterable[
    tuple[
        str,
        type[Sale] | type[CustomerReturn],
        InstrumentedAttribute[str],
        InstrumentedAttribute[int],
    ]
]:
    """Where a record central listed could be held here too: (kind, table, its id, its
    number)."""
    yield SALE, Sale, Sale.sale_id, Sale.receipt_number
    yield RETURN, CustomerReturn, CustomerReturn.return_id, CustomerReturn.return_number


async def flag_recorded_again(session: AsyncSession) -> list[RecordedAgainOut]:
    """Flag each record central listed that this database holds a record of too (the
    same till and id: a till's retry taken before the list came); those flagged now.
    In the caller's transaction (the one that takes central's answer), so a crash
    before its commit asks central again and flags then: each is flagged once."""
    now = utcnow()
    found: list[RecordedAgainOut] = []
    for kind, model, key, number in _second_records():
        rows = await session.execute(
            select(RestoredRecord, number, model.shift_id, model.total, model.fiscal_number)
            .add_columns(OutboxEvent.seq)
            .join(model, (model.till == RestoredRecord.till) & (key == RestoredRecord.record_id))
            .outerjoin(OutboxEvent, OutboxEvent.event_id == model.event_id)
            .where(RestoredRecord.kind == kind, RestoredRecord.again_at.is_(None))
            .order_by(model.id)
        )
        for record, again_number, shift_id, total, fiscal_number, seq in rows:
            record.again_at = now
            record.again_number = again_number
            record.again_shift_id = shift_id
            record.again_total = total
            record.again_fiscal_number = fiscal_number
            record.again_seq = seq
            found.append(_out(record))
    return found


def _out(record: RestoredRecord) -> RecordedAgainOut:
    assert record.again_at is not None
    return RecordedAgainOut(
        kind=record.kind,
        till=record.till,
        record_id=record.record_id,
        number=record.number,
        shift_id=record.shift_id,
        total=record.total,
        fiscal_number=record.fiscal_number,
        seq=record.seq,
        again_number=record.again_number or 0,
        again_shift_id=record.again_shift_id or "",
        again_total=record.again_total or 0,
        again_fiscal_number=record.again_fiscal_number,
        again_seq=record.again_seq,
        found_at=record.again_at,
        settled_at=record.settled_at,
        settled_by=record.settled_by or "",
        settled_note=record.settled_note or "",
    )


async def recorded_again(
    session: AsyncSession, *, open_only: bool = False
) -> list[RecordedAgainOut]:
    """Every record flagged by ``flag_recorded_again`` (``open_only``: those the manager
    has not settled), in the order found (then recorded)."""
    stmt = select(RestoredRecord).where(RestoredRecord.again_at.is_not(None))
    if open_only:
        stmt = stmt.where(RestoredRecord.settled_at.is_(None))
    rows = await session.scalars(
        stmt.order_by(
            RestoredRecord.again_at,
            RestoredRecord.again_seq,
            RestoredRecord.till,
            RestoredRecord.record_id,
        )
    )
    return [_out(r) for r in rows]


async def settle_recorded_again(
    session: AsyncSession, kind: str, till: str, record_id: str, settled_by: str, note: str
) -> RecordedAgainOut:
    """The store manager settles a flagged record (the second charge refunded, or found
    to be none): it leaves the status and the start's log, and stays listed with who
    settled it, when and why. The same settlement again is answered as it is; another
    one of a settled record is a 409, nothing changed."""
    settled_by, note = settled_by.strip(), note.strip()
    blank = [
        (name, f"{name} must not be blank")
        for name, v in (("settled_by", settled_by), ("note", note))
        if not v
    ]
    if blank:
        raise Rejected(blank[0][1], field=blank[0][0], fields=tuple(blank))
    record = await session.get(RestoredRecord, (kind, till, record_id))
    if record is None or record.again_at is None:
        raise NotFound(
            f"no {kind} {record_id} of till {till} was recorded again after a restore",
            field="record_id",
        )
    if record.settled_at is None:
        record.settled_at, record.settled_by, record.settled_note = utcnow(), settled_by, note
    elif (record.settled_by, record.settled_note) != (settled_by, note):
        raise Conflict(
            f"{kind} {record_id} of till {till} was settled by {record.settled_by} at"
            f" {record.settled_at.isoformat(timespec='seconds')}: {record.settled_note}",
            field="record_id",
        )
    return _out(record)


async def unchecked_since(session: AsyncSession, since: datetime) -> int:
    """How many sales and returns this database recorded since ``since`` (the restore)
    that central did not list: taken unchecked, any of them may be a till's retry of
    a sale central never received (``held_unknown``): the agent cannot tell."""
    count = 0
    for kind, model, key, _ in _second_records():
        listed = exists().where(
            RestoredRecord.kind == kind,
            RestoredRecord.till == model.till,
            RestoredRecord.record_id == key,
        )
        count += (
            await session.scalar(
                select(func.count()).select_from(model).where(model.created_at >= since, ~listed)
            )
            or 0
        )
    return count
