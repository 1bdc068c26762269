"""Streams and consumers that central owns (branches have no admin rights)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from central.failures import FailureLog, nats_reason
from protocol.nats_link import close_unconnected, connect_cancellably
from protocol.subjects import DOWN_STREAM, INGEST_DURABLE, UP_STREAM, down_consumer_name

__all__ = [
    "connect",
    "down_filter_subjects",
    "ensure_branch_consumer",
    "ensure_ingest_consumer",
    "ensure_streams",
]

log = logging.getLogger(__name__)


async def connect(url: str, *, creds: str = "", name: str = "central", **kwargs: Any) -> Client:
    """A connection that reconnects forever instead of closing after 60 attempts. Its
    errors (a refused authorization at every attempt, servers down) are logged once
    per change, and once when the link is back: not at every reconnect attempt."""
    failures = FailureLog(log, f"nats link ({name})")

    async def error_cb(exc: Exception) -> None:
        # Without an error callback nats-py logs a traceback per failed reconnect.
        failures.failed(nats_reason(exc), retry="reconnecting")

    async def reconnected_cb() -> None:
        failures.ok()

    options: dict[str, Any] = {
        "servers": [u.strip() for u in url.split(",")],
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "error_cb": error_cb,
        "reconnected_cb": reconnected_cb,
        **kwargs,
    }
    if creds:
        options["user_credentials"] = creds
    nc = Client()
    try:
        await connect_cancellably(nc, **options)
    except BaseException:
        # Cancelled while retrying (a host stopping whose link is refused): the
        # client's half-open socket would otherwise outlive it.
        close_unconnected(nc)
        raise
    failures.ok()
    return nc


async def _add_or_update_stream(
    js: JetStreamContext, config: StreamConfig, *, first_seq: int | None = None
) -> None:
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        # Only a new stream takes a first sequence (an existing one keeps its numbers).
        if first_seq is not None:
            config = replace(config, first_seq=first_seq)
        await js.add_stream(config)
        return
    await js.update_stream(config)


async def ensure_streams(
    js: JetStreamContext,
    *,
    replicas: int = 1,
    max_age_days: int = 30,
    dedup_window_s: int = 24 * 3600,
    down_first_seq: int | None = None,
) -> None:
    """Create or update both streams; a down stream created now numbers its messages
    from ``down_first_seq`` (None: from 1)."""
    await _add_or_update_stream(
        js,
        StreamConfig(
            name=UP_STREAM,
            subjects=["up.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=max_age_days * 86400.0,
            duplicate_window=float(dedup_window_s),
            discard=DiscardPolicy.OLD,
        ),
    )
    await _add_or_update_stream(
        js,
        StreamConfig(
            name=DOWN_STREAM,
            subjects=["down.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            # Latest value per key: a branch catching up gets current values only.
            max_msgs_per_subject=1,
            duplicate_window=120.0,
        ),
        first_seq=down_first_seq,
    )


async def ensure_ingest_consumer(js: JetStreamContext, *, ack_wait_s: float = 30.0) -> None:
    config = ConsumerConfig(
        durable_name=INGEST_DURABLE,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait_s,
        # Unlimited redeliveries: a message that cannot be processed is dead-lettered
        # by the worker itself, so nothing is left behind at max_deliver.
        max_deliver=-1,
        max_ack_pending=20000,
        filter_subject="up.>",
    )
    await js.add_consumer(UP_STREAM, config)


def down_filter_subjects(
    branch: str, format_code: str | None = None, price_zone: str | None = None
) -> list[str]:
    """The scopes one branch reads: chain, its format, its price zone, itself."""
    subjects = ["down.all.>", f"down.branch.{branch}.>"]
    if format_code:
        subjects.append(f"down.format.{format_code}.>")
    if price_zone:
        subjects.append(f"down.zone.{price_zone}.>")
    return subjects


async def ensure_branch_consumer(
    js: JetStreamContext,
    branch: str,
    *,
    format_code: str | None = None,
    price_zone: str | None = None,
) -> None:
    config = ConsumerConfig(
        durable_name=down_consumer_name(branch),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=30.0,
        max_deliver=-1,
        filter_subjects=down_filter_subjects(branch, format_code, price_zone),
    )
    await js.add_consumer(DOWN_STREAM, config)
