"""Stock documents as posted, and the matching of transfers out and in."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession

from central.ingest.bulk import dialect_insert, insert_rows, table_of
from central.ingest.registry import EventContext, IngestBatch, register_batch_handler
from central.ingest.stock import transfer_ref_of
from central.models import (
    StockDocument,
    StockDocumentLineRow,
    StockTransfer,
    StockTransferLine,
    utcnow,
)
from protocol.events import StockDocumentPosted

__all__ = ["store_stock_documents"]


@register_batch_handler(StockDocumentPosted, stage=30)
async def store_stock_documents(
    session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
) -> None:
    values: dict[tuple[uuid.UUID, int], int] = batch.notes.get("stock_values", {})
    negative: set[uuid.UUID] = batch.notes.get("negative_stock", set())
    documents: list[dict[str, object]] = []
    lines: list[dict[str, object]] = []
    for ctx in contexts:
        env = ctx.envelope
        body = env.body
        assert isinstance(body, StockDocumentPosted)
        line_values = [values.get((env.event_id, n), 0) for n in range(1, len(body.lines) + 1)]
        documents.append(
            {
                "event_id": env.event_id,
                "branch": env.branch,
                "document_id": body.document_id,
                "doc_type": body.doc_type,
                "number": body.number,
                "supplier": body.supplier,
                "counterpart_branch": body.counterpart_branch,
                "transfer_ref": body.transfer_ref,
                "reason": body.reason,
                "author": body.author,
                "occurred_at": env.occurred_at,
                "utc_offset_min": env.utc_offset_min,
                "local_date": ctx.local_date,
                "value": sum(line_values),
                "negative_stock": env.event_id in negative,
                "part": body.part,
                "parts": body.parts,
            }
        )
        lines.extend(
            {
                "event_id": env.event_id,
                # The document's line number (parts after the first start further on).
                "line_no": body.first_line_no + n - 1,
                "sku": line.sku,
                "quantity_milli": line.quantity_milli,
                "unit_cost": line.unit_cost,
                "expected_milli": line.expected_milli,
                "counted_milli": line.counted_milli,
                "value": line_values[n - 1],
            }
            for n, line in enumerate(body.lines, start=1)
        )
        if body.doc_type in ("transfer_out", "transfer_in"):
            await _match_transfer(session, ctx, body, line_values)
    await insert_rows(session, table_of(StockDocument), documents)
    await insert_rows(session, table_of(StockDocumentLineRow), lines)


async def _match_transfer(
    session: AsyncSession, ctx: EventContext, body: StockDocumentPosted, line_values: list[int]
) -> None:
    """Either side may come first; each adds its half with an atomic upsert."""
    env = ctx.envelope
    ref = transfer_ref_of(body)
    outbound = body.doc_type == "transfer_out"
    header = dialect_insert(session, table_of(StockTransfer))
    side: dict[str, Any] = (
        {
            "from_branch": env.branch,
            "to_branch": body.counterpart_branch,
            "out_event_id": env.event_id,
            "sent_at": env.occurred_at,
        }
        if outbound
        else {
            "from_branch": body.counterpart_branch,
            "to_branch": env.branch,
            "in_event_id": env.event_id,
            "received_at": env.occurred_at,
        }
    )
    table = table_of(StockTransfer)
    await session.execute(
        header.values(transfer_ref=ref, created_at=utcnow(), **side).on_conflict_do_update(
            index_elements=["transfer_ref"],
            set_={name: func.coalesce(table.c[name], header.excluded[name]) for name in side},
        )
    )
    per_sku: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for line, value in zip(body.lines, line_values, strict=True):
        per_sku[line.sku][0] += abs(line.quantity_milli)
        per_sku[line.sku][1] += abs(value)
    qty_col, value_col = (
        ("sent_milli", "sent_value") if outbound else ("received_milli", "received_value")
    )
    lines_insert = dialect_insert(session, table_of(StockTransferLine))
    line_table = table_of(StockTransferLine)
    await session.execute(
        lines_insert.values(
            [
                {
                    "transfer_ref": ref,
                    "sku": sku,
                    "sent_milli": qty if outbound else 0,
                    "sent_value": value if outbound else 0,
                    "received_milli": 0 if outbound else qty,
                    "received_value": 0 if outbound else value,
                }
                for sku, (qty, value) in sorted(per_sku.items())
            ]
        ).on_conflict_do_update(
            index_elements=["transfer_ref", "sku"],
            set_={
                qty_col: line_table.c[qty_col] + lines_insert.excluded[qty_col],
                value_col: line_table.c[value_col] + lines_insert.excluded[value_col],
            },
        )
    )
