"""Datecs X driver against the simulator over real ptys (and TCP for link drops).

Every receipt test asserts the simulator's fiscal journal: exactly one fiscalized
receipt, with all its lines and payments, whatever went wrong on the way.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from devices.errors import FiscalError
from devices.fiscal_datecs import (
    CMD_CASH_IN_OUT,
    CMD_CLOSE_RECEIPT,
    CMD_OPEN_RECEIPT,
    CMD_PAYMENT,
    CMD_REPORT,
    CMD_SALE,
    CMD_TRANSACTION_STATUS,
    DatecsFiscalPrinter,
    FiscalReceipt,
    Payment,
    SaleLine,
    StatusBit,
    build_request,
    encode_params,
    parse_answer,
)
from devices.sim import FiscalSimulator, SimulatorHandle
from tests.devices.conftest import StartSim

RECEIPT = FiscalReceipt(
    lines=(
        SaleLine("Milk 1L", "A", Decimal("1.99"), Decimal("2.000"), Decimal("10.00")),
        SaleLine("Bread", "B", Decimal("0.89")),
        SaleLine("Cheese", "B", Decimal("12.49"), Decimal("0.347")),
    ),
    payments=(Payment("credit_card", Decimal("5.00")), Payment("cash", Decimal("10.00"))),
)
TOTAL = Decimal("8.80")  # 3.58 + 0.89 + 4.33


def make_printer(url: str, **kwargs: Any) -> DatecsFiscalPrinter:
    options: dict[str, Any] = {
        "answer_timeout": 0.1,
        "resends": 2,
        "reopen_delay": 0.05,
        "busy_timeout": 5.0,
    }
    options.update(kwargs)
    return DatecsFiscalPrinter(url, **options)


@pytest.fixture
def fiscal(
    start_sim: StartSim, closing: Callable[[Any], Any]
) -> tuple[SimulatorHandle, FiscalSimulator, DatecsFiscalPrinter]:
    handle = start_sim("fiscal", pty=True)
    printer = closing(make_printer(handle.url))
    return handle, handle.sim, printer


def assert_printed_once(sim: FiscalSimulator) -> None:
    assert len(sim.receipts) == 1, sim.receipts
    receipt = sim.receipts[0]
    assert [line.name for line in receipt.lines] == ["Milk 1L", "Bread", "Cheese"]
    assert receipt.amount == TOTAL
    assert receipt.paid >= TOTAL
    assert sim.open_receipt is None


def test_receipt_happy_path(fiscal: Any) -> None:
    _, sim, printer = fiscal
    result = printer.print_receipt(RECEIPT)
    assert result.slip_number == 1
    assert result.total == TOTAL
    assert result.previous_receipt_number == 0
    assert not result.reconciled
    assert result.change == Decimal("6.20")
    assert_printed_once(sim)
    line = sim.receipts[0].lines[2]
    assert (line.vat_group, line.price, line.quantity) == (2, Decimal("12.49"), Decimal("0.347"))
    assert sim.receipts[0].payments == [(1, Decimal("5.00")), (0, Decimal("10.00"))]
    # two status reads put our SEQ out of step with the printer's memory, then 0x4C
    assert sim.executed[:4] == [0x4A, 0x4A, CMD_TRANSACTION_STATUS, CMD_OPEN_RECEIPT]
    # and the next receipt is a new one
    assert printer.print_receipt(RECEIPT).slip_number == 2
    assert len(sim.receipts) == 2


def test_status_and_transaction_status(fiscal: Any) -> None:
    _, sim, printer = fiscal
    status = printer.status()
    assert StatusBit.FISCALIZED in status
    assert StatusBit.VAT_RATES_SET in status
    sim.paper_near_end = True
    sim.cover_open = True
    status = printer.status()
    assert {"cover_open", "paper_near_end", "general_error"} <= set(status.names)
    ts = printer.transaction_status()
    assert (ts.is_open, ts.number, ts.items) == (0, 0, 0)
    assert printer.last_document_number() == 0


def test_leftover_open_receipt_is_cancelled_first(fiscal: Any) -> None:
    _, sim, printer = fiscal
    printer._command(CMD_OPEN_RECEIPT, ["1", "1", "1", ""])
    printer._command(CMD_SALE, ["Leftover", "1", "1.00", "1.000", "", "", "0"])
    result = printer.print_receipt(RECEIPT)
    assert result.slip_number == 2
    assert len(sim.cancelled) == 1
    assert_printed_once(sim)


def test_leftover_with_payment_is_receipt_open(fiscal: Any) -> None:
    _, sim, printer = fiscal
    printer._command(CMD_OPEN_RECEIPT, ["1", "1", "1", ""])
    printer._command(CMD_SALE, ["Leftover", "1", "9.00", "1.000", "", "", "0"])
    printer._command(CMD_PAYMENT, ["0", "1.00", ""])
    with pytest.raises(FiscalError) as info:
        printer.print_receipt(RECEIPT)
    assert info.value.condition == "receipt_open"
    assert sim.receipts == []


def test_nak_resends_same_seq(fiscal: Any) -> None:
    _, sim, printer = fiscal
    sim.nak_next(2)
    result = printer.print_receipt(RECEIPT)
    assert result.slip_number == 1
    assert_printed_once(sim)


def test_persistent_nak_is_bad_frame(fiscal: Any) -> None:
    _, sim, printer = fiscal
    sim.nak_next(10)
    with pytest.raises(FiscalError) as info:
        printer.status()
    assert info.value.condition == "bad_frame"


def test_syn_keeps_driver_waiting(fiscal: Any) -> None:
    _, sim, printer = fiscal
    sim.slow_command(CMD_REPORT, 0.5)  # five times the driver's answer timeout
    report = printer.report("z")
    assert report.report_number == 1
    assert sim.reports == [("Z", 1)]  # executed once, not resent


def test_duplicate_seq_is_replayed_not_executed() -> None:
    sim = FiscalSimulator()
    frame = build_request(0x25, CMD_OPEN_RECEIPT, encode_params(["1", "1", "1", ""]))
    first = sim.receive(frame)
    again = sim.receive(frame)
    assert first == again
    assert parse_answer(first[-1][1]).params == ["0", "1"]
    assert sim.receipt_number == 1  # opened once
    other = sim.receive(build_request(0x26, CMD_OPEN_RECEIPT, encode_params(["1", "1", "1", ""])))
    assert int(parse_answer(other[-1][1]).params[0]) < 0  # a new SEQ is executed (refused)


def test_new_driver_after_old_one_does_not_get_a_stale_replay(fiscal: Any) -> None:
    """A second process starts its SEQ where the first did; the printer would replay."""
    handle, sim, printer = fiscal
    assert printer.print_receipt(RECEIPT).slip_number == 1
    printer.close()
    with make_printer(handle.url) as second:
        assert second.print_receipt(RECEIPT).slip_number == 2
    assert len(sim.receipts) == 2


def test_bad_frame_gets_nak() -> None:
    sim = FiscalSimulator()
    frame = bytearray(build_request(0x25, CMD_OPEN_RECEIPT))
    frame[-2] ^= 1
    assert sim.receive(bytes(frame)) == [(0.0, b"\x15")]
    assert sim.executed == []


def test_cover_open_refuses_and_prints_nothing(fiscal: Any) -> None:
    _, sim, printer = fiscal
    sim.cover_open = True
    with pytest.raises(FiscalError) as info:
        printer.print_receipt(RECEIPT)
    assert info.value.condition == "cover_open"
    assert sim.receipts == []
    assert sim.open_receipt is None
    sim.cover_open = False
    assert printer.print_receipt(RECEIPT).slip_number == 1
    assert_printed_once(sim)


def test_paper_end_mid_receipt_then_retry_prints_once(fiscal: Any) -> None:
    _, sim, printer = fiscal

    def run_out(s: FiscalSimulator) -> None:
        s.paper_end = True

    sim.at_command(CMD_SALE, run_out, nth=2)
    with pytest.raises(FiscalError) as info:
        printer.print_receipt(RECEIPT)
    assert info.value.condition == "paper_end"
    assert info.value.previous_receipt_number == 0
    assert sim.receipts == []
    assert sim.open_receipt is not None
    assert len(sim.open_receipt.lines) == 1
    sim.paper_end = False  # paper replaced
    # a fresh driver (the agent restarted) with the hint the error carried
    retry = dataclasses.replace(RECEIPT, previous_receipt_number=0)
    with make_printer(printer.port.url) as other:
        printer.close()
        result = other.print_receipt(retry)
    assert result.slip_number == 1
    assert result.reconciled  # continued the open receipt
    assert_printed_once(sim)
    assert sim.cancelled == []


def test_paper_end_retry_with_same_driver_uses_remembered_hint(fiscal: Any) -> None:
    _, sim, printer = fiscal
    sim.at_command(CMD_PAYMENT, lambda s: setattr(s, "paper_end", True) or None)
    with pytest.raises(FiscalError, match="paper_end"):
        printer.print_receipt(RECEIPT)
    sim.paper_end = False
    assert printer.print_receipt(RECEIPT).slip_number == 1
    assert_printed_once(sim)


def test_close_answer_lost_once_is_replayed(fiscal: Any) -> None:
    _, sim, printer = fiscal
    sim.lose_answers(CMD_CLOSE_RECEIPT, 1)
    result = printer.print_receipt(RECEIPT)
    assert result.slip_number == 1
    assert not result.reconciled  # the replayed answer gave the slip number
    assert_printed_once(sim)
    assert sim.executed.count(CMD_CLOSE_RECEIPT) == 1


def test_close_answer_lost_for_good_is_reconciled(fiscal: Any) -> None:
    _, sim, printer = fiscal
    sim.lose_answers(CMD_CLOSE_RECEIPT, 100)
    result = printer.print_receipt(RECEIPT)
    assert result.slip_number == 1
    assert result.reconciled  # learned from 0x4C, not from the close answer
    assert_printed_once(sim)
    assert sim.executed.count(CMD_CLOSE_RECEIPT) == 1
    sim.lose_answers(CMD_CLOSE_RECEIPT, 0)
    # calling again for a new receipt prints a new one
    assert printer.print_receipt(RECEIPT).slip_number == 2


def test_close_answer_lost_and_caller_retries(fiscal: Any) -> None:
    """The printer goes silent right after executing close: the call fails, and the
    caller's retry (with the hint from the error) returns the same slip, prints nothing."""
    _, sim, printer = fiscal
    sim.at_command(CMD_CLOSE_RECEIPT, lambda s: s.power_loss(1.2) or None)
    with pytest.raises(FiscalError) as info:
        printer.print_receipt(RECEIPT)
    assert info.value.condition == "no_answer"
    hint = info.value.previous_receipt_number
    assert hint == 0
    time.sleep(max(0.0, sim.deaf_until - time.monotonic()) + 0.05)
    result = printer.print_receipt(dataclasses.replace(RECEIPT, previous_receipt_number=hint))
    assert result.slip_number == 1
    assert result.reconciled
    assert_printed_once(sim)


