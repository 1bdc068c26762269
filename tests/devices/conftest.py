"""Fixtures: simulators on real ptys or 127.0.0.1 TCP, stopped after each test."""

from __future__ import annotations

import time
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


def wait_for(predicate: Callable[[], object], timeout: float = 2.0) -> None:
    """Poll until ``predicate()`` is true (write-only devices give no answer to wait on)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
