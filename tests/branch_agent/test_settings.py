"""The agent's one TOML file: the documented example loads and builds every device."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from branch_agent.devices import TillDevices
from branch_agent.settings import AgentSettings, DeviceConfig, TillConfig, load_settings
from protocol.config import SettingsError, load_settings_struct

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


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"BACKROOM_AGENT_HTTP_PORT": "abc"}, ("BACKROOM_AGENT_HTTP_PORT", "http_port")),
        ({"BACKROOM_AGENT_TIMEZONE": "EST"}, ("BACKROOM_AGENT_TIMEZONE", "not named by place")),
        ({"BACKROOM_AGENT_TILLS": "[]"}, ("BACKROOM_AGENT_TILLS", "settings file only")),
    ],
)
def test_a_bad_environment_value_is_named_by_its_variable_not_by_the_file(
    env: dict[str, str], words: tuple[str, ...]
) -> None:
    # The file is right; blaming it sent the technician looking where the value is not.
    with pytest.raises(SettingsError) as refused:
        load_settings(EXAMPLE, env=env)
    message = str(refused.value)
    for word in words:
        assert word in message
    assert "agent.example.toml" not in message


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
        return AgentSettings(
            branch="B1", tills=(TillConfig(id="T1", token="t1", scale=first, scanner=second),)
        )
    return AgentSettings(
        branch="B1",
        tills=(
            TillConfig(id="T1", token="t1", scale=first),
            TillConfig(id="T2", token="t2", receipt_printer=second),
        ),
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


def _tills(*tills: TillConfig, manager_token: str = "") -> AgentSettings:
    return AgentSettings(branch="B1", manager_token=manager_token, tills=tills)


@pytest.mark.parametrize(
    ("tills", "manager_token", "named"),
    [
        # One till's sales would be recorded as the other's.
        (
            (TillConfig(id="T1", token="same-secret"), TillConfig(id="T2", token="same-secret")),
            "",
            "tills[0] (till T1) and tills[1] (till T2) have the same token",
        ),
        # The cashier's till would have the manager's rights, the manager a till's.
        (
            (TillConfig(id="T1", token="t1-secret"), TillConfig(id="T2", token="boss-secret")),
            "boss-secret",
            "tills[1].token (till T2) is the manager_token",
        ),
        (
            (TillConfig(id="T1", token="t1-secret"), TillConfig(id="T1", token="t2-secret")),
            "",
            "tills[0] (till T1) and tills[1] have the same id 'T1'",
        ),
        ((TillConfig(id=" ", token="t1-secret"),), "", "tills[0].id is empty"),
        # A till without a token could never sign in; one with blanks neither (the agent
        # strips what the till sends).
        ((TillConfig(id="T1"),), "", "tills[0].token (till T1) is empty"),
        (
            (TillConfig(id="T1", token="t1-secret "),),
            "",
            "tills[0].token (till T1) has blanks or characters other than visible ASCII",
        ),
        (
            (TillConfig(id="T1", token="t1-secret"),),
            "boss secret",
            "manager_token has blanks or characters other than visible ASCII",
        ),
    ],
)
def test_tills_that_cannot_be_told_apart_are_refused_naming_them(
    tills: tuple[TillConfig, ...], manager_token: str, named: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(named)) as refused:
        _tills(*tills, manager_token=manager_token)
    assert "secret" not in str(refused.value)  # tills are named, tokens never


@pytest.mark.parametrize(
    ("till", "named"),
    [
        ({"drawer_pin": 3}, "drawer_pin: 3 is no cash drawer pin"),
        ({"drawer_pin": 0}, "drawer_pin: 0 is no cash drawer pin"),
        ({"fiscal_till_number": 0}, "fiscal_till_number: 0 is out of"),
        ({"fiscal_till_number": 100_000}, "fiscal_till_number: 100000 is out of"),
    ],
)
def test_device_values_the_printer_would_refuse_are_refused_now(
    till: dict[str, int], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        TillConfig(id="T1", token="t1", **till)
    # as read from a file too, named with the till's place
    text = '[agent]\nbranch = "B1"\n[[agent.tills]]\nid = "T1"\ntoken = "t1"\n'
    text += "".join(f"{k} = {v}\n" for k, v in till.items())
    with pytest.raises(SettingsError, match=f"{named}.*tills\\[0\\]"):
        load_settings_struct(AgentSettings, toml_text=text, env_prefix="X_", section="agent")


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        # Sent nothing, for ever, without a word.
        ("outbox_batch = 0", "Expected `int` >= 1 - at `$.outbox_batch`"),
        ("heartbeat_interval_s = 0", "Expected `float` > 0.0 - at `$.heartbeat_interval_s`"),
        ("fiscal_retry_interval_s = -1", "> 0.0 - at `$.fiscal_retry_interval_s`"),
        ("device_poll_interval_s = 0", "> 0.0 - at `$.device_poll_interval_s`"),
        ("outbox_publish_timeout_s = 0", "> 0.0 - at `$.outbox_publish_timeout_s`"),
        ("http_port = 70000", "Expected `int` <= 65535 - at `$.http_port`"),
        ("http_port = 0", "Expected `int` >= 1 - at `$.http_port`"),
    ],
)
def test_a_setting_that_would_stall_the_agent_is_refused_from_the_file(
    setting: str, named: str
) -> None:
    text = f'[agent]\nbranch = "B1"\n{setting}\n'
    with pytest.raises(SettingsError, match=re.escape(named)):
        load_settings_struct(AgentSettings, toml_text=text, env_prefix="X_", section="agent")


@pytest.mark.parametrize(
    ("device", "named"),
    [
        ("timeout_s = 0", "> 0.0 - at `$.tills[0].fiscal_printer.timeout_s`"),
        ("baudrate = 0", ">= 1 - at `$.tills[0].fiscal_printer.baudrate`"),
    ],
)
def test_a_device_setting_no_port_can_take_is_refused_from_the_file(
    device: str, named: str
) -> None:
    text = '[agent]\nbranch = "B1"\n[[agent.tills]]\nid = "T1"\ntoken = "t1"\n'
    text += f'[agent.tills.fiscal_printer]\nport = "loop://"\n{device}\n'
    with pytest.raises(SettingsError, match=re.escape(named)):
        load_settings_struct(AgentSettings, toml_text=text, env_prefix="X_", section="agent")


@pytest.mark.parametrize("zone", ["EST", "MST", "HST", "EST5EDT", "Etc/GMT+5", "US/Eastern", "GMT"])
def test_a_zone_not_named_by_place_is_refused(zone: str) -> None:
    with pytest.raises(ValueError, match="use a zone named by place, such as America/New_York"):
        AgentSettings(branch="B1", timezone=zone)


def test_a_good_configuration_loads() -> None:
    for zone in ("UTC", "Etc/UTC", "America/New_York", "America/Argentina/Buenos_Aires"):
        settings = AgentSettings(
            branch="B1",
            timezone=zone,
            manager_token="boss",
            tills=(
                TillConfig(id="T1", token="t1", drawer_pin=5, fiscal_till_number=99999),
                TillConfig(id="T2", token="t2", fiscal_till_number=1),
            ),
        )
        assert [t.id for t in settings.tills] == ["T1", "T2"]
    # no tills, no manager: nothing to tell apart
    assert AgentSettings(branch="B1").tills == ()


def test_the_example_names_every_setting() -> None:
    # README: "the full example with every field is agent.example.toml"; a setting
    # added since is named there too (commented out where its default is the rule).
    text = EXAMPLE.read_text()
    for cls in (AgentSettings, TillConfig, DeviceConfig):
        for field in msgspec.structs.fields(cls):
            assert re.search(
                rf"^#? ?{field.name} *=|[{{,] {field.name} =|^\[\[agent\.{field.name}\]\]",
                text,
                re.M,
            ), f"{cls.__name__}.{field.name} is not in agent.example.toml"
