"""Reports as CSV: one line per report row, money and quantities as exact decimal text.

Columns are the JSON fields of a row, nested figures flattened (``previous.revenue``
becomes ``previous_revenue``); ``*_milli`` quantities become decimal text in a column
without the suffix (``qty_milli`` -> ``qty``, ``opening_milli`` -> ``opening_qty``);
money in minor units becomes decimal text ("12.34"); counts stay integers. Grouping
columns that are empty on every row are left out.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from typing import Any

import msgspec

from protocol.units import format_milli, format_minor

__all__ = ["COUNT_FIELDS", "report_csv"]

# Integer fields that are not money.
COUNT_FIELDS = frozenset(
    {
        "receipts",
        "returns",
        "refunds",
        "hour",
        "voided_lines",
        "manual_discount_lines",
        "recorded_receipts",
        "reported_receipts",
        "z_receipts",
        "z_report_number",
        "id_conflicts",
        "contiguous_seq",
        "max_seq",
        "seq_lag",
        "outbox_backlog",
        "applied_version",
        "open_dead_letters",
        "receive_age_s",
        "heartbeat_age_s",
        "lost_events",
        "clock_offset_ms",
    }
)


def _column(name: str) -> str:
    if name.endswith("_milli"):
        stem = name[: -len("_milli")]
        return stem if "qty" in stem else f"{stem}_qty"
    return name


def _text(name: str, value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        base = name.rsplit("previous_", 1)[-1]
        if base.endswith("_milli"):
            return format_milli(value)
        if base in COUNT_FIELDS:
            return value
        return format_minor(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list):
        return "; ".join(_item_text(v) for v in value)
    return value


def _item_text(value: Any) -> str:
    """One item of a list cell (a shift's differences): ``key=value`` pairs, amounts as
    decimal text unless the item is about a count (``field=receipts``)."""
    if not isinstance(value, dict):
        return str(value)
    # Of a shift's differences only the receipts' are counts (returns: their amount).
    counts = value.get("field") == "receipts"
    parts = []
    for key, item in value.items():
        if isinstance(item, int) and not isinstance(item, bool):
            shown: Any = item if counts or key in COUNT_FIELDS else format_minor(item)
        else:
            shown = "" if item is None else item
        parts.append(f"{key}={shown}")
    return " ".join(parts)


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, dict):
            prefix = "" if name == "figures" else f"{name}_"
            for inner, inner_value in value.items():
                flat[f"{prefix}{inner}"] = inner_value
        elif value is None and name == "previous":
            continue
        else:
            flat[name] = value
    return flat


def report_csv(rows: list[Any]) -> bytes:
    """The rows of a report (Structs) as CSV text (UTF-8, header line first)."""
    flat_rows = [_flatten(msgspec.to_builtins(r, builtin_types=(date, datetime))) for r in rows]
    columns: list[str] = []
    for flat in flat_rows:
        for name in flat:
            if name not in columns:
                columns.append(name)
    if flat_rows:
        # A grouping column nobody filled is noise (e.g. "hour" when grouping by day).
        columns = [c for c in columns if any(f.get(c) is not None for f in flat_rows)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([_column(c) for c in columns])
    for flat in flat_rows:
        writer.writerow([_text(c, flat.get(c)) for c in columns])
    return out.getvalue().encode()
