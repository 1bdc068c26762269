"""Device simulators that follow DEVICES.md, runnable in-process or from the CLI.

In-process (tests, demos)::

    from devices.sim import start_simulator

    with start_simulator("fiscal") as handle:          # TCP on 127.0.0.1, free port
        printer = DatecsFiscalPrinter(handle.url)       # "socket://127.0.0.1:PORT"
        handle.sim.paper_end = True                     # fault injection
        handle.unplug()                                 # drop the link

    with start_simulator("scale", pty=True) as handle:  # pty pair
        ToledoScale(handle.url)                         # the slave path (or link_path)

``kind`` is ``scale``, ``fiscal``, ``printer``, ``display`` or ``scanner``; ``handle.sim``
is the state machine (:class:`ScaleSimulator`, :class:`FiscalSimulator`,
:class:`PrinterSimulator`, :class:`DisplaySimulator`, :class:`ScannerSimulator`), whose
docstrings list the faults. ``handle.stop()`` (or leaving the ``with``) releases the
thread, sockets and file descriptors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devices.sim.base import DeviceSimulator, PtyRunner, Runner, TcpRunner
from devices.sim.display import DisplaySimulator
from devices.sim.fiscal import FiscalSimulator
from devices.sim.printer import PrinterSimulator
from devices.sim.scale import ScaleSimulator
from devices.sim.scanner import ScannerSimulator

__all__ = [
    "KINDS",
    "DisplaySimulator",
    "FiscalSimulator",
    "PrinterSimulator",
    "ScaleSimulator",
    "ScannerSimulator",
    "SimulatorHandle",
    "make_simulator",
    "start_simulator",
    "start_simulator_pty",
]

KINDS: dict[str, type[DeviceSimulator]] = {
    "scale": ScaleSimulator,
    "fiscal": FiscalSimulator,
    "printer": PrinterSimulator,
    "display": DisplaySimulator,
    "scanner": ScannerSimulator,
}


def make_simulator(kind: str) -> Any:
    try:
        return KINDS[kind]()
    except KeyError:
        raise ValueError(f"unknown simulator {kind!r}; known: {sorted(KINDS)}") from None


@dataclass
class SimulatorHandle:
    """A running simulator: ``url`` for the driver, ``sim`` for state and faults."""

    kind: str
    sim: Any  # the concrete simulator class of ``kind``
    runner: Runner

    @property
    def url(self) -> str:
        return self.runner.url

    def unplug(self) -> None:
        """Drop the link (TCP: close the connection; pty: replace the pty pair)."""
        if isinstance(self.runner, (TcpRunner, PtyRunner)):
            self.runner.unplug()

    def stop(self) -> None:
        self.runner.stop()

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_simulator(
    kind: str,
    listen: tuple[str, int] = ("127.0.0.1", 0),
    *,
    pty: bool = False,
    link_path: str | None = None,
    sim: DeviceSimulator | None = None,
) -> SimulatorHandle:
    """Start a ``kind`` simulator in a daemon thread, on TCP ``listen`` (127.0.0.1 only;
    port 0 picks a free one) or, with ``pty=True``, on a pty pair."""
    device = sim if sim is not None else make_simulator(kind)
    runner: Runner
    runner = PtyRunner(device, link_path) if pty else TcpRunner(device, listen[0], listen[1])
    runner.start()
    return SimulatorHandle(kind, device, runner)


def start_simulator_pty(
    kind: str, link_path: str | None = None, *, sim: DeviceSimulator | None = None
) -> SimulatorHandle:
    """``start_simulator(kind, pty=True)``: ``handle.url`` is the slave path (or
    ``link_path``, a symlink that follows the device across :meth:`~SimulatorHandle.unplug`)."""
    return start_simulator(kind, pty=True, link_path=link_path, sim=sim)
