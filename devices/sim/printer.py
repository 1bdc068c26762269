"""Simulated ESC/POS receipt printer with cash drawer (DEVICES.md §3).

Records what was printed (:attr:`PrinterSimulator.jobs`: text between cuts), cuts and
drawer kicks. Faults: :attr:`paper_end`, :attr:`paper_near_end`, :attr:`cover_open`,
:attr:`offline` (set directly or with :meth:`set_fault`). While offline (which paper end
and an open cover imply) printing commands are discarded; real-time status requests are
always answered.
"""

from __future__ import annotations

from devices.escpos import CODEPAGE
from devices.sim.base import DeviceSimulator, Emit

__all__ = ["PRINTER_FAULTS", "PrinterSimulator"]

PRINTER_FAULTS = ("paper_end", "paper_near_end", "cover_open", "offline")


class PrinterSimulator(DeviceSimulator):
    kind = "printer"

    def __init__(self) -> None:
        super().__init__()
        self.paper_end = False
        self.paper_near_end = False
        self.cover_open = False
        self.offline = False
        self.drawer_open = False
        self.jobs: list[str] = []
        self.current = bytearray()
        self.kicks: list[tuple[int, int, int]] = []
        self.cuts = 0
        self._buf = bytearray()
        # The printer's character table, as the driver's default: jobs read as printed.
        self.codepage = CODEPAGE

    def set_fault(self, fault: str, on: bool = True) -> None:
        if fault not in PRINTER_FAULTS:
            raise ValueError(f"unknown printer fault {fault!r}; known: {PRINTER_FAULTS}")
        with self.lock:
            setattr(self, fault, on)

    def is_offline(self) -> bool:
        return self.offline or self.paper_end or self.cover_open

    def status_byte(self, n: int) -> int:
        b = 0x12
        if n == 1:
            b |= 0x04 if self.drawer_open else 0
            b |= 0x08 if self.is_offline() else 0
        elif n == 2:
            b |= 0x04 if self.cover_open else 0
            b |= 0x20 if self.paper_end else 0
            b |= 0x40 if self.offline else 0
        elif n == 4:
            b |= 0x0C if self.paper_near_end else 0
            b |= 0x60 if self.paper_end else 0
        return b

    def handle(self, data: bytes) -> list[Emit]:
        self._buf += data
        out: list[Emit] = []
        buf = self._buf
        while buf:
            b = buf[0]
            need = 1
            if b == 0x10:  # DLE EOT n: real-time, answered even when offline
                if len(buf) < 3:
                    break
                need = 3
                if buf[1] == 0x04 and buf[2] in (1, 2, 3, 4):
                    out.append((0.0, bytes([self.status_byte(buf[2])])))
            elif b == 0x1B:
                if len(buf) < 2:
                    break
                cmd = buf[1]
                need = {0x40: 2, 0x61: 3, 0x45: 3, 0x70: 5, 0x64: 3}.get(cmd, 2)
                if len(buf) < need:
                    break
                if not self.is_offline():
                    if cmd == 0x40:
                        self.current.clear()
                    elif cmd == 0x70:
                        self.kicks.append((2 if buf[2] in (0, 48) else 5, buf[3], buf[4]))
            elif b == 0x1D:
                if len(buf) < 3:
                    break
                need = 4 if buf[1] == 0x56 and buf[2] in (0x41, 0x42) else 3
                if len(buf) < need:
                    break
                if buf[1] == 0x56 and not self.is_offline():
                    self.cuts += 1
                    self.jobs.append(self.current.decode(self.codepage))
                    self.current.clear()
            elif not self.is_offline():
                self.current.append(b)
            del buf[:need]
        return out
