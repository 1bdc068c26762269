"""Serial ports opened by pyserial URL, with one lock per port and reopen on failure.

A :class:`Port` accepts anything ``serial.serial_for_url`` accepts: a device path
(``/dev/ttyUSB0``, ``/dev/ttyACM0``, a pty slave ``/dev/pts/N``), ``socket://host:port``,
``rfc2217://host:port`` or ``loop://``. It opens lazily, and after an I/O error (a USB
adapter unplugged, a TCP bridge restarted) it closes itself so the next call opens the
port again: a device plugged back in is picked up without restarting the program.

Every read has a timeout. Drivers hold :attr:`Port.lock` for a whole command/answer
exchange; the lock is shared by every :class:`Port` object on the same URL in the
process, so two drivers on one wire never interleave their bytes.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import serial
from serial.urlhandler import protocol_socket

from devices.errors import Condition, DeviceError

try:
    import termios

    # pyserial lets termios.error (not an OSError) escape from tcdrain/tcsetattr on a
    # device that vanished
    _IO_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError, termios.error)
except ImportError:  # pragma: no cover - not POSIX
    _IO_ERRORS = (serial.SerialException, OSError)
_OPEN_ERRORS: tuple[type[BaseException], ...] = (*_IO_ERRORS, ValueError)

__all__ = ["Port", "SerialSettings", "is_device_path", "lock_holder_text", "port_lock"]

_POLL = 0.02  # seconds one low-level read may block
_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


def port_lock(url: str) -> threading.RLock:
    """The process-wide lock of the port at ``url``."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(url)
        if lock is None:
            lock = _LOCKS[url] = threading.RLock()
        return lock


def is_device_path(url: str) -> bool:
    """True for a local device path (line settings apply), False for a ``scheme://`` URL."""
    return "://" not in url


def lock_holder_text(path: str) -> str:
    """`` (pid N: its command line)`` of the process holding the exclusive lock on the
    device at ``path``, read from ``/proc/locks`` (Linux); ``""`` when not found."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as locks:
            rows = locks.read().splitlines()
    except OSError:
        return ""
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for row in rows:
        fields = row.split()
        # "1: FLOCK  ADVISORY  WRITE 12345 00:1a:7 0 EOF" (a blocked waiter has "->")
        if "->" in fields or len(fields) < 6 or fields[5] != wanted:
            continue
        pid = fields[4]
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            command = ""
        return f" (pid {pid}: {command[:200]})" if command else f" (pid {pid})"
    return ""


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """Line settings; ignored by ``socket://`` and ``loop://`` URLs, as the wire is not serial."""

    baudrate: int = 9600
    bytesize: int = serial.EIGHTBITS
    parity: str = serial.PARITY_NONE
    stopbits: float = serial.STOPBITS_ONE
    rtscts: bool = False
    dsrdtr: bool = False


