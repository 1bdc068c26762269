"""What the device poll shows a technician, through the simulators: a device is ``ok``
only when it answered well (a silent scale, or a scale port that reaches another
device, is ``no_answer``, and stays so across polls); the write-only display's port is
checked from the start without writing to its screen."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from branch_agent.agent import Agent
from branch_agent.settings import AgentSettings, DeviceConfig, TillConfig
from devices.sim import SimulatorHandle, start_simulator, start_simulator_pty
from tests.conftest import asgi_client, wait_until
from tests.e2e.test_agent_kill import free_port


@pytest.fixture
def sims() -> Iterator[Callable[..., SimulatorHandle]]:
    handles: list[SimulatorHandle] = []

    def start(kind: str, tmp_path: Path | None = None) -> SimulatorHandle:
        handle = (
            start_simulator_pty(kind, link_path=str(tmp_path / f"{kind}.tty"))
            if tmp_path is not None
            else start_simulator(kind)
        )
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()


@pytest.fixture
async def agents() -> AsyncIterator[Callable[..., Any]]:
    started: list[Agent] = []

    async def start(tmp_path: Path, **devices: DeviceConfig) -> Agent:
        agent = Agent(
            AgentSettings(
                branch="B1",
                data_dir=str(tmp_path / "agent"),
                nats_url="nats://127.0.0.1:9",
                device_poll_interval_s=3600.0,
                fiscal_retry_interval_s=3600.0,
                tills=(TillConfig(id="T1", token="t1", **devices),),
            )
        )
        await agent.start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        await agent.stop()


def _state(agent: Agent, role: str) -> tuple[str, str]:
    device = agent.devices.for_till("T1").devices[role]
    return device.state.state, device.state.detail


async def _polled(agent: Agent, role: str) -> tuple[str, str]:
    """The state after the start's poll (it runs at once, in the background)."""

    async def known() -> bool:
        return _state(agent, role)[0] != "unknown"

    await wait_until(known, timeout=10)
    return _state(agent, role)


async def test_a_silent_scale_is_not_shown_ok(
    tmp_path: Path, sims: Callable[..., SimulatorHandle], agents: Callable[..., Any]
) -> None:
    scale = sims("scale", tmp_path)
    scale.sim.set_fault("no_answer")
    agent = await agents(tmp_path, scale=DeviceConfig(port=scale.url))
    state, detail = await _polled(agent, "scale")
    assert state == "no_answer"
    assert "no echo" in detail
    since = agent.devices.for_till("T1").devices["scale"].state.changed_at
    # The till asks for a weight (503), then the poll runs again: still no_answer,
    # since the first time (it once went back to ok on the next poll).
    async with asgi_client(agent.app) as client:
        weight = await client.get(
            "/api/v1/devices/scale/weight", headers={"Authorization": "Bearer t1"}
        )
    assert weight.status_code == 503
    await agent.devices.probe_all()
    assert _state(agent, "scale")[0] == "no_answer"
    status = await agent.status()
    (scale_status,) = [d for d in status.devices if d.device == "scale"]
    assert scale_status.state == "no_answer"
    # The scale answers again: ok.
    scale.sim.clear_faults()
    await agent.devices.probe_all()
    assert _state(agent, "scale") == ("ok", "")
    assert agent.devices.for_till("T1").devices["scale"].state.changed_at > since


async def test_swapped_scale_and_fiscal_ports_are_both_not_ok(
    tmp_path: Path, sims: Callable[..., SimulatorHandle], agents: Callable[..., Any]
) -> None:
    fiscal = sims("fiscal")
    scale = sims("scale")
    agent = await agents(
        tmp_path,
        # Each on the other's port.
        scale=DeviceConfig(port=fiscal.url),
        fiscal_printer=DeviceConfig(port=scale.url, timeout_s=0.3),
    )
    assert (await _polled(agent, "scale"))[0] == "no_answer"

    async def fiscal_known() -> bool:
        return _state(agent, "fiscal")[0] != "unknown"

    await wait_until(fiscal_known, timeout=30)
    assert _state(agent, "fiscal")[0] != "ok"
    await agent.devices.probe_all()
    assert _state(agent, "scale")[0] == "no_answer"
    assert fiscal.sim.receipts == []


async def test_the_display_port_is_checked_at_start_without_writing(
    tmp_path: Path, agents: Callable[..., Any]
) -> None:
    # Stopped by the test itself (a handle is stopped once).
    display = start_simulator_pty("display", link_path=str(tmp_path / "display.tty"))
    try:
        agent = await agents(tmp_path, display=DeviceConfig(port=display.url))
        assert await _polled(agent, "display") == ("ok", "")
        # Nothing written: the screen and its cursor are as the display started.
        assert display.sim.lines == (" " * 20, " " * 20)
        assert display.sim.cursor_on is True
    finally:
        display.stop()
    # Unplugged (the pty and its link gone): the next poll says so.
    await agent.devices.probe_all()
    assert _state(agent, "display")[0] == "port_unavailable"

    # A port nothing listens on: seen at once, not at the first sale.
    wrong = f"socket://127.0.0.1:{free_port()}"
    other = await agents(tmp_path / "other", display=DeviceConfig(port=wrong))
    state, detail = await _polled(other, "display")
    assert state == "port_unavailable"
    assert wrong in detail
