"""Liveness of the parts a central process depends on."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from sqlalchemy import text

from central.api.schemas import Health
from central.runtime import CentralRuntime
from protocol.subjects import INGEST_DURABLE, UP_STREAM

__all__ = ["INGEST_STALL_S", "NATS_GRACE_S", "health_of"]

# A process just started is still connecting: NATS not connected or JetStream not
# ready is "degraded" only once this much has passed since the start.
NATS_GRACE_S = 15.0
# A backlog that no ingest worker acknowledged anything of for this long: ingestion
# is stalled (every worker dead or failing); a busy batch takes a few seconds.
INGEST_STALL_S = 60.0


async def health_of(runtime: CentralRuntime) -> Health:
    try:
        async with runtime.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:
        database = f"error: {type(exc).__name__}"
    connected = runtime.nc is not None and runtime.nc.is_connected
    nats = "connected" if connected else "disconnected"
    # The streams were set up over a link that is gone: not "ready" until it is back
    # (a reason why setting them up failed stays shown).
    jetstream = runtime.jetstream
    if not connected and jetstream == "ready":
        jetstream = "connecting"
    pending, ack_age = await _ingest_backlog(runtime) if connected else (None, None)
    if pending is None or ack_age is None:
        ingest = "unknown"
    else:
        ingest = "stalled" if pending > 0 and ack_age > INGEST_STALL_S else "ok"
    started = time.monotonic() - runtime.started_at > NATS_GRACE_S
    healthy = (
        database == "ok"
        and not jetstream.startswith("error")
        and (not started or (connected and jetstream == "ready"))
        and ingest != "stalled"
        and not runtime.nats_issuer.startswith("error")
    )
    return Health(
        status="ok" if healthy else "degraded",
        database=database,
        nats=nats,
        jetstream=jetstream,
        ingest_workers=len(runtime.workers),
        ingest_pending=pending,
        ingest_last_ack_age_s=ack_age,
        ingest=ingest,
        nats_issuer=runtime.nats_issuer,
    )


async def _ingest_backlog(runtime: CentralRuntime) -> tuple[int | None, float | None]:
    """The shared ingest consumer's backlog and the age of its last acknowledgement,
    (None, None) when its info cannot be read now (a health check never waits long)."""
    if runtime.js is None:
        return None, None
    try:
        info = await asyncio.wait_for(runtime.js.consumer_info(UP_STREAM, INGEST_DURABLE), 2.0)
    except Exception:
        return None, None
    pending = (info.num_pending or 0) + (info.num_ack_pending or 0)
    acked = info.ack_floor.last_active if info.ack_floor else None
    since = acked or info.created
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return pending, round(max(0.0, (datetime.now(UTC) - since).total_seconds()), 1)
