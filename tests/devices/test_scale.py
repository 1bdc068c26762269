"""Toledo 8217 driver against the scale simulator over real ptys."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from devices.errors import ScaleError
from devices.scale_toledo import ScaleStatus, ToledoScale
from devices.sim import ScaleSimulator
from tests.devices.conftest import StartSim


@pytest.fixture
def scale(start_sim: StartSim, closing: Callable[[Any], Any]) -> tuple[ScaleSimulator, ToledoScale]:
    handle = start_sim("scale", pty=True)
    driver = closing(ToledoScale(handle.url, timeout=0.2, tare_timeout=0.5))
    return handle.sim, driver


def test_stable_weight(scale: Any) -> None:
    sim, driver = scale
    sim.set_weight("1.234")
    reading = driver.read_weight()
    assert reading.weight == Decimal("1.234")
    assert reading.grams == 1234
    assert reading.stable
    assert not reading.net
    assert reading.raw == bytes.fromhex("02 30 31 2E 32 33 34 0D")


@pytest.mark.parametrize(
    ("fault", "condition"),
    [
        ("motion", "motion"),
        ("over_capacity", "over_capacity"),
        ("negative", "under_zero"),
        ("no_answer", "no_answer"),
        ("garbage", "bad_frame"),
        ("bad_parity", "bad_frame"),
        ("partial", "bad_frame"),
    ],
)
def test_faults_are_reported_never_a_weight(scale: Any, fault: str, condition: str) -> None:
    sim, driver = scale
    sim.set_weight("2.000")
    sim.set_fault(fault)
    with pytest.raises(ScaleError) as info:
        driver.read_weight()
    assert info.value.condition == condition
    sim.clear_faults()
    assert driver.read_weight().grams == 2000  # and the next read is clean


def test_tare_zero_and_clear(scale: Any) -> None:
    sim, driver = scale
    sim.set_weight("0.150")
    status = driver.tare()
    assert ScaleStatus.NET in status
    sim.set_weight("1.150")
    reading = driver.read_weight()
    assert reading.net
    assert reading.weight == Decimal("1.000")
    driver.clear_tare()
    assert driver.read_weight().weight == Decimal("1.150")
    driver.set_tare(Decimal("0.250"))
    assert sim.tare == Decimal("0.250")
    assert driver.read_weight().weight == Decimal("0.900")
    driver.clear_tare()
    sim.set_weight("0.010")
    driver.zero()
    assert driver.read_weight().weight == Decimal("0.000")
    sim.set_fault("zero_error")
    with pytest.raises(ScaleError, match="zero_error"):
        driver.zero()


def test_tare_refused_in_motion(scale: Any) -> None:
    sim, driver = scale
    sim.set_fault("motion")
    with pytest.raises(ScaleError, match="motion"):
        driver.tare()
    assert sim.tare == 0


def test_echo_probe(scale: Any) -> None:
    sim, driver = scale
    assert driver.probe()
    assert not sim.echo_mode  # F ended echo mode
    sim.set_weight("0.500")
    assert driver.read_weight().grams == 500
    sim.set_fault("no_answer")
    assert not driver.probe()


def test_wait_stable(scale: Any) -> None:
    sim, driver = scale
    sim.set_weight("0.300")
    sim.set_fault("motion")
    with pytest.raises(ScaleError, match="motion"):
        driver.wait_stable(timeout=0.3, interval=0.05)
    sim.clear_faults()
    assert driver.wait_stable(timeout=0.3).grams == 300


def test_reopen_after_unplug(start_sim: StartSim, closing: Any, tmp_path: Path) -> None:
    link = str(tmp_path / "ttyScale")
    handle = start_sim("scale", pty=True, link_path=link)
    driver = closing(ToledoScale(link, timeout=0.2))
    handle.sim.set_weight("1.000")
    assert driver.read_weight().grams == 1000
    handle.unplug()
    with pytest.raises(ScaleError) as info:
        driver.read_weight()
    assert info.value.condition in ("link_lost", "no_answer")
    assert driver.read_weight().grams == 1000  # reopened the device behind the link


def test_tcp_bridge(start_sim: StartSim, closing: Any) -> None:
    handle = start_sim("scale")
    handle.sim.set_weight("3.210")
    driver = closing(ToledoScale(handle.url, timeout=0.2))
    assert driver.read_weight().grams == 3210