class Port:
    """One serial port, opened on first use and reopened after a failure."""

    def __init__(
        self,
        url: str,
        settings: SerialSettings | None = None,
        *,
        timeout: float = 1.0,
        write_timeout: float = 1.0,
    ) -> None:
        self.url = url
        self.settings = settings or SerialSettings()
        self.timeout = timeout
        self.write_timeout = write_timeout
        self.lock = port_lock(url)
        self._serial: serial.SerialBase | None = None
        # bytes read past a terminator, handed out by the next read
        self._pending = bytearray()

    # -- lifecycle -------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        """Open the port now (it is otherwise opened on first use)."""
        with self.lock:
            if self._serial is not None:
                return
            # reads poll in short slices so a per-call timeout never needs a tcsetattr
            kwargs: dict[str, Any] = {"timeout": _POLL, "write_timeout": self.write_timeout}
            if is_device_path(self.url):
                s = self.settings
                pty = os.path.realpath(self.url).startswith("/dev/pts/")
                kwargs.update(
                    baudrate=s.baudrate,
                    # Linux ptys only carry 8N1 (and refuse to be set otherwise); a pty
                    # is a simulator's wire, where parity means nothing
                    bytesize=serial.EIGHTBITS if pty else s.bytesize,
                    parity=serial.PARITY_NONE if pty else s.parity,
                    stopbits=s.stopbits,
                    rtscts=s.rtscts,
                    dsrdtr=s.dsrdtr,
                    # a second program on the same device would garble both conversations
                    exclusive=True,
                )
            try:
                self._serial = serial.serial_for_url(self.url, **kwargs)
            except _OPEN_ERRORS as exc:
                if getattr(exc, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK):
                    # Another program has it open with its exclusive lock.
                    raise DeviceError(
                        Condition.PORT_UNAVAILABLE,
                        f"cannot open {self.url}: in use by another program"
                        f"{lock_holder_text(self.url)}; a port the branch agent holds is "
                        "used through the agent (its till API and status), or stop the "
                        "agent first",
                        port=self.url,
                    ) from exc
                raise DeviceError(
                    Condition.PORT_UNAVAILABLE, f"cannot open {self.url}: {exc}", port=self.url
                ) from exc

    def close(self) -> None:
        """Close the port; the next call opens it again."""
        with self.lock:
            ser, self._serial = self._serial, None
            self._pending.clear()
            if ser is None:
                return
            if isinstance(ser, protocol_socket.Serial):
                # pyserial's socket:// close() leaks the socket when shutdown() fails (the
                # peer is gone) and then sleeps 0.3 s; close the socket ourselves
                sock = getattr(ser, "_socket", None)
                ser._socket = None  # type: ignore[attr-defined]
                ser.is_open = False
                if sock is not None:
                    sock.close()
                return
            try:
                ser.close()
            except _IO_ERRORS:
                pass  # the device is already gone; nothing left to release

    def reopen(self, attempts: int = 1, delay: float = 0.1) -> None:
        """Close and open again, trying ``attempts`` times ``delay`` seconds apart."""
        with self.lock:
            self.close()
            for attempt in range(attempts):
                try:
                    self.open()
                    return
                except DeviceError:
                    if attempt == attempts - 1:
                        raise
                    time.sleep(delay)

    def __enter__(self) -> Port:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- I/O -------------------------------------------------------------------------
    def _ser(self) -> serial.SerialBase:
        if self._serial is None:
            self.open()
        assert self._serial is not None
        return self._serial

    def _lost(self, exc: BaseException) -> DeviceError:
        # close now so the next call reopens: the device may come back under the same path
        self.close()
        return DeviceError(Condition.LINK_LOST, f"{self.url}: {exc}", port=self.url)

    def write(self, data: bytes) -> None:
        """Write all of ``data``; raises ``link_lost`` or ``no_answer`` (write timeout)."""
        with self.lock:
            ser = self._ser()
            try:
                ser.write(data)
                ser.flush()
            except serial.SerialTimeoutException as exc:
                raise DeviceError(
                    Condition.NO_ANSWER, f"write to {self.url} timed out", port=self.url
                ) from exc
            except _IO_ERRORS as exc:
                raise self._lost(exc) from exc

    def read_some(self, max_bytes: int, timeout: float) -> bytes:
        """Whatever arrives first, at most ``max_bytes``; ``b""`` after ``timeout`` seconds."""
        with self.lock:
            if self._pending:
                data = bytes(self._pending[:max_bytes])
                del self._pending[:max_bytes]
                return data
            ser = self._ser()
            deadline = time.monotonic() + timeout
            try:
                while True:
                    waiting: int = ser.in_waiting  # type: ignore[attr-defined]
                    got: bytes = ser.read(max(1, min(max_bytes, waiting)))
                    if got or time.monotonic() >= deadline:
                        return got
            except _IO_ERRORS as exc:
                raise self._lost(exc) from exc

    def read_until(self, terminator: bytes, timeout: float, max_bytes: int = 4096) -> bytes:
        """Bytes up to and including ``terminator``, or what came before ``timeout``."""
        with self.lock:
            deadline = time.monotonic() + timeout
            buf = bytearray()
            while terminator not in buf and len(buf) < max_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                buf += self.read_some(max_bytes, left)
            end = buf.find(terminator)
            if end >= 0:
                end += len(terminator)
                self._pending[:0] = buf[end:]
                del buf[end:]
            return bytes(buf)

    def read_exactly(self, count: int, timeout: float) -> bytes:
        """``count`` bytes, or fewer if ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        buf = bytearray()
        while len(buf) < count:  # read_some never returns more than asked
            left = deadline - time.monotonic()
            if left <= 0:
                break
            buf += self.read_some(count - len(buf), left)
        return bytes(buf)

    def drain_input(self, quiet: float = 0.0) -> bytes:
        """Discard pending input (stale answers); with ``quiet`` > 0, wait that long for more."""
        with self.lock:
            got = bytearray(self._pending)
            self._pending.clear()
            ser = self._ser()
            try:
                waiting: int = ser.in_waiting  # type: ignore[attr-defined]
                if waiting:
                    got += ser.read(waiting)
            except _IO_ERRORS as exc:
                raise self._lost(exc) from exc
            if quiet > 0:
                while True:
                    chunk = self.read_some(4096, quiet)
                    if not chunk:
                        break
                    got += chunk
            return bytes(got)
