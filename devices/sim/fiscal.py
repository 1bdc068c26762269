"""Simulated Datecs "X" protocol fiscal printer (DEVICES.md §2).

It follows the framing rules (NAK on a bad frame, SYN every 60 ms while busy, the
previous answer repeated for a frame with the same SEQ) and keeps a fiscal journal that
tests assert on: :attr:`FiscalSimulator.receipts` holds every fiscalized (closed)
receipt, :attr:`cancelled` the cancelled ones.

Fault injection (all thread-safe):

- :meth:`nak_next` (n frames answered with NAK, not executed)
- :meth:`slow_command` (SYN every 60 ms for some seconds before the answer)
- :attr:`paper_end`, :attr:`paper_near_end`, :attr:`cover_open` (print commands refused,
  state unchanged), :meth:`at_command` to change them mid-receipt
- :meth:`lose_answers` (the command is executed, its answer never sent; replays of it
  count too)
- :meth:`power_loss` (deaf for some seconds; the open receipt survives, the SEQ memory
  does not)
- :attr:`paid_modes` (the PaidModes programmed; a payment in another is refused)
- amounts beyond the manual's field ranges (9999999.99; quantities 999999.999) are
  refused with the syntax error bit, the state unchanged
- :meth:`at_command` (a callback when the n-th frame of a command arrives, e.g. to
  drop the TCP link; return ``"drop"`` to ignore that frame entirely)

Storno (refund) receipts are opened with 0x2B (from the vendor's programmer's manual,
not DEVICES.md); closed ones go to :attr:`storno_receipts`, their lines to the eight
storno totals of the X/Z report, and 0x4C answers ``IsOpen`` 2..4 while one is open.
0x46 answers the cash counters (CashSum, CashIn, CashOut), 0x40 the last Z report in
fiscal memory, 0x5A the device's identity with its fiscal memory number.

Error codes are the simulator's own negative numbers; drivers must (and ours do) decide
what went wrong from the status bits, not from the codes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from devices.fiscal_datecs import (
    CMD_CANCEL_RECEIPT,
    CMD_CASH_IN_OUT,
    CMD_CLOSE_RECEIPT,
    CMD_DIAGNOSTIC,
    CMD_FREE_TEXT,
    CMD_LAST_DOCUMENT,
    CMD_LAST_FISCAL_ENTRY,
    CMD_OPEN_RECEIPT,
    CMD_OPEN_STORNO,
    CMD_PAYMENT,
    CMD_REPORT,
    CMD_SALE,
    CMD_STATUS,
    CMD_SUBTOTAL,
    CMD_TRANSACTION_STATUS,
    ETX,
    NAK,
    PREAMBLE,
    SYN,
    FiscalStatus,
    StatusBit,
    build_answer,
    encode_params,
    parse_request,
    split_params,
)
from devices.sim.base import DeviceSimulator, Emit

__all__ = ["FISCAL_FAULTS", "FiscalSimulator", "SimLine", "SimReceipt", "SimStorno"]

ERR_SYNTAX = -100001
ERR_INVALID_COMMAND = -100002
ERR_NOT_PERMITTED = -111003
ERR_PAPER_END = -112001
ERR_COVER_OPEN = -112002
ERR_OVERFLOW = -111018
ERR_PAID_MODE = -111021
# Not in DEVICES.md (it names the status bit only): the simulator's code for a fiscal
# document refused because the fiscal memory is full.
ERR_FISCAL_MEMORY_FULL = -111030

SYN_INTERVAL = 0.06
CENT = Decimal("0.01")
PRINTING = frozenset(
    {
        CMD_OPEN_STORNO,
        CMD_OPEN_RECEIPT,
        CMD_SALE,
        CMD_SUBTOTAL,
        CMD_PAYMENT,
        CMD_FREE_TEXT,
        CMD_CLOSE_RECEIPT,
        CMD_CANCEL_RECEIPT,
        CMD_REPORT,
        CMD_CASH_IN_OUT,
    }
)
FISCAL_FAULTS = (
    "nak",
    "slow",
    "paper_end",
    "paper_near_end",
    "cover_open",
    "lose_answer",
    "power_loss",
    "fiscal_memory_full",
)
_ERROR_BITS = frozenset(
    {
        StatusBit.SYNTAX_ERROR,
        StatusBit.INVALID_COMMAND,
        StatusBit.MECHANISM_FAILURE,
        StatusBit.COVER_OPEN,
        StatusBit.OVERFLOW,
        StatusBit.NOT_PERMITTED,
        StatusBit.PAPER_END,
    }
)


@dataclass
class SimLine:
    name: str
    vat_group: int
    price: Decimal
    quantity: Decimal
    amount: Decimal


@dataclass
class SimStorno:
    """What a 0x2B frame carried: the reason (0..2) and the original document."""

    reason: int
    document_number: int
    document_time: str
    fiscal_memory_number: str
    unique_sale_number: str


@dataclass
class SimReceipt:
    number: int
    operator: int
    till: int
    lines: list[SimLine] = field(default_factory=list)
    storno: SimStorno | None = None
    payments: list[tuple[int, Decimal]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def amount(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal("0.00"))

    @property
    def paid(self) -> Decimal:
        return sum((amount for _, amount in self.payments), Decimal("0.00"))


class _Refused(Exception):
    def __init__(self, code: int, bit: StatusBit) -> None:
        self.code = code
        self.bit = bit


# Field ranges of the vendor's manual (0x31 Price, DiscountValue as a sum, Price x
# Quantity; 0x35 Amount; 0x46 Amount): 9999999.99; 0x31 Quantity: 999999.999.
MAX_AMOUNT = Decimal("9999999.99")
MAX_QUANTITY = Decimal("999999.999")


def _money(text: str, limit: Decimal = MAX_AMOUNT) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise _Refused(ERR_SYNTAX, StatusBit.SYNTAX_ERROR) from exc
    if not value.is_finite() or abs(value) > limit:
        # out of the field's range: refused like a malformed field, nothing changes
        raise _Refused(ERR_SYNTAX, StatusBit.SYNTAX_ERROR)
    return value


class FiscalSimulator(DeviceSimulator):
    kind = "fiscal"

    def __init__(self, first_receipt_number: int = 0) -> None:
        super().__init__()
        self._buf = bytearray()
        self.last_seq: int | None = None
        self.last_answer: bytes = b""
        self.last_cmd: int | None = None
        self.receipt_number = first_receipt_number  # last receipt number handed out
        self.document_number = first_receipt_number
        self.z_number = 0
        self.open_receipt: SimReceipt | None = None
        self.last_receipt: SimReceipt | None = None
        self.last_cancelled = False
        self.receipts: list[SimReceipt] = []
        self.cancelled: list[SimReceipt] = []
        self.reports: list[tuple[str, int]] = []
        self.storno_receipts: list[SimReceipt] = []
        self.storno_totals = [Decimal("0.00")] * 8
        self.cash_in_total = Decimal("0.00")
        self.cash_out_total = Decimal("0.00")
        # Z reports in fiscal memory: (number, totals, storno totals, DD-MM-YY)
        self.fiscal_memory: list[tuple[int, list[Decimal], list[Decimal], str]] = []
        self.fiscal_memory_number = "02345678"
        self.serial_number = "DT123456"
        self.cash_moves: list[tuple[int, Decimal]] = []
        self.cash = Decimal("0.00")
        self.day_totals = [Decimal("0.00")] * 8
        self.executed: list[int] = []  # command codes executed, in order (not replays)
        self.paper_end = False
        self.paper_near_end = False
        self.cover_open = False
        # Status 4.4: no fiscal document can be opened any more (a service job).
        self.fiscal_memory_full = False
        self._transient: set[StatusBit] = set()
        self._naks = 0
        self._slow: dict[int, float] = {}
        self._lose: dict[int | None, int] = {}
        self._hooks: dict[int, list[tuple[int, Callable[[FiscalSimulator], str | None]]]] = {}
        self._seen: dict[int, int] = {}
        self._power_cycled = False
        self.syn_interval = SYN_INTERVAL
        # PaidModes programmed on this printer; a payment in any other is refused.
        self.paid_modes: set[int] = {0, 1, 2, 3, 4, 5}

    # -- fault injection ---------------------------------------------------------------
    def nak_next(self, count: int = 1) -> None:
        with self.lock:
            self._naks = count

    def slow_command(self, cmd: int, seconds: float) -> None:
        """Keep the host waiting with SYN for ``seconds`` before answering ``cmd``."""
        with self.lock:
            self._slow[cmd] = seconds

    def lose_answers(self, cmd: int | None = None, count: int = 1) -> None:
        """Execute ``cmd`` (any command if ``None``) but drop ``count`` of its answers."""
        with self.lock:
            self._lose[cmd] = count

    def power_loss(self, seconds: float) -> None:
        """Deaf for ``seconds``; the open receipt survives, the last SEQ is forgotten."""
        with self.lock:
            self._power_cycled = True
            self.go_deaf(seconds)

    def at_command(
        self, cmd: int, callback: Callable[[FiscalSimulator], str | None], nth: int = 1
    ) -> None:
        """Call ``callback(sim)`` when the ``nth`` new frame of ``cmd`` arrives, before it
        is executed. If it returns ``"drop"`` the frame is ignored (lost on the wire)."""
        with self.lock:
            self._hooks.setdefault(cmd, []).append((self._seen.get(cmd, 0) + nth, callback))

    def set_fault(self, fault: str, on: bool = True) -> None:
        """Simple switches for the CLI: paper_end, paper_near_end, cover_open."""
        with self.lock:
            if fault in ("paper_end", "paper_near_end", "cover_open", "fiscal_memory_full"):
                setattr(self, fault, on)
            elif fault == "nak":
                self._naks = 1 if on else 0
            elif fault == "lose_answer":
                self._lose[CMD_CLOSE_RECEIPT] = 1 if on else 0
            elif fault == "slow":
                self._slow[CMD_REPORT] = 1.0 if on else 0.0
            else:
                raise ValueError(f"unknown fiscal fault {fault!r}; known: {FISCAL_FAULTS}")

    def on_deaf(self) -> None:
        self._buf.clear()

    # -- status --------------------------------------------------------------------------
    def status_bytes(self) -> bytes:
        flags = set(self._transient) | {StatusBit.FISCALIZED, StatusBit.VAT_RATES_SET}
        if self.cover_open:
            flags.add(StatusBit.COVER_OPEN)
        if self.paper_end:
            flags.add(StatusBit.PAPER_END)
        if self.paper_near_end:
            flags.add(StatusBit.PAPER_NEAR_END)
        if self.fiscal_memory_full:
            flags.add(StatusBit.FISCAL_MEMORY_FULL)
        if self.open_receipt is not None:
            flags.add(StatusBit.FISCAL_RECEIPT_OPEN)
        if flags & _ERROR_BITS:
            flags.add(StatusBit.GENERAL_ERROR)
        return FiscalStatus.encode(flags)

    # -- wire ----------------------------------------------------------------------------
    def handle(self, data: bytes) -> list[Emit]:
        if self._power_cycled:
            self._power_cycled = False
            self.last_seq = None  # RAM lost with the power
            self.last_answer = b""
        self._buf += data
        out: list[Emit] = []
        while True:
            start = self._buf.find(bytes([PREAMBLE]))
            if start < 0:
                self._buf.clear()
                break
            del self._buf[:start]
            end = self._buf.find(bytes([ETX]))
            if end < 0:
                break
            frame = bytes(self._buf[: end + 1])
            del self._buf[: end + 1]
            out += self._frame(frame)
        return out

    def _frame(self, frame: bytes) -> list[Emit]:
        if time.monotonic() < self.deaf_until:
            # a hook pulled the cable while this chunk was read: the rest never arrives
            return []
        try:
            request = parse_request(frame)
        except ValueError:
            return [(0.0, bytes([NAK]))]
        if self._naks > 0:
            self._naks -= 1
            return [(0.0, bytes([NAK]))]
        if request.seq == self.last_seq and self.last_answer:
            # same SEQ as the previous frame: not executed again, answer repeated
            return self._send(request.cmd, self.last_answer, 0.0)
        self._seen[request.cmd] = self._seen.get(request.cmd, 0) + 1
        for hook in list(self._hooks.get(request.cmd, [])):
            nth, callback = hook
            if nth == self._seen[request.cmd]:
                self._hooks[request.cmd].remove(hook)
                if callback(self) == "drop":
                    return []
        self._transient.clear()
        try:
            fields = self._execute(request.cmd, split_params(request.data))
            code = 0
        except _Refused as refused:
            self._transient.add(refused.bit)
            fields, code = [], refused.code
        except (ValueError, UnicodeDecodeError):
            self._transient.add(StatusBit.SYNTAX_ERROR)
            fields, code = [], ERR_SYNTAX
        self.executed.append(request.cmd)
        params: list[str | bytes] = [str(code), *fields]
        if request.cmd == CMD_STATUS and code == 0:
            params.append(self.status_bytes())  # raw bytes: bit 7 set, not text
        data = encode_params(params)
        answer = build_answer(request.seq, request.cmd, data, self.status_bytes())
        self.last_seq, self.last_answer, self.last_cmd = request.seq, answer, request.cmd
        if time.monotonic() < self.deaf_until:
            return []  # a hook cut the power after the command was executed
        return self._send(request.cmd, answer, self._slow.pop(request.cmd, 0.0))

    def _send(self, cmd: int, answer: bytes, busy: float) -> list[Emit]:
        out: list[Emit] = []
        waited = 0.0
        while waited < busy:
            out.append((self.syn_interval, bytes([SYN])))
            waited += self.syn_interval
        for key in (cmd, None):
            if self._lose.get(key, 0) > 0:
                self._lose[key] -= 1
                return out
        out.append((0.0, answer))
        return out

    # -- commands ----------------------------------------------------------------------
    def _execute(self, cmd: int, params: list[str]) -> list[str]:
        if cmd in PRINTING and not (cmd == CMD_CASH_IN_OUT and _zero(params[1:2])):
            if self.cover_open:
                raise _Refused(ERR_COVER_OPEN, StatusBit.COVER_OPEN)
            if self.paper_end:
                raise _Refused(ERR_PAPER_END, StatusBit.PAPER_END)
        if self.fiscal_memory_full and cmd in (CMD_OPEN_RECEIPT, CMD_OPEN_STORNO):
            raise _Refused(ERR_FISCAL_MEMORY_FULL, StatusBit.FISCAL_MEMORY_FULL)
        handler = {
            CMD_OPEN_RECEIPT: self._open,
            CMD_OPEN_STORNO: self._open_storno,
            CMD_SALE: self._sale,
            CMD_SUBTOTAL: self._subtotal,
            CMD_PAYMENT: self._payment,
            CMD_FREE_TEXT: self._free_text,
            CMD_CLOSE_RECEIPT: self._close,
            CMD_CANCEL_RECEIPT: self._cancel,
            CMD_REPORT: self._report,
            CMD_CASH_IN_OUT: self._cash,
            CMD_STATUS: self._status,
            CMD_TRANSACTION_STATUS: self._transaction,
            CMD_LAST_DOCUMENT: self._last_document,
            CMD_LAST_FISCAL_ENTRY: self._last_fiscal_entry,
            CMD_DIAGNOSTIC: self._diagnostic,
        }.get(cmd)
        if handler is None:
            raise _Refused(ERR_INVALID_COMMAND, StatusBit.INVALID_COMMAND)
        return handler(params)

    def _need(self, params: list[str], count: int) -> None:
        if len(params) < count:
            raise _Refused(ERR_SYNTAX, StatusBit.SYNTAX_ERROR)

    def _receipt(self) -> SimReceipt:
        if self.open_receipt is None:
            raise _Refused(ERR_NOT_PERMITTED, StatusBit.NOT_PERMITTED)
        return self.open_receipt

    def _open(self, params: list[str]) -> list[str]:
        self._need(params, 4)
        if self.open_receipt is not None:
            raise _Refused(ERR_NOT_PERMITTED, StatusBit.NOT_PERMITTED)
        operator, till = int(params[0]), int(params[2])
        if not 1 <= operator <= 30 or not 1 <= till <= 99999:
            raise _Refused(ERR_SYNTAX, StatusBit.SYNTAX_ERROR)
        self.receipt_number += 1
        self.document_number += 1
        self.open_receipt = SimReceipt(self.receipt_number, operator, till)
        return [str(self.receipt_number)]

    def _sale(self, params: list[str]) -> list[str]:
        self._need(params, 7)
        receipt = self._receipt()
        if receipt.payments:
            raise _Refused(ERR_NOT_PERMITTED, StatusBit.NOT_PERMITTED)
        name, tax, price_s, qty_s, dtype, dvalue, dept = params[:7]
        if not name or len(name) > 72 or tax not in "12345678" or len(tax) != 1:
            raise _Refused(ERR_SYNTAX, StatusBit.SYNTAX_ERROR)
        if not 0 <= int(dept or "0") <= 99:
            raise _Refused(ERR_SYNTAX, StatusBit.SYNTAX_ERROR)
        price = _money(price_s)
        quantity = _money(qty_s or "1.000", MAX_QUANTITY)
        amount = (price * quantity).quantize(CENT, ROUND_HALF_UP)
        if abs(amount) > MAX_AMOUNT:
            raise _Refused(ERR_SYNTAX, StatusBit.SYNTAX_ERROR)
        if dtype in ("1", "2", "3", "4"):
            value = _money(dvalue)
            if dtype in ("1", "2"):
                delta = (amount * value / 100).quantize(CENT, ROUND_HALF_UP)
            else:
                delta = value.quantize(CENT, ROUND_HALF_UP)
            amount = amount + delta if dtype in ("1", "3") else amount - delta
        elif dtype not in ("", "0"):
            raise _Refused(ERR_SYNTAX, StatusBit.SYNTAX_ERROR)
        receipt.lines.append(SimLine(name, int(tax), price, quantity, amount))
        self._totals_of(receipt)[int(tax) - 1] += amount
        return [str(receipt.number)]

    def _subtotal(self, params: list[str]) -> list[str]:
        receipt = self._receipt()
        turnovers = [Decimal("0.00")] * 8
        for line in receipt.lines:
            turnovers[line.vat_group - 1] += line.amount
        return [str(receipt.number), str(receipt.amount), *(str(t) for t in turnovers)]

    def _payment(self, params: list[str]) -> list[str]:
        self._need(params, 2)
        receipt = self._receipt()
        if not receipt.lines:
            raise _Refused(ERR_NOT_PERMITTED, StatusBit.NOT_PERMITTED)
        mode = int(params[0])
        amount = _money(params[1])
        if not 0 <= mode <= 5 or amount <= 0:
            raise _Refused(ERR_SYNTAX, StatusBit.SYNTAX_ERROR)
        if mode not in self.paid_modes:
            raise _Refused(ERR_PAID_MODE, StatusBit.SYNTAX_ERROR)
        if receipt.paid >= receipt.amount:
            raise _Refused(ERR_NOT_PERMITTED, StatusBit.NOT_PERMITTED)
        receipt.payments.append((mode, amount))
        # a storno receipt's payments are money handed back to the customer
        sign = -1 if receipt.storno is not None else 1
        if mode == 0:
            self.cash += sign * amount
        if receipt.paid >= receipt.amount:
            change = receipt.paid - receipt.amount
            self.cash -= sign * change
            return ["R", str(change)]
        return ["D", str(receipt.amount - receipt.paid)]

    def _free_text(self, params: list[str]) -> list[str]:
        self._need(params, 1)
        self._receipt().texts.append(params[0])
        return []

    def _close(self, params: list[str]) -> list[str]:
        receipt = self._receipt()
        if not receipt.lines or receipt.paid < receipt.amount:
            raise _Refused(ERR_NOT_PERMITTED, StatusBit.NOT_PERMITTED)
        (self.receipts if receipt.storno is None else self.storno_receipts).append(receipt)
        self.open_receipt = None
        self.last_receipt = receipt
        self.last_cancelled = False
        return [str(receipt.number)]

    def _cancel(self, params: list[str]) -> list[str]:
        receipt = self._receipt()
        if receipt.payments:
            raise _Refused(ERR_NOT_PERMITTED, StatusBit.NOT_PERMITTED)
        for line in receipt.lines:
            self._totals_of(receipt)[line.vat_group - 1] -= line.amount
        self.cancelled.append(receipt)
        self.open_receipt = None
        self.last_receipt = receipt
        self.last_cancelled = True
        return []

    def _report(self, params: list[str]) -> list[str]:
        self._need(params, 1)
        kind = params[0]
        if kind not in ("X", "Z"):
            raise _Refused(ERR_SYNTAX, StatusBit.SYNTAX_ERROR)
        if self.open_receipt is not None:
            raise _Refused(ERR_NOT_PERMITTED, StatusBit.NOT_PERMITTED)
        self.document_number += 1
        totals = [str(t) for t in self.day_totals]
        stornos = [str(t) for t in self.storno_totals]
        if kind == "Z":
            self.z_number += 1
            self.fiscal_memory.append(
                (
                    self.z_number,
                    list(self.day_totals),
                    list(self.storno_totals),
                    datetime.now().strftime("%d-%m-%y"),
                )
            )
            self.day_totals = [Decimal("0.00")] * 8
            self.storno_totals = [Decimal("0.00")] * 8
            self.cash_in_total = self.cash_out_total = Decimal("0.00")
        number = self.z_number if kind == "Z" else self.z_number + 1
        self.reports.append((kind, number))
        return [str(number), *totals, *stornos]

    def _cash(self, params: list[str]) -> list[str]:
        self._need(params, 2)
        if self.open_receipt is not None:
            raise _Refused(ERR_NOT_PERMITTED, StatusBit.NOT_PERMITTED)
        kind, amount = params[0], _money(params[1])
        if kind not in ("0", "1") or amount < 0:
            raise _Refused(ERR_SYNTAX, StatusBit.SYNTAX_ERROR)
        if amount != 0:
            if kind == "1" and amount > self.cash:
                raise _Refused(ERR_OVERFLOW, StatusBit.OVERFLOW)
            self.cash += amount if kind == "0" else -amount
            if kind == "0":
                self.cash_in_total += amount
            else:
                self.cash_out_total += amount
            self.cash_moves.append((int(kind), amount))
            self.document_number += 1
        return [str(self.cash), str(self.cash_in_total), str(self.cash_out_total)]

    def _status(self, params: list[str]) -> list[str]:
        return []  # the 8 status bytes are appended raw by _frame

    def _transaction(self, params: list[str]) -> list[str]:
        receipt = self.open_receipt
        if receipt is not None:
            return [
                "1" if receipt.storno is None else str(2 + receipt.storno.reason),
                str(receipt.number),
                str(len(receipt.lines)),
                str(receipt.amount),
                str(receipt.paid),
            ]
        last = self.last_receipt
        if last is None:
            return ["0", str(self.receipt_number), "0", "0.00", "0.00"]
        if self.last_cancelled:
            # a cancelled receipt leaves nothing fiscalized behind
            return ["0", str(last.number), "0", "0.00", "0.00"]
        return ["0", str(last.number), str(len(last.lines)), str(last.amount), str(last.paid)]

    def _last_document(self, params: list[str]) -> list[str]:
        return [str(self.document_number)]

    def _totals_of(self, receipt: SimReceipt) -> list[Decimal]:
        return self.day_totals if receipt.storno is None else self.storno_totals

    def _open_storno(self, params: list[str]) -> list[str]:
        """0x2B: OpCode, OpPwd, TillNmb, Storno, DocNum, DateTime, FMNumber, Invoice,
        ToInvoice, Reason, NSale (the manual's order; checked here on its own, not with
        the driver's code, so a driver bug cannot hide behind a shared parser)."""
        self._need(params, 7)
        if self.open_receipt is not None:
            raise _Refused(ERR_NOT_PERMITTED, StatusBit.NOT_PERMITTED)
        params = params + [""] * (11 - len(params))
        operator, password, till = int(params[0]), params[1], int(params[2])
        reason, number, when, fm_number = params[3], int(params[4]), params[5], params[6]
        invoice, to_invoice, invoice_reason, nsale = params[7:11]
        ok = (
            1 <= operator <= 30
            and re.fullmatch(r"\d{1,8}", password) is not None
            and 1 <= till <= 99999
            and reason in ("0", "1", "2")
            and 1 <= number <= 9_999_999
            and re.fullmatch(r"\d{2}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}( DST)?", when) is not None
            and re.fullmatch(r"\d{8}", fm_number) is not None
            and invoice in ("", "I")
            and (invoice == "I" or not (to_invoice or invoice_reason))
            and (not nsale or re.fullmatch(r"[A-Z]{2}\d{6}-[0-9A-Za-z]{4}-\d{7}", nsale))
        )
        if not ok:
            raise _Refused(ERR_SYNTAX, StatusBit.SYNTAX_ERROR)
        datetime.strptime(when.removesuffix(" DST"), "%d-%m-%y %H:%M:%S")  # a real date
        self.receipt_number += 1
        self.document_number += 1
        self.open_receipt = SimReceipt(
            self.receipt_number,
            operator,
            till,
            storno=SimStorno(int(reason), number, when, fm_number, nsale),
        )
        return [str(self.receipt_number)]

    def _last_fiscal_entry(self, params: list[str]) -> list[str]:
        kind = (params[:1] or ["0"])[0] or "0"
        if kind not in ("0", "2"):
            # 1 and 3 are VAT amounts: the simulator keeps no VAT rates
            raise _Refused(ERR_SYNTAX, StatusBit.SYNTAX_ERROR)
        if not self.fiscal_memory:
            return ["0", *(["0.00"] * 8), ""]
        number, totals, stornos, date = self.fiscal_memory[-1]
        values = totals if kind == "0" else stornos
        return [str(number), *(str(v) for v in values), date]

    def _diagnostic(self, params: list[str]) -> list[str]:
        return [
            "FP-700X SIM",
            "1.00BG",
            "01Jan24",
            "1200",
            "ABCD",
            "00000000",
            self.serial_number,
            self.fiscal_memory_number,
        ]


def _zero(texts: list[str]) -> bool:
    try:
        return bool(texts) and Decimal(texts[0]) == 0
    except InvalidOperation:
        return False
