"""Mettler-Toledo 8217 ("ECR weight protocol") scale driver.

Wire format (DEVICES.md §1): 9600 baud 7E1, single-letter commands, answers framed
``STX ... CR``::

    W            -> 02 "01.234" [N] 0D      weight in kg (or 02 "001.23" [N] 0D in lb)
    W            -> 02 "?" <status> 0D      no valid weight
    Z / T / C    -> 02 "?" <status> 0D      zero / tare / clear tare
    T "wwwww" 0D -> 02 "?" <status> 0D      digital tare, kg with 3 implied decimals
    E "hello"    -> 02 "E" 0D "hello"       echo probe; "F" ends echo mode

Use::

    scale = ToledoScale("/dev/ttyUSB0")          # or "socket://127.0.0.1:4001"
    reading = scale.read_weight()                # WeightReading(weight=Decimal("1.234"), ...)
    reading.grams                                # 1234

``read_weight`` raises :class:`~devices.errors.ScaleError` with condition ``motion``,
``over_capacity``, ``under_zero``, ``zero_error`` or ``no_weight``; garbage, partial
frames and bytes with bit 7 set (wrong parity) raise ``bad_frame``; silence raises
``no_answer``. Pure parsing lives in :func:`parse_answer`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from decimal import Decimal
from enum import IntFlag

import serial

from devices.errors import Condition, DeviceError, ScaleError
from devices.ports import Port, SerialSettings

__all__ = [
    "ECHO_PROBE",
    "SCALE_SERIAL_SETTINGS",
    "ScaleStatus",
    "ToledoScale",
    "WeightReading",
    "encode_digital_tare",
    "parse_answer",
    "parse_echo",
    "status_condition",
]

STX = 0x02
CR = 0x0D
ECHO_PROBE = b"hello"
SCALE_SERIAL_SETTINGS = SerialSettings(
    baudrate=9600,
    bytesize=serial.SEVENBITS,
    parity=serial.PARITY_EVEN,
    stopbits=serial.STOPBITS_ONE,
)

_KG = re.compile(rb"\A(\d\d\.\d\d\d)(N?)\Z")
_LB = re.compile(rb"\A(\d\d\d\.\d\d)(N?)\Z")


class ScaleStatus(IntFlag):
    """Bits of the status character (bit 6 is always 1 and carries no meaning)."""

    MOTION = 0x01
    OVER_CAPACITY = 0x02
    UNDER_ZERO = 0x04
    OUTSIDE_ZERO_RANGE = 0x08
    CENTER_OF_ZERO = 0x10
    NET = 0x20


_ERROR_ORDER: tuple[tuple[ScaleStatus, Condition], ...] = (
    (ScaleStatus.OVER_CAPACITY, Condition.OVER_CAPACITY),
    (ScaleStatus.UNDER_ZERO, Condition.UNDER_ZERO),
    (ScaleStatus.MOTION, Condition.MOTION),
    (ScaleStatus.OUTSIDE_ZERO_RANGE, Condition.ZERO_ERROR),
)


def status_condition(status: ScaleStatus) -> Condition | None:
    """The error a status reports (the most severe first), or ``None`` if it reports none."""
    for flag, condition in _ERROR_ORDER:
        if status & flag:
            return condition
    return None


@dataclass(frozen=True, slots=True)
class WeightReading:
    """A stable, in-range weight. ``weight`` is in ``unit`` (``"kg"`` or ``"lb"``)."""

    weight: Decimal
    unit: str
    net: bool
    stable: bool = True
    raw: bytes = b""

    @property
    def grams(self) -> int:
        """Weight in whole grams (lb converted with the legal 0.45359237 kg/lb)."""
        kg = self.weight if self.unit == "kg" else self.weight * Decimal("0.45359237")
        return int((kg * 1000).to_integral_value())

    @property
    def weight_kg(self) -> Decimal:
        if self.unit == "kg":
            return self.weight
        return (self.weight * Decimal("0.45359237")).quantize(Decimal("0.001"))


def _check_7bit(frame: bytes) -> None:
    # 7E1 data never has bit 7 set: such a byte is line noise or a parity/baud mismatch
    if any(b & 0x80 for b in frame):
        raise ScaleError(Condition.BAD_FRAME, f"byte with bit 7 set in {frame!r}", raw=frame)


def parse_answer(frame: bytes) -> WeightReading | ScaleStatus:
    """Parse one ``STX ... CR`` answer to ``W``/``Z``/``T``/``C``.

    Returns a :class:`WeightReading` for a weight frame, a :class:`ScaleStatus` for a
    ``?``-status frame; raises ``ScaleError(bad_frame)`` for anything else.
    """
    _check_7bit(frame)
    if len(frame) < 3 or frame[0] != STX or frame[-1] != CR:
        raise ScaleError(Condition.BAD_FRAME, f"not an STX..CR frame: {frame!r}", raw=frame)
    body = frame[1:-1]
    if body[:1] == b"?":
        if len(body) != 2 or not body[1] & 0x40:
            raise ScaleError(Condition.BAD_FRAME, f"bad status frame {frame!r}", raw=frame)
        return ScaleStatus(body[1] & 0x3F)
    for pattern, unit in ((_KG, "kg"), (_LB, "lb")):
        match = pattern.match(body)
        if match:
            return WeightReading(
                weight=Decimal(match.group(1).decode("ascii")),
                unit=unit,
                net=bool(match.group(2)),
                raw=frame,
            )
    raise ScaleError(Condition.BAD_FRAME, f"unrecognised answer {frame!r}", raw=frame)


def parse_echo(data: bytes, text: bytes = ECHO_PROBE) -> bool:
    """True if ``data`` is the echo-mode answer ``STX E CR`` followed by ``text``."""
    return data == bytes([STX]) + b"E" + bytes([CR]) + text


def encode_digital_tare(tare_kg: Decimal) -> bytes:
    """``T wwwww CR``: five digits, kg with three implied decimals (0..99.999 kg)."""
    grams = tare_kg * 1000
    if grams != grams.to_integral_value() or not 0 <= grams <= 99999:
        raise ValueError(f"digital tare must be 0..99.999 kg in whole grams, got {tare_kg}")
    return b"T" + f"{int(grams):05d}".encode("ascii") + bytes([CR])


class ToledoScale:
    """Driver for a Toledo 8217 scale on ``port_url`` (a pyserial URL) or a shared Port."""

    def __init__(
        self,
        port_url: str | Port,
        *,
        timeout: float = 1.0,
        tare_timeout: float = 1.5,
    ) -> None:
        self.port = (
            port_url
            if isinstance(port_url, Port)
            else Port(port_url, SCALE_SERIAL_SETTINGS, timeout=timeout)
        )
        self.timeout = timeout
        self.tare_timeout = tare_timeout

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> ToledoScale:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _command(self, command: bytes, timeout: float | None = None) -> WeightReading | ScaleStatus:
        try:
            with self.port.lock:
                self.port.drain_input()  # a late answer to an earlier command is not ours
                self.port.write(command)
                frame = self.port.read_until(bytes([CR]), timeout or self.timeout, max_bytes=64)
        except ScaleError:
            raise
        except DeviceError as exc:  # port trouble, reported as the scale's
            raise ScaleError(exc.condition, exc.message, **exc.details) from exc
        if not frame:
            raise ScaleError(Condition.NO_ANSWER, f"no answer to {command!r}", port=self.port.url)
        start = frame.find(bytes([STX]))
        if start != 0 or frame[-1] != CR:
            _check_7bit(frame)
            raise ScaleError(Condition.BAD_FRAME, f"partial or garbled frame {frame!r}", raw=frame)
        return parse_answer(frame)

    def read_weight(self) -> WeightReading:
        """Ask for the weight; raise ``ScaleError`` unless it is stable and in range."""
        answer = self._command(b"W")
        if isinstance(answer, WeightReading):
            return answer
        condition = status_condition(answer)
        raise ScaleError(condition or Condition.NO_WEIGHT, status=int(answer))

    def _status_command(self, command: bytes, timeout: float | None = None) -> ScaleStatus:
        answer = self._command(command, timeout)
        if not isinstance(answer, ScaleStatus):
            raise ScaleError(Condition.BAD_FRAME, f"weight frame in answer to {command!r}")
        condition = status_condition(answer)
        if condition is not None:
            raise ScaleError(condition, status=int(answer))
        return answer

    def zero(self) -> ScaleStatus:
        """Zero the scale; raises ``zero_error`` if the load is outside the zero range."""
        return self._status_command(b"Z")

    def tare(self) -> ScaleStatus:
        """Tare the load on the scale (the scale answers about 150 ms later)."""
        return self._status_command(b"T", self.tare_timeout)

    def set_tare(self, tare_kg: Decimal) -> ScaleStatus:
        """Digital tare of ``tare_kg`` kg."""
        return self._status_command(encode_digital_tare(tare_kg), self.tare_timeout)

    def clear_tare(self) -> ScaleStatus:
        return self._status_command(b"C")

    def probe(self, text: bytes = ECHO_PROBE) -> bool:
        """Echo test: positive only if the scale echoes ``text`` back. Leaves echo mode."""
        expected = len(text) + 3
        with self.port.lock:
            self.port.drain_input()
            self.port.write(b"E" + text)
            data = self.port.read_exactly(expected, self.timeout)
            try:
                self.port.write(b"F")
                # anything else the scale says while leaving echo mode is not for the next command
                self.port.drain_input(quiet=0.05)
            except DeviceError:
                pass
        return parse_echo(data, text)

    def wait_stable(self, timeout: float = 5.0, interval: float = 0.2) -> WeightReading:
        """Poll until a stable weight comes (only ``motion`` is retried)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.read_weight()
            except ScaleError as exc:
                if exc.condition != Condition.MOTION or time.monotonic() + interval > deadline:
                    raise
            time.sleep(interval)
