"""Page parameters shared by every list route (the maximum bounds what one request
costs), and the ``late`` filter of the records lists that carry the flag."""

from __future__ import annotations

from typing import Annotated

from litestar.params import QueryParameter

__all__ = ["MAX_OFFSET", "MAX_PAGE_SIZE", "Late", "Limit", "Offset"]

MAX_PAGE_SIZE = 1000
# Larger offsets overflow the databases' 64-bit integers (a 500 found by fuzzing).
MAX_OFFSET = 2**31 - 1

Limit = Annotated[
    int, QueryParameter(name="limit", ge=1, le=MAX_PAGE_SIZE, description="Page size")
]
Offset = Annotated[
    int, QueryParameter(name="offset", ge=0, le=MAX_OFFSET, description="Rows to skip")
]
# Receipts, customer returns and stock documents filed into a shift or local day that
# was already closed at central are stored with ``late=true`` (README "Never refused").
Late = Annotated[
    bool | None,
    QueryParameter(
        name="late",
        description="true: only the records filed into a closed shift or day after it "
        "closed (late); false: only the others; absent: both",
    ),
]