def test_power_loss_with_receipt_open(fiscal: Any) -> None:
    _, sim, printer = fiscal
    sim.at_command(CMD_SALE, lambda s: s.power_loss(1.0) or None, nth=3)
    with pytest.raises(FiscalError) as info:
        printer.print_receipt(RECEIPT)
    assert info.value.condition == "no_answer"
    assert sim.open_receipt is not None  # survived the power loss
    time.sleep(max(0.0, sim.deaf_until - time.monotonic()) + 0.05)
    result = printer.print_receipt(RECEIPT)  # same driver remembers the hint
    assert result.slip_number == 1
    assert_printed_once(sim)


def test_power_loss_forgets_seq_and_resend_duplicates_are_caught(fiscal: Any) -> None:
    """Power lost after a sale line executed but before its answer: the printer forgets
    the SEQ, executes the resent line again; reconciliation sees the wrong amount,
    cancels and prints the receipt anew: one fiscal receipt, with the right lines."""
    handle, sim, printer = fiscal
    printer.close()
    slow = make_printer(handle.url, resends=6, answer_timeout=0.1)
    try:
        sim.at_command(CMD_SALE, lambda s: s.power_loss(0.25) or None, nth=2)
        sim.lose_answers(CMD_SALE, 1)
        result = slow.print_receipt(RECEIPT)
    finally:
        slow.close()
    assert result.slip_number == 2  # receipt 1 held a duplicated line and was cancelled
    assert_printed_once(sim)
    assert len(sim.cancelled) == 1
    assert [line.name for line in sim.cancelled[0].lines] == ["Milk 1L", "Bread", "Bread"]


