"""The agent's settings: one TOML file (see ``agent.example.toml``) plus ``BACKROOM_AGENT_*``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import msgspec

from devices.scanner import WeightLayout
from protocol.config import load_settings_file_or_env
from protocol.limits import Code32, CurrencyCode
from protocol.zones import zone_problem

__all__ = [
    "DEVICE_PROTOCOLS",
    "DRAWER_PINS",
    "AgentSettings",
    "DeviceConfig",
    "TillConfig",
    "load_settings",
    "port_key",
]

# The one protocol each device of a till speaks (empty: that one), checked when the
# settings are read so a typo is refused at once, not at the first sale.
DEVICE_PROTOCOLS = {
    "fiscal_printer": "datecs-x",
    "receipt_printer": "escpos",
    "scale": "toledo-8217",
    "display": "epson-display",
    "scanner": "serial",
}
# The receipt printer's cash drawer connector pins (DEVICES.md, ESC/POS drawer kick
# ``1B 70 m``: m=0 pin 2, m=1 pin 5); the driver refuses any other at the first sale.
DRAWER_PINS = (2, 5)
# What the fiscal printer takes as TillNmb in "open fiscal receipt" (0x30).
FISCAL_TILL_NUMBERS = range(1, 100_000)


class DeviceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # pyserial URL: /dev/ttyUSB0, socket://127.0.0.1:7001, rfc2217://..., loop://
    port: str
    # datecs-x (fiscal), escpos (receipt printer + drawer), toledo-8217 (scale),
    # epson-display (2x20 pole display), serial (scanner); empty: the default per role.
    protocol: str = ""
    baudrate: Annotated[int, msgspec.Meta(gt=0)] | None = None
    # 0 would make every read return at once: each answer read as missing.
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0


class TillConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Goes up in every event of the till (central stores 32 characters).
    id: Code32
    # The till's credential for the till API (sent as a bearer token).
    token: str = ""
    fiscal_printer: DeviceConfig | None = None
    receipt_printer: DeviceConfig | None = None
    scale: DeviceConfig | None = None
    display: DeviceConfig | None = None
    scanner: DeviceConfig | None = None
    # The till number printed by the fiscal printer (1..99999); default: digits of id.
    fiscal_till_number: int | None = None
    # Cash drawer connector pin on the receipt printer (2 or 5).
    drawer_pin: int = 2
    # The fiscal printer's "other" payment kind (Datecs PaidMode 3..5) that registers
    # gift vouchers, and the one for payments of type "other" (None: refused).
    voucher_paid_mode: Annotated[int, msgspec.Meta(ge=3, le=5)] = 3
    other_paid_mode: Annotated[int, msgspec.Meta(ge=3, le=5)] | None = None
    # The PaidModes programmed on the fiscal printer (0 cash, 1 credit card, 2 debit
    # card, 3..5 other). A payment in another is refused before it is recorded: the
    # printer would refuse it mid-receipt, after an earlier payment was taken.
    fiscal_paid_modes: frozenset[Annotated[int, msgspec.Meta(ge=0, le=5)]] = frozenset(
        {0, 1, 2, 3, 4, 5}
    )

    def __post_init__(self) -> None:
        for role, known in DEVICE_PROTOCOLS.items():
            device = getattr(self, role)
            if device is not None and device.protocol not in ("", known):
                raise ValueError(
                    f"{role}: unsupported protocol {device.protocol!r}; known: {known!r}"
                )
        # Checked here, not only by the driver: the first sale's drawer kick or receipt
        # would be the first to fail, with the customer at the till.
        if self.drawer_pin not in DRAWER_PINS:
            raise ValueError(
                f"drawer_pin: {self.drawer_pin} is no cash drawer pin: the receipt printer"
                " opens the drawer on pin 2 or 5"
            )
        if self.fiscal_till_number is not None and (
            self.fiscal_till_number not in FISCAL_TILL_NUMBERS
        ):
            raise ValueError(
                f"fiscal_till_number: {self.fiscal_till_number} is out of the fiscal"
                " printer's range 1..99999"
            )

    def fiscal_payment_type(self, payment_type: str) -> str | None:
        """The fiscal driver's payment type for a till payment type (None: refused)."""
        mode = {"cash": 0, "credit_card": 1, "debit_card": 2}.get(payment_type)
        if payment_type == "voucher":
            mode = self.voucher_paid_mode
        elif payment_type == "other":
            mode = self.other_paid_mode
        if mode is None or mode not in self.fiscal_paid_modes:
            return None
        return payment_type if mode < 3 else f"other_{mode}"

    @property
    def printer_till_number(self) -> int:
        if self.fiscal_till_number is not None:
            return self.fiscal_till_number
        digits = "".join(c for c in self.id if c.isdigit())
        return int(digits[-5:]) if digits and int(digits[-5:]) > 0 else 1


class AgentSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    branch: str
    name: str = ""
    # IANA zone of the store: local days, shift dates, times printed for people.
    timezone: str = "UTC"
    data_dir: str = "var/agent"
    nats_url: str = "nats://127.0.0.1:4222"
    nats_creds: str = ""
    nats_user: str = ""
    nats_password: str = ""
    # TLS to the NATS servers: the CA that signed them (empty: the system's trust store
    # when the URL is tls://), and an optional client certificate and key.
    nats_tls_ca: str = ""
    nats_tls_cert: str = ""
    nats_tls_key: str = ""
    # HTTPS for the till API on the store LAN (both files, or neither).
    http_tls_cert: str = ""
    http_tls_key: str = ""
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8100
    # 0 or less sent nothing, for ever, without a word: the bounds keep sync moving.
    outbox_batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    outbox_publish_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0
    heartbeat_interval_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    # ISO 4217, in every receipt and return.
    currency: CurrencyCode = "EUR"
    # Bearer token of the store manager: stock documents, completing stuck sales.
    manager_token: str = ""
    # Layout of weight-embedded EAN-13 codes from label scales (devices.scanner.WeightLayout).
    weight_barcode_layout: str = "2XPPPPPWWWWWC"
    # How often pending fiscal receipts are retried and devices are probed.
    fiscal_retry_interval_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    device_poll_interval_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 15.0
    # A database restored from a backup: a sale or return waits at most this long (from
    # the agent's start, once) for central's answer, which says which sales the restore
    # lost (a till's retry of one is refused then, not printed again); then the store
    # trades on unchecked (its link is down). 0: never wait.
    restore_hold_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 15.0
    # Seed a small demo catalog on an empty database (make run).
    demo_catalog: bool = False
    # This server as central tells agents apart (empty: host name and boot id). Two
    # servers running copies of one agent database are refused; set it when the host
    # name and boot id do not tell servers apart (e.g. containers sharing a host name).
    server_id: str = ""
    tills: tuple[TillConfig, ...] = ()

    def __post_init__(self) -> None:
        # An unknown zone would only fail when the agent first needs local time; one
        # not named by place (EST) puts local days an hour off half the year.
        problem = zone_problem(self.timezone)
        if problem is not None:
            raise ValueError(f"timezone: {problem}")
        # A key without its certificate served plain HTTP: the tills' tokens in clear
        # text on the store LAN, while the technician meant HTTPS.
        if self.http_tls_key and not self.http_tls_cert:
            raise ValueError(
                "http_tls_key is set without http_tls_cert: the till API would be served"
                " over plain HTTP; set both (or neither)"
            )
        # Else refused only by Agent(settings), as a traceback after data_dir was made.
        try:
            WeightLayout(self.weight_barcode_layout)
        except ValueError as exc:
            raise ValueError(f"weight_barcode_layout: {exc}") from exc
        _check_ports_apart(self.tills)
        _check_tills_apart(self.tills, self.manager_token)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def database_path(self) -> Path:
        return self.data_path / "agent.db"

    def till(self, till_id: str) -> TillConfig | None:
        return next((t for t in self.tills if t.id == till_id), None)


