"""2 x 20 customer pole display, Epson ESC/POS-style command set (DEVICES.md §4).

Use::

    display = CustomerDisplay("/dev/ttyUSB2")
    display.show("Milk 1L        1.99", "TOTAL          3.98")

Write only: the only faults are a vanished port or a write timeout. The driver reopens
the port and writes once more, then raises ``DeviceError`` (``link_lost``,
``port_unavailable`` or ``no_answer``).
"""

from __future__ import annotations

from devices.errors import DeviceError
from devices.ports import Port, SerialSettings
from devices.translit import transliterate

__all__ = [
    "CLEAR",
    "CODEPAGE",
    "COLUMNS",
    "HOME",
    "ROWS",
    "CustomerDisplay",
    "cursor_to",
    "cursor_visible",
    "render_lines",
]

CLEAR = b"\x0c"
HOME = b"\x0b"
COLUMNS = 20
ROWS = 2
# The pole displays' default character table (PC437), as the ESC/POS printers'.
CODEPAGE = "cp437"


def cursor_to(column: int, row: int) -> bytes:
    """``1F 24 n m``: column n, row m, both 1-based."""
    if not (1 <= column <= COLUMNS and 1 <= row <= ROWS):
        raise ValueError(f"cursor outside {COLUMNS}x{ROWS}")
    return bytes((0x1F, 0x24, column, row))


def cursor_visible(on: bool) -> bytes:
    return bytes((0x1F, 0x43, 1 if on else 0))


def render_lines(line1: str, line2: str = "", codepage: str = CODEPAGE) -> bytes:
    """Clear, then each line at column 1 of its row, cut/padded to 20 characters.
    Transliterated first ("Щи" -> "Shchi"), so the cut counts what is shown; a control
    character becomes a space (it would move the cursor or clear the screen)."""
    out = bytearray(CLEAR + cursor_visible(False))
    for row, text in enumerate((line1, line2), start=1):
        out += cursor_to(1, row)
        out += transliterate(text, codepage)[:COLUMNS].ljust(COLUMNS).encode(codepage)
    return bytes(out)


class CustomerDisplay:
    def __init__(
        self,
        port_url: str | Port,
        *,
        baudrate: int = 9600,
        timeout: float = 1.0,
        codepage: str = CODEPAGE,
    ) -> None:
        self.port = (
            port_url
            if isinstance(port_url, Port)
            else Port(port_url, SerialSettings(baudrate=baudrate), write_timeout=timeout)
        )
        self.codepage = codepage

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> CustomerDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, data: bytes) -> None:
        with self.port.lock:
            try:
                self.port.write(data)
            except DeviceError:
                # the display was unplugged and maybe plugged back: reopen, try once more
                self.port.reopen()
                self.port.write(data)

    def check(self) -> None:
        """Whether the display's port is there, without touching the screen: open it
        (if closed) and read what waits on it (a display sends nothing; a port that is
        gone raises). A link lost since the last use is reopened once, as a write
        would. Raises ``DeviceError`` (``port_unavailable``, ``link_lost``)."""
        with self.port.lock:
            try:
                self.port.drain_input()
            except DeviceError:
                self.port.reopen()
                self.port.drain_input()

    def show(self, line1: str, line2: str = "") -> None:
        self._write(render_lines(line1, line2, self.codepage))

    def clear(self) -> None:
        self._write(CLEAR)
