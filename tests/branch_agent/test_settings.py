"""The agent's one TOML file: the documented example loads and builds every device."""

from __future__ import annotations

from pathlib import Path

import pytest

from branch_agent.devices import TillDevices
from branch_agent.settings import AgentSettings, DeviceConfig, TillConfig, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "agent.example.toml"


def test_the_example_config_loads_with_every_device() -> None:
    settings = load_settings(EXAMPLE, env={})
    assert settings.branch == "B001"
    till = settings.till("T1")
    assert till is not None
    assert till.fiscal_printer is not None
    assert till.fiscal_printer.protocol == "datecs-x"
    assert till.fiscal_printer.baudrate == 115200
    devices = TillDevices(settings)  # drivers open their ports lazily
    assert sorted(devices.for_till("T1").devices) == [
        "display",
        "fiscal",
        "printer",
        "scale",
        "scanner",
    ]
    assert sorted(devices.for_till("T2").devices) == ["printer"]
    assert {s.state for s in devices.statuses()} == {"unknown"}
    devices.close()


def test_environment_overrides_the_file() -> None:
    settings = load_settings(EXAMPLE, env={"BACKROOM_AGENT_HTTP_PORT": "9100"})
    assert settings.http_port == 9100


def test_an_unknown_device_protocol_is_refused_with_the_settings() -> None:
    # Refused when the settings are made (read), not at the agent's start.
    with pytest.raises(ValueError, match="unsupported protocol 'epson-fp81'"):
        AgentSettings(
            branch="B1",
            tills=(
                TillConfig(
                    id="T1", fiscal_printer=DeviceConfig(port="loop://", protocol="epson-fp81")
                ),
            ),
        )


def test_the_fiscal_till_number_defaults_to_the_digits_of_the_id() -> None:
    assert TillConfig(id="T12").printer_till_number == 12
    assert TillConfig(id="front").printer_till_number == 1
    assert TillConfig(id="T1", fiscal_till_number=7).printer_till_number == 7
