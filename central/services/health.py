"""Liveness of the parts a central process depends on."""

from __future__ import annotations

from sqlalchemy import text

from central.api.schemas import Health
from central.runtime import CentralRuntime

__all__ = ["health_of"]


async def health_of(runtime: CentralRuntime) -> Health:
    try:
        async with runtime.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:
        database = f"error: {type(exc).__name__}"
    nats = "connected" if runtime.nc is not None and runtime.nc.is_connected else "disconnected"
    jetstream = runtime.jetstream
    issuer = runtime.nats_issuer
    healthy = database == "ok" and not jetstream.startswith("error")
    return Health(
        status="ok" if healthy and not issuer.startswith("error") else "degraded",
        database=database,
        nats=nats,
        jetstream=jetstream,
        ingest_workers=len(runtime.workers),
        nats_issuer=issuer,
    )
