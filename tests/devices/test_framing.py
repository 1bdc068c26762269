"""Framing and parsing against the byte examples of DEVICES.md (no I/O but loop://)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from devices.display import cursor_to, render_lines
from devices.errors import DeviceError, FiscalError, ScaleError
from devices.escpos import (
    FEED_AND_CUT,
    drawer_kick,
    parse_status,
    realtime_status_request,
    valid_status_byte,
)
from devices.fiscal_datecs import (
    CMD_STATUS,
    Answer,
    DatecsFiscalPrinter,
    FiscalStatus,
    SaleLine,
    StatusBit,
    build_answer,
    build_request,
    decode_nibbles,
    encode_nibbles,
    encode_params,
    escape,
    line_amount,
    parse_answer,
    parse_request,
    split_params,
    status_error,
    unescape,
)
from devices.ports import Port
from devices.scale_toledo import (
    ScaleStatus,
    WeightReading,
    encode_digital_tare,
    parse_echo,
    status_condition,
)
from devices.scale_toledo import (
    parse_answer as parse_scale,
)

# -- Toledo 8217 -------------------------------------------------------------------------


def test_scale_weight_frame_from_devices_md() -> None:
    reading = parse_scale(bytes.fromhex("02 30 31 2E 32 33 34 0D"))
    assert isinstance(reading, WeightReading)
    assert reading.weight == Decimal("1.234")
    assert reading.unit == "kg"
    assert reading.grams == 1234
    assert not reading.net


def test_scale_net_and_lb_frames() -> None:
    net = parse_scale(b"\x0201.234N\r")
    assert isinstance(net, WeightReading)
    assert net.net
    lb = parse_scale(b"\x02002.50\r")
    assert isinstance(lb, WeightReading)
    assert lb.unit == "lb"
    assert lb.weight == Decimal("2.50")
    assert lb.grams == 1134


def test_scale_motion_frame_from_devices_md() -> None:
    status = parse_scale(bytes.fromhex("02 3F 41 0D"))
    assert status == ScaleStatus.MOTION
    assert status_condition(ScaleStatus(status)) == "motion"


@pytest.mark.parametrize(
    ("char", "condition"),
    [
        (0x40, None),
        (0x42, "over_capacity"),
        (0x44, "under_zero"),
        (0x48, "zero_error"),
        (0x50, None),  # centre of zero only
        (0x60, None),  # net only
        (0x45, "under_zero"),  # negative and in motion: the worse one
    ],
)
def test_scale_status_bits(char: int, condition: str | None) -> None:
    status = parse_scale(bytes([0x02, 0x3F, char, 0x0D]))
    assert isinstance(status, ScaleStatus)
    assert status_condition(status) == condition


@pytest.mark.parametrize(
    "frame",
    [
        b"\x0201.23",  # partial
        b"01.234\r",  # no STX
        b"\x021.234\r",  # wrong width
        b"\x02\xb0\xb1.234\r",  # bit 7 set: wrong parity
        b"\x02?\x01\r",  # status without bit 6
        b"\x02abc\r",
    ],
)
def test_scale_garbage_is_bad_frame(frame: bytes) -> None:
    with pytest.raises(ScaleError) as info:
        parse_scale(frame)
    assert info.value.condition == "bad_frame"


def test_scale_echo_probe_bytes() -> None:
    assert parse_echo(bytes.fromhex("02 45 0D 68 65 6C 6C 6F"))
    assert not parse_echo(b"\x02E\rhellx")


def test_scale_digital_tare_encoding() -> None:
    assert encode_digital_tare(Decimal("0.250")) == b"T00250\r"
    with pytest.raises(ValueError, match="digital tare"):
        encode_digital_tare(Decimal("100"))


# -- Datecs X ----------------------------------------------------------------------------


def test_datecs_status_request_example() -> None:
    frame = build_request(0x20, CMD_STATUS)
    assert frame == bytes.fromhex("01 30 30 32 3A 20 30 30 34 3A 05 30 31 3B 3F 03")
    request = parse_request(frame)
    assert (request.seq, request.cmd, request.data) == (0x20, 0x4A, b"")


def test_datecs_nibbles_example() -> None:
    assert encode_nibbles(0x1AE3) == bytes.fromhex("31 3A 3E 33")
    assert decode_nibbles(bytes.fromhex("31 3A 3E 33")) == 0x1AE3
    with pytest.raises(ValueError, match="nibble"):
        decode_nibbles(b"1@>3")


def test_datecs_escaping() -> None:
    assert escape(b"a\x09b\x10\x00") == b"a\x10\x49b\x10\x50\x10\x40"
    assert unescape(b"a\x10\x49b\x10\x50\x10\x40") == b"a\x09b\x10\x00"
    # a TAB inside a value is escaped; the separator TAB is not
    data = encode_params(["x\ty", "", "3"])
    assert data == b"x\x10\x49y\t\t3\t"
    assert split_params(data) == ["x\ty", "", "3"]


def test_datecs_cp1251_text() -> None:
    assert encode_params(["Мляко"]) == "Мляко".encode("cp1251") + b"\t"


def test_datecs_request_with_data_len_and_bcc() -> None:
    data = encode_params(["X"])
    frame = build_request(0x21, 0x45, data)
    # LEN = 4 + 1 + 4 + 2 + 1 + 0x20 = 0x2C
    assert frame[1:5] == b"002<"
    body = frame[1:-5]
    assert decode_nibbles(frame[-5:-1]) == sum(body)
    assert frame[5] == 0x21
    assert frame[6:10] == b"0045"


def test_datecs_answer_round_trip_and_status() -> None:
    status = FiscalStatus.encode({StatusBit.PAPER_END, StatusBit.FISCALIZED})
    assert all(b & 0x80 for b in status)
    frame = build_answer(0x2A, 0x31, encode_params(["-112001"]), status)
    answer = parse_answer(frame)
    assert isinstance(answer, Answer)
    assert answer.error_code == -112001
    decoded = FiscalStatus.decode(answer.status)
    assert StatusBit.PAPER_END in decoded
    assert status_error(decoded) == "paper_end"
    assert decoded.names == ["fiscalized", "paper_end"]


@pytest.mark.parametrize("corrupt", [1, 5, 7, -3])
def test_datecs_corrupt_answer_is_bad_frame(corrupt: int) -> None:
    frame = bytearray(build_answer(0x2A, 0x4A, b"0\t", FiscalStatus.encode(set())))
    frame[corrupt] ^= 0x01
    with pytest.raises(FiscalError) as info:
        parse_answer(bytes(frame))
    assert info.value.condition == "bad_frame"


def test_datecs_status_without_bit7_is_bad_frame() -> None:
    frame = build_answer(0x2A, 0x4A, b"0\t", bytes(8) + b"")
    with pytest.raises(FiscalError):
        parse_answer(frame)


def test_datecs_limits() -> None:
    with pytest.raises(ValueError, match="SEQ"):
        build_request(0x1F, 0x4A)
    with pytest.raises(ValueError, match="213"):
        build_request(0x20, 0x31, b"a" * 214)


def test_line_amounts() -> None:
    line = SaleLine("Milk 1L", "A", Decimal("1.99"), Decimal("2.000"), Decimal("10.00"))
    assert line.discount() == ("2", "10.00")
    assert line_amount(line) == Decimal("3.58")  # 3.98 - 0.40
    cheese = SaleLine("Cheese", "B", Decimal("12.49"), Decimal("0.347"))
    assert line_amount(cheese) == Decimal("4.33")


def test_datecs_over_loop_url() -> None:
    """loop:// echoes what we write: our own request must come back parseable."""
    with Port("loop://", timeout=0.1) as port:
        port.write(build_request(0x33, 0x4C))
        raw = port.read_until(b"\x03", 0.5)
    assert parse_request(raw).cmd == 0x4C