def test_link_drop_mid_receipt_over_tcp(start_sim: StartSim, closing: Any) -> None:
    handle = start_sim("fiscal")
    sim: FiscalSimulator = handle.sim
    printer = closing(make_printer(handle.url))

    def drop(s: FiscalSimulator) -> None:
        handle.unplug()  # the bridge drops the connection after executing the line

    sim.at_command(CMD_SALE, drop, nth=2)
    sim.at_command(CMD_CLOSE_RECEIPT, drop)
    result = printer.print_receipt(RECEIPT)
    assert result.slip_number == 1
    assert_printed_once(sim)


def test_link_drop_on_pty_unplug_and_replug(
    start_sim: StartSim, closing: Any, tmp_path: Path
) -> None:
    link = str(tmp_path / "ttyFISCAL")
    handle = start_sim("fiscal", pty=True, link_path=link)
    sim: FiscalSimulator = handle.sim
    printer = closing(make_printer(link))
    assert os.path.islink(link)

    def unplug(s: FiscalSimulator) -> str:
        handle.unplug()  # USB adapter pulled and plugged back: new pty behind the link
        return "drop"

    sim.at_command(CMD_PAYMENT, unplug)
    result = printer.print_receipt(RECEIPT)
    assert result.slip_number == 1
    assert_printed_once(sim)