def port_key(port: str) -> str | None:
    """What tells a device's port from another's: a device path with its links resolved
    (``/dev/serial/by-id/...`` is ``/dev/ttyUSB0``), a ``scheme://host:port`` URL in lower
    case without its options (``?logging=debug``); None for ``loop://``, a loopback of its
    own on every open, shared by nobody."""
    port = port.strip()
    if "://" not in port:
        return os.path.realpath(port)
    parts = urlsplit(port)
    scheme = parts.scheme.lower()
    if scheme == "loop":
        return None
    return f"{scheme}://{parts.netloc.lower()}{parts.path}"


def _check_ports_apart(tills: tuple[TillConfig, ...]) -> None:
    """Two devices on one port (any roles, any tills) talk over each other: each driver
    reads the other's answers as garbage or as its own, and a device path opens for one
    of them only. Refused when the settings are read, naming both."""
    seen: dict[str, str] = {}
    for index, till in enumerate(tills):
        for role in DEVICE_PROTOCOLS:
            device: DeviceConfig | None = getattr(till, role)
            if device is None:
                continue
            key = port_key(device.port)
            if key is None:
                continue
            name = f"tills[{index}].{role} (till {till.id})"
            if key in seen:
                raise ValueError(
                    f"{seen[key]} and {name} are both on port {device.port!r}: each device"
                    " needs a port of its own"
                )
            seen[key] = name


def _token_problem(token: str) -> str | None:
    """Why a configured token could never be presented (None: it can): the till sends it
    in an HTTP header, which carries visible ASCII, and the agent strips the blanks
    around what it receives, so a token with blanks or other characters never matches."""
    if not token:
        return "is empty"
    if not all("!" <= c <= "~" for c in token):
        return "has blanks or characters other than visible ASCII (an HTTP header cannot carry it)"
    return None


def _check_tills_apart(tills: tuple[TillConfig, ...], manager_token: str) -> None:
    """Each till is told apart by its id (in every event) and by its token (who is
    selling): two tills sharing one record each other's sales, a till holding the
    manager's token has the manager's rights (stock documents, complete-unfiscal,
    approving returns without receipt). Refused when the settings are read, naming the
    tills; the tokens themselves are never named."""
    if manager_token:
        problem = _token_problem(manager_token)
        if problem is not None:
            raise ValueError(f"manager_token {problem}")
    ids: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for index, till in enumerate(tills):
        name = f"tills[{index}] (till {till.id})"
        if not till.id.strip():
            raise ValueError(f"tills[{index}].id is empty: every till needs an id of its own")
        if till.id in ids:
            raise ValueError(
                f"{ids[till.id]} and tills[{index}] have the same id {till.id!r}: every till"
                " needs an id of its own (its sales and shifts are recorded under it)"
            )
        ids[till.id] = name
        problem = _token_problem(till.token)
        if problem is not None:
            raise ValueError(
                f"tills[{index}].token (till {till.id}) {problem}: the till could not sign in"
                " to the till API"
            )
        if till.token in tokens:
            raise ValueError(
                f"{tokens[till.token]} and {name} have the same token: every till needs a"
                " token of its own (the agent knows the till by it, and would record one"
                " till's sales as the other's)"
            )
        tokens[till.token] = name
        if manager_token and till.token == manager_token:
            raise ValueError(
                f"tills[{index}].token (till {till.id}) is the manager_token: the till"
                " would have the store manager's rights (stock documents, completing"
                " unfiscal sales, approving returns without receipt); give each its own"
            )


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> AgentSettings:
    return load_settings_file_or_env(
        AgentSettings,
        config_file,
        env,
        config_env="BACKROOM_AGENT_CONFIG",
        env_prefix="BACKROOM_AGENT_",
        section="agent",
    )
