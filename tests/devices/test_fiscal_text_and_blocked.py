"""Text the printer's code page lacks, and a receipt left open after a refused payment.

``printable_text`` is pure and tested on its own; then the driver against the simulator
(pty, and TCP for link drops): such names print, and an open, part-paid receipt that
the printer will not cancel is finished exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from devices.errors import FiscalError
from devices.fiscal_datecs import (
    CMD_CLOSE_RECEIPT,
    CMD_PAYMENT,
    DatecsFiscalPrinter,
    FiscalReceipt,
    Payment,
    SaleLine,
    blocked_reason,
    plu_name,
    printable_text,
)
from devices.sim import FiscalSimulator
from tests.devices.conftest import StartSim
from tests.devices.test_fiscal import make_printer


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("Käse", "Kase"),
        ("Müsli Crème brûlée", "Musli Creme brulee"),
        ("Straße", "Strasse"),
        ("Øl Smørrebrød Łódź", "Ol Smorrebrod Lodz"),
        ("ﬁne", "fine"),  # ligature: NFKD spells it out
        ("Ｍｉｌｋ", "Milk"),  # full-width letters
        ("Молоко 1л", "Молоко 1л"),  # in cp1251: kept
        ("Café 1€ – “ok”", "Cafe 1€ – “ok”"),  # € – “ ” are cp1251
        ("Apple 🍎", "Apple ?"),
        ("牛奶", "??"),
        ("Tea\tbag\nbox", "Tea bag box"),  # control characters would break the line
        ("👩\u200d👩", "??"),  # the zero-width joiner is invisible: dropped
        ("", ""),
    ],
)
def test_printable_text_transliterates_what_the_code_page_lacks(text: str, printed: str) -> None:
    assert printable_text(text) == printed
    printable_text(text).encode("cp1251")  # never fails


def test_printable_text_keeps_field_limits_and_other_code_pages() -> None:
    assert printable_text("ß" * 72, 72) == "ss" * 36
    assert len(plu_name("Ä" * 100)) == 72
    assert plu_name("🍎🍎") == "??"
    assert plu_name("\t") == "?"  # the printer refuses an empty PluName
    # a Latin code page keeps what cp1251 has to transliterate
    assert printable_text("Käse Łódź", codepage="cp1250") == "Käse Łódź"
    # and one without Cyrillic spells it in Latin letters (it was "??????")
    assert printable_text("Молоко", codepage="latin-1") == "Moloko"


@pytest.fixture
def fiscal(start_sim: StartSim, closing: Callable[[Any], Any]) -> Any:
    handle = start_sim("fiscal", pty=True)
    return handle, handle.sim, closing(make_printer(handle.url))


def test_names_outside_the_code_page_are_printed_transliterated(fiscal: Any) -> None:
    _, sim, printer = fiscal
    receipt = FiscalReceipt(
        lines=(
            SaleLine("Käse", "A", Decimal("3.49")),
            SaleLine("Müsli 🥣 " + "x" * 80, "A", Decimal("2.00")),
            SaleLine("牛奶", "B", Decimal("1.00")),
        ),
        payments=(Payment("cash", Decimal("10.00")),),
    )
    result = printer.print_receipt(receipt)
    (printed,) = sim.receipts
    assert result.slip_number == printed.number
    assert [line.name for line in printed.lines] == ["Kase", ("Musli ? " + "x" * 80)[:72], "??"]
    assert printed.amount == Decimal("6.49")


def _part_paid(sim: FiscalSimulator, printer: DatecsFiscalPrinter) -> None:
    """The printer takes the cash and refuses the voucher (PaidMode 3 not programmed)."""
    sim.paid_modes = {0, 1, 2}
    receipt = FiscalReceipt(
        lines=(SaleLine("Bread", "A", Decimal("5.00")),),
        payments=(Payment("cash", Decimal("2.00")), Payment("other_3", Decimal("3.00"))),
    )
    with pytest.raises(FiscalError) as refused:
        printer.print_receipt(receipt)
    assert refused.value.previous_receipt_number == 0
    ts = printer.transaction_status()
    assert (ts.is_open, ts.paid, ts.amount) == (1, Decimal("2.00"), Decimal("5.00"))


def test_a_refused_payment_leaves_a_receipt_only_finish_open_gets_out_of(fiscal: Any) -> None:
    _, sim, printer = fiscal
    _part_paid(sim, printer)
    reason = blocked_reason(printer.transaction_status())
    assert reason is not None
    assert "receipt 1 is open" in reason
    assert "2.00 of 5.00" in reason
    with pytest.raises(FiscalError):  # the protocol refuses a cancel once paid
        printer.cancel_receipt()
    finished = printer.finish_open_receipt()
    assert finished is not None
    assert (finished.number, finished.action) == (1, "closed")
    assert (finished.paid_before, finished.cash_added) == (Decimal("2.00"), Decimal("3.00"))
    (receipt,) = sim.receipts
    assert receipt.payments == [(0, Decimal("2.00")), (0, Decimal("3.00"))]
    assert blocked_reason(printer.transaction_status()) is None
    assert printer.finish_open_receipt() is None  # nothing open: nothing done
    assert len(sim.receipts) == 1


def test_finish_open_cancels_a_receipt_with_nothing_paid(fiscal: Any) -> None:
    _, sim, printer = fiscal
    sim.paid_modes = {0}
    receipt = FiscalReceipt(
        lines=(SaleLine("Bread", "A", Decimal("5.00")),),
        payments=(Payment("credit_card", Decimal("5.00")),),
    )
    with pytest.raises(FiscalError):
        printer.print_receipt(receipt)
    assert blocked_reason(printer.transaction_status()) is None  # cancellable: not blocked
    finished = printer.finish_open_receipt()
    assert finished is not None
    assert finished.action == "cancelled"
    assert (sim.receipts, len(sim.cancelled)) == ([], 1)


@pytest.mark.parametrize("cmd", [CMD_PAYMENT, CMD_CLOSE_RECEIPT])
def test_finish_open_with_the_link_dropped_at_each_step_pays_and_closes_once(
    start_sim: StartSim, closing: Any, cmd: int
) -> None:
    handle = start_sim("fiscal")  # TCP: the bridge can drop the connection
    sim = handle.sim
    printer = closing(make_printer(handle.url))
    _part_paid(sim, printer)

    def drop(s: FiscalSimulator) -> None:
        handle.unplug()  # executed, then the link goes: the answer is lost

    sim.at_command(cmd, drop)
    try:
        finished = printer.finish_open_receipt()
    except FiscalError:
        finished = printer.finish_open_receipt()  # the technician runs it again
    assert finished is not None
    (receipt,) = sim.receipts
    assert receipt.paid == Decimal("5.00")  # the rest paid once, not twice
    assert receipt.payments == [(0, Decimal("2.00")), (0, Decimal("3.00"))]
    assert sim.open_receipt is None
    assert printer.finish_open_receipt() is None
