"""``python -m devices`` run as a subprocess against in-process simulators on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from devices.cli import run
from devices.ports import Port
from tests.devices.conftest import StartSim, wait_for

ROOT = Path(__file__).resolve().parents[2]

RECEIPT = {
    "operator": 1,
    "password": "1",
    "till": 1,
    "lines": [
        {
            "name": "Milk 1L",
            "vat_group": "A",
            "price": "1.99",
            "quantity": "2.000",
            "discount_percent": "10.00",
        }
    ],
    "payments": [{"type": "cash", "amount": "5.00"}],
}


def cli(*args: str, stdin: str = "") -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "devices", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, (proc.stdout, proc.stderr)
    return proc.returncode, json.loads(lines[0])


@pytest.fixture
def inproc(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[int, dict[str, Any]]]:
    """The same CLI run in this process (cheaper than a subprocess per call)."""

    def run_cli(*args: str, stdin: str = "") -> tuple[int, dict[str, Any]]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = run(list(args))
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 1, lines
        return code, json.loads(lines[0])

    return run_cli


@pytest.mark.parametrize("protocol", ["toledo-8217", "toledo8217"])
def test_scale_read(start_sim: StartSim, protocol: str) -> None:
    """The agent's spelling (what probe prints, for the agent's TOML) and the old one."""
    handle = start_sim("scale")
    handle.sim.set_weight("1.234")
    code, out = cli("scale", "read", "--protocol", protocol, "--port", handle.url)
    assert code == 0
    assert out["weight_kg"] == "1.234"
    assert out["stable"] is True
    assert out["net"] is False


@pytest.mark.parametrize(
    ("fault", "error"),
    [("motion", "motion"), ("over_capacity", "over_capacity"), ("negative", "under_zero")],
)
def test_scale_read_faults(
    inproc: Callable[..., tuple[int, dict[str, Any]]], start_sim: StartSim, fault: str, error: str
) -> None:
    handle = start_sim("scale")
    handle.sim.set_fault(fault)
    code, out = inproc("scale", "read", "--port", handle.url, "--timeout", "0.3")
    assert code != 0
    assert out["error"] == error


def test_scale_no_answer_and_probe(
    inproc: Callable[..., tuple[int, dict[str, Any]]], start_sim: StartSim
) -> None:
    handle = start_sim("scale")
    code, out = inproc("scale", "probe", "--port", handle.url, "--timeout", "0.3")
    assert (code, out["ok"]) == (0, True)
    handle.sim.set_fault("no_answer")
    code, out = inproc("scale", "read", "--port", handle.url, "--timeout", "0.2")
    assert (code, out["error"]) == (1, "no_answer")


def test_fiscal_receipt_status_report(start_sim: StartSim) -> None:
    handle = start_sim("fiscal")
    code, out = cli("fiscal", "status", "--protocol", "datecs-x", "--port", handle.url)
    assert code == 0
    assert "fiscalized" in out["status"]
    code, out = cli(
        "fiscal", "receipt", "--protocol", "datecs-x", "--port", handle.url,
        stdin=json.dumps(RECEIPT),
    )  # fmt: skip
    assert code == 0, out
    assert out["slip_number"] == 1
    assert out["total"] == "3.58"
    assert len(handle.sim.receipts) == 1
    code, out = cli(
        "fiscal", "report", "--protocol", "datecs-x", "--port", handle.url, "--type", "z"
    )
    assert code == 0
    assert out["report_number"] == 1
    code, out = cli("fiscal", "last-document", "--port", handle.url)
    assert out["number"] == 2


def test_fiscal_errors(
    inproc: Callable[..., tuple[int, dict[str, Any]]], start_sim: StartSim
) -> None:
    handle = start_sim("fiscal")
    handle.sim.paper_end = True
    code, out = inproc("fiscal", "receipt", "--port", handle.url, stdin=json.dumps(RECEIPT))
    assert (code, out["error"]) == (1, "paper_end")
    handle.sim.paper_end = False
    handle.sim.cover_open = True
    code, out = inproc("fiscal", "report", "--port", handle.url, "--type", "x")
    assert (code, out["error"]) == (1, "cover_open")
    handle.sim.cover_open = False
    code, out = inproc("fiscal", "receipt", "--port", handle.url, stdin='{"lines": []}')
    assert (code, out["error"]) == (2, "bad_input")


def test_fiscal_receipt_open(start_sim: StartSim) -> None:
    handle = start_sim("fiscal")
    sim = handle.sim
    # the line dies as close is sent: the receipt stays open, and paid
    sim.at_command(0x38, lambda s: s.go_deaf(1.5) or "drop")
    code, out = cli("fiscal", "receipt", "--port", handle.url, "--timeout", "0.05",
                    stdin=json.dumps(RECEIPT))  # fmt: skip
    assert (code, out["error"]) == (1, "no_answer")
    assert out["previous_receipt_number"] == 0
    wait_for(lambda: time.monotonic() > sim.deaf_until, timeout=3)
    # a retry without the hint cannot know the open, paid receipt is its own
    code, out = cli("fiscal", "receipt", "--port", handle.url, stdin=json.dumps(RECEIPT))
    assert (code, out["error"]) == (1, "receipt_open")
    # with the hint it finishes the receipt: still one fiscal receipt
    code, out = cli("fiscal", "receipt", "--port", handle.url,
                    stdin=json.dumps({**RECEIPT, "previous_receipt_number": 0}))  # fmt: skip
    assert code == 0, out
    assert out["slip_number"] == 1
    assert len(sim.receipts) == 1


def test_printer_drawer_display(
    inproc: Callable[..., tuple[int, dict[str, Any]]], start_sim: StartSim
) -> None:
    printer = start_sim("printer")
    code, out = inproc("printer", "print", "--port", printer.url, stdin="Hello\nWorld\n")
    assert (code, out["ok"]) == (0, True)
    assert printer.sim.jobs == ["Hello\nWorld\n"]
    code, out = inproc("drawer", "open", "--port", printer.url, "--pin", "5")
    assert code == 0
    wait_for(lambda: printer.sim.kicks == [(5, 25, 25)])
    printer.sim.paper_end = True
    code, out = inproc("printer", "status", "--port", printer.url)
    assert (code, out["paper_end"]) == (0, True)
    code, out = inproc("printer", "print", "--port", printer.url, "--text", "x")
    assert (code, out["error"]) == (1, "paper_end")
    printer.sim.paper_end = False
    printer.sim.cover_open = True
    code, out = inproc("printer", "print", "--port", printer.url, "--text", "x")
    assert (code, out["error"]) == (1, "cover_open")
    display = start_sim("display")
    code, out = inproc(
        "display", "show", "--port", display.url, "--line1", "Hi", "--line2", "there"
    )
    assert code == 0
    wait_for(lambda: display.sim.lines == ("Hi".ljust(20), "there".ljust(20)))


def test_probe_and_list(
    inproc: Callable[..., tuple[int, dict[str, Any]]], start_sim: StartSim
) -> None:
    for kind, protocol in (("fiscal", "datecs-x"), ("printer", "escpos"), ("scale", "toledo-8217")):
        handle = start_sim(kind)
        code, out = inproc("probe", "--port", handle.url, "--timeout", "0.2")
        assert code == 0, out
        assert out["protocol"] == protocol
    silent = start_sim("display")  # write-only: nothing positive to find
    code, out = inproc("probe", "--port", silent.url, "--timeout", "0.2")
    assert (code, out["error"]) == (1, "no_answer")
    code, out = inproc("list")
    assert code == 0
    assert isinstance(out["ports"], list)


def test_probe_of_a_port_another_program_holds_says_so(start_sim: StartSim) -> None:
    """A device path the running agent has open (its exclusive lock) was reported as
    "no known protocol answered"; the port was never asked anything."""
    handle = start_sim("fiscal", pty=True)
    with Port(handle.url) as held:
        held.open()  # this process holds it, as the agent would
        code, out = cli("probe", "--port", handle.url, "--timeout", "0.2")
    assert code == 1
    assert out["error"] == "port_unavailable"
    assert "in use by another program" in out["message"]
    assert f"(pid {os.getpid()}: " in out["message"]
    assert "Errno" not in out["message"]
    assert set(out["tried"].values()) == {"port_unavailable"}
    # A port that does not exist is port_unavailable too, not no_answer.
    code, out = cli("probe", "--port", "/dev/nonexistent-tty", "--timeout", "0.2")
    assert (code, out["error"]) == (1, "port_unavailable")


def test_simulate_on_a_busy_port_answers_json_not_a_traceback() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "devices", "simulate", "scale", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
            check=False,
        )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    assert out["error"] == "port_unavailable"
    assert f"cannot listen on 127.0.0.1:{port}" in out["message"]
    assert "another program listens there" in out["message"]


def test_usage_error_is_json(inproc: Callable[..., tuple[int, dict[str, Any]]]) -> None:
    code, out = inproc("scale", "weigh", "--port", "loop://")
    assert (code, out["error"]) == (2, "usage")


@contextlib.contextmanager
def simulating(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """``python -m devices simulate ARGS`` running, with what it printed first; stopped
    by SIGTERM afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "devices", "simulate", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        yield proc, json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_simulate_subprocess() -> None:
    with simulating("scale", "--listen", "127.0.0.1:0", "--weight", "0.750") as (proc, info):
        assert info["url"].startswith("socket://127.0.0.1:")
        code, out = cli("scale", "read", "--port", info["url"])
        assert (code, out["weight_kg"]) == (0, "0.750")
    assert proc.returncode == 0


