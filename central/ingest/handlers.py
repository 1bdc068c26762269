"""Effects of each event kind, applied in the ingesting transaction.

Importing this module registers central's own handlers, which run by stage: the wait
for earlier batches of the same branches (``central.ingest.ordering``), stock
(ledger and balances; leaves values and negative-stock flags for the others), sales
and customer returns, stock documents and transfers, shifts and cash. Projections
registered with the default stage (e.g. report summaries) run after them in the same
transaction.
See :mod:`central.ingest.registry` for the two handler kinds.
"""

from __future__ import annotations

import central.ingest.documents
import central.ingest.fiscal
import central.ingest.ordering
import central.ingest.sales
import central.ingest.shifts
import central.ingest.stock  # noqa: F401
from central.ingest.registry import (
    BatchHandler,
    EventContext,
    EventHandler,
    Handler,
    IngestBatch,
    apply_handlers,
    handlers_for,
    register_batch_handler,
    register_handler,
)

__all__ = [
    "BatchHandler",
    "EventContext",
    "EventHandler",
    "Handler",
    "IngestBatch",
    "apply_handlers",
    "handlers_for",
    "register_batch_handler",
    "register_handler",
]
