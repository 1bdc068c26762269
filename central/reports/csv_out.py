"""Reports as CSV: one line per report row, money and quantities as exact decimal text.

Columns are the JSON fields of a row, nested figures flattened (``previous.revenue``
becomes ``previous_revenue``); ``*_milli`` quantities become decimal text in a column
without the suffix (``qty_milli`` -> ``qty``, ``opening_milli`` -> ``opening_qty``);
money in minor units becomes decimal text ("12.34"); counts stay integers.

The columns follow the report's row type and the request, never the data: a
spreadsheet import that reads one day's file reads the next one's. Grouping columns
are those the request grouped by; the previous period's are there whenever a
comparison was asked for (empty where the previous period had nothing); an empty
report is its header line.
"""

from __future__ import annotations

import csv
import io
import re
import types
import typing
from datetime import date, datetime
from typing import Any

import msgspec

from protocol.units import format_milli, format_minor

__all__ = ["COUNT_FIELDS", "report_csv", "report_filename"]

# Integer fields that are not money.
COUNT_FIELDS = frozenset(
    {
        "receipts",
        "returns",
        "refunds",
        "hour",
        "voided_lines",
        "manual_discount_lines",
        "no_receipt_returns",
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
        "published_version",
        "open_dead_letters",
        "recorded_again_open",
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


# A row's grouping columns and the group_by value that asks for each.
_GROUP_OF_COLUMN = {
    "branch": "branch",
    "local_date": "day",
    "hour": "hour",
    "cashier": "cashier",
    "sku": "product",
    "category": "category",
    "payment_type": "payment_type",
    "reason": "reason",
}


def _struct_type(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct an annotation names (``X`` or ``X | None``), else None."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _struct_type(inner[0]) if len(inner) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    return None


def _row_type(report: msgspec.Struct) -> type[msgspec.Struct]:
    rows = next(f for f in msgspec.structs.fields(report) if f.name == "rows")
    (row_type,) = typing.get_args(rows.type)
    found = _struct_type(row_type)
    assert found is not None, f"{type(report).__name__}.rows holds no Struct"
    return found


def _columns(report: msgspec.Struct) -> list[str]:
    """The report's CSV columns, from its row type and what the request asked for."""
    groups: list[str] | None = getattr(report, "group_by", None)
    compared = getattr(report, "previous_from", None) is not None
    columns: list[str] = []
    for field in msgspec.structs.fields(_row_type(report)):
        nested = _struct_type(field.type)
        if nested is not None:
            if field.name == "previous" and not compared:
                continue
            prefix = "" if field.name == "figures" else f"{field.name}_"
            columns.extend(f"{prefix}{inner.name}" for inner in msgspec.structs.fields(nested))
        elif groups is not None and _GROUP_OF_COLUMN.get(field.name, "") not in (*groups, ""):
            continue  # a grouping column the request did not group by
        else:
            columns.append(field.name)
    return columns


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, dict):
            prefix = "" if name == "figures" else f"{name}_"
            for inner, inner_value in value.items():
                flat[f"{prefix}{inner}"] = inner_value
        else:
            flat[name] = value
    return flat


def report_csv(report: Any) -> bytes:
    """The rows of a report as CSV text (UTF-8, header line first)."""
    columns = _columns(report)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([_column(c) for c in columns])
    for row in report.rows:
        flat = _flatten(msgspec.to_builtins(row, builtin_types=(date, datetime)))
        writer.writerow([_text(c, flat.get(c)) for c in columns])
    return out.getvalue().encode()


def report_filename(report: msgspec.Struct, name: str) -> str:
    """``sales_2026-11-01_2026-11-30_B001.csv``: the report, its period and its branch,
    so downloads of several periods or branches do not overwrite each other."""
    parts = [name]
    date_from = getattr(report, "date_from", None)
    date_to = getattr(report, "date_to", None)
    if date_from is not None:
        parts.append(str(date_from) if date_to in (None, date_from) else f"{date_from}_{date_to}")
    branch = getattr(report, "branch", None)
    if branch:
        parts.append(re.sub(r"[^A-Za-z0-9._-]", "-", branch))
    return "_".join(parts) + ".csv"
