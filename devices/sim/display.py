"""Simulated 2 x 20 customer display (DEVICES.md §4): keeps the screen as two strings."""

from __future__ import annotations

from devices.display import CODEPAGE
from devices.sim.base import DeviceSimulator, Emit

__all__ = ["DisplaySimulator"]

COLUMNS, ROWS = 20, 2


class DisplaySimulator(DeviceSimulator):
    kind = "display"

    def __init__(self) -> None:
        super().__init__()
        self.screen = [[" "] * COLUMNS for _ in range(ROWS)]
        self.row = 0
        self.col = 0
        self.cursor_on = True
        self._buf = bytearray()
        # The display's character table, as the driver's default.
        self.codepage = CODEPAGE

    @property
    def lines(self) -> tuple[str, str]:
        return "".join(self.screen[0]), "".join(self.screen[1])

    def handle(self, data: bytes) -> list[Emit]:
        self._buf += data
        buf = self._buf
        while buf:
            b = buf[0]
            need = 1
            if b == 0x0C:
                self.screen = [[" "] * COLUMNS for _ in range(ROWS)]
                self.row = self.col = 0
            elif b == 0x0B:
                self.row = self.col = 0
            elif b == 0x1F:
                if len(buf) < 2:
                    break
                need = {0x24: 4, 0x43: 3}.get(buf[1], 2)
                if len(buf) < need:
                    break
                if buf[1] == 0x24:
                    self.col = min(max(buf[2], 1), COLUMNS) - 1
                    self.row = min(max(buf[3], 1), ROWS) - 1
                elif buf[1] == 0x43:
                    self.cursor_on = bool(buf[2])
            elif b >= 0x20 and self.col < COLUMNS:
                self.screen[self.row][self.col] = bytes([b]).decode(self.codepage)
                self.col += 1
            del buf[:need]
        return []
