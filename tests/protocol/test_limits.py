"""Each limit alias takes a value exactly at its limit and refuses one beyond it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from protocol import limits
from protocol.codec import WireDecodeError, check, decode_envelope, decode_envelope_seq, encode
from protocol.events import CashMoved, EventEnvelope, StockDocumentPosted
from protocol.ids import new_event_id
from protocol.limits import CASH_MOVE_MAX, FISCAL_AMOUNT_MAX, INT32_MAX, INT64_MAX, INT64_MIN

TEXTS = [
    ("Code32", 32),
    ("Code64", 64),
    ("Text64", 64),
    ("Text200", 200),
    ("CurrencyCode", 3),
]
# (alias, lowest accepted, highest accepted)
INTEGERS = [
    ("NonNegativeInt32", 0, INT32_MAX),
    ("PositiveInt32", 1, INT32_MAX),
    ("Int64", INT64_MIN, INT64_MAX),
    ("NonNegativeInt64", 0, INT64_MAX),
    ("PositiveInt64", 1, INT64_MAX),
    ("CashMoveAmount", 1, CASH_MOVE_MAX),
    ("TenderAmount", 1, FISCAL_AMOUNT_MAX),
    ("OpeningFloat", 0, CASH_MOVE_MAX),
    ("CountedCash", 0, CASH_MOVE_MAX),
]


def _holder(alias: str) -> Any:
    return msgspec.defstruct("Holder", [("value", getattr(limits, alias))])


# Texts of any length (reasons): only the NUL rule.
UNBOUNDED_TEXTS = ["Text"]


def test_every_alias_is_tested() -> None:
    aliases = {name for name in limits.__all__ if not name.isupper()}
    assert aliases == {a for a, _ in TEXTS} | {a for a, _, _ in INTEGERS} | set(UNBOUNDED_TEXTS)


@pytest.mark.parametrize("alias", [a for a, _ in TEXTS] + UNBOUNDED_TEXTS)
def test_a_text_alias_refuses_a_nul_character(alias: str) -> None:
    """PostgreSQL text cannot hold U+0000: an event carrying one would be refused by
    central's database after the branch recorded it (a C till padding a name with NULs)."""
    holder = _holder(alias)
    for fine in ("", "EUR", "a\nb", "é\t"):
        assert msgspec.json.decode(msgspec.json.encode({"value": fine}), type=holder).value == fine
    for bad in ("\x00", "ab\x00", "\x00\x00\x00"):
        with pytest.raises(msgspec.ValidationError, match=r"matching regex .* at `\$.value`"):
            msgspec.json.decode(msgspec.json.encode({"value": bad}), type=holder)


@pytest.mark.parametrize(("alias", "length"), TEXTS)
def test_a_text_alias_takes_its_length_and_refuses_one_more(alias: str, length: int) -> None:
    holder = _holder(alias)
    # Characters, not bytes: a multi-byte character counts once.
    assert msgspec.json.decode(msgspec.json.encode({"value": "é" * length}), type=holder)
    with pytest.raises(msgspec.ValidationError, match=rf"length <= {length} - at `\$.value`"):
        msgspec.json.decode(msgspec.json.encode({"value": "x" * (length + 1)}), type=holder)


@pytest.mark.parametrize(("alias", "low", "high"), INTEGERS)
def test_an_integer_alias_takes_its_bounds_and_refuses_one_beyond(
    alias: str, low: int, high: int
) -> None:
    holder = _holder(alias)
    for value in (low, high):
        assert msgspec.json.decode(f'{{"value": {value}}}', type=holder).value == value
    for value in (low - 1, high + 1):
        with pytest.raises(msgspec.ValidationError, match=r"at `\$.value`"):
            msgspec.json.decode(f'{{"value": {value}}}', type=holder)


def _cash(**changes: Any) -> EventEnvelope:
    envelope = EventEnvelope(
        event_id=new_event_id(),
        branch="B001",
        seq=7,
        occurred_at=datetime(2026, 11, 27, 9, 30, tzinfo=UTC),
        body=CashMoved(till="T1", shift_id="S1", direction="in", amount=100),
    )
    return msgspec.structs.replace(envelope, body=msgspec.structs.replace(envelope.body, **changes))


def test_a_decoded_message_names_the_field_beyond_its_limit() -> None:
    with pytest.raises(WireDecodeError) as refused:
        decode_envelope(encode(_cash(cashier="c" * 65)))
    assert refused.value.field == "body.cashier"
    assert "length <= 64" in str(refused.value)
    # Its place in the branch's sequence can still be read (a dead letter keeps it).
    assert decode_envelope_seq(encode(_cash(cashier="c" * 65))) == ("B001", 7)
    assert decode_envelope_seq(b"\x00garbage") is None


def test_check_refuses_what_a_receiver_would() -> None:
    """A Struct built in code is not checked: ``check`` is how a sender finds out."""
    fine = _cash(cashier="c" * 64)
    assert check(fine) == fine
    assert check(fine.body) == fine.body
    with pytest.raises(WireDecodeError) as refused:
        check(_cash(amount=INT64_MAX + 1).body)
    assert refused.value.field == "amount"


def test_a_stock_document_part_beyond_its_parts_is_refused_and_one_part_is_the_default() -> None:
    def envelope(lines: int = 1, **parts: int) -> bytes:
        body = {"kind": "stock_document_posted", "document_id": "d", "doc_type": "stocktake"}
        body |= {"lines": [{"sku": "S", "quantity_milli": 1000}] * lines, **parts}
        return msgspec.msgpack.encode(
            {
                "event_id": str(new_event_id()),
                "branch": "B1",
                "seq": 1,
                "occurred_at": datetime(2026, 11, 28, tzinfo=UTC),
                "body": body,
            }
        )

    # A message from before parts existed: the whole document, one part.
    body = decode_envelope(envelope()).body
    assert isinstance(body, StockDocumentPosted)
    assert (body.part, body.parts, body.first_line_no) == (1, 1, 1)
    body = decode_envelope(envelope(part=2, parts=2, first_line_no=5001)).body
    assert isinstance(body, StockDocumentPosted)
    assert (body.part, body.parts, body.first_line_no) == (2, 2, 5001)
    with pytest.raises(WireDecodeError, match="part 3 of 2"):
        decode_envelope(envelope(part=3, parts=2))
    with pytest.raises(WireDecodeError, match=r"body\.part"):
        decode_envelope(envelope(part=0, parts=2))
    # Line numbers are 32-bit: the last one may be 2^31 - 1, not beyond.
    body = decode_envelope(envelope(first_line_no=INT32_MAX)).body
    assert isinstance(body, StockDocumentPosted)
    with pytest.raises(WireDecodeError, match="line numbers beyond"):
        decode_envelope(envelope(first_line_no=INT32_MAX, lines=2))
