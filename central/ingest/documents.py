"""Stock documents as posted, and the matching of transfers out and in.

A transfer's out is the first transfer-out document stored for its ref; it is received
once, by the first transfer-in document of the branch the out names (of any branch
while the out is not in; re-filed as a wrong receiver's if the out then names another).
The parts of a document (one ``document_id``, several events) are that document. Any
other document quoting the ref is a discrepancy row, its goods summed there and not on
the lines; a document naming a branch central does not know is one too. Stock effects
are posted by :mod:`central.ingest.stock` for every document regardless: never refused.
Each new event is filed exactly once (a redelivered one is a duplicate, never seen
here), so a redelivery is never a second receipt.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from central.ingest.bulk import dialect_insert, insert_rows, table_of
from central.ingest.registry import EventContext, IngestBatch, register_batch_handler
from central.ingest.sales import closed_days_of
from central.ingest.transfers import (
    HEADER_STATE,
    TRANSFER_DOC_TYPES,
    TRANSFER_HEADERS,
    lock_transfer_headers,
    transfer_ref_of,
)
from central.models import (
    Branch,
    StockDocument,
    StockDocumentLineRow,
    StockTransfer,
    StockTransferDiscrepancy,
    StockTransferLine,
    utcnow,
)
from protocol.events import StockDocumentPosted

__all__ = [
    "RECEIVED_TWICE",
    "SENT_TWICE",
    "UNKNOWN_BRANCH",
    "WRONG_RECEIVER",
    "WRONG_SENDER",
    "is_whole",
    "store_stock_documents",
]


@register_batch_handler(StockDocumentPosted, stage=30)
async def store_stock_documents(
    session: AsyncSession, batch: IngestBatch, contexts: Sequence[EventContext]
) -> None:
    values: dict[tuple[uuid.UUID, int], int] = batch.notes.get("stock_values", {})
    negative: set[uuid.UUID] = batch.notes.get("negative_stock", set())
    closed = await closed_days_of(session, {(c.envelope.branch, c.local_date) for c in contexts})
    documents: list[dict[str, object]] = []
    lines: list[dict[str, object]] = []
    transfers: list[tuple[EventContext, StockDocumentPosted, list[int]]] = []
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
                "late": (env.branch, ctx.local_date) in closed,
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
        if body.doc_type in TRANSFER_DOC_TYPES:
            transfers.append((ctx, body, line_values))
    await insert_rows(session, table_of(StockDocument), documents)
    await insert_rows(session, table_of(StockDocumentLineRow), lines)
    if transfers:
        await _match_transfers(session, transfers, batch.notes.get(TRANSFER_HEADERS))


# Kinds of StockTransferDiscrepancy rows (line differences are read off the lines).
WRONG_RECEIVER = "wrong_receiver"
WRONG_SENDER = "wrong_sender"
RECEIVED_TWICE = "received_twice"
SENT_TWICE = "sent_twice"
UNKNOWN_BRANCH = "unknown_branch"


def is_whole(transfer: dict[str, Any]) -> bool:
    """Both documents at central with all their parts: the lines' differences are final."""
    return bool(
        transfer["out_document_id"] is not None
        and transfer["in_document_id"] is not None
        and transfer["out_parts_received"] >= transfer["out_parts"]
        and transfer["in_parts_received"] >= transfer["in_parts"]
    )


