"""Encoding of wire messages: MessagePack of the protocol Structs."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from protocol.events import EventEnvelope
from protocol.limits import PositiveInt64
from protocol.messages import BranchHeartbeat, ResendRequested

__all__ = [
    "WireDecodeError",
    "check",
    "decode_envelope",
    "decode_envelope_seq",
    "decode_heartbeat",
    "decode_resend",
    "encode",
]

T = TypeVar("T")
W = TypeVar("W", bound=msgspec.Struct)

_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(EventEnvelope)
_heartbeat_decoder = msgspec.msgpack.Decoder(BranchHeartbeat)
_resend_decoder = msgspec.msgpack.Decoder(ResendRequested)
# msgspec ends a validation error with the path of the value at fault.
_AT = re.compile(r" - at `\$\.?(.*)`$")


class WireDecodeError(ValueError):
    """A message that is not a valid protocol message; the text says why, ``field``
    (e.g. ``body.lines[0].sku``) names the value at fault when there is one."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        found = _AT.search(message)
        self.field: str | None = found.group(1) or None if found else None


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def _decode(decoder: msgspec.msgpack.Decoder[T], data: bytes) -> T:
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WireDecodeError(str(exc)) from exc


def decode_envelope(data: bytes) -> EventEnvelope:
    return _decode(_envelope_decoder, data)


def decode_heartbeat(data: bytes) -> BranchHeartbeat:
    return _decode(_heartbeat_decoder, data)


def decode_resend(data: bytes) -> ResendRequested:
    return _decode(_resend_decoder, data)


class _EnvelopeSeq(msgspec.Struct):
    """What identifies an event's place, read even when its body does not decode."""

    branch: str
    seq: PositiveInt64


_envelope_seq_decoder = msgspec.msgpack.Decoder(_EnvelopeSeq)


def decode_envelope_seq(data: bytes) -> tuple[str, int] | None:
    """(branch, seq) of an envelope whose body may break a limit; None when even they
    cannot be read."""
    try:
        head = _envelope_seq_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return head.branch, head.seq


_checkers: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {}


def check(message: W) -> W:
    """``message`` as a receiver decodes it: a Struct built in code is not checked
    against its limits, so this is how a sender refuses what its receiver would
    (WireDecodeError naming the field)."""
    kind = type(message)
    decoder = _checkers.get(kind)
    if decoder is None:
        decoder = _checkers[kind] = msgspec.msgpack.Decoder(kind)
    checked: W = _decode(decoder, _encoder.encode(message))
    return checked