def test_simulate_a_second_fiscal_unit_and_read_which_is_on_the_port() -> None:
    """A swap rehearsed: a simulator with another serial and fiscal memory number, and
    ``fiscal info`` (0x5A) telling which unit answers on the port."""
    args = ("--serial", "DT999999", "--fiscal-memory", "02999999")
    with simulating("fiscal", "--listen", "127.0.0.1:0", *args) as (_, info):
        code, out = cli("fiscal", "info", "--port", info["url"])
    assert code == 0, out
    assert (out["serial_number"], out["fiscal_memory_number"]) == ("DT999999", "02999999")
    assert out["name"]


@pytest.mark.parametrize(
    "args",
    [
        ("fiscal", "--serial", "dt1234"),
        ("fiscal", "--fiscal-memory", "123"),
        ("scale", "--serial", "DT999999"),
    ],
)
def test_simulate_refuses_a_bad_identity(args: tuple[str, ...]) -> None:
    kind, *rest = args
    code, out = cli("simulate", kind, "--listen", "127.0.0.1:0", *rest)
    assert (code, out["error"]) == (2, "usage")


def test_fiscal_info_of_the_default_unit(start_sim: StartSim) -> None:
    handle = start_sim("fiscal")
    code, out = cli("fiscal", "info", "--port", handle.url)
    assert code == 0, out
    assert (out["serial_number"], out["fiscal_memory_number"]) == ("DT123456", "02345678")


