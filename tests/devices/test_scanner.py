"""Barcode checks, weight-embedded codes, the serial scanner over a pty, evdev key codes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from devices.errors import DeviceError
from devices.scanner import (
    EV_KEY,
    KeyCodeParser,
    SerialScanner,
    WeightLayout,
    decode_weight_embedded,
    ean_check_digit,
    parse_barcode,
    validate_ean,
)
from tests.devices.conftest import StartSim


@pytest.mark.parametrize("code", ["4006381333931", "96385074", "036000291452", "5901234123457"])
def test_valid_codes(code: str) -> None:
    assert validate_ean(code)


@pytest.mark.parametrize("code", ["4006381333932", "96385075", "036000291453", "12345", "abcdefgh"])
def test_invalid_codes(code: str) -> None:
    assert not validate_ean(code)


def test_check_digit_and_parse() -> None:
    assert ean_check_digit("400638133393") == 1
    assert parse_barcode("96385074").symbology == "ean8"
    assert parse_barcode("036000291452").symbology == "upca"
    assert parse_barcode("2012345012349").weight_embedded
    assert parse_barcode("ABC-123").symbology == "other"
    with pytest.raises(DeviceError, match="bad_frame"):
        parse_barcode("4006381333932")


def test_weight_embedded_default_layout() -> None:
    decoded = decode_weight_embedded("2012345012349")
    assert decoded is not None
    assert (decoded.plu, decoded.grams, decoded.price) == ("12345", 1234, None)
    assert decode_weight_embedded("4006381333931") is None
    with pytest.raises(DeviceError):
        decode_weight_embedded("2012345012340")


def test_weight_embedded_other_layouts() -> None:
    body = "22" + "0042" + "01500" + "0"
    code = body + str(ean_check_digit(body))
    decoded = decode_weight_embedded(code, WeightLayout("22PPPPWWWWWXC"))
    assert decoded is not None
    assert (decoded.plu, decoded.grams) == ("0042", 1500)
    assert decode_weight_embedded(code, WeightLayout("23PPPPWWWWWXC")) is None
    price_body = "25" + "12345" + "00299"
    price_code = price_body + str(ean_check_digit(price_body))
    priced = decode_weight_embedded(price_code, WeightLayout("2XPPPPPVVVVVC"))
    assert priced is not None
    assert priced.price == Decimal("2.99")
    with pytest.raises(ValueError, match="13"):
        WeightLayout("2PPPPWWWWC")


def test_serial_scanner_split_reads_and_empty_lines(start_sim: StartSim, closing: Any) -> None:
    handle = start_sim("scanner", pty=True)
    scanner = closing(SerialScanner(handle.url))
    scanner.port.open()
    assert scanner.read_code(0.05) is None
    handle.sim.scan("4006381333931", split=3)
    handle.sim.push(b"\r\r")  # empty lines are ignored
    handle.sim.scan("96385074")
    assert scanner.read_code(2) == "4006381333931"
    assert scanner.read_code(2) == "96385074"


def _keys(text: str) -> list[tuple[int, int, int]]:
    codes = {"4": 5, "0": 11, "6": 7, "3": 4, "8": 9, "1": 2, "9": 10, "a": 30}
    events: list[tuple[int, int, int]] = []
    for ch in text:
        if ch.isupper():
            events += [
                (EV_KEY, 42, 1),
                (EV_KEY, codes[ch.lower()], 1),
                (EV_KEY, codes[ch.lower()], 0),
                (EV_KEY, 42, 0),
            ]
        else:
            events += [(EV_KEY, codes[ch], 1), (EV_KEY, codes[ch], 0)]
    return [*events, (0, 0, 0), (EV_KEY, 28, 1), (EV_KEY, 28, 0)]


def test_evdev_key_parser() -> None:
    parser = KeyCodeParser()
    assert parser.feed_all(_keys("4006381333931") + _keys("A1a")) == ["4006381333931", "A1a"]
    # auto-repeat and Enter with nothing typed produce nothing
    assert parser.feed_all([(EV_KEY, 5, 2), (EV_KEY, 28, 1)]) == []
    # keypad digits and keypad Enter
    assert parser.feed_all([(EV_KEY, 79, 1), (EV_KEY, 82, 1), (EV_KEY, 96, 1)]) == ["10"]
