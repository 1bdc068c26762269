"""``NatsKeeper`` (``python -m central demo``'s nats-server): a server killed with
SIGKILL is started again on the same port and store, said once when it dies and once
when it is back; a port taken meanwhile is retried with backoff, said once."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import nats

from central.embedded_nats import EmbeddedNats, NatsKeeper
from tests.conftest import wait_until
from tests.e2e.test_demo_ports import _alive


async def _dead(server: EmbeddedNats) -> bool:
    return not server.is_running()


async def test_a_killed_server_is_started_again_on_its_port_and_store(
    nats_server: EmbeddedNats,
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="KEPT", subjects=["kept.>"])
    await js.publish("kept.one", b"before")
    await nc.close()
    lines: list[str] = []
    keeper = NatsKeeper(nats_server, lines.append)
    keeper.check()
    assert (lines, keeper.restarts) == ([], 0)  # running: nothing to do
    first = nats_server.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await wait_until(lambda: _dead(nats_server), interval=0.01)
    await asyncio.to_thread(keeper.check)
    assert keeper.restarts == 1
    assert nats_server.pid != first
    assert not _alive(first)
    assert len(lines) == 2
    assert lines[0].startswith(f"nats-server (pid {first}) died (exit status -9)")
    assert lines[1].startswith(f"nats-server running again (pid {nats_server.pid})")
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().stream_info("KEPT")
        assert info.state.messages == 1  # the same store
    finally:
        await nc.close()


async def test_a_port_taken_meanwhile_is_retried_with_backoff(
    nats_server: EmbeddedNats,
) -> None:
    lines: list[str] = []
    keeper = NatsKeeper(nats_server, lines.append)
    nats_server.kill()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", nats_server.port))
    squatter.listen()
    try:
        for _ in range(3):
            await asyncio.to_thread(keeper.check)
        assert keeper.restarts == 0
        # Died once, failed once (the next checks wait out the backoff): two lines.
        assert len(lines) == 2, lines
        assert "not started again" in lines[1]
    finally:
        squatter.close()
    keeper._next_try = 0.0  # the backoff's wait, skipped
    await asyncio.to_thread(keeper.check)
    assert keeper.restarts == 1
    assert nats_server.is_running()
    assert lines[-1].startswith("nats-server running again")
