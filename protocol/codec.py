"""Encoding of wire messages: MessagePack of the protocol Structs."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from protocol.events import EventEnvelope
from protocol.messages import BranchHeartbeat, ResendRequested

__all__ = [
    "WireDecodeError",
    "decode_envelope",
    "decode_heartbeat",
    "decode_resend",
    "encode",
]

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(EventEnvelope)
_heartbeat_decoder = msgspec.msgpack.Decoder(BranchHeartbeat)
_resend_decoder = msgspec.msgpack.Decoder(ResendRequested)


class WireDecodeError(ValueError):
    """A message that is not a valid protocol message; the text says why."""


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
