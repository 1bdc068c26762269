"""Request limits every route gets: integer path parameters within 64-bit range, and
no NUL character in any text the request carries.

An id no database column can hold cannot name anything: 404, instead of the
driver's overflow error (a 500 found by fuzzing). PostgreSQL text cannot hold NUL
(U+0000) at all, so a NUL in a path or query parameter or a JSON body is refused
with a 422 naming the field, before any service sees it (also a 500 found by
fuzzing). Query parameters are otherwise bounded by their declarations
(``central/api/pagination.py``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import NotFoundException, ValidationException
from litestar.handlers.base import BaseRouteHandler

__all__ = ["MAX_DB_INT", "bounded_path_ints", "text_without_nul"]

MAX_DB_INT = 2**63 - 1
_NUL_MESSAGE = "text must not contain the NUL character (U+0000)"


def bounded_path_ints(
    connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
) -> None:
    for name, value in connection.path_params.items():
        if isinstance(value, int) and not -MAX_DB_INT <= value <= MAX_DB_INT:
            raise NotFoundException(f"{name} {value} is out of range: no such record")


def _nul_field(value: Any, path: str) -> str | None:
    """The first field (dotted path) of a decoded JSON value whose text holds a NUL."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _nul_field(key, path) or _nul_field(item, f"{path}.{key}" if path else key)
            if found is not None:
                return found or "body"
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _nul_field(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _refuse(field: str) -> ValidationException:
    return ValidationException(_NUL_MESSAGE, extra=[{"key": field, "message": _NUL_MESSAGE}])


async def text_without_nul(
    connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
) -> None:
    for name, value in connection.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            raise _refuse(name)
    for name, values in connection.query_params.dict().items():
        if "\x00" in name or any("\x00" in v for v in values):
            raise _refuse(name)
    if not isinstance(connection, Request) or connection.method in ("GET", "HEAD", "OPTIONS"):
        return
    # Request.body() is cached: the handler's own parsing reads the same bytes.
    body = await connection.body()
    # Cheap test first: a JSON text can only carry NUL raw or as the \u0000 escape.
    if b"\x00" not in body and b"\\u0000" not in body:
        return
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        if b"\x00" in body:
            raise _refuse("body") from None
        return  # not JSON: the handler's parser reports that
    field = _nul_field(decoded, "")
    if field is not None:
        raise _refuse(field or "body")
