"""The tills' devices as the agent drives them: one driver per configured device.

Drivers in ``devices/`` are blocking pyserial code; every call runs in a worker
thread (``asyncio.to_thread``) behind one asyncio lock per device, so the event
loop never waits on a serial port and two requests never interleave on a wire.
Each call's outcome updates the device's state (``ok`` or the driver's condition
name), which the heartbeat and ``python -m branch_agent status`` report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

from branch_agent.settings import AgentSettings, DeviceConfig, TillConfig
from devices.display import CustomerDisplay
from devices.errors import DeviceError
from devices.escpos import EscPosPrinter, PrinterStatus
from devices.fiscal_datecs import (
    CashState,
    DatecsFiscalPrinter,
    DiagnosticInfo,
    FinishedReceipt,
    FiscalReceipt,
    FiscalResult,
    ReportResult,
    StatusBit,
    TransactionStatus,
    blocked_reason,
)
from devices.scale_toledo import ToledoScale, WeightReading
from devices.scanner import SerialScanner
from protocol.messages import DeviceStatus

__all__ = ["DeviceState", "DeviceUnavailable", "TillDeviceSet", "TillDevices"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Conditions of a command the printer refused: a receipt left open by one may block it.
_REFUSALS = frozenset(
    {
        "receipt_open",
        "syntax_error",
        "invalid_command",
        "command_failed",
        "not_permitted",
        "unknown_state",
        "bad_request",
    }
)

ROLES = ("fiscal", "printer", "scale", "display", "scanner")
_PROTOCOLS = {
    "fiscal": ("", "datecs-x"),
    "printer": ("", "escpos"),
    "scale": ("", "toledo-8217"),
    "display": ("", "epson-display"),
    "scanner": ("", "serial"),
}


# A device that cannot be reached at all (unplugged, off, its port gone).
_OUT_OF_REACH = frozenset({"no_answer", "link_lost", "port_unavailable"})


class DeviceUnavailable(Exception):
    """The till has no such device configured."""


@dataclass(slots=True)
class DeviceState:
    till: str
    role: str
    port: str
    state: str = "unknown"
    detail: str = ""
    changed_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def set(self, state: str, detail: str = "") -> None:
        if (state, detail) != (self.state, self.detail):
            self.state, self.detail = state, detail
            self.changed_at = datetime.now(UTC)

    def as_status(self) -> DeviceStatus:
        return DeviceStatus(till=self.till, device=self.role, state=self.state, detail=self.detail)


class _Device:
    """One driver object, its lock and its state."""

    def __init__(self, till: str, role: str, config: DeviceConfig, driver: Any) -> None:
        self.driver = driver
        self.lock = asyncio.Lock()
        self.state = DeviceState(till=till, role=role, port=config.port)
        # How many calls found the device unreachable: a printer swapped for another is
        # unplugged first, so what was read of its identity is read again after one.
        self.outages = 0

    async def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        check: Callable[[T], tuple[str, str] | None] | None = None,
        **kwargs: Any,
    ) -> T:
        """Run a driver call in a worker thread; the device's state becomes ``ok``, or
        the condition it raised. ``check`` reads a result that is no exception but
        no good either (a probe answered False, a printer status naming paper end):
        it returns (condition, detail), which becomes the state and is raised."""
        async with self.lock:
            try:
                result = await asyncio.to_thread(fn, *args, **kwargs)
            except DeviceError as exc:
                self.state.set(exc.condition, exc.message[:200])
                if exc.condition in _OUT_OF_REACH:
                    self.outages += 1
                raise
            except ValueError as exc:
                # The driver refused the job itself (e.g. a receipt it cannot print).
                self.state.set("bad_request", str(exc)[:200])
                raise DeviceError("bad_request", str(exc)) from exc
            except Exception as exc:
                # A driver bug or an OS error the driver did not wrap (termios.error on
                # an odd port): still a device failure for the caller, never a crash.
                self.state.set("port_unavailable", f"{type(exc).__name__}: {exc}"[:200])
                self.outages += 1
                raise DeviceError("port_unavailable", str(exc)) from exc
            problem = check(result) if check is not None else None
            if problem is not None:
                self.state.set(problem[0], problem[1][:200])
                raise DeviceError(problem[0], problem[1])
            self.state.set("ok")
            return result


def _build(role: str, config: DeviceConfig) -> Any:
    if config.protocol not in _PROTOCOLS[role]:
        raise ValueError(
            f"{role}: unsupported protocol {config.protocol!r}; known: {_PROTOCOLS[role][1]}"
        )
    kwargs: dict[str, Any] = {}
    if config.baudrate is not None:
        kwargs["baudrate"] = config.baudrate
    if role == "fiscal":
        return DatecsFiscalPrinter(config.port, **kwargs)
    if role == "printer":
        return EscPosPrinter(config.port, timeout=config.timeout_s, **kwargs)
    if role == "scale":
        return ToledoScale(config.port, timeout=config.timeout_s)
    if role == "display":
        return CustomerDisplay(config.port, timeout=config.timeout_s, **kwargs)
    return SerialScanner(config.port, **kwargs)


def _echo_problem(echoed: bool) -> tuple[str, str] | None:
    if echoed:
        return None
    return "no_answer", "no echo to the probe (E + text): no Toledo 8217 scale answers there"


def _printer_problem(status: PrinterStatus) -> tuple[str, str] | None:
    problem = status.problem
    return None if problem is None else (str(problem), "")


class TillDeviceSet:
    """The devices attached to one till."""

    def __init__(self, till: TillConfig) -> None:
        self.till = till
        self.devices: dict[str, _Device] = {}
        for role, config in (
            ("fiscal", till.fiscal_printer),
            ("printer", till.receipt_printer),
            ("scale", till.scale),
            ("display", till.display),
            ("scanner", till.scanner),
        ):
            if config is not None:
                self.devices[role] = _Device(till.id, role, config, _build(role, config))
        # Fiscal receipts of one till go out one at a time and in order.
        self.fiscal_queue = asyncio.Lock()
        self.scanned: queue.Queue[str] = queue.Queue(maxsize=100)

    @property
    def has_fiscal(self) -> bool:
        return "fiscal" in self.devices

    @property
    def fiscal_outages(self) -> int:
        """How often the fiscal printer was found unreachable since the agent started."""
        return self._device("fiscal").outages

    def _device(self, role: str) -> _Device:
        device = self.devices.get(role)
        if device is None:
            raise DeviceUnavailable(f"till {self.till.id} has no {role} configured")
        return device

    # fiscal printer ------------------------------------------------------------------
    async def fiscal_transaction_status(self) -> TransactionStatus:
        device = self._device("fiscal")
        printer: DatecsFiscalPrinter = device.driver
        return await device.call(printer.transaction_status)

    async def fiscal_cancel_open(self) -> None:
        device = self._device("fiscal")
        printer: DatecsFiscalPrinter = device.driver
        await device.call(printer.cancel_receipt)

    async def fiscal_finish_open(self) -> FinishedReceipt | None:
        device = self._device("fiscal")
        printer: DatecsFiscalPrinter = device.driver
        return await device.call(printer.finish_open_receipt)

    async def fiscal_mark_blocked(self) -> str | None:
        """Ask the printer whether a receipt open with money paid keeps it from taking
        any other (it refuses to cancel one); if so the state says ``blocked`` and why.
        A state already naming a cause (paper end, cover open, no answer) is kept."""
        device = self._device("fiscal")
        if device.state.state not in _REFUSALS | {"ok", "unknown", "blocked"}:
            return None
        printer: DatecsFiscalPrinter = device.driver
        async with device.lock:
            try:
                ts = await asyncio.to_thread(printer.transaction_status)
            except Exception:  # a question only: the caller's own failure was reported
                return None
        reason = blocked_reason(ts)
        if reason is not None:
            device.state.set("blocked", reason[:200])
        elif device.state.state == "blocked":
            device.state.set("ok")
        return reason

    def keep_fiscal_fault(self, exc: DeviceError) -> None:
        """Show ``exc`` as the printer's state again: a question asked after the failure
        (fiscal memory read back, status) answered, and set it ``ok``, while the job
        itself did not print. The next job or probe that succeeds clears it."""
        self._device("fiscal").state.set(exc.condition, exc.message[:200])

    async def print_fiscal(self, receipt: FiscalReceipt) -> FiscalResult:
        device = self._device("fiscal")
        printer: DatecsFiscalPrinter = device.driver
        return await device.call(printer.print_receipt, receipt)

    async def fiscal_report(self, kind: str) -> ReportResult:
        device = self._device("fiscal")
        printer: DatecsFiscalPrinter = device.driver
        return await device.call(printer.report, kind)

    async def fiscal_cash(self, amount: Decimal, *, out: bool) -> CashState | None:
        device = self._device("fiscal")
        printer: DatecsFiscalPrinter = device.driver
        return await device.call(printer.cash_in_out, amount, out=out)

    async def fiscal_cash_state(self) -> CashState:
        device = self._device("fiscal")
        printer: DatecsFiscalPrinter = device.driver
        return await device.call(printer.cash_state)

    async def fiscal_last_document(self) -> int:
        device = self._device("fiscal")
        printer: DatecsFiscalPrinter = device.driver
        return await device.call(printer.last_document_number)

    async def fiscal_last_z(self) -> ReportResult:
        device = self._device("fiscal")
        printer: DatecsFiscalPrinter = device.driver
        return await device.call(printer.last_z_report)

    async def fiscal_diagnostic(self) -> DiagnosticInfo:
        device = self._device("fiscal")
        printer: DatecsFiscalPrinter = device.driver
        return await device.call(printer.diagnostic)

    # receipt printer, drawer, display, scale ---------------------------------------------
    async def print_text(self, text: str) -> None:
        device = self._device("printer")
        printer: EscPosPrinter = device.driver
        await device.call(printer.print_text, text)

    async def open_drawer(self) -> None:
        device = self._device("printer")
        printer: EscPosPrinter = device.driver
        await device.call(printer.kick_drawer, self.till.drawer_pin)

    async def open_drawer_for_cash(
        self,
    ) -> tuple[Literal["opened", "not_opened"] | None, str | None]:
        """Open the drawer for cash taken or paid out, and say how it went, for the
        till's answer: a receipt printer out of paper, open or offline ignores the kick
        (DEVICES.md §3), and the cashier, told nothing, stood before a shut drawer.
        (None, None) when the till has no receipt printer; its failure is also the
        device's state."""
        if "printer" not in self.devices:
            return None, None
        try:
            await self.open_drawer()
        except DeviceError as exc:
            return "not_opened", (
                f"the cash drawer did not open (receipt printer: {exc.message});"
                " open it with its key"
            )
        return "opened", None

    async def show(self, line1: str, line2: str = "") -> None:
        device = self._device("display")
        display: CustomerDisplay = device.driver
        await device.call(display.show, line1[:20], line2[:20])

    async def read_weight(self) -> WeightReading:
        device = self._device("scale")
        scale: ToledoScale = device.driver
        return await device.call(scale.read_weight)

    async def probe(self) -> None:
        """Ask each device how it is. A device is ``ok`` only on a good answer: a scale
        that does not echo the probe is ``no_answer`` (a silent device, or another
        device on that port). The display is write-only (DEVICES.md §4: the only
        faults a host can see are a port that is gone or a write that times out): its
        port is opened and checked without writing to the screen, so ``ok`` there
        means the port is present, not that a display answered. The scanner's reader
        thread keeps its own state."""
        for role, device in self.devices.items():
            with contextlib.suppress(DeviceError, DeviceUnavailable):
                if role == "fiscal":
                    await device.call(device.driver.status)
                    await self._fiscal_paper_state(device)
                    status = device.driver.last_status
                    if status is not None and StatusBit.FISCAL_RECEIPT_OPEN in status:
                        await self.fiscal_mark_blocked()
                elif role == "printer":
                    await device.call(device.driver.status, check=_printer_problem)
                elif role == "scale":
                    await device.call(device.driver.probe, check=_echo_problem)
                elif role == "display":
                    await device.call(device.driver.check)

    async def _fiscal_paper_state(self, device: _Device) -> None:
        status = device.driver.last_status
        if status is None:
            return
        for flag, name in (
            (StatusBit.PAPER_END, "paper_end"),
            (StatusBit.COVER_OPEN, "cover_open"),
            (StatusBit.MECHANISM_FAILURE, "mechanism_failure"),
        ):
            if flag in status:
                device.state.set(name)
                return

    def close(self) -> None:
        for device in self.devices.values():
            with contextlib.suppress(Exception):
                device.driver.close()


