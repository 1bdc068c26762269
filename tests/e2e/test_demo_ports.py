"""``make run`` (``python -m central demo``) and ``serve``'s embedded NATS on ports of
one's choosing: beside another demo, or anything else on 8000/4222/8101."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from central.runtime import CentralRuntime
from tests.conftest import central_settings

ROOT = Path(__file__).resolve().parents[2]


def _free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _free_block(offsets: tuple[int, ...]) -> int:
    """A base port such that base + each offset is free now."""
    while True:
        base = random.randrange(30000, 60000)
        if _free(*(base + o for o in offsets)):
            return base


async def test_serve_starts_its_embedded_nats_on_the_configured_port(
    db_url: str, tmp_path: Path
) -> None:
    port = _free_block((0,))
    settings = central_settings(
        db_url, "", nats_server_port=port, data_dir=str(tmp_path / "central")
    )
    runtime = CentralRuntime(settings)
    await runtime.start(ingest_workers=0)
    try:
        assert runtime.nats_url.endswith(f":{port}")
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        await runtime.stop()


def _start_demo(
    tmp_path: Path, central: int, nats: int, agents: int, devices: int
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """``python -m central demo`` on those ports, in a session of its own; its answer
    once it says it is running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKROOM_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "BACKROOM_DEMO_NATS_PORT": str(nats),
            "BACKROOM_DEMO_AGENT_BASE_PORT": str(agents),
        }
    )
    args = ["--data-dir", str(tmp_path / "demo"), "--port", str(central)]
    args += ["--device-base-port", str(devices)]
    demo = subprocess.Popen(
        [sys.executable, "-m", "central", "demo", *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        lines: queue.Queue[str] = queue.Queue()
        stdout = demo.stdout
        assert stdout is not None
        threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
        out = ""
        deadline = time.monotonic() + 120
        while "Backroom is running" not in out:
            assert time.monotonic() < deadline, out
            assert demo.poll() is None, out
            with contextlib.suppress(queue.Empty):
                out += lines.get(timeout=1)
        shown: dict[str, Any] = json.loads(out[: out.index("Backroom is running")])
    except BaseException:
        _stop(demo)
        raise
    return demo, shown


def _stop(demo: subprocess.Popen[str]) -> None:
    os.killpg(demo.pid, signal.SIGTERM)
    demo.wait(60)
    for stream in (demo.stdout, demo.stderr):
        if stream is not None:
            stream.close()


def _descendants(pid: int) -> set[int]:
    """The processes below ``pid`` now (from /proc: parent of each)."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parent_of[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found: set[int] = set()
    todo = [pid]
    while todo:
        current = todo.pop()
        for child, parent in parent_of.items():
            if parent == current and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def test_the_demo_runs_on_the_ports_given(tmp_path: Path) -> None:
    central, nats = _free_block((0,)), _free_block((0,))
    agents = _free_block((0, 1))
    devices = _free_block((0, 1, 2, 3, 10, 11, 12, 13))
    demo, shown = _start_demo(tmp_path, central, nats, agents, devices)
    try:
        assert shown["central_api"] == f"http://127.0.0.1:{central}"
        assert shown["nats"].endswith(f":{nats}")
        assert shown["agents"] == {
            "B001": f"http://127.0.0.1:{agents}",
            "B002": f"http://127.0.0.1:{agents + 1}",
        }
        for url in (shown["central_api"], *shown["agents"].values()):
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                assert response.status == 200
        config = (tmp_path / "demo" / "agent-B002.toml").read_text()
        assert f"socket://127.0.0.1:{devices + 10}" in config
    finally:
        _stop(demo)


def test_a_second_signal_while_stopping_still_stops_every_process(tmp_path: Path) -> None:
    """A service manager or an impatient person signals twice: the demo, stopping its
    processes on the first, still stops them all (it left central and an agent
    running when the second came during its clean-up)."""
    demo, _shown = _start_demo(
        tmp_path,
        _free_block((0,)),
        _free_block((0,)),
        _free_block((0, 1)),
        _free_block((0, 1, 2, 3, 10, 11, 12, 13)),
    )
    started = _descendants(demo.pid)
    try:
        assert len(started) >= 4  # NATS, central, two agents (and their simulators)
        os.kill(demo.pid, signal.SIGTERM)
        time.sleep(0.3)  # into the clean-up, stopping the agents
        with contextlib.suppress(ProcessLookupError):
            os.kill(demo.pid, signal.SIGTERM)
        demo.wait(90)
        deadline = time.monotonic() + 30
        while (left := {p for p in started if _alive(p)}) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, [Path(f"/proc/{p}/cmdline").read_bytes() for p in left]
    finally:
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(60)
        for stream in (demo.stdout, demo.stderr):
            if stream is not None:
                stream.close()
