"""Barcode scanners and barcodes (DEVICES.md §5).

Readers:

- :class:`SerialScanner`: serial / USB CDC-ACM mode, a code then a suffix (CR by
  default). Reads may arrive split; empty lines are ignored.
- :class:`EvdevScanner`: HID keyboard wedge read from ``/dev/input/eventN`` through the
  optional ``evdev`` package (imported only when used), grabbed so keys do not leak to
  other programs. The key-code logic is :class:`KeyCodeParser`, pure and testable.

Barcodes: :func:`validate_ean` (EAN-13, EAN-8, UPC-A check digits), :func:`parse_barcode`,
and :func:`decode_weight_embedded` for label-scale codes (EAN-13, prefix 20..29), whose
layout is a pattern per chain, e.g. ``WeightLayout("2XPPPPPWWWWWC")``::

    decode_weight_embedded("2012345012349", WeightLayout("2XPPPPPWWWWWC"))
    # WeightEmbedded(plu="12345", grams=1234, price=None)
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from devices.errors import Condition, DeviceError
from devices.ports import Port, SerialSettings

__all__ = [
    "DEFAULT_WEIGHT_LAYOUT",
    "EV_KEY",
    "Barcode",
    "EvdevScanner",
    "KeyCodeParser",
    "SerialScanner",
    "WeightEmbedded",
    "WeightLayout",
    "decode_weight_embedded",
    "ean_check_digit",
    "parse_barcode",
    "validate_ean",
]


# ---------------------------------------------------------------------------------------
# check digits and barcodes
# ---------------------------------------------------------------------------------------
def ean_check_digit(body: str) -> int:
    """Check digit for the digits before it (EAN-13: 12, EAN-8: 7, UPC-A: 11)."""
    if not body.isdigit() or not body.isascii():
        raise ValueError(f"not digits: {body!r}")
    # weights 3,1,3,1... counted from the rightmost digit of the body
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def validate_ean(code: str) -> bool:
    """True for an EAN-13, EAN-8 or UPC-A (12 digits) code with a correct check digit."""
    if len(code) not in (8, 12, 13) or not code.isdigit() or not code.isascii():
        return False
    return ean_check_digit(code[:-1]) == int(code[-1])


@dataclass(frozen=True, slots=True)
class Barcode:
    code: str
    symbology: str  # "ean13", "ean8", "upca", "other"
    weight_embedded: bool = False


def parse_barcode(code: str) -> Barcode:
    """Classify a scanned code; raises ``DeviceError(bad_frame)`` for a bad EAN/UPC check
    digit (a misread must never pick the wrong product)."""
    code = code.strip()
    if code.isdigit() and code.isascii() and len(code) in (8, 12, 13):
        if not validate_ean(code):
            raise DeviceError(Condition.BAD_FRAME, f"bad check digit in {code}")
        symbology = {8: "ean8", 12: "upca", 13: "ean13"}[len(code)]
        embedded = len(code) == 13 and code[:2] in {str(p) for p in range(20, 30)}
        return Barcode(code, symbology, embedded)
    if not code or not code.isprintable():
        raise DeviceError(Condition.BAD_FRAME, f"unreadable code {code!r}")
    return Barcode(code, "other")


@dataclass(frozen=True, slots=True)
class WeightEmbedded:
    plu: str
    grams: int | None  # for layouts with W digits
    price: Decimal | None  # for layouts with V digits (price in minor units)


class WeightLayout:
    """Layout of a weight-embedded EAN-13, as a 13-character pattern.

    Digits must match literally, ``X`` is any digit, ``P`` the product code (PLU),
    ``W`` the weight in grams, ``V`` the price in minor units (``price_decimals``),
    ``C`` the final check digit. ``2XPPPPPWWWWWC`` is prefix 20..29, five PLU digits,
    five weight digits; ``22PPPPWWWWWXC`` etc. cover other chains.
    """

    def __init__(self, pattern: str = "2XPPPPPWWWWWC", price_decimals: int = 2) -> None:
        if len(pattern) != 13 or not re.fullmatch(r"[0-9XPWVC]+", pattern):
            raise ValueError("layout is 13 characters of 0-9, X, P, W, V, C")
        if pattern[-1] != "C" or pattern.count("C") != 1 or "P" not in pattern:
            raise ValueError("layout needs P digits and ends with its one C")
        if ("W" in pattern) == ("V" in pattern):
            raise ValueError("layout carries either a weight (W) or a price (V)")
        self.pattern = pattern
        self.price_decimals = price_decimals

    def __repr__(self) -> str:
        return f"WeightLayout({self.pattern!r})"

    def matches(self, code: str) -> bool:
        return len(code) == 13 and all(
            p not in "0123456789" or p == c for p, c in zip(self.pattern, code, strict=True)
        )

    def field(self, code: str, letter: str) -> str:
        return "".join(c for p, c in zip(self.pattern, code, strict=True) if p == letter)


DEFAULT_WEIGHT_LAYOUT = WeightLayout()


def decode_weight_embedded(
    code: str, layout: WeightLayout = DEFAULT_WEIGHT_LAYOUT
) -> WeightEmbedded | None:
    """Decode a label-scale code; ``None`` if it is not one for ``layout``.

    Raises ``DeviceError(bad_frame)`` if it has the layout's prefix but a bad check digit.
    """
    if (
        len(code) != 13
        or not code.isdigit()
        or not code.isascii()
        or code[:2] not in {str(p) for p in range(20, 30)}
    ):
        return None
    if not layout.matches(code):
        return None
    if not validate_ean(code):
        raise DeviceError(Condition.BAD_FRAME, f"bad check digit in {code}")
    plu = layout.field(code, "P")
    weight = layout.field(code, "W")
    price = layout.field(code, "V")
    return WeightEmbedded(
        plu=plu,
        grams=int(weight) if weight else None,
        price=(Decimal(int(price)).scaleb(-layout.price_decimals) if price else None),
    )


# ---------------------------------------------------------------------------------------
# serial scanner
# ---------------------------------------------------------------------------------------
class SerialScanner:
    """A scanner in serial / CDC-ACM mode on ``port_url``; codes end with ``suffix``."""

    def __init__(
        self,
        port_url: str | Port,
        *,
        suffix: bytes = b"\r",
        baudrate: int = 9600,
        encoding: str = "ascii",
    ) -> None:
        self.port = (
            port_url if isinstance(port_url, Port) else Port(port_url, SerialSettings(baudrate))
        )
        self.suffix = suffix
        self.encoding = encoding
        self._buf = bytearray()

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> SerialScanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self) -> str | None:
        while True:
            end = self._buf.find(self.suffix)
            if end < 0:
                return None
            raw = bytes(self._buf[:end]).strip(b"\r\n")
            del self._buf[: end + len(self.suffix)]
            if raw:  # scanners send empty lines on some triggers
                try:
                    return raw.decode(self.encoding)
                except UnicodeDecodeError as exc:
                    raise DeviceError(Condition.BAD_FRAME, f"undecodable code {raw!r}") from exc

    def read_code(self, timeout: float = 1.0) -> str | None:
        """The next code, or ``None`` if none completes within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            code = self._take()
            if code is not None:
                return code
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._buf += self.port.read_some(256, left)

    def codes(self, poll: float = 0.5) -> Iterator[str]:
        """Codes forever (reopening the port after it is unplugged)."""
        while True:
            try:
                code = self.read_code(poll)
            except DeviceError:
                time.sleep(poll)
                continue
            if code is not None:
                yield code


