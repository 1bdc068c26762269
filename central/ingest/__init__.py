"""Ingestion of branch events from the up stream: exactly once, ack after commit."""

# Report summaries are projections registered with the ingest handlers (after them).
import central.reports.projections  # noqa: F401
from central.ingest.worker import IngestWorker, MessageIn

__all__ = ["IngestWorker", "MessageIn"]
