"""Store stock: an append-only ledger, a balance projection, and the stock documents.

Every change of stock on hand is a ledger row (signed quantity) written in the
same transaction as the fact that caused it (a sale, a customer return, a posted
document) and added to ``stock_balances``; the balances can be rebuilt from the
ledger at any time (:func:`rebuild_balances`). A posted document is immutable and
goes up to central as one ``StockDocumentPosted`` event in that transaction.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import msgspec
from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from branch_agent.catalog import find_former_products, find_products
from branch_agent.db import table_of
from branch_agent.direct_sql import DirectStatement, DirectUnit, run
from branch_agent.errors import Conflict, NotFound, Rejected
from branch_agent.masterdata import known_branches
from branch_agent.models import (
    StockBalance,
    StockDocument,
    StockMove,
    StocktakeCount,
)
from branch_agent.outbox import append_event, next_counter
from branch_agent.schemas import ReasonText
from branch_agent.settings import AgentSettings
from protocol.events import StockDocumentLine, StockDocumentPosted
from protocol.limits import (
    STOCK_DOCUMENT_PART_LINES,
    Code32,
    Code64,
    NonNegativeInt64,
    Text64,
    Text200,
)
from protocol.subjects import validate_branch_code
from protocol.units import QUANTITY_HINT, format_milli, parse_milli

__all__ = [
    "REPEAT_WINDOW",
    "CountSheetIn",
    "StockDocumentIn",
    "StockDocumentOut",
    "StockService",
    "apply_moves",
    "balances",
    "rebuild_balances",
]

log = logging.getLogger(__name__)

DocType = Literal["goods_receipt", "write_off", "transfer_out", "transfer_in", "supplier_return"]
# Which way each document moves stock (stocktakes are signed per line).
_DIRECTION: dict[str, int] = {
    "goods_receipt": 1,
    "transfer_in": 1,
    "write_off": -1,
    "transfer_out": -1,
    "supplier_return": -1,
}
# Documents whose lines carry no unit cost: central values goods going out at its moving
# average, and a transfer in at the cost the sending branch's transfer out went at.
_NO_UNIT_COST = {
    "write_off": "central values a write-off at the moving average cost",
    "supplier_return": "central values a supplier return at the moving average cost",
    "transfer_out": "central values a transfer out at the moving average cost",
    "transfer_in": "central values a transfer in at the cost the sending branch sent it at",
}
# How a document type is named to people.
_WORDS = {
    "goods_receipt": "goods receipt",
    "write_off": "write-off",
    "transfer_out": "transfer out",
    "transfer_in": "transfer in",
    "supplier_return": "supplier return",
}
# A document posted without an id that has the content of one posted without an id
# this recently is taken for a repeat of it (a command run again after a timeout) and
# refused, unless posted with ``again``.
REPEAT_WINDOW = timedelta(minutes=10)
_PREFIX = {
    "goods_receipt": "GR",
    "write_off": "WO",
    "transfer_out": "TO",
    "transfer_in": "TI",
    "supplier_return": "SR",
    "stocktake": "ST",
}
# Decimal text, up to 3 decimals (thousandths); the CLI checks its lines with it too.
QUANTITY_PATTERN = r"^\d{1,7}(\.\d{1,3})?$"
Quantity = Annotated[
    str,
    msgspec.Meta(
        pattern=QUANTITY_PATTERN,
        extra={"hint": QUANTITY_HINT},
    ),
]


class StockLineIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sku: Code64
    # Decimal text in the product's unit, always positive: the document type gives the sign.
    quantity: Quantity
    # Minor units per whole unit; required on goods receipts.
    unit_cost: NonNegativeInt64 | None = None


class StockDocumentIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # The caller's id of the document: posting it again returns the original. Without
    # one the agent makes one up, and a repeat of the content within REPEAT_WINDOW is
    # refused (409) unless ``again``.
    document_id: Annotated[Code64, msgspec.Meta(min_length=1)] | None = None
    doc_type: DocType
    lines: Annotated[list[StockLineIn], msgspec.Meta(min_length=1, max_length=2000)]
    # Texts are taken stripped of surrounding blanks; one of blanks only is none.
    supplier: Text200 | None = None
    counterpart_branch: Code32 | None = None
    transfer_ref: Code64 | None = None
    reason: ReasonText | None = None
    author: Text64 = ""
    # Post it although it looks like one posted before: the same content as a document
    # posted without an id minutes ago, or a transfer in of a transfer this branch has
    # taken in already. Not part of the document (a retry with or without it is one).
    again: bool = False
    # Take out more than the branch's stock on hand of a product (a write-off, supplier
    # return or transfer out; the books are wrong). Not part of the document either.
    allow_negative: bool = False


class CountLineIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sku: Code64
    counted: Quantity


class CountSheetIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sheet: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    lines: Annotated[list[CountLineIn], msgspec.Meta(min_length=1, max_length=5000)]


class StockDocumentLineOut(msgspec.Struct, kw_only=True):
    sku: str
    quantity: str
    quantity_milli: int
    unit_cost: int | None = None
    expected_milli: int | None = None
    counted_milli: int | None = None


class StockDocumentOut(msgspec.Struct, kw_only=True):
    document_id: str
    doc_type: str
    number: str
    status: str
    supplier: str | None
    counterpart_branch: str | None
    transfer_ref: str | None
    reason: str | None
    author: str
    lines: list[StockDocumentLineOut]


class BalanceOut(msgspec.Struct, kw_only=True):
    sku: str
    quantity: str
    quantity_milli: int


async def apply_moves(
    db: AsyncSession | DirectUnit,
    moves: Iterable[tuple[str, int, int | None]],
    *,
    source: str,
    source_id: str,
) -> None:
    """Append ledger rows (sku, signed quantity_milli, unit cost) and update balances.

    Two statements whatever the number of lines (an executemany insert and an
    executemany UPSERT), so a sale's stock costs two round trips."""
    rows: list[dict[str, object]] = []
    totals: dict[str, int] = {}
    now = datetime.now(UTC)
    for sku, quantity_milli, unit_cost in moves:
        if quantity_milli == 0:
            continue
        rows.append(
            {
                "sku": sku,
                "quantity_milli": quantity_milli,
                "unit_cost": unit_cost,
                "source": source,
                "source_id": source_id,
                "created_at": now,
            }
        )
        totals[sku] = totals.get(sku, 0) + quantity_milli
    if not rows:
        return
    await run(db, _INSERT_MOVES, rows)
    await run(
        db,
        _ADD_TO_BALANCE,
        [{"sku": sku, "quantity_milli": delta} for sku, delta in totals.items()],
    )


