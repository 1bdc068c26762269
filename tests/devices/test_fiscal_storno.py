"""Storno (refund) receipts, cash counters, fiscal memory and identity of the Datecs X
printer: the driver against the simulator over real ptys.

0x2B (open storno document), 0x40 (last fiscal entry) and 0x5A (diagnostic) come from
the vendor's programmer's manual (FP-700X family, v2.08), not from DEVICES.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devices.errors import FiscalError
from devices.fiscal_datecs import (
    CMD_CLOSE_RECEIPT,
    CMD_OPEN_STORNO,
    CMD_REPORT,
    CMD_SALE,
    DatecsFiscalPrinter,
    FiscalReceipt,
    Payment,
    SaleLine,
    StornoReason,
    StornoReference,
    format_fiscal_datetime,
    parse_storno_open,
    storno_open_params,
    storno_open_request,
)
from devices.sim import FiscalSimulator, SimulatorHandle
from tests.devices.conftest import StartSim
from tests.devices.test_fiscal import RECEIPT, make_printer


@pytest.fixture(name="fiscal")
def fiscal_on_a_pty(
    start_sim: StartSim, closing: Callable[[Any], Any]
) -> tuple[SimulatorHandle, FiscalSimulator, DatecsFiscalPrinter]:
    handle = start_sim("fiscal", pty=True)
    printer = closing(make_printer(handle.url))
    return handle, handle.sim, printer


def run_out_of_paper(sim: FiscalSimulator) -> None:
    sim.paper_end = True


ORIGINAL = StornoReference(
    document_number=1,
    document_time=datetime(2024, 3, 5, 14, 7, 9),
    fiscal_memory_number="02345678",
)
REFUND = FiscalReceipt(
    lines=(
        SaleLine("Milk 1L", "A", Decimal("1.99"), Decimal("1.000")),
        SaleLine("Cheese", "B", Decimal("12.49"), Decimal("0.347")),
    ),
    payments=(Payment("cash", Decimal("6.32")),),
)
REFUND_TOTAL = Decimal("6.32")  # 1.99 + 4.33


def nibbles(value: int) -> bytes:
    return bytes(0x30 + ((value >> s) & 0xF) for s in (12, 8, 4, 0))


def test_open_storno_frame_byte_for_byte() -> None:
    """The frame follows the manual's parameter order, built here by hand."""
    data = b"1\t1\t7\t1\t42\t05-03-24 14:07:09\t02345678\t\t\t\t\t"
    body_tail = b" " + nibbles(0x2B) + data + b"\x05"  # SEQ 0x20, CMD, DATA, 05
    length = 4 + len(body_tail) + 0x20
    body = nibbles(length) + body_tail
    expected = b"\x01" + body + nibbles(sum(body) & 0xFFFF) + b"\x03"
    reference = dataclasses.replace(ORIGINAL, document_number=42)
    assert storno_open_request(0x20, reference, till=7) == expected
    operator, password, till, parsed = parse_storno_open(data)
    assert (operator, password, till) == (1, "1", 7)
    assert parsed == reference


def test_storno_datetime_marks_summer_time() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert format_fiscal_datetime(datetime(2024, 7, 1, 9, 5, 0, tzinfo=berlin)) == (
        "01-07-24 09:05:00 DST"
    )
    assert format_fiscal_datetime(datetime(2024, 1, 1, 9, 5, 0, tzinfo=berlin)) == (
        "01-01-24 09:05:00"
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"document_number": 0},
        {"fiscal_memory_number": "1234567"},
        {"unique_sale_number": "not-a-sale-number"},
    ],
)
def test_a_bad_storno_reference_is_refused_before_sending(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="storno"):
        storno_open_params(1, "1", 1, dataclasses.replace(ORIGINAL, **bad))


def test_a_storno_receipt_is_printed_once_and_counted_as_storno(fiscal: Any) -> None:
    _, sim, printer = fiscal
    sold = printer.print_receipt(RECEIPT)  # 5.00 card + 3.80 cash
    seen_open: list[int] = []

    def note_open_state(s: FiscalSimulator) -> None:
        seen_open.append(int(s._transaction([])[0]))

    sim.at_command(CMD_SALE, note_open_state, nth=2)
    reference = dataclasses.replace(ORIGINAL, document_number=sold.slip_number)
    result = printer.print_storno(REFUND, reference)
    assert result.slip_number == 2
    assert seen_open == [2 + StornoReason.REFUND]  # 0x4C: storno receipt open, "refund"
    assert len(sim.receipts) == 1
    (storno,) = sim.storno_receipts
    assert storno.amount == REFUND_TOTAL
    assert storno.storno is not None
    assert (storno.storno.reason, storno.storno.document_number) == (1, sold.slip_number)
    assert storno.storno.document_time == "05-03-24 14:07:09"
    assert sim.cash == Decimal("3.80") - REFUND_TOTAL  # the refund left the drawer
    z = printer.report("z")
    assert z.totals[:2] == (Decimal("3.58"), Decimal("5.22"))
    assert z.storno_totals[:2] == (Decimal("1.99"), Decimal("4.33"))


