"""Page parameters shared by every list route; the maximum bounds what one request costs."""

from __future__ import annotations

from typing import Annotated

from litestar.params import QueryParameter

__all__ = ["MAX_PAGE_SIZE", "Limit", "Offset"]

MAX_PAGE_SIZE = 1000

Limit = Annotated[
    int, QueryParameter(name="limit", ge=1, le=MAX_PAGE_SIZE, description="Page size")
]
Offset = Annotated[int, QueryParameter(name="offset", ge=0, description="Rows to skip")]
