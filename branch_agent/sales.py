"""Recording a sale: price it from the local catalog, commit it, fiscalize it.

A sale is durable before it reaches the fiscal printer (DESIGN rule 8). On a till
with a fiscal printer the sale is committed as ``pending_fiscal`` with the exact
printer job, then printed (see :mod:`branch_agent.fiscal`); the fiscal number, the
``fiscalized`` status and the ``ReceiptRecorded`` outbox event are written in one
transaction afterwards. On a till without one, the event is written with the sale.
Stock leaves the ledger at commit either way: the goods left the store.

The till's sale id makes the call idempotent: posting the same sale again returns
the original receipt (and nudges a pending one through the printer).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from branch_agent.catalog import (
    BasketLine,
    CatalogItem,
    find_product,
    find_products,
    promotion_discounts,
)
from branch_agent.db import create_sessionmaker, table_of
from branch_agent.direct_sql import DirectStatement, DirectUnit, direct_unit, run
from branch_agent.errors import Conflict, NotFound, Rejected, StorageFull
from branch_agent.fiscal import closing_shift_detail
from branch_agent.lookup import BadCode, resolve_code, weight_layout
from branch_agent.models import CashMove, CustomerReturn, Sale, Shift, utcnow
from branch_agent.outbox import append_event, check_event, next_counter
from branch_agent.restored import RETURN, SALE, gone_if_restored, refuse_if_restored
from branch_agent.schemas import (
    PaymentIn,
    ReturnIn,
    ReturnOut,
    SaleIn,
    SaleLineOut,
    SaleOut,
)
from branch_agent.settings import AgentSettings
from branch_agent.stock import apply_moves
from protocol.events import CustomerReturnRecorded, Payment, ReceiptLine, ReceiptRecorded
from protocol.limits import FISCAL_AMOUNT_MAX
from protocol.units import format_milli, format_minor, line_amount, parse_milli

# Statuses of a sale that carry a fiscal number a storno receipt can refer to.
_FISCALIZED = "fiscalized"

__all__ = [
    "FISCAL_PAYMENT_TYPES",
    "PayoutFrom",
    "SaleService",
    "is_storage_failure",
    "is_storage_full",
    "return_out",
    "sale_out",
]

# What the fiscal printer registers without configuration (Datecs PaidMode 0..2);
# vouchers and "other" map to PaidMode 3..5 per till (TillConfig.fiscal_payment_type).
FISCAL_PAYMENT_TYPES = frozenset({"cash", "credit_card", "debit_card"})


def is_storage_full(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database or disk is full" in text


def is_storage_failure(exc: BaseException) -> bool:
    """SQLite could not read or write its files (a failing disk, a file-size limit)."""
    return "disk i/o error" in str(exc).lower()


T = TypeVar("T")

# Built once: on the sale path, building a statement costs more than running it; the
# sale's own transaction runs them on the sqlite3 connection (branch_agent.direct_sql).
_SALE_BY_ID = select(Sale).where(
    Sale.till == bindparam("till"), Sale.sale_id == bindparam("sale_id")
)
_SALE_EXISTS = DirectStatement(
    select(Sale.id).where(Sale.till == bindparam("till"), Sale.sale_id == bindparam("sale_id"))
)
_SALE_COLUMNS = (
    "till",
    "sale_id",
    "shift_id",
    "receipt_number",
    "cashier",
    "created_at",
    "total",
    "change",
    "status",
    "receipt",
    "manual_discounts",
    "print_job",
    "event_id",
)
_INSERT_SALE = DirectStatement(
    insert(table_of(Sale)).values({c: bindparam(c) for c in _SALE_COLUMNS}), table_of(Sale)
)
_OPEN_SHIFT_OF_TILL = DirectStatement(
    select(Shift.shift_id, Shift.cashier, Shift.z_status, Shift.z_error)
    .where(Shift.till == bindparam("till"), Shift.closed_at.is_(None))
    .order_by(Shift.opened_at.desc())
    .limit(1)
)


def is_database_locked(exc: BaseException) -> bool:
    return "database is locked" in str(exc).lower()


async def _when_unlocked(unit_of_work: Callable[[], Awaitable[T]], *, full: str) -> T:
    """Run a unit of work of the sale engine (through SQLAlchemy or straight on
    sqlite3: both errors are handled); a full disk becomes StorageFull.

    When another process holds SQLite's write lock, wait here with asyncio sleeps,
    not in the loop's thread (the sale engine's busy timeout is short); the unit of
    work was rolled back and runs again whole.
    """
    delay = 0.01
    while True:
        try:
            return await unit_of_work()
        except (OperationalError, sqlite3.OperationalError) as exc:
            if is_storage_full(exc):
                raise StorageFull(full) from exc
            if not is_database_locked(exc) or delay > 5:
                raise
        await asyncio.sleep(delay)
        delay *= 2


@dataclass(frozen=True)
class PayoutFrom:
    """The till's fiscal printer just before a cash refund without receipt is recorded
    (read under the till's fiscal queue, older cash intents settled): its last document
    number and cash sum, or why it could not be asked (``problem``)."""

    document: int | None = None
    cash: int | None = None
    # the serial number of the printer they were read from (None: it does not tell)
    printer: str | None = None
    problem: str | None = None


class SaleService:
    def __init__(
        self,
        settings: AgentSettings,
        sale_engine: AsyncEngine,
        write_lock: asyncio.Lock,
    ) -> None:
        """``sale_engine``: the inline engine (``create_engine(path, inline=True)``)."""
        self._settings = settings
        self._engine = sale_engine
        self._sessionmaker = create_sessionmaker(sale_engine)
        # One writer at a time: SQLite would otherwise answer "database is locked".
        self._write_lock = write_lock
        self._layout = weight_layout(settings.weight_barcode_layout)

    def _has_fiscal(self, till: str) -> bool:
        config = self._settings.till(till)
        return config is not None and config.fiscal_printer is not None

    async def record_sale(self, till: str, sale: SaleIn) -> tuple[SaleOut, bool]:
        """Commit the sale; returns the receipt and whether it was created now."""
        return await _when_unlocked(
            lambda: self._record_sale(till, sale),
            full="the agent's storage is full: no new sale can be recorded",
        )

    async def _record_sale(self, till: str, sale: SaleIn) -> tuple[SaleOut, bool]:
        fiscal = self._has_fiscal(till)
        key = {"till": till, "sale_id": sale.sale_id}
        # The session only reads the catalog (on the engine's plain reader); the sale's
        # transaction is a direct unit on the sqlite3 connection.
        async with self._write_lock, self._sessionmaker() as session:
            async with direct_unit(self._engine) as db:
                exists = bool(db.execute(_SALE_EXISTS, key))
                if not exists:
                    # A retry of a sale this database lost to a restore: never again.
                    await refuse_if_restored(db, SALE, till, sale.sale_id)
                    return await self._commit_sale(session, db, till, sale, fiscal=fiscal), True
            existing = await session.scalar(_SALE_BY_ID, key)
            assert existing is not None
            difference = _sale_difference(existing, sale)
            if difference is not None:
                raise Conflict(
                    f"sale {sale.sale_id} was recorded with other content ({difference}):"
                    " a different sale needs its own id",
                    field="sale_id",
                )
            return sale_out(existing), False

    async def _commit_sale(
        self, session: AsyncSession, db: DirectUnit, till: str, sale: SaleIn, *, fiscal: bool
    ) -> SaleOut:
        shift = await self._open_shift(db, till, sale.shift_id)
        receipt, job = await self._price(session, db, till, sale, shift, fiscal=fiscal)
        values: dict[str, Any] = {
            "till": till,
            "sale_id": sale.sale_id,
            "shift_id": receipt.shift_id,
            "receipt_number": receipt.receipt_number,
            "cashier": receipt.cashier,
            "created_at": utcnow(),
            "total": receipt.total,
            "change": receipt.change,
            "status": "pending_fiscal" if fiscal else "recorded",
            "receipt": msgspec.to_builtins(receipt),
            "manual_discounts": (
                [line.manual_discount for line in sale.lines]
                if any(line.manual_discount for line in sale.lines)
                else None
            ),
            "print_job": job if fiscal else None,
            "event_id": None,
        }
        seq = None
        if not fiscal:
            envelope = await append_event(
                db, branch=self._settings.branch, timezone=self._settings.timezone, body=receipt
            )
            values["event_id"] = envelope.event_id
            seq = envelope.seq
        else:
            # Its event is written once printed: a receipt central would refuse is
            # refused now, before it is recorded or printed.
            check_event(receipt)
        db.execute(_INSERT_SALE, values)
        await apply_moves(
            db,
            ((line.sku, -line.quantity_milli, None) for line in receipt.lines),
            source="sale",
            source_id=f"{till}/{sale.sale_id}",
        )
        out = sale_out(Sale(**values))
        out.event_seq = seq
        return out

    async def get_sale(self, till: str, sale_id: str) -> SaleOut:
        async with self._sessionmaker() as session:
            row = await session.scalar(
                select(Sale).where(Sale.till == till, Sale.sale_id == sale_id)
            )
            if row is None:
                await gone_if_restored(session, SALE, till, sale_id)
                raise NotFound(f"no sale {sale_id} at till {till}")
            return sale_out(row)

    async def pending_returns(self, till: str | None = None) -> list[ReturnOut]:
        async with self._sessionmaker() as session:
            query = (
                select(CustomerReturn)
                .where(CustomerReturn.status == "pending_fiscal")
                .order_by(CustomerReturn.id)
            )
            if till is not None:
                query = query.where(CustomerReturn.till == till)
            return [return_out(row) for row in await session.scalars(query)]

    async def pending_sales(self, till: str | None = None) -> list[SaleOut]:
        async with self._sessionmaker() as session:
            query = select(Sale).where(Sale.status == "pending_fiscal").order_by(Sale.id)
            if till is not None:
                query = query.where(Sale.till == till)
            return [sale_out(row) for row in await session.scalars(query)]

    async def _open_shift(
        self, db: AsyncSession | DirectUnit, till: str, given: str
    ) -> tuple[str, str]:
        """The till's open shift (id, cashier) a new sale or return goes into.

        A receipt belongs to the shift whose Z report will count it: none open, or a
        shift id the till holds from before (closed, or another till's), would put it
        in a shift that is never closed or already reported. Checked before anything
        is recorded or printed; a retry of a recorded id never gets here.
        """
        found = await run(db, _OPEN_SHIFT_OF_TILL, {"till": till})
        if not found:
            raise Conflict(f"no open shift at till {till}: open one first", field="shift_id")
        shift_id, cashier = str(found[0][0]), str(found[0][1])
        if given and given != shift_id:
            raise Conflict(
                f"shift {given!r} is not the open shift of till {till} ({shift_id})",
                field="shift_id",
            )
        if found[0][2] is not None:
            # Its Z report is printing (or was, before a crash): a receipt now would be
            # printed after the Z that closes the shift it is recorded in.
            raise Conflict(
                closing_shift_detail(shift_id, till, found[0][3], "sell in the next shift"),
                field="shift_id",
            )
        return shift_id, cashier

    async def _price(
        self,
        session: AsyncSession,
        db: DirectUnit,
        till: str,
        sale: SaleIn,
        shift: tuple[str, str],
        *,
        fiscal: bool,
    ) -> tuple[ReceiptRecorded, dict[str, Any]]:
        now = datetime.now(UTC)
        priced: list[tuple[CatalogItem, int, str | None, int]] = []
        price_version = 0
        for index, line_in in enumerate(sale.lines):
            field = f"lines[{index}]"
            item, embedded = await self._product(session, line_in.sku, line_in.barcode, field, now)
            quantity = self._quantity(item, line_in.quantity, embedded, field)
            price_version = max(price_version, item.price_version)
            gross = line_amount(item.price, quantity)
            if item.price > FISCAL_AMOUNT_MAX:
                raise Rejected(
                    f"{item.sku} is priced {format_minor(item.price)}, above"
                    f" {format_minor(FISCAL_AMOUNT_MAX)}, the most a fiscal printer takes",
                    field=field,
                )
            if gross > FISCAL_AMOUNT_MAX:
                # the printer takes Price x Quantity up to 9,999,999.99 (and the sale is
                # the same everywhere: a till without printer keeps the bound too)
                raise Rejected(
                    f"the line comes to {format_minor(gross)}, above"
                    f" {format_minor(FISCAL_AMOUNT_MAX)}, the most a fiscal receipt line takes",
                    field=f"{field}.quantity",
                )
            if line_in.manual_discount > gross:
                raise Rejected("discount exceeds the line amount", field=f"{field}.manual_discount")
            priced.append((item, quantity, line_in.barcode, line_in.manual_discount))
        basket = [
            BasketLine(
                sku=item.sku,
                category=item.category,
                quantity_milli=quantity,
                unit_price=item.price,
                gross=line_amount(item.price, quantity) - manual,
            )
            for item, quantity, _, manual in priced
        ]
        promotions = await promotion_discounts(session, basket, at=now)
        lines: list[ReceiptLine] = []
        job_lines: list[dict[str, Any]] = []
        for index, ((item, quantity, barcode, manual), base, promo) in enumerate(
            zip(priced, basket, promotions, strict=True)
        ):
            promo_amount = min(max(promo.amount, 0), base.gross)
            discount = manual + promo_amount
            lines.append(
                ReceiptLine(
                    line_no=index + 1,
                    sku=item.sku,
                    name=item.name,
                    barcode=barcode,
                    quantity_milli=quantity,
                    unit_price=item.price,
                    discount=discount,
                    manual_discount=manual > 0,
                    promotion_id=promo.promotion_id if promo_amount else None,
                    vat_rate_bp=item.vat_rate_bp,
                    line_total=base.gross + manual - discount,
                )
            )
            job_lines.append(
                {
                    "name": item.name[:72],
                    "vat_group": item.vat_group,
                    "price": item.price,
                    "quantity_milli": quantity,
                    "discount": discount,
                }
            )
        total = sum(line.line_total for line in lines)
        if sale.expected_total is not None and sale.expected_total != total:
            raise Rejected(
                f"the till's total {sale.expected_total} differs from the agent's {total}",
                field="expected_total",
            )
        if total <= 0:
            raise Rejected("a sale's total must be positive", field="lines")
        if total > FISCAL_AMOUNT_MAX:
            raise Rejected(
                f"the sale comes to {format_minor(total)}, above"
                f" {format_minor(FISCAL_AMOUNT_MAX)}, the most a fiscal receipt takes: split it",
                field="lines",
            )
        paid = sum(p.amount for p in sale.payments)
        if paid < total:
            raise Rejected(f"payments {paid} are short of the total {total}", field="payments")
        non_cash = sum(p.amount for p in sale.payments if p.type != "cash")
        change = paid - total
        if change and non_cash > total:
            raise Rejected("only cash can be overpaid (change is given in cash)", field="payments")
        fiscal_types: list[str] = []
        if fiscal:
            config = self._settings.till(till)
            assert config is not None
            for index, payment in enumerate(sale.payments):
                fiscal_type = config.fiscal_payment_type(payment.type)
                if fiscal_type is None:
                    raise Rejected(
                        f"the fiscal printer cannot register {payment.type!r} payments",
                        field=f"payments[{index}].type",
                    )
                fiscal_types.append(fiscal_type)
        shift_id, shift_cashier = shift
        receipt = ReceiptRecorded(
            till=till,
            shift_id=shift_id,
            receipt_number=await next_counter(db, f"receipt_number:{till}"),
            sale_id=sale.sale_id,
            # A till that does not name the cashier sells as the shift's.
            cashier=sale.cashier or shift_cashier,
            voided_lines=sale.voided_lines,
            lines=tuple(lines),
            payments=tuple(Payment(type=p.type, amount=p.amount) for p in sale.payments),
            total=total,
            change=change,
            currency=self._settings.currency,
            price_version=price_version,
        )
        # The printer's payment kinds are fixed at commit: every retry sends the same job.
        job = {
            "lines": job_lines,
            "payments": [
                {"type": t, "amount": p.amount}
                for t, p in zip(
                    fiscal_types or [p.type for p in sale.payments], sale.payments, strict=True
                )
            ],
        }
        return receipt, job

    def _quantity(
        self, item: CatalogItem, text: str | None, embedded: int | None, field: str
    ) -> int:
        if text is None:
            if embedded is None and item.weighed:
                # Never a guess at a weight: 1 kg of cheese is not what was on the scale.
                raise Rejected(
                    f"{item.sku} is weighed: send its quantity (or scan its label)",
                    field=f"{field}.quantity",
                )
            quantity = embedded if embedded is not None else 1000
        else:
            try:
                quantity = parse_milli(text)
            except ValueError as exc:
                raise Rejected(str(exc), field=f"{field}.quantity") from exc
            if embedded is not None and quantity != embedded:
                raise Rejected(
                    f"the label says {format_milli(embedded)}, the till {text}",
                    field=f"{field}.quantity",
                )
        if quantity <= 0:
            raise Rejected("quantity must be positive", field=f"{field}.quantity")
        if not item.weighed and quantity % 1000:
            raise Rejected(
                f"{item.sku} is sold by the piece: whole quantities only",
                field=f"{field}.quantity",
            )
        return quantity

    async def _product(
        self,
        session: AsyncSession,
        sku: str | None,
        barcode: str | None,
        field: str,
        at: datetime,
    ) -> tuple[CatalogItem, int | None]:
        if not sku and not barcode:
            raise Rejected("a line needs a sku or a barcode", field=field)
        if barcode:
            try:
                scanned = await resolve_code(session, barcode, layout=self._layout, at=at)
            except BadCode as exc:
                raise Rejected(str(exc), field=f"{field}.barcode") from exc
            if scanned is None:
                raise Rejected(f"unknown barcode {barcode!r}", field=f"{field}.barcode")
            if sku and scanned.item.sku != sku:
                # The till thinks it sells one product, the code says another: which one
                # went over the counter is not for the agent to guess.
                raise Rejected(
                    f"barcode {barcode!r} is {scanned.item.sku}, not {sku}",
                    field=f"{field}.barcode",
                )
            return scanned.item, scanned.embedded_milli
        item = await find_product(session, sku=sku, at=at)
        if item is None:
            raise Rejected(f"unknown product {sku!r}", field=f"{field}.sku")
        return item, None

    # customer returns --------------------------------------------------------------------
    async def record_return(
        self, till: str, data: ReturnIn, payout: PayoutFrom | None = None
    ) -> tuple[ReturnOut, bool]:
        """``payout``: given for a till with a fiscal printer, where a cash refund
        without receipt is paid out (see ``_commit_return_without_receipt``)."""
        return await _when_unlocked(
            lambda: self._record_return(till, data, payout), full="the agent's storage is full"
        )

    async def _record_return(
        self, till: str, data: ReturnIn, payout: PayoutFrom | None
    ) -> tuple[ReturnOut, bool]:
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            existing = await session.scalar(
                select(CustomerReturn).where(
                    CustomerReturn.till == till, CustomerReturn.return_id == data.return_id
                )
            )
            if existing is not None:
                difference = _return_difference(existing, data)
                if difference is not None:
                    raise Conflict(
                        f"return {data.return_id} was recorded with other content"
                        f" ({difference}): a different return needs its own id",
                        field="return_id",
                    )
                return return_out(existing), False
            await refuse_if_restored(session, RETURN, till, data.return_id)
            _check_return_shape(data)
            shift_id, shift_cashier = await self._open_shift(session, till, data.shift_id)
            if data.without_receipt:
                out = await self._commit_return_without_receipt(
                    session, till, data, shift_id, shift_cashier, payout
                )
                return out, True
            original = await self._original_sale(session, till, data)
            if original.status == "pending_fiscal":
                raise Conflict(
                    "the original receipt is not fiscalized yet", field="original_sale_id"
                )
            sold = msgspec.convert(original.receipt, ReceiptRecorded)
            # A storno receipt on this till's printer when it has one and the original
            # is a fiscal receipt; otherwise the return is recorded as before.
            storno = (
                self._has_fiscal(till)
                # a sale completed unfiscal that the printer had printed after all too
                and (original.status == _FISCALIZED or original.unfiscal_check == "printed")
                and bool(original.fiscal_number)
                and (original.fiscal_number or "").isdigit()
            )
            sold_groups = [
                line["vat_group"] for line in (original.print_job or {}).get("lines", [])
            ]
            job_lines: list[dict[str, Any]] = []
            already = await self._returned(session, original.till, original.sale_id)
            by_no = {line.line_no: line for line in sold.lines}
            # Whether a line is weighed, from the catalog (priced or not); a product no
            # longer listed is taken as weighed only if it was sold in a fraction.
            listed = await find_products(
                session, [line.sku for line in sold.lines], at=datetime.now(UTC), priced=False
            )
            lines: list[ReceiptLine] = []
            seen: set[int] = set()
            for index, line_in in enumerate(data.lines):
                field = f"lines[{index}]"
                assert line_in.line_no is not None  # _check_return_shape
                if line_in.line_no in seen:
                    raise Rejected("each receipt line once per return", field=f"{field}.line_no")
                seen.add(line_in.line_no)
                line = by_no.get(line_in.line_no)
                if line is None:
                    raise Rejected(f"the receipt has no line {line_in.line_no}", field=field)
                assert line_in.quantity is not None  # _check_return_shape
                try:
                    quantity = parse_milli(line_in.quantity)
                except ValueError as exc:
                    raise Rejected(str(exc), field=f"{field}.quantity") from exc
                if quantity <= 0:
                    raise Rejected("quantity must be positive", field=f"{field}.quantity")
                product = listed.get(line.sku)
                weighed = product.weighed if product else bool(line.quantity_milli % 1000)
                if not weighed and quantity % 1000:
                    raise Rejected(
                        f"{line.sku} is sold by the piece: whole quantities only",
                        field=f"{field}.quantity",
                    )
                done_qty, done_amount = already.get(line.line_no, (0, 0))
                left = line.quantity_milli - done_qty
                if quantity > left:
                    raise Rejected(
                        f"line {line.line_no} ({line.sku}) was returned in full already"
                        if left <= 0
                        else f"only {format_milli(left)} of line {line.line_no} can still be"
                        " returned",
                        field=f"{field}.quantity",
                    )
                # The refund is the paid line total in proportion, cumulatively: what
                # this line comes to with everything returned of it so far, less what
                # earlier returns of it refunded (half-up to the cent), so the parts of
                # a line add up to its line total exactly. The discount is the rest of
                # the price: unit_price x quantity - discount = line_total.
                refund = max(
                    _proportional(line.line_total, done_qty + quantity, line.quantity_milli)
                    - done_amount,
                    0,
                )
                already[line.line_no] = (done_qty + quantity, done_amount + refund)
                gross = line_amount(line.unit_price, quantity)
                discount = max(gross - refund, 0)
                job_lines.append(
                    {
                        "name": line.name[:72],
                        "vat_group": (
                            sold_groups[line.line_no - 1]
                            if line.line_no <= len(sold_groups)
                            else "A"
                        ),
                        "price": line.unit_price,
                        "quantity_milli": quantity,
                        # the printed line comes to exactly the refund
                        "discount": discount,
                        "surcharge": max(refund - gross, 0),
                    }
                )
                lines.append(
                    ReceiptLine(
                        # A return line keeps the original receipt's line number.
                        line_no=line.line_no,
                        sku=line.sku,
                        name=line.name,
                        barcode=line.barcode,
                        quantity_milli=quantity,
                        unit_price=line.unit_price,
                        discount=discount,
                        # The original's discount kind, on the share of it returned.
                        manual_discount=line.manual_discount and discount > 0,
                        promotion_id=line.promotion_id if discount else None,
                        vat_rate_bp=line.vat_rate_bp,
                        line_total=refund,
                    )
                )
            total = sum(line.line_total for line in lines)
            refund_type = data.refund_type or (
                "cash" if any(p.type == "cash" for p in sold.payments) else sold.payments[0].type
            )
            refunds = (Payment(type=refund_type, amount=total),) if total > 0 else ()
            job: dict[str, Any] | None = None
            if storno and total > 0:
                config = self._settings.till(till)
                assert config is not None
                fiscal_type = config.fiscal_payment_type(refund_type)
                if fiscal_type is None:
                    raise Rejected(
                        f"the fiscal printer cannot refund {refund_type!r}", field="refund_type"
                    )
                fiscalized_at = original.fiscalized_at or original.created_at
                job = {
                    "lines": job_lines,
                    "payments": [{"type": fiscal_type, "amount": total}],
                    "storno": {
                        "document_number": int(original.fiscal_number or "0"),
                        "document_time": fiscalized_at.isoformat(),
                        "fiscal_memory_number": original.fiscal_memory_number,
                    },
                }
            body = CustomerReturnRecorded(
                till=till,
                shift_id=shift_id,
                return_number=await next_counter(session, f"return_number:{till}"),
                return_id=data.return_id,
                original_sale_id=original.sale_id,
                original_receipt_number=original.receipt_number,
                original_till=original.till,
                cashier=data.cashier or shift_cashier,
                lines=tuple(lines),
                refunds=refunds,
                total=total,
                currency=self._settings.currency,
                reason=data.reason,
            )
            row = CustomerReturn(
                till=till,
                return_id=data.return_id,
                original_sale_id=original.sale_id,
                original_till=original.till,
                shift_id=shift_id,
                return_number=body.return_number,
                total=total,
                body=msgspec.to_builtins(body),
                # A storno is durable before it is printed; its event goes up with the
                # storno's fiscal number once printed (branch_agent.fiscal).
                status="pending_fiscal" if job is not None else "recorded",
                print_job=job,
            )
            await self._store_return(session, row, body)
            return return_out(row), True

    async def _commit_return_without_receipt(
        self,
        session: AsyncSession,
        till: str,
        data: ReturnIn,
        shift_id: str,
        shift_cashier: str,
        payout: PayoutFrom | None,
    ) -> ReturnOut:
        """A return without the original receipt, approved by a manager (checked by the
        API): each line at the till's price now, or lower at the price the manager
        typed (the difference is the line's manual discount). No storno: Datecs 0x2B
        needs the original document's number, time and fiscal memory number, which a
        receipt-less return does not have. So it is recorded and its event written in
        one transaction, as at a till without a printer; a cash refund must be in the
        drawer by the shift's records.

        At a till with a fiscal printer (``payout`` given) a cash refund is paid out on
        it (cash out, 0x46), or the printer's cash count would stay above the drawer by
        it: the pay-out's intent (``pending``, with the printer's document number and
        cash sum read just before) is committed with the return, and printed after it
        (``branch_agent.fiscal.CashIntents.pay_out``). A refund above the printer's cash
        count is refused as a cash-out above it is (the printer would refuse the
        pay-out); a printer that could not be asked leaves the pay-out ``failed``, the
        return recorded: the till posts it again to pay it out."""
        now = datetime.now(UTC)
        lines: list[ReceiptLine] = []
        for index, line_in in enumerate(data.lines):
            field = f"lines[{index}]"
            item, embedded = await self._product(session, line_in.sku, line_in.barcode, field, now)
            quantity = self._quantity(item, line_in.quantity, embedded, field)
            gross = line_amount(item.price, quantity)
            if gross > FISCAL_AMOUNT_MAX:
                raise Rejected(
                    f"the line comes to {format_minor(gross)}, above"
                    f" {format_minor(FISCAL_AMOUNT_MAX)}",
                    field=f"{field}.quantity",
                )
            paid = gross
            if line_in.unit_price is not None:
                if line_in.unit_price > item.price:
                    raise Rejected(
                        f"{item.sku} sells at {item.price} now: a return without receipt is"
                        f" refunded at most that, not {line_in.unit_price}",
                        field=f"{field}.unit_price",
                    )
                paid = line_amount(line_in.unit_price, quantity)
            lines.append(
                ReceiptLine(
                    line_no=index + 1,
                    sku=item.sku,
                    name=item.name,
                    barcode=line_in.barcode,
                    quantity_milli=quantity,
                    unit_price=item.price,
                    discount=gross - paid,
                    manual_discount=gross > paid,
                    vat_rate_bp=item.vat_rate_bp,
                    line_total=paid,
                )
            )
        total = sum(line.line_total for line in lines)
        if total <= 0:
            raise Rejected("a return without receipt must refund something", field="lines")
        if total > FISCAL_AMOUNT_MAX:
            raise Rejected(
                f"the return comes to {format_minor(total)}, above"
                f" {format_minor(FISCAL_AMOUNT_MAX)}: split it",
                field="lines",
            )
        refund_type = data.refund_type or "cash"
        if refund_type == "cash":
            in_drawer = await self._drawer_cash(session, till, shift_id)
            if total > in_drawer:
                raise Conflict(
                    f"not enough cash in the drawer: {format_minor(in_drawer)} by the shift's"
                    f" records, {format_minor(total)} to refund (refund another way, or put"
                    " cash in first)",
                    field="refund_type",
                )
        payout_status: str | None = None
        payout_error: str | None = None
        if refund_type == "cash" and payout is not None:
            if payout.cash is None:
                payout_status = "failed"
                payout_error = (
                    f"not paid out on the fiscal printer: {payout.problem}; post the same"
                    " return again (same return_id) once the printer answers"
                )[:300]
            elif total > payout.cash:
                raise Conflict(
                    f"not enough cash in the drawer: {format_minor(payout.cash)} by the fiscal"
                    f" printer's count, {format_minor(total)} to refund (refund another way,"
                    " or put cash in first)",
                    field="refund_type",
                )
            else:
                payout_status = "pending"
        body = CustomerReturnRecorded(
            till=till,
            shift_id=shift_id,
            return_number=await next_counter(session, f"return_number:{till}"),
            return_id=data.return_id,
            original_sale_id=None,
            cashier=data.cashier or shift_cashier,
            lines=tuple(lines),
            refunds=(Payment(type=refund_type, amount=total),),
            total=total,
            currency=self._settings.currency,
            reason=data.reason,
            without_receipt=True,
            approved_by=data.approved_by,
        )
        row = CustomerReturn(
            till=till,
            return_id=data.return_id,
            # the local column is not nullable: "" is no till's sale id
            original_sale_id="",
            original_till=None,
            shift_id=shift_id,
            return_number=body.return_number,
            total=total,
            body=msgspec.to_builtins(body),
            status="recorded",
            print_job=None,
            payout_status=payout_status,
            payout_error=payout_error,
            payout_document_before=payout.document if payout and payout_status else None,
            payout_cash_before=payout.cash if payout and payout_status else None,
            payout_printer=payout.printer if payout and payout_status else None,
        )
        await self._store_return(session, row, body)
        return return_out(row)

    async def _store_return(
        self, session: AsyncSession, row: CustomerReturn, body: CustomerReturnRecorded
    ) -> None:
        """Store a customer return and its goods coming back into stock. Its event now,
        unless a storno is to be printed (the event goes up with its fiscal number)."""
        if row.print_job is None:
            envelope = await append_event(
                session, branch=self._settings.branch, timezone=self._settings.timezone, body=body
            )
            row.event_id = envelope.event_id
        else:
            check_event(body)
        session.add(row)
        await apply_moves(
            session,
            ((line.sku, line.quantity_milli, None) for line in body.lines),
            source="customer_return",
            source_id=f"{row.till}/{row.return_id}",
        )
        await session.flush()

    async def _drawer_cash(self, session: AsyncSession, till: str, shift_id: str) -> int:
        """The cash the shift's records put in the till's drawer: opening float, cash
        taken net of change, less cash refunds, plus cash in, less cash out (a cash-out
        still waiting for the printer counts as out)."""
        shift = await session.scalar(
            select(Shift).where(Shift.till == till, Shift.shift_id == shift_id)
        )
        cash = shift.opening_float if shift is not None else 0
        for receipt in await session.scalars(
            select(Sale.receipt).where(Sale.till == till, Sale.shift_id == shift_id)
        ):
            sold = msgspec.convert(receipt, ReceiptRecorded)
            cash += sum(p.amount for p in sold.payments if p.type == "cash") - sold.change
        for body in await session.scalars(
            select(CustomerReturn.body).where(
                CustomerReturn.till == till, CustomerReturn.shift_id == shift_id
            )
        ):
            returned = msgspec.convert(body, CustomerReturnRecorded)
            cash -= sum(p.amount for p in returned.refunds if p.type == "cash")
        for direction, status, amount in await session.execute(
            select(CashMove.direction, CashMove.status, CashMove.amount).where(
                CashMove.till == till, CashMove.shift_id == shift_id
            )
        ):
            if direction == "in" and status == "done":
                cash += amount
            elif direction == "out" and status in ("done", "pending"):
                cash -= amount
        return cash

    async def get_return(self, till: str, return_id: str) -> ReturnOut:
        async with self._sessionmaker() as session:
            row = await session.scalar(
                select(CustomerReturn).where(
                    CustomerReturn.till == till, CustomerReturn.return_id == return_id
                )
            )
            if row is None:
                await gone_if_restored(session, RETURN, till, return_id)
                raise NotFound(f"no return {return_id} at till {till}")
            return return_out(row)

    async def payout_status(self, till: str, return_id: str) -> str | None:
        """The pay-out status of the till's return (None: no such return, or none)."""
        async with self._sessionmaker() as session:
            status: str | None = await session.scalar(
                select(CustomerReturn.payout_status).where(
                    CustomerReturn.till == till, CustomerReturn.return_id == return_id
                )
            )
        return status

    async def return_pk(self, till: str, return_id: str) -> int:
        async with self._sessionmaker() as session:
            pk = await session.scalar(
                select(CustomerReturn.id).where(
                    CustomerReturn.till == till, CustomerReturn.return_id == return_id
                )
            )
        assert pk is not None
        return int(pk)

    async def _original_sale(self, session: AsyncSession, till: str, data: ReturnIn) -> Sale:
        """The sale a return is against. A sale id is the till's: two tills may use the
        same one, so the till named, else the returning till's own sale, else the one
        other till's; several other tills' sales under the id: the till must say which."""
        if data.original_till:
            found = await session.scalar(
                select(Sale).where(
                    Sale.till == data.original_till, Sale.sale_id == data.original_sale_id
                )
            )
            if found is None:
                raise Rejected(
                    f"no receipt {data.original_sale_id!r} at till {data.original_till}",
                    field="original_sale_id",
                )
            return found
        candidates = list(
            await session.scalars(
                select(Sale).where(Sale.sale_id == data.original_sale_id).order_by(Sale.id)
            )
        )
        own = [s for s in candidates if s.till == till]
        if own:
            return own[0]
        if not candidates:
            raise Rejected(
                f"no receipt {data.original_sale_id!r} at this branch", field="original_sale_id"
            )
        if len(candidates) > 1:
            tills = ", ".join(sorted(s.till for s in candidates))
            raise Conflict(
                f"receipt {data.original_sale_id!r} is at several tills ({tills}): "
                "name the one in original_till",
                field="original_till",
            )
        return candidates[0]

    async def _returned(
        self, session: AsyncSession, till: str, sale_id: str
    ) -> dict[int, tuple[int, int]]:
        """Per original line number: the quantity already returned and the amount refunded
        (of that till's sale: another till's sale of the same id is another receipt)."""
        done: dict[int, tuple[int, int]] = {}
        rows = await session.scalars(
            select(CustomerReturn.body).where(
                CustomerReturn.original_till == till, CustomerReturn.original_sale_id == sale_id
            )
        )
        for body in rows:
            for line in msgspec.convert(body, CustomerReturnRecorded).lines:
                qty, amount = done.get(line.line_no, (0, 0))
                done[line.line_no] = (qty + line.quantity_milli, amount + line.line_total)
        return done


def _milli(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_milli(text)
    except ValueError:
        return None


def _sale_difference(row: Sale, sale: SaleIn) -> str | None:
    """What differs between a recorded sale and a new post of its id (None: a retry).

    Compared with what the till sent, not with the agent's pricing (prices and
    promotions may have changed since): the lines' products, quantities (``"2"`` and
    ``"2.000"`` alike; none is one piece or the label's weight) and manual discounts,
    the payments, and the cashier and expected total when the till names them. Not the
    shift: the agent chose it, and a retry naming a shift since closed is still one.
    """
    recorded = msgspec.convert(row.receipt, ReceiptRecorded)
    if sale.cashier and sale.cashier != recorded.cashier:
        return f"cashier {recorded.cashier!r}, now {sale.cashier!r}"
    if sale.expected_total is not None and sale.expected_total != recorded.total:
        return f"total {recorded.total}, now {sale.expected_total}"
    if sale.voided_lines != recorded.voided_lines:
        return f"voided_lines {recorded.voided_lines}, now {sale.voided_lines}"
    paid = [(p.type, p.amount) for p in recorded.payments]
    if [(p.type, p.amount) for p in sale.payments] != paid:
        return "the payments"
    if len(sale.lines) != len(recorded.lines):
        return f"{len(recorded.lines)} lines, now {len(sale.lines)}"
    manual = row.manual_discounts
    for index, (line_in, line) in enumerate(zip(sale.lines, recorded.lines, strict=True)):
        where = f"lines[{index}]"
        if line_in.barcode != line.barcode or (line_in.sku and line_in.sku != line.sku):
            return f"{where} is {line.sku}"
        difference = _quantity_difference(line_in.quantity, line_in.barcode, line.quantity_milli)
        if difference is not None:
            return f"{where}.quantity {difference}"
        if manual is not None or not line.manual_discount:
            sent = manual[index] if manual is not None else 0
            if line_in.manual_discount != sent:
                return f"{where}.manual_discount {sent}, now {line_in.manual_discount}"
        elif line_in.manual_discount == 0 or line_in.manual_discount > line.discount:
            # Recorded before the amounts were kept: only that there was one, and at
            # most the line's whole discount.
            return f"{where}.manual_discount"
    return None


def _quantity_difference(sent: str | None, barcode: str | None, recorded: int) -> str | None:
    """How a retried line's quantity differs from the recorded one (None: the same).
    None sent is one piece, or the weight a scanned label carries (the same code again)."""
    if sent is None:
        if barcode is None and recorded != 1000:
            return format_milli(recorded)
        return None
    if _milli(sent) != recorded:
        return f"{format_milli(recorded)}, now {sent}"
    return None


def _check_return_shape(data: ReturnIn) -> None:
    """A return against a receipt names it and its lines by line number; one without
    receipt names neither, but its products, who approved it and why."""
    if data.without_receipt:
        if data.original_sale_id is not None or data.original_till is not None:
            field = "original_sale_id" if data.original_sale_id is not None else "original_till"
            raise Rejected(f"a return without receipt names no {field}", field=field)
        if not data.approved_by.strip():
            raise Rejected(
                "a return without receipt needs the approving manager's name",
                field="approved_by",
            )
        if not data.reason.strip():
            raise Rejected("a return without receipt needs a reason", field="reason")
        for index, line in enumerate(data.lines):
            if line.line_no is not None:
                raise Rejected(
                    "a return without receipt has no receipt lines: name the product"
                    " (sku or barcode)",
                    field=f"lines[{index}].line_no",
                )
        return
    if data.original_sale_id is None:
        raise Rejected(
            "a return names its original_sale_id (one without the receipt says"
            " without_receipt: true, with a manager's approval)",
            field="original_sale_id",
        )
    if data.approved_by:
        raise Rejected("approved_by belongs to a return without receipt", field="approved_by")
    for index, line in enumerate(data.lines):
        if line.line_no is None:
            raise Rejected("a receipt line number is required", field=f"lines[{index}].line_no")
        if line.quantity is None:
            raise Rejected(
                f"the quantity returned of receipt line {line.line_no} is required",
                field=f"lines[{index}].quantity",
            )
        for name in ("sku", "barcode", "unit_price"):
            if getattr(line, name) is not None:
                raise Rejected(
                    "a return against a receipt takes the product and price from its line",
                    field=f"lines[{index}].{name}",
                )


def _return_difference(row: CustomerReturn, data: ReturnIn) -> str | None:
    """What differs between a recorded return and a new post of its id (None: a retry):
    the original sale, the lines and quantities (in any order), and the original's
    till, cashier, reason and refund type when the till names them (not the shift, as
    for a sale). Without receipt: also who approved it, and each line's product,
    quantity and the manager's price when given (not the till's price, which may have
    changed since)."""
    recorded = msgspec.convert(row.body, CustomerReturnRecorded)
    if data.without_receipt != recorded.without_receipt:
        return f"without_receipt {recorded.without_receipt}, now {data.without_receipt}"
    if recorded.without_receipt:
        return _no_receipt_difference(recorded, data)
    if data.original_sale_id != row.original_sale_id:
        return f"original_sale_id {row.original_sale_id!r}, now {data.original_sale_id!r}"
    if data.original_till and row.original_till and data.original_till != row.original_till:
        return f"original_till {row.original_till!r}, now {data.original_till!r}"
    if data.cashier and data.cashier != recorded.cashier:
        return f"cashier {recorded.cashier!r}, now {data.cashier!r}"
    # A reason left out of a retry is not another one, as a cash move's.
    if data.reason and data.reason != recorded.reason:
        return "the reason"
    refunded = {p.type for p in recorded.refunds}
    if data.refund_type and refunded and refunded != {data.refund_type}:
        return f"refund_type {sorted(refunded)[0]!r}, now {data.refund_type!r}"
    sent: dict[int | None, int | None] = {}
    for line in data.lines:
        if line.line_no in sent:
            return f"line {line.line_no} twice"
        sent[line.line_no] = _milli(line.quantity)
    if sent != {line.line_no: line.quantity_milli for line in recorded.lines}:
        return "the lines"
    return None


def _no_receipt_difference(recorded: CustomerReturnRecorded, data: ReturnIn) -> str | None:
    if data.approved_by != recorded.approved_by:
        return f"approved_by {recorded.approved_by!r}, now {data.approved_by!r}"
    if data.cashier and data.cashier != recorded.cashier:
        return f"cashier {recorded.cashier!r}, now {data.cashier!r}"
    if data.reason != recorded.reason:
        return "the reason"
    if data.refund_type and data.refund_type != recorded.refunds[0].type:
        return f"refund_type {recorded.refunds[0].type!r}, now {data.refund_type!r}"
    if len(data.lines) != len(recorded.lines):
        return f"{len(recorded.lines)} lines, now {len(data.lines)}"
    for index, (line_in, line) in enumerate(zip(data.lines, recorded.lines, strict=True)):
        where = f"lines[{index}]"
        if line_in.barcode != line.barcode or (line_in.sku and line_in.sku != line.sku):
            return f"{where} is {line.sku}"
        difference = _quantity_difference(line_in.quantity, line_in.barcode, line.quantity_milli)
        if difference is not None:
            return f"{where}.quantity {difference}"
        if line_in.unit_price is not None and (
            line_amount(line_in.unit_price, line.quantity_milli) != line.line_total
        ):
            return f"{where}.unit_price"
    return None


def _proportional(amount: int, part: int, whole: int) -> int:
    """amount x part / whole, rounded half-up (integers only)."""
    numerator = 2 * amount * part + whole
    return numerator // (2 * whole)


def sale_out(row: Sale) -> SaleOut:
    receipt = msgspec.convert(row.receipt, ReceiptRecorded)
    return SaleOut(
        sale_id=row.sale_id,
        till=row.till,
        shift_id=row.shift_id,
        receipt_number=row.receipt_number,
        status=row.status,
        fiscal_number=row.fiscal_number,
        fiscal_error=row.fiscal_error,
        total=row.total,
        change=row.change,
        lines=[
            SaleLineOut(
                line_no=line.line_no,
                sku=line.sku,
                name=line.name,
                quantity=format_milli(line.quantity_milli),
                unit_price=line.unit_price,
                discount=line.discount,
                promotion_id=line.promotion_id,
                vat_rate_bp=line.vat_rate_bp,
                line_total=line.line_total,
            )
            for line in receipt.lines
        ],
        payments=[PaymentIn(type=p.type, amount=p.amount) for p in receipt.payments],
        event_seq=None,
        unfiscal_check=row.unfiscal_check,
    )


def return_out(row: CustomerReturn) -> ReturnOut:
    body = msgspec.convert(row.body, CustomerReturnRecorded)
    return ReturnOut(
        return_id=row.return_id,
        till=row.till,
        original_sale_id=body.original_sale_id,
        original_till=row.original_till,
        return_number=row.return_number,
        total=row.total,
        lines=[
            SaleLineOut(
                line_no=line.line_no,
                sku=line.sku,
                name=line.name,
                quantity=format_milli(line.quantity_milli),
                unit_price=line.unit_price,
                discount=line.discount,
                promotion_id=line.promotion_id,
                vat_rate_bp=line.vat_rate_bp,
                line_total=line.line_total,
            )
            for line in body.lines
        ],
        refunds=[PaymentIn(type=p.type, amount=p.amount) for p in body.refunds],
        status=row.status,
        fiscal_number=row.fiscal_number,
        fiscal_error=row.fiscal_error,
        unfiscal_check=row.unfiscal_check,
        without_receipt=body.without_receipt,
        approved_by=body.approved_by,
        payout=row.payout_status,
        payout_error=row.payout_error,
    )
