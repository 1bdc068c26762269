"""Datecs ISL fiscal printer, "X" protocol (FP-700X, FMP-350X, DP-25X, WP-500X, ...).

Framing (DEVICES.md §2)::

    host -> printer   01 LEN SEQ CMD DATA 05 BCC 03
    printer -> host   01 LEN SEQ CMD DATA 04 STATUS 05 BCC 03

LEN, CMD and BCC are 16-bit values sent as four bytes, one nibble each plus 0x30. LEN is
the count of bytes after 01 up to and including 05, plus 0x20; BCC is the 16-bit sum of
those bytes. Parameters are each followed by TAB; a byte below 0x20 inside a parameter
is sent as ``10`` then byte+0x40. NAK (15) asks for the same frame again, SYN (16) means
"still working". A frame whose SEQ equals the previous one is not executed again: the
printer repeats its answer, so resending with the same SEQ after a lost answer is safe.

Use::

    printer = DatecsFiscalPrinter("socket://127.0.0.1:4002")
    receipt = FiscalReceipt(
        lines=(SaleLine("Milk 1L", "A", Decimal("1.99"), Decimal("2.000")),),
        payments=(Payment("cash", Decimal("5.00")),),
    )
    result = printer.print_receipt(receipt)        # FiscalResult(slip_number=..., ...)

Exactly once: :meth:`DatecsFiscalPrinter.print_receipt` notes the printer's last receipt
number before it starts (``previous_receipt_number``). After a timeout or a lost link it
never re-sends a fiscal command with a new SEQ; it reads the transaction status (0x4C)
and reconciles: a closed receipt after that number, paid, with this receipt's total, is
this receipt (its number is returned); an open receipt that is this one is continued or
cancelled; anything it cannot explain raises ``FiscalError("unknown_state")`` instead of
printing. A failed call raises :class:`~devices.errors.FiscalError` carrying
``previous_receipt_number``; store it with the sale and retry with
``dataclasses.replace(receipt, previous_receipt_number=exc.previous_receipt_number)``
(the same driver object also remembers it for a retry of an equal receipt).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum, IntEnum

from devices.errors import Condition, DeviceError, FiscalError
from devices.ports import Port, SerialSettings
from devices.translit import transliterate

__all__ = [
    "ACK_BYTES",
    "BCC_END",
    "CMD_CANCEL_RECEIPT",
    "CMD_CASH_IN_OUT",
    "CMD_CLOSE_RECEIPT",
    "CMD_DIAGNOSTIC",
    "CMD_FREE_TEXT",
    "CMD_LAST_DOCUMENT",
    "CMD_LAST_FISCAL_ENTRY",
    "CMD_OPEN_RECEIPT",
    "CMD_OPEN_STORNO",
    "CMD_PAYMENT",
    "CMD_REPORT",
    "CMD_SALE",
    "CMD_STATUS",
    "CMD_SUBTOTAL",
    "CMD_TRANSACTION_STATUS",
    "DATA_END",
    "ETX",
    "MAX_AMOUNT",
    "MAX_DATA",
    "MAX_QUANTITY",
    "NAK",
    "PAYMENT_MODES",
    "PREAMBLE",
    "STATE_CHANGING",
    "SYN",
    "VAT_GROUPS",
    "Answer",
    "CashState",
    "DatecsFiscalPrinter",
    "DiagnosticInfo",
    "FinishedReceipt",
    "FiscalEntry",
    "FiscalReceipt",
    "FiscalResult",
    "FiscalStatus",
    "Payment",
    "ReportResult",
    "Request",
    "SaleLine",
    "StatusBit",
    "StornoReason",
    "StornoReference",
    "TransactionStatus",
    "blocked_reason",
    "build_answer",
    "build_request",
    "decode_nibbles",
    "encode_nibbles",
    "encode_params",
    "escape",
    "format_amount",
    "format_fiscal_datetime",
    "format_quantity",
    "line_amount",
    "parse_answer",
    "parse_request",
    "parse_storno_open",
    "plu_name",
    "printable_text",
    "replace_hint",
    "split_params",
    "status_error",
    "storno_open_params",
    "storno_open_request",
    "unescape",
]

PREAMBLE = 0x01
DATA_END = 0x04  # separates DATA from STATUS in answers
BCC_END = 0x05
ETX = 0x03
NAK = 0x15
SYN = 0x16
ESCAPE = 0x10
TAB = 0x09
ACK_BYTES = frozenset({NAK, SYN})
MAX_DATA = 213
SEQ_MIN = 0x20

CMD_OPEN_STORNO = 0x2B  # from the vendor's programmer's manual, not in DEVICES.md
CMD_OPEN_RECEIPT = 0x30
CMD_SALE = 0x31
CMD_SUBTOTAL = 0x33
CMD_PAYMENT = 0x35
CMD_FREE_TEXT = 0x36
CMD_CLOSE_RECEIPT = 0x38
CMD_CANCEL_RECEIPT = 0x3C
CMD_LAST_FISCAL_ENTRY = 0x40  # vendor manual: the last Z report in fiscal memory
CMD_REPORT = 0x45
CMD_CASH_IN_OUT = 0x46
CMD_STATUS = 0x4A
CMD_TRANSACTION_STATUS = 0x4C
CMD_DIAGNOSTIC = 0x5A  # vendor manual: name, firmware, serial and fiscal memory number
CMD_LAST_DOCUMENT = 0x71

STATE_CHANGING = frozenset(
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

VAT_GROUPS = {letter: str(i + 1) for i, letter in enumerate("ABCDEFGH")}
# PaidMode of 0x35; 3..5 are the printer's "other" payment kinds (vouchers, ...).
PAYMENT_MODES = {
    "cash": 0,
    "credit_card": 1,
    "debit_card": 2,
    "other_3": 3,
    "other_4": 4,
    "other_5": 5,
}
CODEPAGE = "cp1251"
PLU_NAME_MAX = 72  # PluName of 0x31
CENT = Decimal("0.01")
MILLI = Decimal("0.001")
# Field ranges of the vendor's manual: Price, Price x Quantity, a discount sum, a
# payment and a cash move at most 9999999.99; a quantity at most 999999.999.
MAX_AMOUNT = Decimal("9999999.99")
MAX_QUANTITY = Decimal("999999.999")


# ---------------------------------------------------------------------------------------
# pure framing
# ---------------------------------------------------------------------------------------
def encode_nibbles(value: int) -> bytes:
    """A 16-bit value as four bytes, one nibble each plus 0x30 (0x1AE3 -> b"1:>3")."""
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{value:#x} does not fit in 16 bits")
    return bytes(0x30 + ((value >> shift) & 0xF) for shift in (12, 8, 4, 0))


def decode_nibbles(data: bytes) -> int:
    """Inverse of :func:`encode_nibbles`; ``ValueError`` if a byte is not 0x30..0x3F."""
    if len(data) != 4 or any(not 0x30 <= b <= 0x3F for b in data):
        raise ValueError(f"bad nibble field {data!r}")
    value = 0
    for b in data:
        value = (value << 4) | (b - 0x30)
    return value


def escape(raw: bytes) -> bytes:
    """Bytes below 0x20 inside a parameter go out as 10, byte+0x40."""
    out = bytearray()
    for b in raw:
        if b < 0x20:
            out += bytes((ESCAPE, b + 0x40))
        else:
            out.append(b)
    return bytes(out)


def unescape(raw: bytes) -> bytes:
    out = bytearray()
    it = iter(raw)
    for b in it:
        if b == ESCAPE:
            nxt = next(it, None)
            if nxt is None or not 0x40 <= nxt < 0x60:
                raise ValueError(f"bad escape in {raw!r}")
            out.append(nxt - 0x40)
        else:
            out.append(b)
    return bytes(out)


def printable_text(text: str, limit: int | None = None, codepage: str = CODEPAGE) -> str:
    """``text`` as the printer can print it, never failing: characters of its code page
    stay, others are transliterated ("Käse" -> "Kase", "ß" -> "ss", "ﬁ" -> "fi"), what
    has no spelling in it becomes "?", control characters become spaces; then cut to
    ``limit`` characters (the code pages of these printers have one byte a character).
    The transliteration is :func:`devices.translit.transliterate`, the receipt printer's
    and the customer display's too."""
    result = transliterate(text, codepage)
    return result if limit is None else result[:limit]


