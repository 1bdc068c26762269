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

Until central has answered (the store offline after the restore) this cannot be
checked: see the README's restore section.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from nats.aio.client import Client
from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from branch_agent.db import table_of
from branch_agent.direct_sql import DirectStatement, DirectUnit, run
from branch_agent.errors import Conflict, Gone
from branch_agent.models import Counter, RestoredRecord
from protocol import masterdata as md
from protocol.masterdata import HeldRecordsReply, HeldReturn, HeldSale
from protocol.units import format_minor

__all__ = [
    "RETURN",
    "SALE",
    "fetch_held_records",
    "gone_if_restored",
    "keep_held_records",
    "refuse_if_restored",
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


async def refuse_if_restored(db: AsyncSession | DirectUnit, kind: str, till: str, key: str) -> None:
    """Raise the 409 for a sale (``kind`` "sale") or return central holds from before
    this database was restored; in the caller's transaction, before anything is written."""
    found = await _restored(db, kind, till, key)
    if found is not None:
        field, words, known = found
        raise Conflict(
            f"{words}; it is not recorded or printed again, do not charge it again",
            field=field,
            extra={"recorded_before_restore": known},
        )


async def gone_if_restored(db: AsyncSession, kind: str, till: str, key: str) -> None:
    """Raise the 410 for a look-up of such a record: the till learns it was recorded
    (and what is known of it) instead of a plain 404 that reads as never recorded."""
    found = await _restored(db, kind, till, key)
    if found is not None:
        field, words, known = found
        raise Gone(
            f"{words}; this agent no longer has its lines and payments",
            field=field,
            extra={"recorded_before_restore": known},
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
