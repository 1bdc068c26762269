"""Names outside the receipt printer's and the customer display's code page (cp437):
transliterated by the one function the fiscal printer uses, never "?" where a spelling
exists; what the code page has keeps its bytes. Pure framing first, then both drivers
against their simulators over a pyserial URL."""

from __future__ import annotations

from typing import Any

import pytest

from devices.display import CustomerDisplay, render_lines
from devices.escpos import FEED_AND_CUT, INIT, EscPosPrinter, text_job
from devices.translit import transliterate
from tests.devices.conftest import StartSim, wait_for


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Käse", "Käse"),  # cp437 has ä, é, è, û, ß, ó: kept
        ("Crème brûlée", "Crème brûlée"),
        ("Straße", "Straße"),
        ("Łódź", "Lódz"),
        ("Øl Smørrebrød", "Ol Smorrebrod"),
        ("Молоко 1л", "Moloko 1l"),
        ("Щи", "Shchi"),
        ("ЩИ ЖУРНАЛ", "SHCHI ZHURNAL"),
        ("Жёлтый чай", "Zheltyi chai"),
        ("Їжак ґанок", "Yizhak ganok"),
        ("Café 1€ – “ok”", 'Café 1EUR - "ok"'),
        ("Apple 🍎", "Apple ?"),
        ("牛奶", "??"),
        ("a\x1b@b\x0cc", "a @b c"),  # an ESC or form feed in a name is no command
        ("", ""),
    ],
)
def test_transliterate_to_cp437(text: str, shown: str) -> None:
    assert transliterate(text, "cp437") == shown
    shown.encode("cp437")  # never fails


def test_transliterate_keeps_only_the_controls_asked_for() -> None:
    assert transliterate("a\nb\tc\rd", "cp437") == "a b c d"
    assert transliterate("a\nb\tc\rd", "cp437", keep="\n\t") == "a\nb\tc d"


def test_receipt_printer_job_bytes() -> None:
    job = text_job("Käse Łódź\nМолоко €2", cut=True)
    assert job == INIT + b"K\x84se L\xa2dz\nMoloko EUR2\n" + FEED_AND_CUT
    # What cp437 has: the same bytes as a plain encode.
    plain = "Crème brûlée ß £\n"
    assert text_job(plain, cut=False) == INIT + plain.encode("cp437")
    assert text_job("Tab\there\r\n", cut=False) == INIT + b"Tab\there\n"


def test_display_bytes_transliterated_then_fitted() -> None:
    data = render_lines("Łódź", "Щ" * 10)
    assert b"\x1f\x24\x01\x01" + b"L\xa2dz" + b" " * 16 in data
    # Transliterated first, then cut to the display's 20 columns.
    assert data.endswith(b"\x1f\x24\x01\x02" + b"SHCH" * 5)  # an all-capitals word stays so
    assert render_lines("a\x0cb").endswith(b"\x1f\x24\x01\x02" + b" " * 20)
    assert b"a b" + b" " * 17 in render_lines("a\x0cb")


def test_printer_and_display_through_their_simulators(start_sim: StartSim, closing: Any) -> None:
    printer_sim = start_sim("printer", pty=True)
    printer = closing(EscPosPrinter(printer_sim.url, timeout=0.2))
    printer.print_text("Käse Łódź\nМолоко 1л\nCrème brûlée")
    assert printer_sim.sim.jobs == ["Käse Lódz\nMoloko 1l\nCrème brûlée\n"]

    display_sim = start_sim("display")
    display = closing(CustomerDisplay(display_sim.url, timeout=0.2))
    display.show("Łódź Straße", "Жёлтый €1.99")
    wait_for(
        lambda: display_sim.sim.lines == ("Lódz Straße".ljust(20), "Zheltyi EUR1.99".ljust(20))
    )
