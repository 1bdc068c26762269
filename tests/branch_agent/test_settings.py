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


def _two(first: DeviceConfig, second: DeviceConfig, *, same_till: bool = False) -> AgentSettings:
    if same_till:
        return AgentSettings(branch="B1", tills=(TillConfig(id="T1", scale=first, scanner=second),))
    return AgentSettings(
        branch="B1",
        tills=(TillConfig(id="T1", scale=first), TillConfig(id="T2", receipt_printer=second)),
    )


@pytest.mark.parametrize("same_till", [False, True])
@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("socket://127.0.0.1:21013", "socket://127.0.0.1:21013"),
        ("socket://Scale-Bridge:4001", "socket://scale-bridge:4001?logging=debug"),
        ("rfc2217://10.0.0.5:2217", " rfc2217://10.0.0.5:2217"),
        ("/dev/ttyUSB0", "/dev/ttyUSB0"),
    ],
)
def test_two_devices_on_one_port_are_refused_naming_both(
    first: str, second: str, same_till: bool
) -> None:
    with pytest.raises(ValueError, match="both on port") as refused:
        _two(DeviceConfig(port=first), DeviceConfig(port=second), same_till=same_till)
    names = (
        ("tills[0].scale (till T1)", "tills[0].scanner (till T1)")
        if same_till
        else ("tills[0].scale (till T1)", "tills[1].receipt_printer (till T2)")
    )
    assert f"{names[0]} and {names[1]} are both on port {second!r}" in str(refused.value)


def test_a_device_path_and_a_link_to_it_are_one_port(tmp_path: Path) -> None:
    # /dev/serial/by-id/... names a /dev/ttyUSB* as well
    link = tmp_path / "usb-FTDI_FT232R-if00-port0"
    link.symlink_to("/dev/ttyUSB3")
    with pytest.raises(ValueError, match="both on port"):
        _two(DeviceConfig(port="/dev/ttyUSB3"), DeviceConfig(port=str(link)))


def test_devices_on_ports_of_their_own_load() -> None:
    settings = _two(
        DeviceConfig(port="socket://127.0.0.1:21013"), DeviceConfig(port="socket://127.0.0.1:21014")
    )
    assert len(settings.tills) == 2
    # loop:// is a loopback of its own on every open: nobody shares it
    _two(DeviceConfig(port="loop://"), DeviceConfig(port="loop://"), same_till=True)


def test_the_fiscal_till_number_defaults_to_the_digits_of_the_id() -> None:
    assert TillConfig(id="T12").printer_till_number == 12
    assert TillConfig(id="front").printer_till_number == 1
    assert TillConfig(id="T1", fiscal_till_number=7).printer_till_number == 7
