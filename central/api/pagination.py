"""Page parameters shared by every list route; the maximum bounds what one request costs."""

from __future__ import annotations

from typing import Annotated

from litestar.params import QueryParameter

__all__ = ["MAX_OFFSET", "MAX_PAGE_SIZE", "Limit", "Offset"]

MAX_PAGE_SIZE = 1000
# Larger offsets overflow the databases' 64-bit integers (a 500 found by fuzzing).
MAX_OFFSET = 2**31 - 1

Limit = Annotated[
    int, QueryParameter(name="limit", ge=1, le=MAX_PAGE_SIZE, description="Page size")
]
Offset = Annotated[
    int, QueryParameter(name="offset", ge=0, le=MAX_OFFSET, description="Rows to skip")
]