def plu_name(name: str, codepage: str = CODEPAGE) -> str:
    """A sale line's PluName as sent: printable, at most 72 characters, never empty."""
    return printable_text(name, PLU_NAME_MAX, codepage).strip() or "?"


def encode_params(params: Sequence[str | bytes], codepage: str = CODEPAGE) -> bytes:
    """Each parameter escaped and followed by TAB (empty ones too)."""
    out = bytearray()
    for param in params:
        raw = param if isinstance(param, bytes) else param.encode(codepage)
        out += escape(raw) + bytes([TAB])
    return bytes(out)


def split_params(data: bytes, codepage: str = CODEPAGE) -> list[str]:
    """Inverse of :func:`encode_params` (a missing final TAB is tolerated)."""
    if not data:
        return []
    parts = data.split(bytes([TAB]))
    if parts[-1] == b"":
        parts.pop()
    return [unescape(p).decode(codepage) for p in parts]


def _bcc(body: bytes) -> int:
    return sum(body) & 0xFFFF


def build_request(seq: int, cmd: int, data: bytes = b"") -> bytes:
    """Host frame ``01 LEN SEQ CMD DATA 05 BCC 03``; ``data`` is already escaped."""
    if not SEQ_MIN <= seq <= 0xFF:
        raise ValueError(f"SEQ {seq:#x} outside 0x20..0xFF")
    if len(data) > MAX_DATA:
        raise ValueError(f"{len(data)} data bytes, the printer takes at most {MAX_DATA}")
    length = 4 + 1 + 4 + len(data) + 1 + 0x20
    body = encode_nibbles(length) + bytes([seq]) + encode_nibbles(cmd) + data + bytes([BCC_END])
    return bytes([PREAMBLE]) + body + encode_nibbles(_bcc(body)) + bytes([ETX])


def build_answer(seq: int, cmd: int, data: bytes, status: bytes) -> bytes:
    """Printer frame ``01 LEN SEQ CMD DATA 04 STATUS 05 BCC 03`` (used by the simulator)."""
    if len(status) != 8:
        raise ValueError("status is 8 bytes")
    length = 4 + 1 + 4 + len(data) + 1 + 8 + 1 + 0x20
    body = (
        encode_nibbles(length)
        + bytes([seq])
        + encode_nibbles(cmd)
        + data
        + bytes([DATA_END])
        + status
        + bytes([BCC_END])
    )
    return bytes([PREAMBLE]) + body + encode_nibbles(_bcc(body)) + bytes([ETX])


@dataclass(frozen=True, slots=True)
class Request:
    seq: int
    cmd: int
    data: bytes  # escaped, as on the wire


@dataclass(frozen=True, slots=True)
class Answer:
    seq: int
    cmd: int
    data: bytes  # escaped, as on the wire
    status: bytes

    @property
    def params(self) -> list[str]:
        return split_params(self.data)

    @property
    def error_code(self) -> int:
        params = self.params
        if not params:
            raise FiscalError(Condition.BAD_FRAME, "answer without ErrorCode")
        try:
            return int(params[0])
        except ValueError as exc:
            raise FiscalError(Condition.BAD_FRAME, f"bad ErrorCode {params[0]!r}") from exc


def _unframe(frame: bytes) -> tuple[int, int, bytes]:
    """Check the envelope, LEN and BCC; return (seq, cmd, payload between CMD and 05)."""
    if len(frame) < 16 or frame[0] != PREAMBLE or frame[-1] != ETX or frame[-6] != BCC_END:
        raise ValueError(f"not a frame: {frame.hex(' ')}")
    body = frame[1:-5]
    if decode_nibbles(frame[-5:-1]) != _bcc(body):
        raise ValueError("BCC mismatch")
    if decode_nibbles(body[:4]) != len(body) + 0x20:
        raise ValueError("LEN mismatch")
    seq = body[4]
    if seq < SEQ_MIN:
        raise ValueError(f"bad SEQ {seq:#x}")
    return seq, decode_nibbles(body[5:9]), body[9:-1]


def parse_request(frame: bytes) -> Request:
    """Parse a host frame; ``ValueError`` if malformed (the printer answers NAK)."""
    seq, cmd, data = _unframe(frame)
    if len(data) > MAX_DATA or any(b < 0x20 and b not in (TAB, ESCAPE) for b in data):
        raise ValueError("bad data")
    return Request(seq, cmd, data)


def parse_answer(frame: bytes) -> Answer:
    """Parse a printer frame; raises ``FiscalError(bad_frame)`` if malformed."""
    try:
        seq, cmd, payload = _unframe(frame)
        if len(payload) < 9 or payload[-9] != DATA_END:
            raise ValueError("no status block")
        status = payload[-8:]
        if any(not b & 0x80 for b in status):
            raise ValueError("status byte without bit 7")
        data = payload[:-9]
        if any(b < 0x20 and b not in (TAB, ESCAPE) for b in data):
            raise ValueError("unescaped control byte in data")
    except ValueError as exc:
        raise FiscalError(Condition.BAD_FRAME, str(exc), raw=frame.hex(" ")) from exc
    return Answer(seq, cmd, data, status)


