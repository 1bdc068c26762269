"""RFC 9457 problem details: the error body of every Backroom HTTP API."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["FieldError", "Problem"]


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    field: str
    message: str


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``application/problem+json``; ``errors`` names each field at fault."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: tuple[FieldError, ...] = ()
    extra: dict[str, Any] | None = None