# Core statements built once: on the sale path the ORM's bulk machinery and a fresh
# statement per call cost more than SQLite's work.
_MOVE_COLUMNS = ("sku", "quantity_milli", "unit_cost", "source", "source_id", "created_at")
_INSERT_MOVES = DirectStatement(
    insert(table_of(StockMove)).values({c: bindparam(c) for c in _MOVE_COLUMNS}),
    table_of(StockMove),
)
_balance_upsert = sqlite_insert(table_of(StockBalance)).values(
    sku=bindparam("sku"), quantity_milli=bindparam("quantity_milli")
)
_ADD_TO_BALANCE = DirectStatement(
    _balance_upsert.on_conflict_do_update(
        index_elements=["sku"],
        set_={
            "quantity_milli": table_of(StockBalance).c.quantity_milli
            + _balance_upsert.excluded.quantity_milli
        },
    )
)


# SKUs per IN list: SQLite builds other than Debian's bind at most 32,766 parameters,
# and a whole store's stocktake can count more products than that.
_IN_CHUNK = 500


async def balances(session: AsyncSession, skus: list[str] | None = None) -> dict[str, int]:
    query = select(StockBalance.sku, StockBalance.quantity_milli)
    if skus is None:
        return {row.sku: row.quantity_milli for row in await session.execute(query)}
    found: dict[str, int] = {}
    for start in range(0, len(skus), _IN_CHUNK):
        chunk = query.where(StockBalance.sku.in_(skus[start : start + _IN_CHUNK]))
        found.update((row.sku, row.quantity_milli) for row in await session.execute(chunk))
    return found


