"""Master data on the down stream: catalog, prices and promotions, versioned.

Central keeps one global, monotonically increasing master-data version (one per
change record). Products and prices are published per *bucket*: all SKUs of one
bucket (``bucket_of(sku)``) at one scope form one message whose value is the full
current state of that bucket at that scope, on the subject
``down.<scope>[.<id>].<kind>.b<NNN>``. The down stream keeps the latest message per
subject, so:

- a change is one message for its bucket at the scope head office defined it
  (a chain-wide price is one message, not one per branch);
- a deletion, an archival or an assortment removal is simply the absence of the
  SKU in the bucket's next message (no tombstone can be lost);
- replaying the stream from its start is a complete snapshot;
- 100,000 price changes become at most ``BUCKETS`` messages per scope, so a branch
  applies them in a few dozen transactions instead of 100,000.

Promotions are one message per promotion (``down.<scope>.promo.<id>``, a
``deleted`` record replaces a withdrawn one). A ``VersionMark`` on
``down.all.version.current`` follows every published batch: a branch that has
applied it has applied everything central had published up to that version.

Snapshots: a branch whose position is unusable (lost database, history aged out of
the stream, consumer recreated) asks central over NATS request/reply
(``SnapshotRequest`` on ``rpc.<branch>.md_snapshot``). Central then publishes, in the
down stream and in order with every other change, the current value of every key
of that branch's scopes wrapped in ``SnapshotPart`` messages between a ``begin`` and
an ``end`` ``SnapshotMark`` on ``down.branch.<code>.snapshot.<begin|pNNNNNN|end>``,
which only that branch's consumer delivers. At ``end`` the branch drops every key
the snapshot did not refresh, so its replica is exactly central's.

Texts and integers carry the limits of central's columns they come from (and of the
agent's replica, the same sizes; :mod:`protocol.limits`): a message that breaks one
does not decode, and the agent counts it as rejected instead of applying it.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from typing import Annotated, Literal, TypeVar

import msgspec

from protocol.events import UtcDateTime
from protocol.limits import (
    Code32,
    Code64,
    Int64,
    NonNegativeInt32,
    NonNegativeInt64,
    PositiveInt64,
    Text200,
)

__all__ = [
    "BUCKETS",
    "HELD_RECORDS_PAGE",
    "KIND_PRICE",
    "KIND_PRODUCT",
    "KIND_PROMOTION",
    "KIND_SNAPSHOT",
    "KIND_VERSION",
    "SNAPSHOT_REQUEST_SUBJECTS",
    "VERSION_KEY",
    "BarcodeKind",
    "HeldRecordsReply",
    "HeldRecordsRequest",
    "HeldReturn",
    "HeldSale",
    "MasterDataMessage",
    "PriceBucket",
    "PriceEntry",
    "ProductBucket",
    "ProductRecord",
    "PromotionRecord",
    "SnapshotMark",
    "SnapshotPart",
    "SnapshotReply",
    "SnapshotRequest",
    "SnapshotValue",
    "VersionMark",
    "barcode_kind",
    "branch_list_digest",
    "bucket_key",
    "bucket_of",
    "decode_branch_rpc",
    "decode_held_records_reply",
    "decode_masterdata",
    "decode_snapshot_reply",
    "decode_snapshot_request",
    "encode_masterdata",
    "encode_snapshot_rpc",
    "parse_bucket_key",
    "parse_snapshot_request_subject",
    "snapshot_request_subject",
    "snapshot_subject",
    "validate_barcode",
]

# 256 buckets: 100,000 price changes are 256 messages per scope; a bucket of a 200,000
# product catalog is ~800 products (~80 KB, well under NATS's 1 MB payload limit), and a
# single change republishes only its bucket.
BUCKETS = 256
KIND_PRODUCT = "product"
KIND_PRICE = "price"
KIND_PROMOTION = "promo"
KIND_VERSION = "version"
KIND_SNAPSHOT = "snapshot"
VERSION_KEY = "current"
# Core request/reply, outside the up stream (whose subjects the ingest worker owns).
SNAPSHOT_REQUEST_SUBJECTS = "rpc.*.md_snapshot"

BarcodeKind = Literal["ean13", "ean8", "upca", "internal"]
Scope = Literal["all", "format", "zone", "branch"]
NonNegative = NonNegativeInt64
# products.unit String(16), vat_group String(1), price_entries.effective_local String(19).
_Unit = Annotated[str, msgspec.Meta(max_length=16)]
_VatGroup = Annotated[str, msgspec.Meta(max_length=1)]
_LocalTime = Annotated[str, msgspec.Meta(max_length=19)]


def bucket_of(sku: str) -> int:
    """Stable bucket of a SKU (CRC-32, identical on every platform and Python)."""
    return zlib.crc32(sku.encode()) % BUCKETS


def bucket_key(bucket: int) -> str:
    return f"b{bucket:03d}"


def parse_bucket_key(key: str) -> int:
    if len(key) != 4 or key[0] != "b" or not key[1:].isdigit():
        raise ValueError(f"not a bucket key: {key!r}")
    bucket = int(key[1:])
    if bucket >= BUCKETS:
        raise ValueError(f"bucket out of range: {key!r}")
    return bucket


def _gtin_check_digit_ok(code: str) -> bool:
    digits = [int(c) for c in code]
    body, check = digits[:-1], digits[-1]
    # Weights 3,1,3,... from the digit next to the check digit (GS1 rule).
    total = sum(d * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == check


def barcode_kind(code: str) -> BarcodeKind:
    """EAN-13, EAN-8 or UPC-A by length of an all-digit code; anything else is internal."""
    if code.isdigit() and len(code) in (8, 12, 13):
        return {8: "ean8", 12: "upca", 13: "ean13"}[len(code)]  # type: ignore[return-value]
    return "internal"


def validate_barcode(code: str, kind: BarcodeKind | None = None) -> BarcodeKind:
    """The kind of a valid barcode; ValueError naming the fault otherwise.

    8, 12 and 13 digit codes must carry a correct GS1 check digit. Internal codes
    (store-assigned, e.g. "INT-0042") are 1-64 visible ASCII characters without
    spaces; declared as internal, a numeric code is not check-digit tested.
    """
    if not code or len(code) > 64 or not code.isascii() or not code.isprintable() or " " in code:
        raise ValueError(f"barcode {code!r}: 1-64 visible ASCII characters without spaces")
    detected = barcode_kind(code)
    if kind == "internal":
        return "internal"
    if kind is not None and kind != detected:
        raise ValueError(f"barcode {code!r} is not a valid {kind}")
    if detected != "internal" and not _gtin_check_digit_ok(code):
        raise ValueError(f"barcode {code!r}: wrong check digit")
    return detected


class _Wire(msgspec.Struct, frozen=True, kw_only=True):
    """Base of master-data wire Structs: immutable, keyword-only."""


class ProductRecord(_Wire, frozen=True, kw_only=True):
    sku: Code64
    name: Text200
    unit: _Unit = "pcs"
    weighed: bool = False
    scale_plu: NonNegativeInt32 | None = None
    barcodes: tuple[Code64, ...] = ()
    category: Code32 | None = None
    # Root-to-leaf category codes: promotions on a category reach its subtree.
    category_path: tuple[Code32, ...] = ()
    vat_rate_bp: Annotated[int, msgspec.Meta(ge=0, le=10000)] = 0
    vat_group: _VatGroup = "A"
    version: NonNegative = 0


class ProductBucket(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="product_bucket"):
    """Every product of one bucket at one scope that the scope's branches sell."""

    scope: Scope
    scope_id: Code32 | None = None
    bucket: NonNegativeInt32
    version: NonNegative
    products: tuple[ProductRecord, ...] = ()


