"""The outbox sender's last error is the link's state only while sending fails: once
NATS is back and events are acked again, status no longer shows it."""

from __future__ import annotations

from typing import Any

from branch_agent.status import format_status
from branch_agent.till_sim import TillSimulator
from central.embedded_nats import EmbeddedNats
from tests.conftest import asgi_client, register_branch, wait_until


async def test_the_last_sync_error_goes_once_sending_works_again(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    await register_branch(central, "B1")
    agent = await make_agent("B1", nats_server.url)
    till = TillSimulator("http://testserver", "B1-till-1", seed=5)
    async with asgi_client(agent.app) as client:
        await till.open_shift(client)

        async def drained() -> bool:
            status = await agent.status()
            return status.link == "connected" and status.outbox_backlog == 0

        await wait_until(drained, timeout=30)
        nats_server.stop()

        async def failing() -> bool:
            return bool((await agent.status()).last_sync_error)

        assert await till.post_sale(client) is not None
        await wait_until(failing, timeout=30)
        assert "last error:" in format_status(await agent.status())

        nats_server.start()
        await wait_until(drained, timeout=60)
        assert await till.post_sale(client) is not None
        await wait_until(drained, timeout=30)
    status = await agent.status()
    assert status.last_sync_error == ""
    assert "last error" not in format_status(status)
    assert status.last_acked_seq == status.last_recorded_seq
