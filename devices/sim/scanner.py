"""Simulated serial / CDC-ACM barcode scanner: :meth:`ScannerSimulator.scan` sends a code
followed by the suffix (CR), optionally split into several writes."""

from __future__ import annotations

from devices.sim.base import DeviceSimulator, Emit

__all__ = ["ScannerSimulator"]


class ScannerSimulator(DeviceSimulator):
    kind = "scanner"

    def __init__(self, suffix: bytes = b"\r") -> None:
        super().__init__()
        self.suffix = suffix

    def scan(self, code: str, *, split: int = 0) -> None:
        """Queue ``code`` + suffix; with ``split`` > 0, in chunks of that many bytes."""
        data = code.encode("ascii") + self.suffix
        if split <= 0:
            self.push(data)
            return
        for i in range(0, len(data), split):
            self.push(data[i : i + split])

    def handle(self, data: bytes) -> list[Emit]:
        return []  # a scanner ignores what the host sends