async def rebuild_balances(session: AsyncSession) -> int:
    """Recompute every balance from the ledger (the ledger is the truth)."""
    await session.execute(delete(StockBalance))
    rows = await session.execute(
        select(StockMove.sku, func.sum(StockMove.quantity_milli)).group_by(StockMove.sku)
    )
    count = 0
    for sku, total in rows:
        session.add(StockBalance(sku=sku, quantity_milli=int(total)))
        count += 1
    return count


def _out(doc: StockDocument) -> StockDocumentOut:
    lines = [msgspec.convert(line, StockDocumentLine) for line in doc.lines]
    return StockDocumentOut(
        document_id=doc.document_id,
        doc_type=doc.doc_type,
        number=doc.number,
        status=doc.status,
        supplier=doc.supplier,
        counterpart_branch=doc.counterpart_branch,
        transfer_ref=doc.transfer_ref,
        reason=doc.reason,
        author=doc.author,
        lines=[
            StockDocumentLineOut(
                sku=line.sku,
                quantity=format_milli(line.quantity_milli),
                quantity_milli=line.quantity_milli,
                unit_cost=line.unit_cost,
                expected_milli=line.expected_milli,
                counted_milli=line.counted_milli,
            )
            for line in lines
        ],
    )


async def _weighed(
    session: AsyncSession, skus: list[str], *, takes_out: bool, at: datetime
) -> dict[str, bool | str]:
    """Per SKU: whether it is weighed (True) or counted in pieces (False), or why a
    document may not name it (text); SKUs never seen here are left out.

    Any product of the branch's assortment, priced or not (goods arrive and are counted
    before they go on sale). A product that left the assortment (removed at central,
    archived: ``find_former_products``) only for documents that take goods out and for
    stocktake counts (``takes_out``), and only when the branch has stock history of it
    (a balance, which every ledger row of it makes): its stock must be able to leave."""
    catalog = await find_products(session, skus, at=at, priced=False)
    found: dict[str, bool | str] = {sku: item.weighed for sku, item in catalog.items()}
    missing = [sku for sku in dict.fromkeys(skus) if sku not in catalog]
    if not missing:
        return found
    former = await find_former_products(session, missing)
    held = set(await balances(session, list(former))) if takes_out and former else set()
    for sku, item in former.items():
        if sku in held:
            found[sku] = item.weighed
        elif takes_out:
            found[sku] = (
                f"{sku} is not in this branch's assortment any more and the branch has no "
                "stock history of it"
            )
        else:
            found[sku] = (
                f"{sku} is not in this branch's assortment (removed or archived at head "
                "office): it cannot come in"
            )
    return found


def _text(value: str | None) -> str | None:
    """A text as the agent keeps it: stripped of surrounding blanks, None when nothing
    is left (stored before texts were stripped, a stored one is compared so too)."""
    return (value or "").strip() or None


def _normalized(doc: StockDocumentIn) -> StockDocumentIn:
    """The document with its texts stripped: " DAIRY " is DAIRY, blanks are none (a
    required one is then refused, naming it). Ids are taken as given."""
    if doc.document_id is not None and not doc.document_id.strip():
        raise Rejected("a document id of blanks only", field="document_id")
    return msgspec.structs.replace(
        doc,
        supplier=_text(doc.supplier),
        counterpart_branch=_text(doc.counterpart_branch),
        transfer_ref=_text(doc.transfer_ref),
        reason=_text(doc.reason),
        author=_text(doc.author) or "",
    )