def test_x_z_reports_and_cash(fiscal: Any) -> None:
    _, sim, printer = fiscal
    printer.print_receipt(RECEIPT)
    x = printer.report("x")
    assert x.totals[0] == Decimal("3.58")
    assert x.totals[1] == Decimal("5.22")
    printer.cash_in_out(Decimal("50.00"))
    printer.cash_in_out(Decimal("20.00"), out=True)
    assert sim.cash_moves == [(0, Decimal("50.00")), (1, Decimal("20.00"))]
    z = printer.report("z")
    assert z.report_number == 1
    assert [kind for kind, _ in sim.reports] == ["X", "Z"]
    assert printer.last_document_number() == 5  # receipt, X, cash in, cash out, Z


def test_z_report_answer_lost_is_not_repeated(fiscal: Any) -> None:
    _, sim, printer = fiscal
    sim.lose_answers(CMD_REPORT, 100)
    printer.report("z")
    assert sim.reports == [("Z", 1)]


def test_report_refused_while_receipt_open(fiscal: Any) -> None:
    _, _sim, printer = fiscal
    printer._command(CMD_OPEN_RECEIPT, ["1", "1", "1", ""])
    with pytest.raises(FiscalError) as info:
        printer.report("z")
    assert info.value.condition == "not_permitted"


def test_no_answer_at_all(start_sim: StartSim, closing: Any) -> None:
    handle = start_sim("fiscal", pty=True)
    handle.sim.go_deaf(5)
    printer = closing(make_printer(handle.url, resends=1))
    started = time.monotonic()
    with pytest.raises(FiscalError) as info:
        printer.print_receipt(RECEIPT)
    assert info.value.condition == "no_answer"
    assert time.monotonic() - started < 3
    assert handle.sim.receipts == []


def test_invalid_receipt_rejected_before_printing() -> None:
    with pytest.raises(ValueError, match="cover"):
        dataclasses.replace(RECEIPT, payments=(Payment("cash", Decimal("1.00")),)).validate()
    with pytest.raises(ValueError, match="VAT"):
        FiscalReceipt(
            lines=(SaleLine("x", "Z", Decimal("1")),), payments=(Payment("cash", Decimal(1)),)
        ).validate()


def test_amounts_beyond_the_printers_field_ranges_are_refused_and_change_nothing() -> None:
    """Vendor manual: Price, Price x Quantity, a payment and a cash move up to
    9999999.99, a quantity up to 999999.999; the simulator refuses beyond them."""
    sim = FiscalSimulator()
    seq = iter(range(0x21, 0xFF))

    def send(cmd: int, *params: str) -> list[str]:
        emits = sim.receive(build_request(next(seq), cmd, encode_params(list(params))))
        return parse_answer(emits[-1][1]).params

    assert send(CMD_OPEN_RECEIPT, "1", "1", "1", "") == ["0", "1"]
    line = ["Milk", "1"]
    assert int(send(CMD_SALE, *line, "10000000.00", "1.000", "", "", "0")[0]) < 0
    assert int(send(CMD_SALE, *line, "1.00", "1000000.000", "", "", "0")[0]) < 0
    assert int(send(CMD_SALE, *line, "9999999.99", "1.001", "", "", "0")[0]) < 0  # product
    assert int(send(CMD_SALE, *line, "10.00", "1.000", "4", "10000000.00", "0")[0]) < 0
    assert sim.open_receipt is not None
    assert sim.open_receipt.lines == []
    assert send(CMD_SALE, *line, "9999999.99", "1.000", "", "", "0")[0] == "0"
    assert int(send(CMD_PAYMENT, "0", "10000000.00", "")[0]) < 0
    assert sim.open_receipt.payments == []
    assert send(CMD_PAYMENT, "0", "9999999.99", "")[:2] == ["0", "R"]
    assert send(CMD_CLOSE_RECEIPT)[0] == "0"
    assert int(send(CMD_CASH_IN_OUT, "0", "10000000.00")[0]) < 0
    assert sim.cash_moves == []
    assert sim.cash == Decimal("9999999.99")


def test_the_driver_refuses_a_receipt_beyond_the_printers_ranges_before_sending(
    fiscal: Any,
) -> None:
    _, sim, printer = fiscal
    big_tender = dataclasses.replace(RECEIPT, payments=(Payment("cash", Decimal("10000000.00")),))
    with pytest.raises(ValueError, match=r"9999999\.99"):
        printer.print_receipt(big_tender)
    big_line = dataclasses.replace(
        RECEIPT, lines=(SaleLine("Gold", "A", Decimal("5000000.00"), Decimal("2.000")),)
    )
    with pytest.raises(ValueError, match=r"9999999\.99"):
        printer.print_receipt(big_line)
    assert sim.executed == []