# ---------------------------------------------------------------------------------------
# keyboard wedge (evdev)
# ---------------------------------------------------------------------------------------
EV_KEY = 1
KEY_LEFTSHIFT, KEY_RIGHTSHIFT = 42, 54
KEY_ENTER, KEY_KPENTER = 28, 96
# Linux input key codes -> (plain, shifted) characters for a US keyboard layout
_US_KEYS: dict[int, tuple[str, str]] = {
    2: ("1", "!"), 3: ("2", "@"), 4: ("3", "#"), 5: ("4", "$"), 6: ("5", "%"),
    7: ("6", "^"), 8: ("7", "&"), 9: ("8", "*"), 10: ("9", "("), 11: ("0", ")"),
    12: ("-", "_"), 13: ("=", "+"), 15: ("\t", "\t"),
    16: ("q", "Q"), 17: ("w", "W"), 18: ("e", "E"), 19: ("r", "R"), 20: ("t", "T"),
    21: ("y", "Y"), 22: ("u", "U"), 23: ("i", "I"), 24: ("o", "O"), 25: ("p", "P"),
    26: ("[", "{"), 27: ("]", "}"),
    30: ("a", "A"), 31: ("s", "S"), 32: ("d", "D"), 33: ("f", "F"), 34: ("g", "G"),
    35: ("h", "H"), 36: ("j", "J"), 37: ("k", "K"), 38: ("l", "L"), 39: (";", ":"),
    40: ("'", '"'), 41: ("`", "~"), 43: ("\\", "|"),
    44: ("z", "Z"), 45: ("x", "X"), 46: ("c", "C"), 47: ("v", "V"), 48: ("b", "B"),
    49: ("n", "N"), 50: ("m", "M"), 51: (",", "<"), 52: (".", ">"), 53: ("/", "?"),
    55: ("*", "*"), 57: (" ", " "),
    71: ("7", "7"), 72: ("8", "8"), 73: ("9", "9"), 74: ("-", "-"), 75: ("4", "4"),
    76: ("5", "5"), 77: ("6", "6"), 78: ("+", "+"), 79: ("1", "1"), 80: ("2", "2"),
    81: ("3", "3"), 82: ("0", "0"), 83: (".", "."),
}  # fmt: skip