def _difference(
    existing: StockDocument, doc: StockDocumentIn, *, author: bool = True
) -> str | None:
    """What differs between a posted document and a post of the (normalized) document
    ``doc`` (None: the same document); ``author=False`` leaves who posted it out."""
    transfer_ref = doc.transfer_ref
    if doc.doc_type == "transfer_out" and transfer_ref is None:
        transfer_ref = existing.document_id
    header = [
        ("supplier", _text(existing.supplier), doc.supplier),
        ("counterpart_branch", _text(existing.counterpart_branch), doc.counterpart_branch),
        ("transfer_ref", _text(existing.transfer_ref), transfer_ref),
        ("reason", _text(existing.reason), doc.reason),
    ]
    if author:
        header.append(("author", _text(existing.author) or "", doc.author))
    for name, before, now in header:
        if before != now:
            return f"{name} {before!r}, now {now!r}"
    sign = _DIRECTION[doc.doc_type]
    stored = {
        line["sku"]: (line["quantity_milli"], line.get("unit_cost")) for line in existing.lines
    }
    posted: dict[str, tuple[int, int | None]] = {}
    for line in doc.lines:
        if line.sku in posted:
            return f"{line.sku} twice"
        posted[line.sku] = (sign * parse_milli(line.quantity), line.unit_cost)
    if stored != posted:
        return "the lines"
    return None


def _amount(quantity_milli: int) -> str:
    """A quantity as people write it: 6, 0.5, -44."""
    text = format_milli(quantity_milli)
    return text.rstrip("0").rstrip(".") if "." in text else text