class PriceEntry(_Wire, frozen=True, kw_only=True):
    sku: Code64
    price: NonNegative
    # UTC moment from which this price applies (computed from the branch's or the
    # zone's local time at central when head office gave a local time).
    effective_at: UtcDateTime
    version: NonNegative = 0
    # Set when head office gave a wall-clock time ("06:00 in every store"): each
    # branch takes it in its own time zone (protocol.pricing.entry_moment);
    # effective_at is then the earliest such moment among the branches reached, or
    # the moment head office decided it if later: no branch takes it before.
    effective_local: _LocalTime | None = None


class PriceBucket(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="price_bucket"):
    """The price schedule of one bucket at one scope: the current entry of each SKU
    and every future one (so a scheduled price takes effect without a new message)."""

    scope: Scope
    scope_id: Code32 | None = None
    bucket: NonNegativeInt32
    version: NonNegative
    entries: tuple[PriceEntry, ...] = ()


class PromotionRecord(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="promotion"):
    promotion_id: Code64
    version: NonNegative
    deleted: bool = False
    name: Text200 = ""
    type: Literal["percent", "amount", "n_for_m"] = "percent"
    percent_bp: Annotated[int, msgspec.Meta(ge=0, le=10000)] = 0
    # Amount off per unit (per piece, or per kg/litre of a weighed product).
    amount: NonNegative = 0
    # Buy n, pay m (n > m >= 1).
    n: NonNegativeInt32 = 0
    m: NonNegativeInt32 = 0
    skus: tuple[Code64, ...] = ()
    categories: tuple[Code32, ...] = ()
    starts_at: UtcDateTime | None = None
    ends_at: UtcDateTime | None = None


class VersionMark(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="version_mark"):
    version: NonNegative
    published_at: UtcDateTime


