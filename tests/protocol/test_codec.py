from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from protocol import (
    EventEnvelope,
    Payment,
    ReceiptLine,
    ReceiptRecorded,
    WireDecodeError,
    decode_envelope,
    encode,
    event_kind,
    new_event_id,
    parse_up_subject,
    up_subject,
)


def _receipt_envelope(**overrides: object) -> EventEnvelope:
    body = ReceiptRecorded(
        till="T1",
        shift_id="S1",
        receipt_number=7,
        sale_id="till-sale-1",
        lines=(
            ReceiptLine(
                line_no=1,
                sku="MILK",
                quantity_milli=2000,
                unit_price=119,
                vat_rate_bp=1000,
                line_total=238,
            ),
            ReceiptLine(
                line_no=2,
                sku="APPLE",
                quantity_milli=754,
                unit_price=299,
                discount=25,
                vat_rate_bp=1000,
                line_total=200,
            ),
        ),
        payments=(Payment(type="cash", amount=500),),
        total=438,
        change=62,
    )
    values: dict[str, object] = {
        "event_id": new_event_id(),
        "branch": "B001",
        "seq": 1,
        "occurred_at": datetime(2026, 11, 27, 9, 30, tzinfo=UTC),
        "utc_offset_min": 60,
        "body": body,
    }
    values.update(overrides)
    return EventEnvelope(**values)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field() -> None:
    envelope = _receipt_envelope()
    decoded = decode_envelope(encode(envelope))
    assert decoded == envelope
    assert event_kind(decoded.body) == "receipt_recorded"
    assert decoded.event_id.version == 7


def test_message_from_a_newer_schema_decodes_in_old_code() -> None:
    envelope = _receipt_envelope()
    as_dict = msgspec.to_builtins(envelope)
    as_dict["schema_version"] = 99
    as_dict["route"] = "new top-level field"
    as_dict["body"]["loyalty_card"] = "1234"
    as_dict["body"]["lines"][0]["origin_country"] = "NL"
    decoded = decode_envelope(msgspec.msgpack.encode(as_dict))
    assert decoded.body == envelope.body
    assert decoded.schema_version == 99


def test_an_old_message_without_new_optional_fields_gets_defaults() -> None:
    as_dict = msgspec.to_builtins(_receipt_envelope())
    del as_dict["utc_offset_min"]
    del as_dict["body"]["change"]
    decoded = decode_envelope(msgspec.msgpack.encode(as_dict))
    assert decoded.utc_offset_min == 0
    assert isinstance(decoded.body, ReceiptRecorded)
    assert decoded.body.change == 0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(seq=0), "seq"),
        (lambda d: d.update(branch="bad.branch"), "branch"),
        (lambda d: d["body"].update(kind="no_such_event"), "kind"),
        (lambda d: d.update(occurred_at="2026-11-27T09:30:00"), "occurred_at"),
        (lambda d: d["body"]["lines"][0].update(unit_price=1.19), "unit_price"),
    ],
)
def test_invalid_messages_are_rejected_with_the_field(mutate: object, message: str) -> None:
    as_dict = msgspec.to_builtins(_receipt_envelope())
    mutate(as_dict)  # type: ignore[operator]
    with pytest.raises(WireDecodeError, match=message):
        decode_envelope(msgspec.msgpack.encode(as_dict))


def test_garbage_bytes_are_a_decode_error() -> None:
    with pytest.raises(WireDecodeError):
        decode_envelope(b"\xc1not msgpack")


def test_subjects() -> None:
    assert up_subject("B001", "receipt_recorded") == "up.B001.receipt_recorded"
    assert parse_up_subject("up.B001.receipt_recorded") == ("B001", "receipt_recorded")
    for bad in ("up.B001", "down.B001.x", "up.*.x", "up.B 1.x", "up.B001.x.y"):
        with pytest.raises(ValueError, match=r"subject|branch"):
            parse_up_subject(bad)


def test_occurred_at_keeps_utc_and_offset_gives_local_time() -> None:
    envelope = _receipt_envelope(occurred_at=datetime(2026, 11, 27, 23, 30, tzinfo=UTC))
    local = envelope.occurred_at.astimezone(timezone(timedelta(minutes=envelope.utc_offset_min)))
    assert local.day == 28
