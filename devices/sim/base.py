"""Runners that serve a simulator state machine on a pty pair or a TCP port.

A simulator is a :class:`DeviceSimulator`: bytes from the host go into
:meth:`~DeviceSimulator.receive`, which returns what to send back as a list of
``(delay_seconds, bytes)`` pairs, sent in order after the delays. Unsolicited output (a
scanner's codes) is queued with :meth:`~DeviceSimulator.push` and picked up by the
runner. ``deaf_until`` makes the device ignore the wire (cable pulled, power off).

:class:`PtyRunner` serves it on ``os.openpty()`` (the driver opens the slave path, or
``link_path``, a symlink re-pointed when the device is "plugged back");
:class:`TcpRunner` on ``socket://127.0.0.1:PORT``, one client at a time.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
import tty
from collections.abc import Callable

__all__ = ["DeviceSimulator", "Emit", "PtyRunner", "Runner", "TcpRunner"]

Emit = tuple[float, bytes]


class DeviceSimulator:
    """Base class: a pure state machine fed with bytes."""

    kind = "device"

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._outbox: list[bytes] = []
        self.deaf_until = 0.0
        self.received = bytearray()  # everything the host ever sent, for assertions

    def receive(self, data: bytes) -> list[Emit]:
        """Feed host bytes; return what to answer."""
        with self.lock:
            if time.monotonic() < self.deaf_until:
                return []
            self.received += data
            return self.handle(data)

    def handle(self, data: bytes) -> list[Emit]:
        raise NotImplementedError

    def poll(self) -> list[Emit]:
        """Time-driven output (called by the runner about every 20 ms)."""
        with self.lock:
            out = [(0.0, chunk) for chunk in self._outbox]
            self._outbox.clear()
            return out

    def push(self, data: bytes) -> None:
        """Queue unsolicited output."""
        with self.lock:
            self._outbox.append(data)

    def go_deaf(self, seconds: float) -> None:
        """Ignore the wire for ``seconds`` (cable pulled, power off)."""
        with self.lock:
            self.deaf_until = time.monotonic() + seconds
            self.on_deaf()

    def on_deaf(self) -> None:
        """Hook: forget half-received frames when the line goes dead."""


class Runner:
    """Base of the pty and TCP runners: a daemon thread moving bytes."""

    url: str

    def __init__(self, sim: DeviceSimulator) -> None:
        self.sim = sim
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"sim-{sim.kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(5)
        self._close_all()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _close_all(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        raise NotImplementedError

    def _emit(self, emits: list[Emit], send: Callable[[bytes], None]) -> None:
        for delay, data in emits:
            if delay > 0 and self._stop.wait(delay):
                return
            if data:
                send(data)


class PtyRunner(Runner):
    """Serve on a pty pair. ``url`` is the slave path (or ``link_path`` if given)."""

    def __init__(self, sim: DeviceSimulator, link_path: str | None = None) -> None:
        super().__init__(sim)
        self.link_path = link_path
        self._io_lock = threading.Lock()
        self.master, self.slave = self._open_pair()
        self.url = link_path or os.ttyname(self.slave)

    def _open_pair(self) -> tuple[int, int]:
        master, slave = os.openpty()
        # raw: no echo, no CR/LF translation, bytes as sent; the slave stays open here so
        # the master does not see EIO while the driver has the port closed
        tty.setraw(slave)
        tty.setraw(master)
        if self.link_path:
            tmp = self.link_path + ".new"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(os.ttyname(slave), tmp)
            os.replace(tmp, self.link_path)
        return master, slave

    @property
    def slave_path(self) -> str:
        return os.ttyname(self.slave)

    def unplug(self) -> None:
        """Unplug and plug back: the old pty dies (the driver sees an I/O error) and a new
        one appears behind ``link_path``."""
        with self._io_lock:
            old = (self.master, self.slave)
            self.master, self.slave = self._open_pair()
            for fd in old:
                with contextlib.suppress(OSError):
                    os.close(fd)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _close_all(self) -> None:
        with self._io_lock:
            for fd in (self.master, self.slave):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.master = self.slave = -1
        if self.link_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link_path)

    def _send(self, data: bytes) -> None:
        with self._io_lock:
            fd = self.master
        view = memoryview(data)
        while view and not self._stop.is_set():
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            except OSError:
                return
            view = view[n:]

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._io_lock:
                fd = self.master
            try:
                ready, _, _ = select.select([fd, self._wake_r], [], [], 0.02)
            except (OSError, ValueError):
                time.sleep(0.01)
                continue
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
            if fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    data = b""
                if data:
                    self._emit(self.sim.receive(data), self._send)
            self._emit(self.sim.poll(), self._send)


class TcpRunner(Runner):
    """Serve on 127.0.0.1 (only); one client at a time, like a serial-over-TCP bridge."""

    def __init__(self, sim: DeviceSimulator, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(sim)
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("simulators listen on 127.0.0.1 only")
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", port))
        self._server.listen(4)
        self.host, self.port = self._server.getsockname()[:2]
        self.url = f"socket://{self.host}:{self.port}"
        self._client: socket.socket | None = None
        self._io_lock = threading.Lock()

    def disconnect(self) -> None:
        """Drop the current connection (the driver sees the link go down)."""
        with self._io_lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    unplug = disconnect

    def _close_all(self) -> None:
        self.disconnect()
        self._server.close()

    def _send(self, data: bytes) -> None:
        with self._io_lock:
            client = self._client
        if client is None:
            return
        try:
            client.sendall(data)
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._io_lock:
                client = self._client
            watch: list[socket.socket | int] = [self._wake_r, self._server]
            if client is not None:
                watch.append(client)
            try:
                ready, _, _ = select.select(watch, [], [], 0.02)
            except (OSError, ValueError):
                time.sleep(0.01)
                continue
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
            if self._server in ready:
                try:
                    new, _ = self._server.accept()
                except OSError:
                    continue
                new.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # a bridge serves one host: a new connection replaces the old one
                self.disconnect()
                with self._io_lock:
                    self._client = new
                client = new
            if client is not None and client in ready:
                try:
                    data = client.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    with self._io_lock:
                        if self._client is client:
                            self._client = None
                    client.close()
                    continue
                self._emit(self.sim.receive(data), self._send)
            if self._client is not None:
                # unsolicited output waits for a host to be connected
                self._emit(self.sim.poll(), self._send)
