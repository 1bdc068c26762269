"""Fixtures: simulators on real ptys or 127.0.0.1 TCP, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devices.sim import SimulatorHandle, start_simulator

StartSim = Callable[..., SimulatorHandle]


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    handles: list[SimulatorHandle] = []

    def start(kind: str, **kwargs: Any) -> SimulatorHandle:
        handle = start_simulator(kind, **kwargs)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()


@pytest.fixture
def closing(start_sim: StartSim) -> Iterator[Callable[[Any], Any]]:
    """Register drivers to close at teardown (before the simulators stop)."""
    drivers: list[Any] = []

    def register(driver: Any) -> Any:
        drivers.append(driver)
        return driver

    yield register
    for driver in drivers:
        driver.close()
