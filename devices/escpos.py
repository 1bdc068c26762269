"""ESC/POS receipt printer and cash drawer (DEVICES.md §3).

Use::

    printer = EscPosPrinter("/dev/ttyUSB1")          # or "socket://10.0.0.9:9100"
    printer.print_text("Thank you\\n", cut=True)     # status checked before and after
    printer.kick_drawer(pin=2)
    printer.status()                                  # PrinterStatus(online=True, ...)

Before and after each job the driver asks the real-time status (``10 04 n``) and raises
:class:`~devices.errors.PrinterError` with condition ``paper_end``, ``cover_open`` or
``offline`` (or ``no_answer`` / ``bad_frame``). A paper-near-end printer still prints;
the status says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from devices.errors import Condition, DeviceError, PrinterError
from devices.ports import Port, SerialSettings
from devices.translit import transliterate

__all__ = [
    "CODEPAGE",
    "CUT_FULL",
    "CUT_PARTIAL",
    "FEED_AND_CUT",
    "INIT",
    "EscPosPrinter",
    "PrinterStatus",
    "align",
    "bold",
    "drawer_kick",
    "parse_status",
    "realtime_status_request",
    "text_job",
    "valid_status_byte",
]

INIT = b"\x1b\x40"
CUT_FULL = b"\x1d\x56\x00"
CUT_PARTIAL = b"\x1d\x56\x01"
FEED_AND_CUT = b"\x1d\x56\x42\x00"
# Character code table 0 (PC437), what an ESC/POS printer prints after ESC @.
CODEPAGE = "cp437"


def text_job(text: str, *, cut: bool = True, codepage: str = CODEPAGE) -> bytes:
    """Initialise, ``text`` (newline-terminated lines), feed and cut. What the code page
    lacks is transliterated ("Łódź" -> "Lodz"); line feeds and tabs stay (LF prints the
    line, HT moves to the next tab stop), other control characters become spaces (an
    ESC in a product name would be a command)."""
    body = text.replace("\r\n", "\n")
    if not body.endswith("\n"):
        body += "\n"
    printable = transliterate(body, codepage, keep="\n\t")
    return INIT + printable.encode(codepage) + (FEED_AND_CUT if cut else b"")


def align(mode: int) -> bytes:
    """``1B 61 n``: 0 left, 1 centre, 2 right."""
    if mode not in (0, 1, 2):
        raise ValueError("align is 0, 1 or 2")
    return bytes((0x1B, 0x61, mode))


def bold(on: bool) -> bytes:
    return bytes((0x1B, 0x45, 1 if on else 0))


def drawer_kick(pin: int, on_ms: int = 50, off_ms: int = 50) -> bytes:
    """``1B 70 m t1 t2``: m=0 for pin 2, m=1 for pin 5; pulse times in units of 2 ms."""
    if pin not in (2, 5):
        raise ValueError("drawer pin is 2 or 5")
    t1, t2 = on_ms // 2, off_ms // 2
    if not (0 <= t1 <= 255 and 0 <= t2 <= 255):
        raise ValueError("pulse times are 0..510 ms")
    return bytes((0x1B, 0x70, 0 if pin == 2 else 1, t1, t2))


def realtime_status_request(n: int) -> bytes:
    """``10 04 n`` (n = 1 printer, 2 offline cause, 3 errors, 4 paper roll)."""
    if n not in (1, 2, 3, 4):
        raise ValueError("status n is 1..4")
    return bytes((0x10, 0x04, n))


def valid_status_byte(b: int) -> bool:
    """Real-time status bytes are shaped ``0xx1xx10``."""
    return b & 0b1001_0011 == 0b0001_0010


@dataclass(frozen=True, slots=True)
class PrinterStatus:
    online: bool
    drawer_open: bool
    cover_open: bool
    paper_near_end: bool
    paper_end: bool
    error: bool
    autocutter_error: bool
    unrecoverable_error: bool
    raw: bytes

    @property
    def problem(self) -> Condition | None:
        """The condition that stops printing, if any."""
        if self.paper_end:
            return Condition.PAPER_END
        if self.cover_open:
            return Condition.COVER_OPEN
        if self.error or self.autocutter_error or self.unrecoverable_error:
            return Condition.PRINTER_ERROR
        if not self.online:
            return Condition.OFFLINE
        return None


def parse_status(raw: bytes) -> PrinterStatus:
    """Decode the answers to ``10 04 1``, ``2``, ``3``, ``4`` (four bytes, in that order).

    ``drawer_open`` reports the drawer sensor (pin 3 high); whether high means open
    depends on the drawer model."""
    if len(raw) != 4 or not all(valid_status_byte(b) for b in raw):
        raise PrinterError(Condition.BAD_FRAME, f"bad real-time status {raw.hex(' ')}")
    printer, offline, errors, paper = raw
    return PrinterStatus(
        online=not printer & 0x08,
        drawer_open=bool(printer & 0x04),
        cover_open=bool(offline & 0x04),
        paper_near_end=bool(paper & 0x0C),
        paper_end=bool(paper & 0x60) or bool(offline & 0x20),
        error=bool(offline & 0x40),
        autocutter_error=bool(errors & 0x08),
        unrecoverable_error=bool(errors & 0x20),
        raw=bytes(raw),
    )


class EscPosPrinter:
    """ESC/POS printer at ``port_url``. Serial ports use 9600 8N1 with DSR/DTR flow control
    by default; ``socket://host:9100`` reaches network printers."""

    def __init__(
        self,
        port_url: str | Port,
        *,
        baudrate: int = 9600,
        dsrdtr: bool = True,
        timeout: float = 1.0,
        codepage: str = CODEPAGE,
    ) -> None:
        self.port = (
            port_url
            if isinstance(port_url, Port)
            else Port(port_url, SerialSettings(baudrate=baudrate, dsrdtr=dsrdtr), timeout=timeout)
        )
        self.timeout = timeout
        self.codepage = codepage

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> EscPosPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> PrinterStatus:
        """Ask the four real-time statuses."""
        try:
            return self._status()
        except PrinterError:
            raise
        except DeviceError as exc:  # port trouble, reported as the printer's
            raise PrinterError(exc.condition, exc.message, **exc.details) from exc

    def _status(self) -> PrinterStatus:
        with self.port.lock:
            self.port.drain_input()
            raw = bytearray()
            for n in (1, 2, 3, 4):
                self.port.write(realtime_status_request(n))
                got = self.port.read_exactly(1, self.timeout)
                if not got:
                    raise PrinterError(Condition.NO_ANSWER, f"no answer to 10 04 {n:02x}")
                raw += got
        return parse_status(bytes(raw))

    def _check(self, when: str) -> PrinterStatus:
        status = self.status()
        problem = status.problem
        if problem is not None:
            raise PrinterError(problem, f"{problem.value} {when} the job", when=when)
        return status

    def print_job(self, data: bytes) -> PrinterStatus:
        """Send raw ESC/POS bytes between two status checks; returns the status after."""
        with self.port.lock:
            self._check("before")
            try:
                self.port.write(data)
            except DeviceError as exc:
                raise PrinterError(exc.condition, exc.message, **exc.details) from exc
            return self._check("after")

    def print_text(self, text: str, *, cut: bool = True) -> PrinterStatus:
        """Initialise, print ``text`` (newline-terminated lines), feed and cut."""
        return self.print_job(text_job(text, cut=cut, codepage=self.codepage))

    def cut(self, partial: bool = False) -> PrinterStatus:
        return self.print_job(CUT_PARTIAL if partial else CUT_FULL)

    def kick_drawer(self, pin: int = 2, on_ms: int = 50, off_ms: int = 50) -> None:
        """Open the cash drawer on connector pin 2 or 5.

        An offline printer ignores ``ESC p``, so the status is checked first."""
        data = drawer_kick(pin, on_ms, off_ms)
        with self.port.lock:
            self._check("before")
            self.port.write(data)