class TillDevices:
    """Every till's device set, and a scanner reader thread per scanner."""

    def __init__(self, settings: AgentSettings) -> None:
        self.tills = {till.id: TillDeviceSet(till) for till in settings.tills}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def for_till(self, till: str) -> TillDeviceSet:
        return self.tills[till]

    def statuses(self) -> tuple[DeviceStatus, ...]:
        return tuple(
            device.state.as_status()
            for devices in self.tills.values()
            for device in devices.devices.values()
        )

    def states(self) -> list[DeviceState]:
        return [
            device.state for devices in self.tills.values() for device in devices.devices.values()
        ]

    def start_scanners(self) -> None:
        for devices in self.tills.values():
            scanner = devices.devices.get("scanner")
            if scanner is None:
                continue
            thread = threading.Thread(
                target=self._read_scanner,
                args=(devices, scanner),
                name=f"scanner-{devices.till.id}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _read_scanner(self, devices: TillDeviceSet, scanner: _Device) -> None:
        driver: SerialScanner = scanner.driver
        while not self._stop.is_set():
            try:
                code = driver.read_code(timeout=0.5)
            except DeviceError as exc:
                scanner.state.set(exc.condition, exc.message[:200])
                self._stop.wait(1.0)
                continue
            scanner.state.set("ok")
            if code:
                with contextlib.suppress(queue.Full):
                    devices.scanned.put_nowait(code)

    async def probe_all(self) -> None:
        for devices in self.tills.values():
            await devices.probe()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        self._threads.clear()
        for devices in self.tills.values():
            devices.close()
