"""One agent process per data directory: a lock on ``<data_dir>/agent.lock``.

Two agents on one ``agent.db`` (a forgotten old instance during an upgrade, systemd
plus a manual start) would each drive the fiscal printer from the same pending sales
and print them twice, and both would pull the branch's one down-stream consumer. The
serial device lock protects a ``/dev/tty...`` printer only, not ``socket://`` or
``rfc2217://``. So ``run`` holds this lock for its whole life, and the commands that
write the database (``restore``, ``db-upgrade``) hold it while they work; the second
one is refused, naming the holder. ``flock`` locks belong to the open file: the kernel
drops them when the process ends, however it ends (SIGKILL, power cut), so a stale
lock file never keeps an agent from starting.

The file's text says who holds it (JSON: pid, command, till API port, since when);
it is informative only, the lock is the ``flock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "InstanceLock", "InstanceLocked", "StartRefused", "lock_holder"]

LOCK_NAME = "agent.lock"
# A holder only looking (status takes the lock shared for an instant) is waited for.
_ACQUIRE_WAIT_S = 1.0


class StartRefused(Exception):
    """The agent (or a command writing its database) must not go on: one line for the
    technician, exit 2, nothing changed."""


class InstanceLocked(StartRefused):
    """Another process holds the data directory."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


def _read_holder(fd: int) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 4096, 0).decode()
        holder = json.loads(text) if text.strip() else {}
        if isinstance(holder, dict):
            return holder
    return {}


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 1234, 'run', till API on port 8100, since 2026-…`` (what is known)."""
    parts = []
    if holder.get("pid"):
        parts.append(f"pid {holder['pid']}")
    if holder.get("command"):
        parts.append(f"{holder['command']!r}")
    if holder.get("http_port"):
        parts.append(f"till API on port {holder['http_port']}")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return ", ".join(parts) or "holder not known"


class InstanceLock:
    """The data directory's lock, taken by ``acquire`` and held until ``release``
    (or the process's end)."""

    def __init__(self, data_dir: Path, *, command: str, http_port: int | None = None) -> None:
        self.path = data_dir / LOCK_NAME
        self.command = command
        self.http_port = http_port
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise ``InstanceLocked`` naming the holder (after waiting up
        to a second: ``status`` may be peeking at it)."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + _ACQUIRE_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = _read_holder(fd)
                os.close(fd)
                raise InstanceLocked(
                    f"{self.path.parent} is in use by another agent process "
                    f"({describe_holder(holder)}): stop it first (e.g. systemctl stop, or "
                    f"kill {holder.get('pid', 'PID')}); two processes on one agent.db would "
                    "print sales twice on the fiscal printer",
                    holder,
                ) from None
            except BaseException:
                os.close(fd)
                raise
        info = {
            "pid": os.getpid(),
            "command": self.command,
            "http_port": self.http_port,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            # What the file says is true only while the lock is held.
            os.ftruncate(fd, 0)
        os.close(fd)  # the lock goes with the last descriptor of the open file

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(data_dir: Path) -> dict[str, Any] | None:
    """Who holds ``data_dir``'s lock (its recorded facts, maybe empty), or None when
    no process does. Looks only: a shared lock for an instant."""
    path = data_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
