"""The NATS server loses its JetStream store (a wiped data directory, a bad disk): the
streams and consumers central owns are gone. Central sees it, says so on /health
while it cannot set them up again, and creates them again; the branches' sales,
kept in their outboxes until a publish is acknowledged, then reach central."""

from __future__ import annotations

from typing import Any

import nats

from central.embedded_nats import EmbeddedNats
from central.runtime import CentralRuntime
from central.services.health import health_of
from protocol.subjects import DOWN_STREAM, UP_STREAM
from tests.conftest import central_settings, register_branch, wait_until
from tests.e2e.test_skeleton import post_sale, receipts_at_central, sale

TOKEN = "B1-till-1"


async def test_streams_lost_by_the_nats_server_are_created_again(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    await register_branch(central, "B1")
    agent = await make_agent("B1", nats_server.url)
    assert (await post_sale(agent, sale("before"), TOKEN)).status_code == 201

    async def at_central(count: int) -> bool:
        return len(await receipts_at_central(central)) == count

    await wait_until(lambda: at_central(1))
    assert (await health_of(central)).jetstream == "ready"

    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()

    async def recreated() -> bool:
        names = {info.config.name for info in await js.streams_info()}
        return {UP_STREAM, DOWN_STREAM} <= names

    try:
        for stream in (UP_STREAM, DOWN_STREAM):
            await js.delete_stream(stream)
        await wait_until(recreated, timeout=30)
    finally:
        await nc.close()
    assert (await health_of(central)).status == "ok"
    # A sale after the loss reaches central through the new streams and consumers.
    assert (await post_sale(agent, sale("after"), TOKEN)).status_code == 201
    await wait_until(lambda: at_central(2), timeout=30)


async def test_health_is_degraded_while_the_streams_cannot_be_set_up(
    db_url: str, nats_server: EmbeddedNats
) -> None:
    """Three replicas asked of a single server: set-up fails for as long as that lasts."""
    runtime = CentralRuntime(central_settings(db_url, nats_server.url, up_stream_replicas=3))
    await runtime.start(ingest_workers=0)
    try:

        async def failing() -> bool:
            return runtime.jetstream.startswith("error")

        await wait_until(failing, timeout=20)
        health = await health_of(runtime)
        assert (health.status, health.nats) == ("degraded", "connected")
        assert "replicas" in health.jetstream.lower() or "cluster" in health.jetstream.lower()
    finally:
        await runtime.stop()
