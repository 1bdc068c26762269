"""ShiftClosed evolved for counted cash: ``counted_cash`` and ``expected_cash`` added
with defaults. An older agent's closing (without them) decodes as not counted; a new
closing goes round the codec with them."""

from __future__ import annotations

import msgspec
import pytest

from protocol.codec import WireDecodeError, decode_envelope, encode
from protocol.events import ShiftClosed
from tests.protocol.test_return_without_receipt_wire import envelope

COUNTED = ShiftClosed(
    till="T1",
    shift_id="T1-2",
    receipts_count=1,
    sales_total=463,
    payments_by_type={"cash": 463},
    counted_cash=5400,
    expected_cash=5463,
)


def test_an_older_agents_closing_decodes_as_not_counted() -> None:
    as_dict = msgspec.to_builtins(envelope(COUNTED))
    # as an agent from before counted cash sent it: neither field at all
    del as_dict["body"]["counted_cash"], as_dict["body"]["expected_cash"]
    body = decode_envelope(msgspec.msgpack.encode(as_dict)).body
    assert isinstance(body, ShiftClosed)
    assert (body.counted_cash, body.expected_cash) == (None, None)
    assert (body.shift_id, body.sales_total) == ("T1-2", 463)


def test_a_counted_closing_goes_round_the_codec() -> None:
    assert decode_envelope(encode(envelope(COUNTED))).body == COUNTED


def test_a_negative_count_is_refused_on_the_wire() -> None:
    as_dict = msgspec.to_builtins(envelope(COUNTED))
    as_dict["body"]["counted_cash"] = -1
    with pytest.raises(WireDecodeError, match="counted_cash"):
        decode_envelope(msgspec.msgpack.encode(as_dict))