def test_simulate_pty_subprocess() -> None:
    with simulating("fiscal", "--pty") as (_, info):
        assert os.path.exists(info["url"])
        code, out = cli("fiscal", "status", "--port", info["url"])
        assert code == 0, out


def test_fiscal_finish_open(
    start_sim: StartSim, inproc: Callable[..., tuple[int, dict[str, Any]]]
) -> None:
    handle = start_sim("fiscal")
    sim = handle.sim
    sim.paid_modes = {0}  # the card payment after the cash is refused
    receipt = {
        **RECEIPT,
        "payments": [
            {"type": "cash", "amount": "1.00"},
            {"type": "credit_card", "amount": "2.58"},
        ],
    }
    code, out = inproc("fiscal", "receipt", "--port", handle.url, stdin=json.dumps(receipt))
    assert (code, out["error"]) == (1, "syntax_error")
    code, out = inproc("fiscal", "receipt", "--port", handle.url, stdin=json.dumps(RECEIPT))
    assert (code, out["error"]) == (1, "receipt_open")  # blocked: cancel is refused
    code, out = inproc("fiscal", "finish-open", "--port", handle.url)
    assert code == 0, out
    assert out["finished"] == {
        "number": 1,
        "action": "closed",
        "amount": "3.58",
        "paid_before": "1.00",
        "cash_added": "2.58",
    }
    assert inproc("fiscal", "finish-open", "--port", handle.url) == (0, {"finished": None})
    code, out = inproc("fiscal", "receipt", "--port", handle.url, stdin=json.dumps(RECEIPT))
    assert (code, out["slip_number"]) == (0, 2)
    assert [r.paid for r in sim.receipts] == [Decimal("3.58"), Decimal("5.00")]