class SnapshotMark(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="snapshot_mark"):
    """Opens (``begin``) or closes (``end``) one branch's snapshot.

    ``snapshot_id`` is the version of central's publication pass that built it; every
    part carries it, and ``parts`` lets the branch check at ``end`` that it got all.
    """

    snapshot_id: PositiveInt64
    phase: Literal["begin", "end"]
    parts: NonNegative
    # The branch has applied everything central had published up to this version
    # once it applied the complete snapshot.
    version: NonNegative


# What a snapshot part may carry: the value of one key of the branch's scopes.
SnapshotValue = ProductBucket | PriceBucket | PromotionRecord


class SnapshotPart(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="snapshot_part"):
    """The current value of one down-stream key, as if it came on ``subject``."""

    snapshot_id: PositiveInt64
    part: PositiveInt64
    subject: str
    message: SnapshotValue


MasterDataMessage = (
    ProductBucket | PriceBucket | PromotionRecord | VersionMark | SnapshotMark | SnapshotPart
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(MasterDataMessage)


def snapshot_subject(branch: str, key: str) -> str:
    """``down.branch.<code>.snapshot.<key>``: only that branch's consumer delivers it."""
    return f"down.branch.{branch}.{KIND_SNAPSHOT}.{key}"


def snapshot_request_subject(branch: str) -> str:
    return f"rpc.{branch}.md_snapshot"


def parse_snapshot_request_subject(subject: str) -> str:
    """The branch code of ``rpc.<branch>.md_snapshot``; ValueError for anything else."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != "rpc" or parts[2] != "md_snapshot" or not parts[1]:
        raise ValueError(f"not a snapshot request subject: {subject!r}")
    return parts[1]


class SnapshotRequest(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="snapshot_request"):
    """A branch's position, sent when it starts, when its consumer is gone, after a
    snapshot (complete or not), and now and then: central decides whether it needs a
    snapshot (it alone sees the stream's first sequence and the consumer's acks)."""

    branch: str
    # The highest down-stream sequence the branch has durably applied (0: none).
    last_stream_seq: NonNegative = 0
    applied_version: NonNegative = 0
    # A snapshot central promised and the branch has not completed yet (0: none).
    pending_snapshot: NonNegative = 0
    # A snapshot that ended with parts missing: the branch needs a new one.
    incomplete_snapshot: NonNegative = 0
    # A snapshot the branch applied completely: central may drop its parts.
    completed_snapshot: NonNegative = 0
    # A new agent database (a store's server replaced, its disk lost): its id, while
    # its events still wait for central to say where their numbering starts ("": the
    # numbering is settled). The branch's earlier agent used numbers from 1 on.
    anchor_instance: Code64 = ""
    # A numbered agent database, at each start until central answers: its id and the
    # highest event number it had given when it started. Central holds higher numbers
    # of the branch only if the database went back in time (restored from a backup, an
    # earlier server back in service): its events after ``settled_last_seq`` then
    # continue after central's (``event_seq_start``) instead of reusing them.
    settled_instance: Code64 = ""
    settled_last_seq: NonNegative = 0
    # The server the agent runs on (host name and boot id), with either question: the
    # same database running on two servers at once (a cloned disk) is refused.
    agent_server: Code64 = ""
    # ``branch_list_digest`` of the chain's branch codes the agent holds ("": none):
    # central sends the list in its answer only when its own differs.
    branches_digest: Code64 = ""


class SnapshotReply(_Wire, frozen=True, kw_only=True, tag_field="kind", tag="snapshot_reply"):
    # "none": the position is usable; "snapshot": snapshot ``snapshot_id`` is on its way.
    action: Literal["none", "snapshot"]
    snapshot_id: NonNegative = 0
    reason: str = ""
    error: str = ""
    # Answer to ``anchor_instance``: the number of that database's first event; to
    # ``settled_instance``: the number of its first event after ``settled_last_seq``
    # (that number plus one unless the database went back in time). 0: not asked. The
    # same answer every time the same database asks the same.
    event_seq_start: NonNegative = 0
    # Central's clock when it answered: the branch measures its own clock against it
    # (None: a central from before).
    central_time: UtcDateTime | None = None
    # Central does not answer the numbering question now, and why: another agent
    # database of the branch, or a copy of this one on another server, is running
    # (their events would collide). The database waits, sending nothing, and asks again.
    numbering_refused: str = ""
    # Central's record of the branch's time zone (IANA name; "": a central from
    # before): the agent shows it beside its own when they differ.
    branch_timezone: Annotated[str, msgspec.Meta(max_length=64)] = ""
    # Every branch code central has registered (the counterparts a transfer may name
    # without central flagging ``unknown_branch``), sorted; sent when the report's
    # ``branches_digest`` is not this list's. None: unchanged, or a central from before.
    branches: tuple[Code32, ...] | None = None
    # With an answer to ``settled_instance`` that moves the database's events on (it
    # went back in time): how many sales and customer returns central holds numbered
    # after ``settled_last_seq`` and before ``event_seq_start``. The agent fetches them
    # (``HeldRecordsRequest``) before it takes the answer, so a till's retry of one of
    # them is not recorded and printed again. 0: none, or a central from before.
    held_records: NonNegative = 0
    # Of ``held_records``, how many central read from its ingest queue (the up stream):
    # sent by the database before it was restored, not stored at central yet.
    held_in_flight: NonNegative = 0
    # Numbers in that range central neither holds nor sees on their way (never sent
    # before the disk was lost, or gone from the stream): a till's retry of a sale among
    # them cannot be recognised, it is recorded and printed again.
    held_unknown: NonNegative = 0
    # With ``numbering_refused``: the refusal only lasts until central has read what
    # the branch's earlier database sent that its ingestion has not stored yet (too
    # much to read at once, or JetStream did not answer): ask again within seconds. An
    # older agent reads the refusal alone, and asks again within 30 s.
    numbering_wait: bool = False


# A held record is at most ~230 bytes of MessagePack; 1,000 to a page stays far below
# NATS's 1 MB payload.
HELD_RECORDS_PAGE = 1000


class HeldRecordsRequest(
    _Wire, frozen=True, kw_only=True, tag_field="kind", tag="held_records_request"
):
    """One page of the sales and returns central holds for the branch numbered in
    (``after_seq``, ``through_seq``], on the position report's subject (the one a
    branch may ask on). Sent only to a central that announced ``held_records``."""

    branch: Code32
    after_seq: NonNegative = 0
    through_seq: NonNegative = 0


class HeldSale(_Wire, frozen=True, kw_only=True):
    seq: NonNegative
    till: Code32
    sale_id: Code64
    receipt_number: NonNegative
    shift_id: Code64
    total: Int64
    fiscal_number: Code64 | None = None


class HeldReturn(_Wire, frozen=True, kw_only=True):
    seq: NonNegative
    till: Code32
    return_id: Code64
    return_number: NonNegative
    shift_id: Code64
    total: Int64
    fiscal_number: Code64 | None = None


class HeldRecordsReply(
    _Wire, frozen=True, kw_only=True, tag_field="kind", tag="held_records_reply"
):
    sales: tuple[HeldSale, ...] = ()
    returns: tuple[HeldReturn, ...] = ()
    # Ask again from here while not ``done`` (the highest event number on this page).
    next_after_seq: NonNegative = 0
    done: bool = True
    error: str = ""


def branch_list_digest(codes: Iterable[str]) -> str:
    """A short fingerprint of a set of branch codes (order and repeats do not matter):
    what an agent reports so that central sends the chain's list only when it changed."""
    joined = "\n".join(sorted(set(codes)))
    return hashlib.sha256(joined.encode()).hexdigest()[:32]