class _Matcher:
    """One batch's transfer documents against their transfers, locked in ref order.

    Headers are read once and written back once; line quantities and discrepancies are
    summed in memory and written with one additive upsert each, so a batch costs a
    handful of statements however many transfer documents it holds.
    """

    def __init__(
        self, session: AsyncSession, headers: dict[str, dict[str, Any]], known: set[str]
    ) -> None:
        self.session = session
        self.headers = headers
        self.known = known
        # (ref, sku) -> [sent_milli, sent_value, received_milli, received_value] to add.
        self.lines: dict[tuple[str, str], list[int]] = {}
        # (ref, kind, branch, document_id) -> row to add (quantities summed).
        self.found: dict[tuple[str, str, str, str], dict[str, Any]] = {}

    def _note(
        self,
        ref: str,
        kind: str,
        ctx: EventContext,
        body: StockDocumentPosted,
        *,
        expected: str | None = None,
        quantity: int = 0,
        value: int = 0,
        branch: str | None = None,
        document_id: str | None = None,
        counterpart: str | None = None,
    ) -> None:
        env = ctx.envelope
        key = (ref, kind, branch or env.branch, document_id or body.document_id)
        row = self.found.get(key)
        if row is None:
            self.found[key] = {
                "transfer_ref": ref,
                "kind": kind,
                "branch": key[2],
                "document_id": key[3],
                "counterpart": counterpart if branch else body.counterpart_branch,
                "expected": expected,
                "quantity_milli": quantity,
                "value": value,
                "event_id": env.event_id,
                "detected_at": utcnow(),
            }
        else:
            row["quantity_milli"] += quantity
            row["value"] += value
        self.headers[ref]["has_discrepancies"] = True

    def _add_lines(self, ref: str, per_sku: dict[str, list[int]], *, outbound: bool) -> None:
        offset = 0 if outbound else 2
        for sku, (qty, value) in per_sku.items():
            line = self.lines.setdefault((ref, sku), [0, 0, 0, 0])
            line[offset] += qty
            line[offset + 1] += value

    async def apply(
        self, ctx: EventContext, body: StockDocumentPosted, line_values: list[int]
    ) -> None:
        env = ctx.envelope
        ref = transfer_ref_of(body)
        t = self.headers[ref]
        per_sku: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for line, value in zip(body.lines, line_values, strict=True):
            per_sku[line.sku][0] += abs(line.quantity_milli)
            per_sku[line.sku][1] += abs(value)
        quantity = sum(q for q, _ in per_sku.values())
        value = sum(v for _, v in per_sku.values())
        counterpart = body.counterpart_branch
        if counterpart is None or counterpart not in self.known:
            # Parts of one document share its row: noted once.
            self._note(ref, UNKNOWN_BRANCH, ctx, body)
        if body.doc_type == "transfer_out":
            if t["out_document_id"] is None:
                t.update(
                    from_branch=env.branch,
                    to_branch=counterpart,
                    out_event_id=env.event_id,
                    sent_at=env.occurred_at,
                    out_document_id=body.document_id,
                    out_parts=body.parts,
                    out_parts_received=1,
                )
                if t["in_document_id"] is not None:
                    if t["in_branch"] != counterpart:
                        await self._refile_receipt(ref, ctx, body)
                    elif t["in_counterpart"] != env.branch:
                        self._note(
                            ref,
                            WRONG_SENDER,
                            ctx,
                            body,
                            expected=env.branch,
                            branch=t["in_branch"],
                            document_id=t["in_document_id"],
                            counterpart=t["in_counterpart"],
                        )
                self._add_lines(ref, per_sku, outbound=True)
            elif (t["from_branch"], t["out_document_id"]) == (env.branch, body.document_id):
                t["out_parts_received"] += 1  # another part of the transfer's out
                self._add_lines(ref, per_sku, outbound=True)
            else:
                self._note(
                    ref,
                    SENT_TWICE,
                    ctx,
                    body,
                    expected=f"{t['from_branch']}/{t['out_document_id']}",
                    quantity=quantity,
                    value=value,
                )
            return
        if (t["in_branch"], t["in_document_id"]) == (env.branch, body.document_id):
            t["in_parts_received"] += 1  # another part of the receipt
            self._add_lines(ref, per_sku, outbound=False)
        elif t["out_document_id"] is not None and env.branch != t["to_branch"]:
            self._note(
                ref,
                WRONG_RECEIVER,
                ctx,
                body,
                expected=t["to_branch"],
                quantity=quantity,
                value=value,
            )
        elif t["in_document_id"] is not None:
            self._note(
                ref,
                RECEIVED_TWICE,
                ctx,
                body,
                expected=f"{t['in_branch']}/{t['in_document_id']}",
                quantity=quantity,
                value=value,
            )
        else:
            # The first receipt of the branch the out names (or of any, the out not in
            # yet) receives the transfer: its quantities are the received ones.
            t.update(
                in_branch=env.branch,
                in_counterpart=counterpart,
                in_document_id=body.document_id,
                in_event_id=env.event_id,
                received_at=env.occurred_at,
                in_parts=body.parts,
                in_parts_received=1,
            )
            if t["out_document_id"] is None:
                t.update(from_branch=counterpart, to_branch=env.branch)
            elif counterpart != t["from_branch"]:
                self._note(ref, WRONG_SENDER, ctx, body, expected=t["from_branch"])
            self._add_lines(ref, per_sku, outbound=False)

    async def _refile_receipt(self, ref: str, ctx: EventContext, body: StockDocumentPosted) -> None:
        """The out came after a receipt of a branch it does not name: that receipt is
        a wrong receiver's (its goods off the lines), the goods are in transit again."""
        t = self.headers[ref]
        line_table = table_of(StockTransferLine)
        stored = await self.session.execute(
            select(
                func.coalesce(func.sum(line_table.c.received_milli), 0),
                func.coalesce(func.sum(line_table.c.received_value), 0),
            ).where(line_table.c.transfer_ref == ref)
        )
        quantity, value = (int(x) for x in stored.one())
        for (line_ref, _), pending in self.lines.items():
            if line_ref == ref:
                quantity += pending[2]
                value += pending[3]
                pending[2] = pending[3] = 0
        await self.session.execute(
            update(line_table)
            .where(line_table.c.transfer_ref == ref)
            .values(received_milli=0, received_value=0)
        )
        await self.session.execute(
            delete(line_table).where(line_table.c.transfer_ref == ref, line_table.c.sent_milli == 0)
        )
        self._note(
            ref,
            WRONG_RECEIVER,
            ctx,
            body,
            expected=body.counterpart_branch,
            quantity=quantity,
            value=value,
            branch=t["in_branch"],
            document_id=t["in_document_id"],
            counterpart=t["in_counterpart"],
        )
        t.update(
            in_branch=None,
            in_counterpart=None,
            in_document_id=None,
            in_event_id=None,
            received_at=None,
            in_parts=0,
            in_parts_received=0,
        )

    async def write(self) -> None:
        session = self.session
        line_table = table_of(StockTransferLine)
        rows = [
            {
                "transfer_ref": ref,
                "sku": sku,
                "sent_milli": q[0],
                "sent_value": q[1],
                "received_milli": q[2],
                "received_value": q[3],
            }
            for (ref, sku), q in sorted(self.lines.items())
            if any(q)
        ]
        if rows:
            lines_insert = dialect_insert(session, line_table)
            await session.execute(
                lines_insert.values(rows).on_conflict_do_update(
                    index_elements=["transfer_ref", "sku"],
                    set_={
                        name: line_table.c[name] + lines_insert.excluded[name]
                        for name in (
                            "sent_milli",
                            "sent_value",
                            "received_milli",
                            "received_value",
                        )
                    },
                )
            )
        if self.found:
            table = table_of(StockTransferDiscrepancy)
            found = dialect_insert(session, table)
            await session.execute(
                found.values([self.found[k] for k in sorted(self.found)]).on_conflict_do_update(
                    index_elements=["transfer_ref", "kind", "branch", "document_id"],
                    set_={
                        "quantity_milli": table.c.quantity_milli + found.excluded.quantity_milli,
                        "value": table.c.value + found.excluded.value,
                    },
                )
            )
        # Both documents whole: a line whose received differs from its sent is a
        # difference (short, over, not sent), final from now on.
        settled = [
            ref for ref, t in self.headers.items() if is_whole(t) and not t["has_discrepancies"]
        ]
        if settled:
            differing = await session.scalars(
                select(line_table.c.transfer_ref)
                .where(
                    line_table.c.transfer_ref.in_(settled),
                    line_table.c.sent_milli != line_table.c.received_milli,
                )
                .distinct()
            )
            for ref in differing:
                self.headers[ref]["has_discrepancies"] = True
        table = table_of(StockTransfer)
        await session.execute(
            update(table)
            .where(table.c.transfer_ref == bindparam("ref"))
            .values({name: bindparam(f"v_{name}") for name in HEADER_STATE}),
            [
                {"ref": ref} | {f"v_{name}": t[name] for name in HEADER_STATE}
                for ref, t in sorted(self.headers.items())
            ],
        )


async def _match_transfers(
    session: AsyncSession,
    transfers: list[tuple[EventContext, StockDocumentPosted, list[int]]],
    headers: dict[str, dict[str, Any]] | None,
) -> None:
    """Either side may come first. The batch's transfers were created if new and locked
    in ref order by the stock stage (``headers``); locked here when it did not run."""
    refs = {transfer_ref_of(body) for _, body, _ in transfers}
    if headers is None or not refs <= headers.keys():
        headers = await lock_transfer_headers(session, refs)
    named = {body.counterpart_branch for _, body, _ in transfers} - {None}
    known = set(await session.scalars(select(Branch.code).where(Branch.code.in_(named))))
    matcher = _Matcher(session, headers, known)
    for ctx, body, line_values in transfers:
        await matcher.apply(ctx, body, line_values)
    await matcher.write()