class KeyCodeParser:
    """Turns (type, code, value) input events into codes; Enter ends a code.

    ``keymap`` maps key codes to (plain, shifted) characters; the default is a US
    layout, which must match the scanner's configured layout or characters come out
    wrong. Key releases and auto-repeats are ignored; unknown keys are dropped.
    """

    def __init__(self, keymap: dict[int, tuple[str, str]] | None = None) -> None:
        self.keymap = keymap or _US_KEYS
        self._shift = 0
        self._chars: list[str] = []

    def feed(self, ev_type: int, code: int, value: int) -> str | None:
        """One event; returns a finished code on Enter (``None`` otherwise)."""
        if ev_type != EV_KEY:
            return None
        if code in (KEY_LEFTSHIFT, KEY_RIGHTSHIFT):
            if value == 1:
                self._shift += 1
            elif value == 0:
                self._shift = max(0, self._shift - 1)
            return None
        if value != 1:
            return None  # release (0) or auto-repeat (2)
        if code in (KEY_ENTER, KEY_KPENTER):
            text = "".join(self._chars)
            self._chars.clear()
            return text or None
        chars = self.keymap.get(code)
        if chars is not None:
            self._chars.append(chars[1] if self._shift else chars[0])
        return None

    def feed_all(self, events: Iterable[tuple[int, int, int]]) -> list[str]:
        out = []
        for ev_type, code, value in events:
            done = self.feed(ev_type, code, value)
            if done is not None:
                out.append(done)
        return out


class EvdevScanner:
    """A keyboard-wedge scanner read through ``evdev`` (optional dependency)."""

    def __init__(
        self, device_path: str, *, grab: bool = True, parser: KeyCodeParser | None = None
    ) -> None:
        try:
            import evdev
        except ImportError as exc:  # optional: only keyboard-wedge setups need it
            raise DeviceError(
                Condition.PORT_UNAVAILABLE, "the 'evdev' package is not installed"
            ) from exc
        try:
            self._device: Any = evdev.InputDevice(device_path)
            if grab:
                # keys must not also go to whatever window has the focus
                self._device.grab()
        except OSError as exc:
            raise DeviceError(Condition.PORT_UNAVAILABLE, f"{device_path}: {exc}") from exc
        self.parser = parser or KeyCodeParser()

    def codes(self) -> Iterator[str]:
        try:
            for event in self._device.read_loop():
                code = self.parser.feed(event.type, event.code, event.value)
                if code is not None:
                    yield code
        except OSError as exc:
            raise DeviceError(Condition.LINK_LOST, str(exc)) from exc

    def close(self) -> None:
        try:
            self._device.ungrab()
        except OSError:
            pass
        self._device.close()
