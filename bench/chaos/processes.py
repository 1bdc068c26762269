"""Child processes of the fault harness: each in its own session, logged, killable.

Every process is started with ``start_new_session=True`` so a SIGKILL of its group
takes exactly it (and anything it spawned), never the harness. Control is
synchronous (the harness calls it through ``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

__all__ = ["ManagedProcess", "wait_http_ok"]


def wait_http_ok(url: str, timeout: float = 60.0, process: ManagedProcess | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``process`` died meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.is_running():
            raise RuntimeError(
                f"{process.name} exited with {process.returncode}; see {process.log_path}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


class ManagedProcess:
    """``python -m <args>`` restartable any number of times, output appended to one log.

    Output goes through a pipe that a thread copies into the log, so a process whose
    file-size limit is lowered (the full-disk fault) still gets its log lines out.
    """

    def __init__(
        self, name: str, args: list[str], *, env: dict[str, str], log_path: Path, cwd: Path
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.starts = 0
        self.kills = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._copier: threading.Thread | None = None
        self._last_returncode: int | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else self._last_returncode

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.is_running():
            return
        self._reap()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"\n=== start #{self.starts + 1} of {self.name}\n".encode())
        self._log.flush()
        self._process = subprocess.Popen(
            [sys.executable, "-m", *self.args],
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._copier = threading.Thread(
            target=_copy, args=(self._process.stdout, self._log), daemon=True
        )
        self._copier.start()
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL, as a crash or power cut of that process would."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            self.kills += 1
        self._reap()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after ``grace`` seconds."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._reap()

    def _reap(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._last_returncode = self._process.returncode
            if self._copier is not None:
                self._copier.join(10)
                self._copier = None
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None
        if self._process is None and self._log is not None:
            self._log.close()
            self._log = None


def _copy(source: IO[bytes] | None, sink: IO[bytes]) -> None:
    if source is None:
        return
    with contextlib.suppress(OSError, ValueError):
        for line in iter(source.readline, b""):
            sink.write(line)
            sink.flush()