def test_paper_end_mid_storno_then_retry_prints_once(fiscal: Any) -> None:
    _, sim, printer = fiscal
    sim.at_command(CMD_SALE, run_out_of_paper, nth=2)
    with pytest.raises(FiscalError) as info:
        printer.print_storno(REFUND, ORIGINAL)
    assert info.value.condition == "paper_end"
    assert sim.open_receipt is not None
    assert sim.open_receipt.storno is not None
    sim.paper_end = False
    retry = dataclasses.replace(
        REFUND, storno=ORIGINAL, previous_receipt_number=info.value.previous_receipt_number
    )
    with make_printer(printer.port.url) as other:
        printer.close()
        result = other.print_receipt(retry)
    assert result.reconciled  # carried on in the open storno receipt
    assert len(sim.storno_receipts) == 1
    assert sim.storno_receipts[0].amount == REFUND_TOTAL
    assert sim.cancelled == []
    assert sim.receipts == []
    assert sim.executed.count(CMD_OPEN_STORNO) == 1


def test_lost_close_of_a_storno_is_reconciled(fiscal: Any) -> None:
    _, sim, printer = fiscal
    sim.lose_answers(CMD_CLOSE_RECEIPT, 100)
    result = printer.print_storno(REFUND, ORIGINAL)
    assert result.reconciled
    assert [r.number for r in sim.storno_receipts] == [result.slip_number]
    assert sim.executed.count(CMD_CLOSE_RECEIPT) == 1


def test_the_printer_refuses_a_storno_without_its_reference(fiscal: Any) -> None:
    _, sim, printer = fiscal
    with pytest.raises(FiscalError) as info:
        printer._command(CMD_OPEN_STORNO, ["1", "1", "1", "1", "5", "05-03-24 14:07:09", "123"])
    assert info.value.condition == "syntax_error"
    with pytest.raises(FiscalError):
        printer._command(CMD_OPEN_STORNO, ["1", "1", "1", "7", "5", "05-03-24 14:07:09"])
    assert sim.open_receipt is None
    assert sim.receipt_number == 0


def test_cash_counters_fiscal_memory_and_identity(fiscal: Any) -> None:
    _, sim, printer = fiscal
    assert printer.cash_state().cash == Decimal("0.00")
    printer.print_receipt(RECEIPT)
    state = printer.cash_in_out(Decimal("50.00"))
    assert state is not None
    assert (state.cash, state.cash_in, state.cash_out) == (
        Decimal("53.80"),
        Decimal("50.00"),
        Decimal("0.00"),
    )
    printer.cash_in_out(Decimal("20.00"), out=True)
    before = printer.last_document_number()
    assert printer.cash_state().cash == Decimal("33.80")  # asking prints nothing
    assert printer.last_document_number() == before
    assert printer.last_z_report().report_number == 0
    sim.lose_answers(CMD_REPORT, 100)
    z = printer.report("z")  # its answer is lost: read back from fiscal memory
    assert (z.report_number, z.totals[:2]) == (1, (Decimal("3.58"), Decimal("5.22")))
    assert sim.reports == [("Z", 1)]
    info = printer.diagnostic()
    assert info.fiscal_memory_number == sim.fiscal_memory_number
    assert len(info.fiscal_memory_number) == 8


def test_voucher_payments_use_an_other_paid_mode(fiscal: Any) -> None:
    _, sim, printer = fiscal
    receipt = dataclasses.replace(
        RECEIPT, payments=(Payment("other_3", Decimal("5.00")), Payment("cash", Decimal("5.00")))
    )
    printer.print_receipt(receipt)
    assert sim.receipts[0].payments == [(3, Decimal("5.00")), (0, Decimal("5.00"))]
    assert isinstance(sim, FiscalSimulator)
    assert sim.cash == Decimal("3.80")  # the voucher is no cash; 1.20 change went out
