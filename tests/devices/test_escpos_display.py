"""ESC/POS printer, drawer and customer display against their simulators over ptys."""

from __future__ import annotations

from typing import Any

import pytest

from devices.display import CustomerDisplay
from devices.errors import PrinterError
from devices.escpos import EscPosPrinter
from tests.devices.conftest import StartSim, wait_for


def test_print_cut_and_status(start_sim: StartSim, closing: Any) -> None:
    handle = start_sim("printer", pty=True)
    printer = closing(EscPosPrinter(handle.url, timeout=0.2))
    after = printer.print_text("Backroom\nThank you")
    assert after.online
    assert handle.sim.jobs == ["Backroom\nThank you\n"]
    handle.sim.set_fault("paper_near_end")
    assert printer.print_text("x").paper_near_end
    printer.kick_drawer(pin=5)
    printer.kick_drawer(pin=2, on_ms=100, off_ms=100)
    wait_for(lambda: handle.sim.kicks == [(5, 25, 25), (2, 50, 50)])


@pytest.mark.parametrize(
    ("fault", "condition"),
    [("paper_end", "paper_end"), ("cover_open", "cover_open"), ("offline", "printer_error")],
)
def test_printer_faults_before_job(
    start_sim: StartSim, closing: Any, fault: str, condition: str
) -> None:
    handle = start_sim("printer", pty=True)
    printer = closing(EscPosPrinter(handle.url, timeout=0.2))
    handle.sim.set_fault(fault)
    status = printer.status()
    assert not status.online
    with pytest.raises(PrinterError) as info:
        printer.print_text("nothing")
    assert info.value.condition == condition
    assert info.value.details["when"] == "before"
    with pytest.raises(PrinterError):
        printer.kick_drawer(2)
    assert handle.sim.jobs == []
    assert handle.sim.kicks == []


def test_paper_end_during_job_reported_after(start_sim: StartSim, closing: Any) -> None:
    handle = start_sim("printer", pty=True)
    printer = closing(EscPosPrinter(handle.url, timeout=0.2))
    original = handle.sim.handle

    def run_out(data: bytes) -> list[tuple[float, bytes]]:
        if b"long receipt" in data:
            handle.sim.paper_end = True
        return original(data)

    handle.sim.handle = run_out
    with pytest.raises(PrinterError) as info:
        printer.print_text("long receipt")
    assert info.value.condition == "paper_end"
    assert info.value.details["when"] == "after"


def test_offline_only(start_sim: StartSim, closing: Any) -> None:
    handle = start_sim("printer", pty=True)
    printer = closing(EscPosPrinter(handle.url, timeout=0.2))
    handle.sim.offline = True
    assert printer.status().problem == "printer_error"


def test_printer_no_answer(start_sim: StartSim, closing: Any) -> None:
    handle = start_sim("printer", pty=True)
    handle.sim.go_deaf(5)
    printer = closing(EscPosPrinter(handle.url, timeout=0.1))
    with pytest.raises(PrinterError) as info:
        printer.status()
    assert info.value.condition == "no_answer"


def test_display_show_and_reopen(start_sim: StartSim, closing: Any) -> None:
    handle = start_sim("display")
    display = closing(CustomerDisplay(handle.url, timeout=0.2))
    display.show("Milk 1L", "Total          1.99")
    sim = handle.sim
    wait_for(lambda: sim.lines == ("Milk 1L".ljust(20), "Total          1.99".ljust(20)))
    handle.unplug()
    wait_for(lambda: handle.runner._client is None)
    display.show("Welcome", "")  # first write may hit the dead link; reopened and rewritten
    display.show("Welcome", "to Backroom")
    wait_for(lambda: sim.lines == ("Welcome".ljust(20), "to Backroom".ljust(20)))