# ---------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------
class StatusBit(Enum):
    """Named status conditions, valued (byte index, bit)."""

    SYNTAX_ERROR = (0, 0)
    INVALID_COMMAND = (0, 1)
    CLOCK_NOT_SET = (0, 2)
    MECHANISM_FAILURE = (0, 4)
    GENERAL_ERROR = (0, 5)
    COVER_OPEN = (0, 6)
    OVERFLOW = (1, 0)
    NOT_PERMITTED = (1, 1)
    PAPER_END = (2, 0)
    PAPER_NEAR_END = (2, 1)
    JOURNAL_FULL = (2, 2)
    FISCAL_RECEIPT_OPEN = (2, 3)
    JOURNAL_NEARLY_FULL = (2, 4)
    NONFISCAL_RECEIPT_OPEN = (2, 5)
    FEW_REPORTS_LEFT = (4, 3)
    FISCAL_MEMORY_FULL = (4, 4)
    FISCAL_MEMORY_DAMAGED = (4, 6)
    FISCALIZED = (5, 3)
    VAT_RATES_SET = (5, 4)


@dataclass(frozen=True, slots=True)
class FiscalStatus:
    """The 8 status bytes, decoded."""

    raw: bytes
    flags: frozenset[StatusBit]

    @classmethod
    def decode(cls, raw: bytes) -> FiscalStatus:
        if len(raw) != 8:
            raise FiscalError(Condition.BAD_FRAME, "status is 8 bytes")
        flags = frozenset(f for f in StatusBit if raw[f.value[0]] >> f.value[1] & 1)
        return cls(bytes(raw), flags)

    @staticmethod
    def encode(flags: set[StatusBit] | frozenset[StatusBit]) -> bytes:
        out = bytearray([0x80] * 8)  # bit 7 of every status byte is always 1
        for f in flags:
            out[f.value[0]] |= 1 << f.value[1]
        return bytes(out)

    def __contains__(self, flag: object) -> bool:
        return flag in self.flags

    @property
    def names(self) -> list[str]:
        return sorted(f.name.lower() for f in self.flags)


_STATUS_CONDITIONS: tuple[tuple[StatusBit, Condition], ...] = (
    (StatusBit.PAPER_END, Condition.PAPER_END),
    (StatusBit.COVER_OPEN, Condition.COVER_OPEN),
    (StatusBit.MECHANISM_FAILURE, Condition.MECHANISM_FAILURE),
    (StatusBit.FISCAL_MEMORY_DAMAGED, Condition.FISCAL_MEMORY),
    (StatusBit.FISCAL_MEMORY_FULL, Condition.FISCAL_MEMORY),
    (StatusBit.JOURNAL_FULL, Condition.JOURNAL_FULL),
    (StatusBit.NOT_PERMITTED, Condition.NOT_PERMITTED),
    (StatusBit.SYNTAX_ERROR, Condition.SYNTAX_ERROR),
    (StatusBit.INVALID_COMMAND, Condition.INVALID_COMMAND),
    (StatusBit.OVERFLOW, Condition.COMMAND_FAILED),
)


def status_error(status: FiscalStatus) -> Condition | None:
    """The condition that best explains a refused command, from the status bits."""
    for flag, condition in _STATUS_CONDITIONS:
        if flag in status:
            return condition
    return None


# ---------------------------------------------------------------------------------------
# receipts
# ---------------------------------------------------------------------------------------
def format_amount(value: Decimal) -> str:
    return str(value.quantize(CENT, ROUND_HALF_UP))


def format_quantity(value: Decimal) -> str:
    return str(value.quantize(MILLI, ROUND_HALF_UP))


@dataclass(frozen=True, slots=True)
class SaleLine:
    """One sale line. ``discount_percent`` / ``discount_amount`` are discounts (reductions);
    ``surcharge_percent`` / ``surcharge_amount`` are mark-ups. At most one may be set."""

    name: str
    vat_group: str
    price: Decimal
    quantity: Decimal = Decimal("1.000")
    discount_percent: Decimal | None = None
    discount_amount: Decimal | None = None
    surcharge_percent: Decimal | None = None
    surcharge_amount: Decimal | None = None
    department: int = 0

    def discount(self) -> tuple[str, str]:
        """(DiscountType, DiscountValue) as sent: 1 +%, 2 -%, 3 +sum, 4 -sum."""
        kinds = (
            ("1", self.surcharge_percent),
            ("2", self.discount_percent),
            ("3", self.surcharge_amount),
            ("4", self.discount_amount),
        )
        present = [(k, v) for k, v in kinds if v is not None]
        if len(present) > 1:
            raise ValueError(f"line {self.name!r}: more than one discount/surcharge")
        if not present:
            return "", ""
        kind, value = present[0]
        assert value is not None
        return kind, format_amount(value)


def line_amount(line: SaleLine) -> Decimal:
    """The line total the printer registers: price x quantity, then the discount,
    each rounded half-up to cents (the reconciliation compares totals computed this way)."""
    gross = (line.price * line.quantity).quantize(CENT, ROUND_HALF_UP)
    if line.discount_percent is not None:
        gross -= (gross * line.discount_percent / 100).quantize(CENT, ROUND_HALF_UP)
    if line.surcharge_percent is not None:
        gross += (gross * line.surcharge_percent / 100).quantize(CENT, ROUND_HALF_UP)
    if line.discount_amount is not None:
        gross -= line.discount_amount.quantize(CENT, ROUND_HALF_UP)
    if line.surcharge_amount is not None:
        gross += line.surcharge_amount.quantize(CENT, ROUND_HALF_UP)
    return gross


@dataclass(frozen=True, slots=True)
class Payment:
    type: str  # "cash", "credit_card", "debit_card"
    amount: Decimal


# ---------------------------------------------------------------------------------------
# storno (refund) receipts: command 0x2B from the vendor's programmer's manual
# ---------------------------------------------------------------------------------------
class StornoReason(IntEnum):
    """``Storno`` parameter of 0x2B; 0x4C then reports ``IsOpen`` = 2 + this value."""

    OPERATOR_ERROR = 0
    REFUND = 1
    TAX_BASE_REDUCTION = 2


_NSALE = re.compile(r"^[A-Z]{2}\d{6}-[0-9A-Za-z]{4}-\d{7}$")
_FM_NUMBER = re.compile(r"^\d{8}$")