def test_datecs_no_answer_on_loop_is_bad_frame_or_no_answer() -> None:
    """On loop:// the printer 'answers' with our own request, which is not an answer."""
    printer = DatecsFiscalPrinter("loop://", answer_timeout=0.05, resends=1)
    with printer, pytest.raises(DeviceError) as info:
        printer.status()
    assert info.value.condition in ("bad_frame", "no_answer")


# -- ESC/POS and display ---------------------------------------------------------------


def test_escpos_bytes() -> None:
    assert drawer_kick(2) == bytes.fromhex("1B 70 00 19 19")
    assert drawer_kick(5, 100, 200) == bytes.fromhex("1B 70 01 32 64")
    assert realtime_status_request(4) == bytes.fromhex("10 04 04")
    assert bytes.fromhex("1D 56 42 00") == FEED_AND_CUT
    with pytest.raises(ValueError, match="pin"):
        drawer_kick(3)


def test_escpos_status_examples() -> None:
    for b in (0x12, 0x16, 0x1A, 0x1E, 0x72, 0x7E):
        assert valid_status_byte(b)
    assert not valid_status_byte(0x00)
    assert not valid_status_byte(0x92)
    ok = parse_status(bytes([0x12, 0x12, 0x12, 0x12]))
    assert ok.online
    assert ok.problem is None
    drawer = parse_status(bytes([0x16, 0x12, 0x12, 0x12]))
    assert drawer.drawer_open
    offline = parse_status(bytes([0x1A, 0x12, 0x12, 0x12]))
    assert offline.problem == "offline"
    near = parse_status(bytes([0x12, 0x12, 0x12, 0x1E]))
    assert near.paper_near_end
    assert near.problem is None
    for paper in (0x72, 0x7E):
        assert parse_status(bytes([0x1A, 0x32, 0x12, paper])).problem == "paper_end"
    assert parse_status(bytes([0x1A, 0x16, 0x12, 0x12])).problem == "cover_open"


def test_display_bytes() -> None:
    assert cursor_to(1, 2) == bytes.fromhex("1F 24 01 02")
    data = render_lines("Milk", "Total 1.99")
    assert data.startswith(b"\x0c")
    assert b"\x1f\x24\x01\x01Milk" + b" " * 16 in data
    assert data.endswith(b"\x1f\x24\x01\x02Total 1.99" + b" " * 10)
