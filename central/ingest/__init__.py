"""Ingestion of branch events from the up stream: exactly once, ack after commit."""

from central.ingest.worker import IngestWorker, MessageIn

__all__ = ["IngestWorker", "MessageIn"]