_T = TypeVar("_T")
_request_decoder = msgspec.msgpack.Decoder(SnapshotRequest)
_reply_decoder = msgspec.msgpack.Decoder(SnapshotReply)
_rpc_decoder: msgspec.msgpack.Decoder[SnapshotRequest | HeldRecordsRequest] = (
    msgspec.msgpack.Decoder(SnapshotRequest | HeldRecordsRequest)
)
_held_reply_decoder = msgspec.msgpack.Decoder(HeldRecordsReply)


def encode_snapshot_rpc(
    message: SnapshotRequest | SnapshotReply | HeldRecordsRequest | HeldRecordsReply,
) -> bytes:
    return _encoder.encode(message)


def _decode_rpc(decoder: msgspec.msgpack.Decoder[_T], data: bytes) -> _T:
    # Imported here: protocol.codec's module imports would otherwise run in a cycle.
    from protocol.codec import _decode

    return _decode(decoder, data)


def decode_branch_rpc(data: bytes) -> SnapshotRequest | HeldRecordsRequest:
    """A branch's question on ``rpc.<branch>.md_snapshot``: either kind."""
    return _decode_rpc(_rpc_decoder, data)


def decode_held_records_reply(data: bytes) -> HeldRecordsReply:
    return _decode_rpc(_held_reply_decoder, data)


def decode_snapshot_request(data: bytes) -> SnapshotRequest:
    return _decode_rpc(_request_decoder, data)


def decode_snapshot_reply(data: bytes) -> SnapshotReply:
    return _decode_rpc(_reply_decoder, data)


def encode_masterdata(message: MasterDataMessage) -> bytes:
    return _encoder.encode(message)


def decode_masterdata(data: bytes) -> MasterDataMessage:
    """ValueError (WireDecodeError) for bytes that are not a master-data message."""
    from protocol.codec import WireDecodeError

    try:
        message: MasterDataMessage = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WireDecodeError(str(exc)) from exc
    return message