def format_fiscal_datetime(moment: datetime) -> str:
    """``DD-MM-YY hh:mm:ss`` plus `` DST`` when summer time is in force (an aware datetime
    in the printer's zone says so; a naive one never does)."""
    text = moment.strftime("%d-%m-%y %H:%M:%S")
    dst = moment.dst()
    return f"{text} DST" if dst is not None and dst != timedelta(0) else text


@dataclass(frozen=True, slots=True)
class StornoReference:
    """The original fiscal document a storno receipt reverses (0x2B's mandatory fields).

    ``document_number``: the original's number (DocNum, 1..9999999); ``document_time``:
    when it was issued, in the printer's local time; ``fiscal_memory_number``: the 8-digit
    fiscal memory number of the device that issued it (0x5A answers it);
    ``unique_sale_number``: NSale (``LLDDDDDD-CCCC-DDDDDDD``) when the original had one."""

    document_number: int
    document_time: datetime
    fiscal_memory_number: str
    reason: StornoReason = StornoReason.REFUND
    unique_sale_number: str = ""

    def validate(self) -> None:
        if not 1 <= self.document_number <= 9_999_999:
            raise ValueError("storno: the original document number must be 1..9999999")
        if not _FM_NUMBER.match(self.fiscal_memory_number):
            raise ValueError("storno: the fiscal memory number has 8 digits")
        if self.unique_sale_number and not _NSALE.match(self.unique_sale_number):
            raise ValueError("storno: NSale must look like LLDDDDDD-CCCC-DDDDDDD")
        StornoReason(self.reason)

    @property
    def open_state(self) -> int:
        """``IsOpen`` of 0x4C while this storno receipt is open."""
        return 2 + int(self.reason)


def storno_open_params(
    operator: int, password: str, till: int, reference: StornoReference
) -> list[str]:
    """0x2B's parameters: OpCode, OpPwd, TillNmb, Storno, DocNum, DateTime, FMNumber,
    Invoice, ToInvoice, Reason, NSale (invoice stornos are not issued: those three empty)."""
    reference.validate()
    return [
        str(operator),
        password,
        str(till),
        str(int(reference.reason)),
        str(reference.document_number),
        format_fiscal_datetime(reference.document_time),
        reference.fiscal_memory_number,
        "",
        "",
        "",
        reference.unique_sale_number,
    ]


def storno_open_request(
    seq: int,
    reference: StornoReference,
    *,
    operator: int = 1,
    password: str = "1",
    till: int = 1,
    codepage: str = CODEPAGE,
) -> bytes:
    """The whole host frame that opens a storno receipt."""
    params = storno_open_params(operator, password, till, reference)
    return build_request(seq, CMD_OPEN_STORNO, encode_params(params, codepage))


def parse_storno_open(data: bytes) -> tuple[int, str, int, StornoReference]:
    """Inverse of :func:`storno_open_params` on the wire data of a 0x2B frame:
    (operator, password, till, reference); ``ValueError`` when it is not a valid one."""
    params = split_params(data)
    if len(params) < 7:
        raise ValueError("0x2B needs OpCode, OpPwd, TillNmb, Storno, DocNum, DateTime, FMNumber")
    params += [""] * (11 - len(params))
    operator, password, till, kind, number, when, fm_number = params[:7]
    invoice, to_invoice, invoice_reason, nsale = params[7:11]
    if invoice not in ("", "I") or (not invoice and (to_invoice or invoice_reason)):
        raise ValueError("ToInvoice and Reason belong to invoice stornos only")
    text = when.removesuffix(" DST")
    moment = datetime.strptime(text, "%d-%m-%y %H:%M:%S")
    reference = StornoReference(
        document_number=int(number),
        document_time=moment,
        fiscal_memory_number=fm_number,
        reason=StornoReason(int(kind)),
        unique_sale_number=nsale,
    )
    reference.validate()
    if not password.isdigit() or not 1 <= len(password) <= 8:
        raise ValueError("OpPwd is 1..8 digits")
    return int(operator), password, int(till), reference


@dataclass(frozen=True, slots=True)
class FiscalReceipt:
    """A whole receipt. ``previous_receipt_number`` is the idempotence hint: the printer's
    last receipt number before this receipt was first attempted (see module docs)."""

    lines: tuple[SaleLine, ...]
    payments: tuple[Payment, ...]
    operator: int = 1
    password: str = "1"
    till: int = 1
    invoice: bool = False
    previous_receipt_number: int | None = None
    # Set: a storno (refund) receipt reversing this original document, opened with 0x2B.
    storno: StornoReference | None = None

    @property
    def open_state(self) -> int:
        """``IsOpen`` of 0x4C while this receipt is open: 1, or 2..4 for a storno."""
        return 1 if self.storno is None else self.storno.open_state

    def total(self) -> Decimal:
        return sum((line_amount(line) for line in self.lines), Decimal("0.00"))

    def validate(self) -> None:
        if not self.lines:
            raise ValueError("a receipt needs at least one line")
        if self.storno is not None:
            if self.invoice:
                raise ValueError("invoice stornos are not supported")
            self.storno.validate()
        if not 1 <= self.operator <= 30:
            raise ValueError("operator must be 1..30")
        if not 1 <= self.till <= 99999:
            raise ValueError("till must be 1..99999")
        for line in self.lines:
            if line.vat_group not in VAT_GROUPS:
                raise ValueError(f"line {line.name!r}: VAT group must be A..H")
            if not line.name:
                # longer names are cut to PluName's 72 characters when sent (plu_name)
                raise ValueError("a line needs a name")
            if line.quantity <= 0:
                raise ValueError(f"line {line.name!r}: quantity must be positive")
            if (
                line.quantity > MAX_QUANTITY
                or abs(line.price) > MAX_AMOUNT
                or (line.price * line.quantity).quantize(CENT, ROUND_HALF_UP) > MAX_AMOUNT
            ):
                # the printer refuses the field; refused here before anything is sent
                raise ValueError(f"line {line.name!r}: beyond the printer's 9999999.99")
            if not 0 <= line.department <= 99:
                raise ValueError(f"line {line.name!r}: department must be 0..99")
            line.discount()
        for payment in self.payments:
            if payment.type not in PAYMENT_MODES:
                raise ValueError(f"payment type must be one of {sorted(PAYMENT_MODES)}")
            if payment.amount <= 0:
                raise ValueError("payment amounts must be positive")
            if payment.amount > MAX_AMOUNT:
                raise ValueError(f"payment {payment.amount}: beyond the printer's 9999999.99")
        total = self.total()
        if total <= 0:
            raise ValueError("receipt total must be positive")
        if sum((p.amount for p in self.payments), Decimal(0)) < total:
            raise ValueError(f"payments do not cover the total {total}")