def _ago(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "earlier"
    seconds = max(0, round((now - then).total_seconds()))
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"


def _named(row: StockDocument) -> str:
    """An earlier document as a refusal names it: its number and its id."""
    return f"{row.number} (document_id {row.document_id})"


class StockService:
    def __init__(
        self,
        settings: AgentSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        write_lock: asyncio.Lock,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._write_lock = write_lock

    async def post_document(self, doc: StockDocumentIn) -> tuple[StockDocumentOut, bool]:
        """Validate, post and send up a document; (document, created now).

        A ``document_id`` posted before gets the original back when the content is the
        same (a retry), and a 409 naming ``document_id`` when it is not: a second,
        different document under the same id is never taken for the first.

        Refused with a 409, nothing recorded, unless the document says to post it
        anyway: a document without an id whose content is that of one posted without an
        id within ``REPEAT_WINDOW`` (``again``), a transfer in of a transfer this branch
        has taken in already (``again``), and a write-off, supplier return or transfer
        out of more than the stock on hand of a product (``allow_negative``). Checked
        under the agent's write lock, in the transaction that posts the document: two
        documents at once see each other (sales too, which are never refused).
        """
        doc = _normalized(doc)
        given = doc.document_id is not None
        document_id = doc.document_id or str(uuid.uuid4())
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            existing = await session.get(StockDocument, document_id) if given else None
            if existing is not None:
                if existing.doc_type != doc.doc_type:
                    raise Conflict(
                        f"document {document_id} exists as a {existing.doc_type}",
                        field="document_id",
                    )
                difference = _difference(existing, doc)
                if difference is not None:
                    raise Conflict(
                        f"document {document_id} was posted with other content ({difference}):"
                        " a different document needs its own id",
                        field="document_id",
                    )
                return _out(existing), False
            await self._check_header(session, doc)
            sign = _DIRECTION[doc.doc_type]
            if doc.allow_negative and sign > 0:
                raise Rejected(
                    f"a {_WORDS[doc.doc_type]} brings stock in: allow_negative is for a "
                    "write-off, supplier return or transfer out",
                    field="allow_negative",
                )
            lines: list[StockDocumentLine] = []
            seen: set[str] = set()
            now = datetime.now(UTC)
            weighed = await _weighed(
                session, [line.sku for line in doc.lines], takes_out=sign < 0, at=now
            )
            for index, line in enumerate(doc.lines):
                field = f"lines[{index}]"
                quantity = self._quantity(weighed, line.sku, line.quantity, field)
                if line.sku in seen:
                    raise Rejected(f"{line.sku} appears twice", field=f"{field}.sku")
                seen.add(line.sku)
                if doc.doc_type == "goods_receipt" and line.unit_cost is None:
                    raise Rejected(
                        "a goods receipt needs the unit cost", field=f"{field}.unit_cost"
                    )
                if doc.doc_type in _NO_UNIT_COST and line.unit_cost is not None:
                    raise Rejected(
                        f"a {_WORDS[doc.doc_type]} takes no unit cost: {_NO_UNIT_COST[doc.doc_type]}",
                        field=f"{field}.unit_cost",
                    )
                lines.append(
                    StockDocumentLine(
                        sku=line.sku, quantity_milli=sign * quantity, unit_cost=line.unit_cost
                    )
                )
            if doc.doc_type == "transfer_in" and not doc.again:
                await self._check_not_received(session, doc)
            if not given and not doc.again:
                await self._check_not_repeated(session, doc, now)
            if sign < 0 and not doc.allow_negative:
                await self._check_on_hand(session, doc, lines)
            if doc.again or doc.allow_negative:
                log.warning(
                    "%s %s posted with%s%s by %r",
                    _WORDS[doc.doc_type],
                    document_id,
                    " again" if doc.again else "",
                    " allow_negative" if doc.allow_negative else "",
                    doc.author,
                )
            row = await self._post(
                session, document_id, doc.doc_type, doc, lines, now, auto_id=not given
            )
            return _out(row), True

    async def _check_header(self, session: AsyncSession, doc: StockDocumentIn) -> None:
        words = _WORDS[doc.doc_type]
        if doc.doc_type in ("goods_receipt", "supplier_return") and doc.supplier is None:
            raise Rejected(f"a {words} needs the supplier", field="supplier")
        if doc.doc_type in ("transfer_out", "transfer_in"):
            if doc.counterpart_branch is None:
                raise Rejected("a transfer needs the other branch", field="counterpart_branch")
            try:
                validate_branch_code(doc.counterpart_branch)
            except ValueError as exc:
                raise Rejected(str(exc), field="counterpart_branch") from exc
            if doc.counterpart_branch == self._settings.branch:
                raise Rejected("a transfer goes to another branch", field="counterpart_branch")
            codes, listed_at = await known_branches(session)
            if codes and doc.counterpart_branch not in codes:
                when = f" of {listed_at:%Y-%m-%d %H:%M} UTC" if listed_at is not None else ""
                raise Rejected(
                    f"{doc.counterpart_branch} is not a branch of the chain (central's list"
                    f"{when} has {len(codes)} branches): check the code; a branch registered"
                    " at central since reaches this store with its next report to central",
                    field="counterpart_branch",
                )
        if doc.doc_type == "transfer_in" and doc.transfer_ref is None:
            raise Rejected(
                "a transfer in names the sending branch's transfer out", field="transfer_ref"
            )
        if doc.doc_type == "write_off" and doc.reason is None:
            raise Rejected("a write-off needs a reason", field="reason")

    async def _check_not_received(self, session: AsyncSession, doc: StockDocumentIn) -> None:
        """A transfer is taken in once: a second transfer in of the same transfer (the
        sending branch and its transfer out) is a 409 naming the first."""
        earlier = await session.scalar(
            select(StockDocument)
            .where(
                StockDocument.transfer_ref == doc.transfer_ref,
                StockDocument.doc_type == "transfer_in",
                StockDocument.counterpart_branch == doc.counterpart_branch,
            )
            .order_by(StockDocument.posted_at)
            .limit(1)
        )
        if earlier is None:
            return
        raise Conflict(
            f"transfer {doc.transfer_ref} from {doc.counterpart_branch} was taken in already"
            f" by {_named(earlier)}: nothing recorded (posting that document again under"
            " its own id gives it back). If more goods of this transfer arrived later, post"
            " them with again: true (CLI --again): central keeps the first receipt as the"
            " transfer's and lists this one as received_twice, its stock counted",
            field="transfer_ref",
        )

    async def _check_not_repeated(
        self, session: AsyncSession, doc: StockDocumentIn, now: datetime
    ) -> None:
        """A document without an id with the content (type, lines, supplier, other
        branch, transfer reference, reason; not the author) of one posted without an id
        within REPEAT_WINDOW is taken for a repeat of it: a 409 naming it."""
        recent = await session.scalars(
            select(StockDocument)
            .where(
                StockDocument.posted_at >= now - REPEAT_WINDOW,
                StockDocument.doc_type == doc.doc_type,
                StockDocument.auto_id.is_(True),
            )
            .order_by(StockDocument.posted_at.desc())
        )
        for row in recent:
            if _difference(row, doc, author=False) is None:
                raise Conflict(
                    f"the same {_WORDS[doc.doc_type]} was posted {_ago(row.posted_at, now)}"
                    f" without an id: {_named(row)}, recorded, its stock moved. Nothing was"
                    " recorded now. If this is another one, not a repeat, post it with its"
                    " own document_id (CLI --id, e.g. the delivery note's number) or with"
                    " again: true (CLI --again)",
                    field="document_id",
                )

    async def _check_on_hand(
        self, session: AsyncSession, doc: StockDocumentIn, lines: list[StockDocumentLine]
    ) -> None:
        """No more may leave than the branch has on hand of each product: a 409 naming
        each line that asks for more."""
        on_hand = await balances(session, [line.sku for line in lines])
        short = [
            (
                f"lines[{index}].quantity",
                f"{line.sku}: {_amount(on_hand.get(line.sku, 0))} on hand, "
                f"{_amount(-line.quantity_milli)} to take out",
            )
            for index, line in enumerate(lines)
            if -line.quantity_milli > on_hand.get(line.sku, 0)
        ]
        if not short:
            return
        raise Conflict(
            f"more than the stock on hand in this {_WORDS[doc.doc_type]}: "
            + "; ".join(text for _, text in short)
            + ". Nothing was recorded. If the books are wrong (the goods are there), post it"
            " with allow_negative: true (CLI --allow-negative), or count the product in a"
            " stocktake first",
            field=short[0][0],
            fields=tuple(short),
        )

    @staticmethod
    def _quantity(weighed: dict[str, bool | str], sku: str, text: str, field: str) -> int:
        facts = weighed.get(sku)
        if facts is None:
            raise Rejected(f"unknown product {sku!r}", field=f"{field}.sku")
        if isinstance(facts, str):
            raise Rejected(facts, field=f"{field}.sku")
        quantity = parse_milli(text)
        if quantity <= 0:
            raise Rejected("quantity must be positive", field=f"{field}.quantity")
        if not facts and quantity % 1000:
            raise Rejected(
                f"{sku} is counted in pieces: whole quantities only", field=f"{field}.quantity"
            )
        return quantity

    async def _post(
        self,
        session: AsyncSession,
        document_id: str,
        doc_type: str,
        doc: StockDocumentIn | None,
        lines: list[StockDocumentLine],
        now: datetime,
        *,
        auto_id: bool = False,
        row: StockDocument | None = None,
    ) -> StockDocument:
        if row is None:
            number = await next_counter(session, f"stock_doc:{doc_type}")
            assert doc is not None
            row = StockDocument(
                document_id=document_id,
                doc_type=doc_type,
                number=f"{self._settings.branch}-{_PREFIX[doc_type]}-{number}",
                supplier=doc.supplier,
                counterpart_branch=doc.counterpart_branch,
                # An outbound transfer is its own reference: the receiving branch quotes it.
                transfer_ref=doc.transfer_ref
                or (document_id if doc_type == "transfer_out" else None),
                reason=doc.reason,
                author=doc.author,
                created_at=now,
                auto_id=auto_id,
            )
            session.add(row)
        row.status = "posted"
        row.posted_at = now
        row.lines = [msgspec.to_builtins(line) for line in lines]
        await apply_moves(
            session,
            ((line.sku, line.quantity_milli, line.unit_cost) for line in lines),
            source=doc_type,
            source_id=document_id,
        )
        # One event, or (a whole store's stocktake) one per part of the lines: each
        # must fit in one NATS message. The parts are written together, in order.
        size = STOCK_DOCUMENT_PART_LINES
        parts = max(1, -(-len(lines) // size))
        for part in range(1, parts + 1):
            await append_event(
                session,
                branch=self._settings.branch,
                timezone=self._settings.timezone,
                occurred_at=now,
                body=StockDocumentPosted(
                    document_id=document_id,
                    doc_type=doc_type,  # type: ignore[arg-type]
                    number=row.number,
                    lines=tuple(lines[(part - 1) * size : part * size]),
                    supplier=row.supplier,
                    counterpart_branch=row.counterpart_branch,
                    transfer_ref=row.transfer_ref,
                    reason=row.reason,
                    author=row.author,
                    part=part,
                    parts=parts,
                    first_line_no=(part - 1) * size + 1,
                ),
            )
        await session.flush()
        return row

    # stocktake -------------------------------------------------------------------------
    async def open_stocktake(
        self, document_id: str | None, author: str, reason: str | None
    ) -> StockDocumentOut:
        if document_id is not None and not document_id.strip():
            raise Rejected("a document id of blanks only", field="document_id")
        author, reason = _text(author) or "", _text(reason)
        document_id = document_id or str(uuid.uuid4())
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            existing = await session.get(StockDocument, document_id)
            if existing is not None:
                if existing.doc_type != "stocktake":
                    raise Conflict(
                        f"document {document_id} is not a stocktake", field="document_id"
                    )
                return _out(existing)
            number = await next_counter(session, "stock_doc:stocktake")
            row = StockDocument(
                document_id=document_id,
                doc_type="stocktake",
                number=f"{self._settings.branch}-ST-{number}",
                status="draft",
                author=author,
                reason=reason,
            )
            session.add(row)
            await session.flush()
            return _out(row)

    async def _stocktake(self, session: AsyncSession, document_id: str) -> StockDocument:
        row = await session.get(StockDocument, document_id)
        if row is None or row.doc_type != "stocktake":
            raise NotFound(f"no stocktake {document_id}")
        return row

    async def add_count_sheet(self, document_id: str, sheet: CountSheetIn) -> int:
        """Record one count sheet (sending the same sheet again replaces it).

        Each line keeps the product's book quantity of this moment, read in the same
        transaction under the write lock: what the count is compared with at posting.
        """
        if not sheet.sheet.strip():
            raise Rejected("a count sheet name of blanks only", field="sheet")
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            row = await self._stocktake(session, document_id)
            if row.status != "draft":
                return await self._posted_sheet(session, row, sheet)
            now = datetime.now(UTC)
            counts: dict[str, int] = {}
            weighed = await _weighed(
                session, [line.sku for line in sheet.lines], takes_out=True, at=now
            )
            for index, line in enumerate(sheet.lines):
                field = f"lines[{index}]"
                try:
                    counted = parse_milli(line.counted)
                except ValueError as exc:
                    raise Rejected(str(exc), field=f"{field}.counted") from exc
                facts = weighed.get(line.sku)
                if facts is None:
                    raise Rejected(f"unknown product {line.sku!r}", field=f"{field}.sku")
                if isinstance(facts, str):
                    raise Rejected(facts, field=f"{field}.sku")
                if not facts and counted % 1000:
                    raise Rejected("whole pieces only", field=f"{field}.counted")
                counts[line.sku] = counts.get(line.sku, 0) + counted
            booked = await balances(session, list(counts))
            await session.execute(
                delete(StocktakeCount).where(
                    StocktakeCount.document_id == document_id,
                    StocktakeCount.sheet == sheet.sheet,
                )
            )
            # One executemany: no ORM object per counted line.
            await session.execute(
                insert(StocktakeCount),
                [
                    {
                        "document_id": document_id,
                        "sheet": sheet.sheet,
                        "sku": sku,
                        "counted_milli": counted,
                        "book_milli": booked.get(sku, 0),
                        "recorded_at": now,
                    }
                    for sku, counted in counts.items()
                ],
            )
            return len(counts)

    async def _posted_sheet(
        self, session: AsyncSession, row: StockDocument, sheet: CountSheetIn
    ) -> int:
        """A count sheet sent to a posted stocktake: the sheet it recorded sent again
        (a retry) is answered as then, nothing changed; any other is a 409."""
        recorded = dict(
            (
                await session.execute(
                    select(StocktakeCount.sku, StocktakeCount.counted_milli).where(
                        StocktakeCount.document_id == row.document_id,
                        StocktakeCount.sheet == sheet.sheet,
                    )
                )
            ).all()
        )
        sent: dict[str, int] = {}
        for line in sheet.lines:
            sent[line.sku] = sent.get(line.sku, 0) + parse_milli(line.counted)
        if recorded and sent == recorded:
            return len(recorded)
        raise Conflict(
            f"stocktake {row.document_id} is already posted ({row.number}): its count sheets"
            " cannot change; count again in a new stocktake",
            field="sheet",
        )

    async def post_stocktake(self, document_id: str) -> StockDocumentOut:
        """Book the differences between counted and booked stock, as of counting.

        Per counted product: counted = the sum of its sheets; expected = the book when
        the first of its sheets was recorded (in the order the agent recorded them; a
        sheet sent again counts from its new recording); the line's quantity, the
        difference counted - expected, is added to the stock of now. So every movement
        after the product's first count (a sale, receipt or write-off between two
        sheets or before posting) is kept, on top of the count: goods received while
        the product is being counted are not counted on a later sheet. Counts left by
        an agent before migration a1802 carry the book at the upgrade; a count without
        a book at all is compared with the stock at posting, as that release did.

        Products on no sheet are not part of the stocktake: their stock is kept as it
        is (a partial stocktake counts what it counts; count a product as 0 to book it
        empty).

        A stocktake posted before is answered as it was posted, nothing booked again
        (a retry whose first answer was lost).
        """
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            row = await self._stocktake(session, document_id)
            if row.status != "draft":
                # Posted before (its answer lost?): the posted stocktake, nothing booked.
                return _out(row)
            count_rows = await session.execute(
                select(StocktakeCount.sku, StocktakeCount.counted_milli, StocktakeCount.book_milli)
                .where(StocktakeCount.document_id == document_id)
                .order_by(StocktakeCount.id)
            )
            counted: dict[str, int] = {}
            expected: dict[str, int | None] = {}
            for sku, quantity, book in count_rows:
                counted[sku] = counted.get(sku, 0) + quantity
                # The first sheet of the product (the rows come in recording order).
                expected.setdefault(sku, book)
            if not counted:
                raise Rejected("no count sheet was recorded", field="sheets")
            unknown = [sku for sku, book in expected.items() if book is None]
            now_booked = await balances(session, unknown) if unknown else {}
            lines = []
            for sku, quantity in sorted(counted.items()):
                book = expected[sku]
                if book is None:
                    book = now_booked.get(sku, 0)
                lines.append(
                    StockDocumentLine(
                        sku=sku,
                        quantity_milli=quantity - book,
                        expected_milli=book,
                        counted_milli=quantity,
                    )
                )
            now = datetime.now(UTC)
            row = await self._post(session, document_id, "stocktake", None, lines, now, row=row)
            return _out(row)

    async def get_document(self, document_id: str) -> StockDocumentOut:
        async with self._sessionmaker() as session:
            row = await session.get(StockDocument, document_id)
            if row is None:
                raise NotFound(f"no stock document {document_id}")
            return _out(row)

    async def stock_on_hand(self, skus: list[str] | None = None) -> list[BalanceOut]:
        async with self._sessionmaker() as session:
            found = await balances(session, skus)
        return [
            BalanceOut(sku=sku, quantity=format_milli(q), quantity_milli=q)
            for sku, q in sorted(found.items())
        ]
