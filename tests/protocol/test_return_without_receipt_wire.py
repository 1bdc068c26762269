"""CustomerReturnRecorded evolved for returns without receipt: fields added with
defaults, the original sale's id optional. A message from an older agent decodes as
before; a return without receipt reaching a central from before it is refused at
decoding (a dead letter to replay after the upgrade), never stored as a return of sale
"". The rule that ties them: no original exactly when without receipt."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from protocol.codec import decode_envelope, encode
from protocol.events import CustomerReturnRecorded, EventEnvelope, Payment, ReceiptLine
from protocol.limits import Code32, Code64, NonNegativeInt64, Text, Text64

LINE = ReceiptLine(
    line_no=1, sku="MILK-1L", quantity_milli=1000, unit_price=119, vat_rate_bp=1000, line_total=119
)


class ReturnBefore(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="customer_return_recorded"
):
    """CustomerReturnRecorded as central knew it before returns without receipt."""

    till: Code32
    shift_id: Code64
    return_number: NonNegativeInt64
    return_id: Code64
    original_sale_id: Code64
    original_receipt_number: NonNegativeInt64 | None = None
    original_till: Code32 | None = None
    cashier: Text64 = ""
    lines: tuple[ReceiptLine, ...]
    refunds: tuple[Payment, ...]
    total: NonNegativeInt64
    currency: str = "EUR"
    fiscal_number: Code64 | None = None
    reason: Text = ""


def envelope(body: msgspec.Struct) -> EventEnvelope:
    return EventEnvelope(
        event_id=uuid.uuid4(),
        branch="B1",
        seq=1,
        occurred_at=datetime(2026, 11, 29, 9, tzinfo=UTC),
        utc_offset_min=60,
        body=body,  # type: ignore[arg-type]
    )


def test_an_older_agents_return_decodes_as_before() -> None:
    old = ReturnBefore(
        till="T1",
        shift_id="S1",
        return_number=1,
        return_id="r1",
        original_sale_id="s1",
        lines=(LINE,),
        refunds=(Payment(type="cash", amount=119),),
        total=119,
    )
    body = decode_envelope(encode(envelope(old))).body
    assert isinstance(body, CustomerReturnRecorded)
    assert (body.original_sale_id, body.without_receipt, body.approved_by) == ("s1", False, "")


def test_a_return_without_receipt_is_refused_by_a_central_from_before() -> None:
    new = CustomerReturnRecorded(
        till="T1",
        shift_id="S1",
        return_number=1,
        return_id="r1",
        lines=(LINE,),
        refunds=(Payment(type="cash", amount=119),),
        total=119,
        without_receipt=True,
        approved_by="maria",
    )
    data = msgspec.msgpack.encode(msgspec.to_builtins(new))
    with pytest.raises(msgspec.ValidationError, match="original_sale_id"):
        msgspec.msgpack.decode(data, type=ReturnBefore)
    assert msgspec.msgpack.decode(data, type=CustomerReturnRecorded) == new


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"original_sale_id": None}, "original_sale_id"),
        ({"without_receipt": True, "approved_by": "maria"}, "names no original_sale_id"),
        ({"without_receipt": True, "original_sale_id": None}, "approved_by"),
    ],
)
def test_no_original_exactly_when_without_receipt(changes: dict[str, object], message: str) -> None:
    raw = msgspec.to_builtins(
        CustomerReturnRecorded(
            till="T1",
            shift_id="S1",
            return_number=1,
            return_id="r1",
            original_sale_id="s1",
            lines=(LINE,),
            refunds=(),
            total=119,
        )
    )
    raw.update(changes)
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.msgpack.decode(msgspec.msgpack.encode(raw), type=CustomerReturnRecorded)