@dataclass(frozen=True, slots=True)
class FiscalResult:
    """``slip_number``: the fiscal receipt's number. ``reconciled``: established from the
    printer's transaction status after a failure rather than from the close answer."""

    slip_number: int
    total: Decimal
    previous_receipt_number: int
    reconciled: bool = False
    change: Decimal = Decimal("0.00")


@dataclass(frozen=True, slots=True)
class TransactionStatus:
    """Answer to 0x4C. ``number`` is the open receipt's, or the last one's when closed."""

    is_open: int  # 0 closed, 1 open, 2..4 storno open
    number: int
    items: int
    amount: Decimal
    paid: Decimal
    status: FiscalStatus


def blocked_reason(ts: TransactionStatus) -> str | None:
    """Why the printer takes no new receipt, or ``None``: a receipt open with money
    paid cannot be cancelled (0x3C is refused once a payment was made), so nothing
    else prints until someone finishes it (:meth:`DatecsFiscalPrinter.finish_open_receipt`)."""
    if not ts.is_open or ts.paid <= 0:
        return None
    kind = "storno receipt" if ts.is_open >= 2 else "receipt"
    return (
        f"{kind} {ts.number} is open on the printer with {ts.paid} of {ts.amount} paid"
        " and cannot be cancelled; finish it (the rest paid in cash, then closed)"
    )


@dataclass(frozen=True, slots=True)
class FinishedReceipt:
    """What :meth:`DatecsFiscalPrinter.finish_open_receipt` did to the open receipt:
    ``action`` ``cancelled`` (nothing was paid) or ``closed`` (fiscalized, with
    ``cash_added`` paid in cash on top of ``paid_before``)."""

    number: int
    action: str
    amount: Decimal
    paid_before: Decimal
    cash_added: Decimal


@dataclass(frozen=True, slots=True)
class ReportResult:
    report_number: int
    totals: tuple[Decimal, ...]
    storno_totals: tuple[Decimal, ...]


@dataclass(frozen=True, slots=True)
class CashState:
    """Answer of 0x46: cash in the drawer by the printer's count, service cash in / out."""

    cash: Decimal
    cash_in: Decimal
    cash_out: Decimal


@dataclass(frozen=True, slots=True)
class FiscalEntry:
    """Answer of 0x40: the last Z report written to fiscal memory (number 0: none yet)."""

    report_number: int
    totals: tuple[Decimal, ...]
    date: str


@dataclass(frozen=True, slots=True)
class DiagnosticInfo:
    """Answer of 0x5A (the fields a storno reference and a technician need)."""

    name: str
    firmware: str
    serial_number: str
    fiscal_memory_number: str


# ---------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------
class _Mismatch(Exception):
    """The open receipt is not what the commands sent so far should have made."""


class _SeqCollision(Exception):
    """The printer replayed another command's answer for our SEQ."""


class _Transport(Exception):
    """Outcome of one command unknown: no answer, link lost, or unreadable answers."""

    def __init__(self, error: DeviceError) -> None:
        super().__init__(str(error))
        self.error = error


_TRANSPORT_CONDITIONS = frozenset({Condition.NO_ANSWER, Condition.LINK_LOST, Condition.BAD_FRAME})
# printer refusals that need a person (paper, cover, hardware): stop, do not reconcile
_HARD_CONDITIONS = frozenset(
    {
        Condition.PAPER_END,
        Condition.COVER_OPEN,
        Condition.MECHANISM_FAILURE,
        Condition.FISCAL_MEMORY,
        Condition.JOURNAL_FULL,
    }
)


