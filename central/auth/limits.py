"""Request limits every route gets: integer path parameters within 64-bit range.

An id no database column can hold cannot name anything: 404, instead of the
driver's overflow error (a 500 found by fuzzing). Query parameters are bounded by
their declarations (``central/api/pagination.py``).
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotFoundException
from litestar.handlers.base import BaseRouteHandler

__all__ = ["MAX_DB_INT", "bounded_path_ints"]

MAX_DB_INT = 2**63 - 1


def bounded_path_ints(
    connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
) -> None:
    for name, value in connection.path_params.items():
        if isinstance(value, int) and not -MAX_DB_INT <= value <= MAX_DB_INT:
            raise NotFoundException(f"{name} {value} is out of range: no such record")
