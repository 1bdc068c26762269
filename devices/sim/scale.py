"""Simulated Mettler-Toledo 8217 scale (DEVICES.md §1).

State: ``weight`` (kg, gross), ``tare`` (kg), ``unit`` (``"kg"``/``"lb"``). Faults, set
with :meth:`ScaleSimulator.set_fault` or the attributes directly:

- ``motion``: W answers ``02 3F 41 0D`` (status bit 0)
- ``over_capacity``: status bit 1; ``negative``: status bit 2 (under zero)
- ``zero_error``: Z answers with bit 3 (outside zero-capture range)
- ``no_answer``: silence; ``garbage``: random-looking bytes instead of a frame;
  ``bad_parity``: the weight frame with bit 7 set on its bytes; ``partial``: a frame
  cut before CR.
"""

from __future__ import annotations

from decimal import Decimal

from devices.sim.base import DeviceSimulator, Emit

__all__ = ["SCALE_FAULTS", "ScaleSimulator"]

STX = b"\x02"
CR = b"\r"
SCALE_FAULTS = (
    "motion",
    "over_capacity",
    "negative",
    "zero_error",
    "no_answer",
    "garbage",
    "bad_parity",
    "partial",
)
CAPACITY_KG = Decimal("15.000")


class ScaleSimulator(DeviceSimulator):
    kind = "scale"

    def __init__(self, weight: Decimal = Decimal("0.000")) -> None:
        super().__init__()
        self.weight = weight
        self.tare = Decimal("0.000")
        self.zero_offset = Decimal("0.000")
        self.unit = "kg"
        self.faults: set[str] = set()
        self.tare_delay = 0.15
        self.echo_mode = False
        self._buf = bytearray()
        self.commands: list[str] = []

    # -- test controls -----------------------------------------------------------------
    def set_weight(self, kg: Decimal | str) -> None:
        with self.lock:
            self.weight = Decimal(kg)

    def set_fault(self, fault: str, on: bool = True) -> None:
        if fault not in SCALE_FAULTS:
            raise ValueError(f"unknown scale fault {fault!r}; known: {SCALE_FAULTS}")
        with self.lock:
            if on:
                self.faults.add(fault)
            else:
                self.faults.discard(fault)

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def on_deaf(self) -> None:
        self._buf.clear()

    # -- state machine -----------------------------------------------------------------
    def _net(self) -> Decimal:
        return self.weight - self.zero_offset - self.tare

    def _status(self) -> int:
        status = 0x40
        net = self._net()
        if "motion" in self.faults:
            status |= 0x01
        if "over_capacity" in self.faults or self.weight > CAPACITY_KG:
            status |= 0x02
        if "negative" in self.faults or net < 0:
            status |= 0x04
        if "zero_error" in self.faults:
            status |= 0x08
        if net == 0:
            status |= 0x10
        if self.tare:
            status |= 0x20
        return status

    def _status_frame(self) -> bytes:
        return STX + b"?" + bytes([self._status()]) + CR

    def _weight_frame(self) -> bytes:
        if self._status() & 0x0F:
            return self._status_frame()
        net = self._net()
        if self.unit == "lb":
            text = f"{(net / Decimal('0.45359237')).quantize(Decimal('0.01')):06.2f}"
        else:
            text = f"{net.quantize(Decimal('0.001')):06.3f}"
        return STX + text.encode("ascii") + (b"N" if self.tare else b"") + CR

    def _deliver(self, frame: bytes, delay: float = 0.0) -> list[Emit]:
        if "no_answer" in self.faults:
            return []
        if "garbage" in self.faults:
            return [(delay, b"\x7f\x13#$%\x01\x00@")]
        if "bad_parity" in self.faults:
            return [(delay, bytes(b | 0x80 for b in frame))]
        if "partial" in self.faults:
            return [(delay, frame[:-2])]
        return [(delay, frame)]

    def handle(self, data: bytes) -> list[Emit]:
        out: list[Emit] = []
        self._buf += data
        while self._buf:
            if self.echo_mode:
                b = self._buf.pop(0)
                if b == ord("F"):
                    self.echo_mode = False
                    continue
                if "no_answer" not in self.faults:
                    out.append((0.0, bytes([b])))
                continue
            c = chr(self._buf[0])
            if c == "T" and len(self._buf) > 1 and chr(self._buf[1]).isdigit():
                end = self._buf.find(CR)
                if end < 0:
                    break  # digital tare still arriving
                digits = bytes(self._buf[1:end])
                del self._buf[: end + 1]
                self.commands.append("Tdigital")
                if len(digits) == 5 and digits.isdigit():
                    self.tare = Decimal(int(digits)) / 1000
                out += self._deliver(self._status_frame(), self.tare_delay)
                continue
            del self._buf[0]
            self.commands.append(c)
            if c == "W":
                out += self._deliver(self._weight_frame())
            elif c == "Z":
                if not self._status() & 0x0B:
                    self.zero_offset = self.weight - self.tare
                out += self._deliver(self._status_frame())
            elif c == "T":
                if not self._status() & 0x07:
                    self.tare = self.weight - self.zero_offset
                out += self._deliver(self._status_frame(), self.tare_delay)
            elif c == "C":
                self.tare = Decimal("0.000")
                out += self._deliver(self._status_frame())
            elif c == "E":
                self.echo_mode = True
                if "no_answer" not in self.faults:
                    out.append((0.0, STX + b"E" + CR))
            # any other byte: the scale ignores it
        return out