class DatecsFiscalPrinter:
    """Driver for a Datecs "X" protocol fiscal printer at ``port_url``.

    ``answer_timeout`` is the wait for the first byte of an answer (500 ms in the
    protocol); ``resends`` is how many times a frame is sent again with the same SEQ after
    a timeout, a NAK or an unreadable answer; ``busy_timeout`` bounds how long a stream
    of SYN bytes may keep us waiting.
    """

    def __init__(
        self,
        port_url: str | Port,
        *,
        baudrate: int = 115200,
        answer_timeout: float = 0.5,
        resends: int = 3,
        busy_timeout: float = 60.0,
        reopen_attempts: int = 3,
        reopen_delay: float = 0.2,
        codepage: str = CODEPAGE,
    ) -> None:
        self.port = (
            port_url
            if isinstance(port_url, Port)
            else Port(port_url, SerialSettings(baudrate=baudrate), timeout=answer_timeout)
        )
        self.answer_timeout = answer_timeout
        self.resends = resends
        self.busy_timeout = busy_timeout
        self.reopen_attempts = reopen_attempts
        self.reopen_delay = reopen_delay
        self.codepage = codepage
        self._seq = SEQ_MIN - 1
        self._inflight: tuple[FiscalReceipt, int] | None = None
        self.last_exchange_uncertain = False
        self._synced = False
        self.last_status: FiscalStatus | None = None

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> DatecsFiscalPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq = SEQ_MIN if self._seq >= 0xFF else self._seq + 1
        return self._seq

    def _read_answer(self, seq: int, cmd: int) -> Answer | int:
        """One answer frame for ``seq``, or NAK; raises ``no_answer``/``bad_frame``/link."""
        port = self.port
        deadline = time.monotonic() + self.answer_timeout
        busy_until = time.monotonic() + self.busy_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceError(Condition.NO_ANSWER, f"no answer to command {cmd:#04x}")
            first = port.read_some(1, left)
            if not first:
                continue
            b = first[0]
            if b == SYN:
                # the printer is working: each SYN buys another answer timeout
                deadline = min(time.monotonic() + self.answer_timeout, busy_until)
                continue
            if b == NAK:
                return NAK
            if b != PREAMBLE:
                continue  # line noise between frames
            rest = port.read_until(bytes([ETX]), self.answer_timeout, max_bytes=1024)
            if not rest.endswith(bytes([ETX])):
                raise DeviceError(Condition.BAD_FRAME, "answer cut short")
            answer = parse_answer(first + rest)
            if answer.seq == seq and answer.cmd != cmd:
                # the printer took our SEQ for a repeat of an earlier frame (another host
                # or an earlier run used it last) and replayed that answer: ours was not run
                raise _SeqCollision()
            if answer.seq != seq:
                # a late answer to an earlier frame: ours is still to come
                deadline = time.monotonic() + self.answer_timeout
                continue
            return answer

    def _exchange(self, cmd: int, params: Sequence[str] = ()) -> Answer:
        """Send one command; resend the same frame (same SEQ) on NAK, timeout, garbage or
        a lost link. Raises ``_Transport`` when the outcome stays unknown."""
        with self.port.lock:
            if not self._synced:
                self._sync()
            return self._exchange_once(cmd, params)

    def _sync(self) -> None:
        """Get our SEQ out of step with the printer's memory before the first real command.

        The printer replays its last answer for a frame carrying the last SEQ it saw, and
        that SEQ may come from an earlier run of this program. Two status reads with
        consecutive SEQs guarantee the second is fresh, whatever the printer remembers;
        a replayed status is harmless."""
        self._exchange_once(CMD_STATUS, ())
        self._exchange_once(CMD_STATUS, ())
        self._synced = True

    def _exchange_once(self, cmd: int, params: Sequence[str]) -> Answer:
        for _collision in range(3):
            try:
                return self._exchange_seq(cmd, params)
            except _SeqCollision:
                continue
        raise _Transport(DeviceError(Condition.BAD_FRAME, "printer keeps replaying old answers"))

    def _exchange_seq(self, cmd: int, params: Sequence[str]) -> Answer:
        # every text goes through printable_text: a character outside the printer's code
        # page must never make a command (and the receipt queued behind it) unsendable
        data = encode_params(
            [printable_text(p, None, self.codepage) for p in params], self.codepage
        )
        seq = self._next_seq()
        frame = build_request(seq, cmd, data)
        last_error: DeviceError = DeviceError(Condition.NO_ANSWER)
        # a resend after a lost answer may be executed twice by a printer that lost its
        # SEQ memory (power cycle); callers check the effect when this is set
        self.last_exchange_uncertain = False
        with self.port.lock:
            for _attempt in range(self.resends + 1):
                try:
                    if not self.port.is_open:
                        self.port.reopen(self.reopen_attempts, self.reopen_delay)
                    self.port.drain_input()  # stale bytes would be read as our answer
                    self.port.write(frame)
                    got = self._read_answer(seq, cmd)
                except DeviceError as exc:
                    if exc.condition == Condition.LINK_LOST:
                        time.sleep(self.reopen_delay)
                    last_error = exc
                    self.last_exchange_uncertain = True
                    continue
                if isinstance(got, Answer):
                    return got
                last_error = DeviceError(Condition.BAD_FRAME, "printer kept answering NAK")
        raise _Transport(last_error)

    def _command(self, cmd: int, params: Sequence[str] = ()) -> list[str]:
        """Exchange and check ErrorCode; returns the answer fields after ErrorCode."""
        answer = self._exchange(cmd, params)
        status = FiscalStatus.decode(answer.status)
        self.last_status = status
        code = answer.error_code
        if code < 0:
            condition = status_error(status) or Condition.COMMAND_FAILED
            raise FiscalError(
                condition,
                f"command {cmd:#04x} refused with error {code}",
                error_code=code,
                status=status.names,
            )
        return answer.params[1:]

    def _call(self, cmd: int, params: Sequence[str] = ()) -> list[str]:
        """``_command`` for callers outside a receipt: transport trouble is a FiscalError."""
        try:
            return self._command(cmd, params)
        except _Transport as exc:
            raise FiscalError(exc.error.condition, exc.error.message) from exc

    # -- simple commands -----------------------------------------------------------------
    def status(self) -> FiscalStatus:
        """Read status (0x4A)."""
        answer = self._exchange_or_raise(CMD_STATUS)
        status = FiscalStatus.decode(answer.status)
        self.last_status = status
        return status

    def _exchange_or_raise(self, cmd: int) -> Answer:
        try:
            return self._exchange(cmd)
        except _Transport as exc:
            raise FiscalError(exc.error.condition, exc.error.message) from exc

    def transaction_status(self) -> TransactionStatus:
        """Fiscal transaction status (0x4C): is a receipt open, its number, items, sums."""
        fields = self._call(CMD_TRANSACTION_STATUS)
        return self._parse_transaction(fields)

    def _parse_transaction(self, fields: list[str]) -> TransactionStatus:
        try:
            is_open, number, items, amount, paid = fields[:5]
            assert self.last_status is not None
            return TransactionStatus(
                is_open=int(is_open),
                number=int(number),
                items=int(items or 0),
                amount=Decimal(amount or "0").quantize(CENT),
                paid=Decimal(paid or "0").quantize(CENT),
                status=self.last_status,
            )
        except (ValueError, ArithmeticError) as exc:
            raise FiscalError(Condition.BAD_FRAME, f"bad 0x4C answer {fields!r}") from exc

    def last_document_number(self) -> int:
        """Number of the last document the printer issued (0x71)."""
        fields = self._call(CMD_LAST_DOCUMENT)
        try:
            return int(fields[0])
        except (IndexError, ValueError) as exc:
            raise FiscalError(Condition.BAD_FRAME, f"bad 0x71 answer {fields!r}") from exc

    def cancel_receipt(self) -> None:
        """Cancel the open fiscal receipt (0x3C); refused once a payment was made."""
        self._call(CMD_CANCEL_RECEIPT)

    def finish_open_receipt(self) -> FinishedReceipt | None:
        """Finish whatever receipt is open on the printer, the only ways the protocol
        allows: cancel it (0x3C) when nothing is paid; otherwise pay what is still due
        in cash (0x35, PaidMode 0) and close it (0x38). ``None``: nothing was open.

        Each step is chosen from the transaction status (0x4C) read just before it, and
        after a lost answer the status is read again, so a step is never done twice."""
        first = self.transaction_status()
        if not first.is_open:
            return None
        ts = first
        for _step in range(8):
            try:
                if ts.paid == 0:
                    self._command(CMD_CANCEL_RECEIPT)
                elif ts.paid < ts.amount:
                    self._command(CMD_PAYMENT, ["0", format_amount(ts.amount - ts.paid), ""])
                else:
                    self._command(CMD_CLOSE_RECEIPT)
            except _Transport:
                pass  # outcome unknown: the status read next tells
            except FiscalError as exc:
                if exc.condition != Condition.NOT_PERMITTED:
                    raise  # paper, cover...: a person must fix that first
                # a resend executed twice by a printer that lost its SEQ memory
            ts = self.transaction_status()
            if not ts.is_open:
                break
            if ts.number != first.number:
                raise FiscalError(
                    Condition.UNKNOWN_STATE, f"receipt {ts.number} opened while finishing"
                )
        else:
            raise FiscalError(
                Condition.UNKNOWN_STATE, f"receipt {first.number} could not be finished"
            )
        closed = ts.number == first.number and ts.paid > 0
        return FinishedReceipt(
            number=first.number,
            action="closed" if closed else "cancelled",
            amount=first.amount,
            paid_before=first.paid,
            cash_added=(ts.paid - first.paid) if closed else Decimal("0.00"),
        )

    def free_text(self, text: str) -> None:
        """Free text line inside an open fiscal receipt (0x36)."""
        self._call(CMD_FREE_TEXT, [text])

    def _with_document_check(self, cmd: int, params: Sequence[str]) -> list[str]:
        """Run a one-shot document command; after a lost answer, compare the last document
        number with the one read before to learn whether it was executed."""
        before = self.last_document_number()
        try:
            return self._command(cmd, params)
        except _Transport as exc:
            try:
                after = self.last_document_number()
            except FiscalError:
                raise FiscalError(
                    Condition.UNKNOWN_STATE,
                    f"command {cmd:#04x}: answer lost and printer unreachable",
                ) from exc
            if after > before:
                return []  # executed; its answer is gone but the document exists
            raise FiscalError(exc.error.condition, exc.error.message) from exc

    def report(self, kind: str) -> ReportResult:
        """X (``"x"``) or Z (``"z"``, closes the day) report (0x45). A Z report whose
        answer was lost is read back from fiscal memory (0x40)."""
        letter = kind.upper()
        if letter not in ("X", "Z"):
            raise ValueError("report kind is 'x' or 'z'")
        fields = self._with_document_check(CMD_REPORT, [letter])
        if not fields and letter == "Z":
            return self.last_z_report()
        if not fields:
            return ReportResult(report_number=-1, totals=(), storno_totals=())
        try:
            return ReportResult(
                report_number=int(fields[0]),
                totals=tuple(Decimal(v) for v in fields[1:9]),
                storno_totals=tuple(Decimal(v) for v in fields[9:17]),
            )
        except (ValueError, ArithmeticError) as exc:
            raise FiscalError(Condition.BAD_FRAME, f"bad report answer {fields!r}") from exc

    def cash_in_out(self, amount: Decimal, *, out: bool = False) -> CashState | None:
        """Service cash in (or out with ``out=True``) of ``amount`` (0x46); the printer's
        cash counters after it (``None`` when it was executed but its answer was lost)."""
        if amount <= 0:
            raise ValueError("amount must be positive")
        fields = self._with_document_check(
            CMD_CASH_IN_OUT, ["1" if out else "0", format_amount(amount)]
        )
        return _cash_state(fields) if fields else None

    def cash_state(self) -> CashState:
        """The printer's cash counters (0x46 with Amount 0: nothing is printed)."""
        return _cash_state(self._call(CMD_CASH_IN_OUT, ["0", "0.00"]))

    def last_fiscal_entry(self, storno: bool = False) -> FiscalEntry:
        """The last Z report in fiscal memory (0x40): turnover per VAT group, or the storno
        turnover with ``storno=True``."""
        fields = self._call(CMD_LAST_FISCAL_ENTRY, ["2" if storno else "0"])
        try:
            return FiscalEntry(
                report_number=int(fields[0]),
                totals=tuple(Decimal(v) for v in fields[1:9]),
                date=fields[9] if len(fields) > 9 else "",
            )
        except (IndexError, ValueError, ArithmeticError) as exc:
            raise FiscalError(Condition.BAD_FRAME, f"bad 0x40 answer {fields!r}") from exc

    def last_z_report(self) -> ReportResult:
        """The last Z report's number and totals, as fiscal memory holds them."""
        sales = self.last_fiscal_entry()
        stornos = self.last_fiscal_entry(storno=True)
        if stornos.report_number != sales.report_number:
            raise FiscalError(Condition.UNKNOWN_STATE, "fiscal memory changed while read")
        return ReportResult(sales.report_number, sales.totals, stornos.totals)

    def diagnostic(self) -> DiagnosticInfo:
        """Device name, firmware, serial number and fiscal memory number (0x5A)."""
        fields = self._call(CMD_DIAGNOSTIC, [""])
        if len(fields) < 8:
            raise FiscalError(Condition.BAD_FRAME, f"bad 0x5A answer {fields!r}")
        return DiagnosticInfo(
            name=fields[0],
            firmware=f"{fields[1]} {fields[2]} {fields[3]}",
            serial_number=fields[6],
            fiscal_memory_number=fields[7],
        )

    # -- receipts --------------------------------------------------------------------------
    def print_storno(self, receipt: FiscalReceipt, reference: StornoReference) -> FiscalResult:
        """Print a storno (refund) receipt reversing ``reference``: opened with 0x2B, then
        lines, payments (the money handed back) and close as a sale; exactly once, like
        :meth:`print_receipt` (0x4C reports it open with ``IsOpen`` 2..4)."""
        return self.print_receipt(dataclasses.replace(receipt, storno=reference))

    def print_receipt(self, receipt: FiscalReceipt) -> FiscalResult:
        """Print and fiscalize ``receipt`` exactly once (see the module docstring).

        Raises ``FiscalError`` (with ``previous_receipt_number``) when the receipt could
        not be printed or its outcome could not be established; calling again with the
        same receipt (and that hint) is safe."""
        result = self._print_receipt(receipt)
        # done: an equal receipt printed later is a new sale, not a retry of this one
        self._inflight = None
        return result

    def _print_receipt(self, receipt: FiscalReceipt) -> FiscalResult:
        receipt.validate()
        total = receipt.total()
        previous = receipt.previous_receipt_number
        if previous is None and self._inflight is not None and self._inflight[0] == receipt:
            previous = self._inflight[1]
        last_error: DeviceError | None = None
        for _round in range(3):
            try:
                ts = self.transaction_status()
                self._check_printable(ts.status, previous)
                if previous is None:
                    if ts.is_open:
                        self._cancel_leftover(ts, None)
                        ts = self.transaction_status()
                    previous = ts.number
                    self._inflight = (receipt, previous)
                    return self._print_from(receipt, total, previous, 0, Decimal(0), False)
                return self._reconcile(receipt, total, previous, ts)
            except _Transport as exc:
                last_error = exc.error
            except _Mismatch as exc:
                last_error = FiscalError(Condition.UNKNOWN_STATE, str(exc))
            except FiscalError as exc:
                if (
                    exc.condition in _TRANSPORT_CONDITIONS
                    or exc.condition == Condition.NOT_PERMITTED
                ):
                    # transport trouble, or a resend executed twice by a printer that lost
                    # its SEQ memory: learn the state again
                    last_error = exc
                    continue
                exc.previous_receipt_number = previous
                raise
        assert last_error is not None
        raise FiscalError(
            last_error.condition,
            f"receipt outcome not established: {last_error.message}",
            previous_receipt_number=previous,
        )

    def _check_printable(self, status: FiscalStatus, previous: int | None) -> None:
        for flag, condition in (
            (StatusBit.PAPER_END, Condition.PAPER_END),
            (StatusBit.COVER_OPEN, Condition.COVER_OPEN),
            (StatusBit.MECHANISM_FAILURE, Condition.MECHANISM_FAILURE),
        ):
            if flag in status:
                raise FiscalError(condition, previous_receipt_number=previous)

    def _cancel_leftover(self, ts: TransactionStatus, previous: int | None) -> None:
        if ts.paid > 0:
            # payments made: the printer refuses to cancel; a person must decide
            raise FiscalError(
                Condition.RECEIPT_OPEN,
                f"receipt {ts.number} is open with {ts.paid} paid and is not this one",
                previous_receipt_number=previous,
            )
        self._command(CMD_CANCEL_RECEIPT)

    def _reconcile(
        self, receipt: FiscalReceipt, total: Decimal, previous: int, ts: TransactionStatus
    ) -> FiscalResult:
        if ts.is_open == 0:
            if ts.number == previous:
                return self._print_from(receipt, total, previous, 0, Decimal(0), False)
            if ts.number > previous and ts.paid > 0 and ts.amount == total:
                # closed after our start, paid, with our total: ours
                return FiscalResult(ts.number, total, previous, reconciled=True)
            if ts.number > previous and ts.paid == 0:
                # a receipt of ours that was cancelled: nothing fiscalized, print anew
                self._inflight = (receipt, ts.number)
                return self._print_from(receipt, total, ts.number, 0, Decimal(0), False)
            raise FiscalError(
                Condition.UNKNOWN_STATE,
                f"last receipt {ts.number} ({ts.amount}) does not match this receipt ({total})"
                f" printed after {previous}",
                previous_receipt_number=previous,
            )
        ours = ts.is_open == receipt.open_state and ts.number == previous + 1
        if ours and ts.paid == 0 and ts.items <= len(receipt.lines):
            done = sum((line_amount(li) for li in receipt.lines[: ts.items]), Decimal("0.00"))
            if done == ts.amount:
                # our receipt stopped part-way (paper end, lost link): carry on from there
                return self._print_from(receipt, total, previous, ts.items, Decimal(0), True)
        if ours and ts.paid > 0 and ts.amount == total:
            return self._print_from(receipt, total, previous, len(receipt.lines), ts.paid, True)
        self._cancel_leftover(ts, previous)
        after = self.transaction_status()
        self._inflight = (receipt, after.number)
        return self._print_from(receipt, total, after.number, 0, Decimal(0), False)

    def _print_from(
        self,
        receipt: FiscalReceipt,
        total: Decimal,
        previous: int,
        lines_done: int,
        paid: Decimal,
        is_open: bool,
    ) -> FiscalResult:
        if not is_open and receipt.storno is not None:
            self._command(
                CMD_OPEN_STORNO,
                storno_open_params(
                    receipt.operator, receipt.password, receipt.till, receipt.storno
                ),
            )
        elif not is_open:
            self._command(
                CMD_OPEN_RECEIPT,
                [
                    str(receipt.operator),
                    receipt.password,
                    str(receipt.till),
                    "I" if receipt.invoice else "",
                ],
            )
        for index, line in enumerate(receipt.lines[lines_done:], start=lines_done):
            kind, value = line.discount()
            self._command(
                CMD_SALE,
                [
                    plu_name(line.name, self.codepage),
                    VAT_GROUPS[line.vat_group],
                    format_amount(line.price),
                    format_quantity(line.quantity),
                    kind,
                    value,
                    str(line.department),
                ],
            )
            if self.last_exchange_uncertain:
                expected = sum((line_amount(li) for li in receipt.lines[: index + 1]), Decimal(0))
                self._verify(receipt, index + 1, expected, Decimal(0))
        change = Decimal("0.00")
        paid_so_far = Decimal(0)
        for payment in receipt.payments:
            if paid_so_far >= total:
                break
            amount = payment.amount
            if paid_so_far + amount <= paid:
                paid_so_far += amount  # already registered before the interruption
                continue
            if paid_so_far < paid:
                amount -= paid - paid_so_far
                paid_so_far = paid
            fields = self._command(
                CMD_PAYMENT, [str(PAYMENT_MODES[payment.type]), format_amount(amount), ""]
            )
            paid_so_far += amount
            if self.last_exchange_uncertain:
                self._verify(receipt, len(receipt.lines), total, paid_so_far)
            if len(fields) >= 2 and fields[0] == "R":
                change = Decimal(fields[1])
        fields = self._command(CMD_CLOSE_RECEIPT)
        try:
            slip = int(fields[0])
        except (IndexError, ValueError) as exc:
            raise FiscalError(Condition.BAD_FRAME, f"bad close answer {fields!r}") from exc
        return FiscalResult(slip, total, previous, reconciled=is_open, change=change)

    def _verify(self, receipt: FiscalReceipt, items: int, amount: Decimal, paid: Decimal) -> None:
        """After a resent command, check the open receipt holds exactly what was sent."""
        ts = self.transaction_status()
        if (
            ts.is_open != receipt.open_state
            or ts.items != items
            or ts.amount != amount
            or ts.paid != paid
        ):
            raise _Mismatch(
                f"open receipt has {ts.items} items, {ts.amount} due, {ts.paid} paid;"
                f" expected {items}, {amount}, {paid}"
            )

    def subtotal(self) -> Decimal:
        """Subtotal of the open receipt (0x33), printed."""
        fields = self._call(CMD_SUBTOTAL, ["1", "0", "", ""])
        try:
            return Decimal(fields[1])
        except (IndexError, ValueError, ArithmeticError) as exc:
            raise FiscalError(Condition.BAD_FRAME, f"bad subtotal answer {fields!r}") from exc


def _cash_state(fields: list[str]) -> CashState:
    try:
        cash, cash_in, cash_out = (Decimal(v).quantize(CENT) for v in fields[:3])
    except (ValueError, ArithmeticError) as exc:
        raise FiscalError(Condition.BAD_FRAME, f"bad 0x46 answer {fields!r}") from exc
    return CashState(cash, cash_in, cash_out)


def replace_hint(receipt: FiscalReceipt, previous_receipt_number: int | None) -> FiscalReceipt:
    """``receipt`` with its idempotence hint set (for retries across processes)."""
    return dataclasses.replace(receipt, previous_receipt_number=previous_receipt_number)
