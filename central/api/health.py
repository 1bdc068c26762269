from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency

from central.api.schemas import Health
from central.runtime import CentralRuntime
from central.services.health import health_of

__all__ = ["HealthController"]


class HealthController(Controller):
    path = "/health"
    tags = ["operations"]

    @get("/", operation_id="getHealth", summary="Liveness of the API, database and NATS link")
    async def health(self, runtime: NamedDependency[CentralRuntime]) -> Health:
        return await health_of(runtime)
