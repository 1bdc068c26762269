"""A cancelled connect ends even when nats-py swallows the cancellation (3.11's
``asyncio.wait_for`` turns one that lands as a connection fails into that failure)."""

import asyncio
from typing import Any, cast

from nats.aio.client import Client

from protocol.nats_link import connect_cancellably


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class SwallowingClient:
    """Retries like nats-py with ``max_reconnect_attempts=-1``; the first
    ``swallowed`` cancellations are taken for failed attempts, as the race does;
    ``connect_after_swallow``: the attempt after a swallowed one connects."""

    def __init__(self, swallowed: int, *, connect_after_swallow: bool = False) -> None:
        self.options: dict[str, Any] = {}
        self._transport: _Transport | None = None
        self.swallowed = swallowed
        self.connect_after_swallow = connect_after_swallow
        self.attempts = 0
        self.closed_by_close = False

    async def connect(self, **options: Any) -> None:
        self.options.update(options)
        while True:
            self._transport = _Transport()
            self.attempts += 1
            try:
                await asyncio.sleep(0.005)
            except asyncio.CancelledError:
                if self.swallowed == 0:
                    raise
                self.swallowed -= 1
                if self.connect_after_swallow:
                    return
            # The attempt failed (refused): a retry unless reconnecting is off (or the
            # test has long failed: it must not hang).
            if not self.options["allow_reconnect"] or self.attempts > 1000:
                raise ConnectionRefusedError("refused")

    async def close(self) -> None:
        self.closed_by_close = True


async def _cancel_after_start(task: "asyncio.Task[None]") -> None:
    await asyncio.sleep(0.05)
    task.cancel()
    # Not wait_for: on 3.11 it waits for ever for a task that swallows its cancel.
    done, _ = await asyncio.wait({task}, timeout=3)
    assert done, "the cancelled connect did not end"
    assert task.cancelled()


async def test_a_cancelled_connect_ends_though_nats_py_swallows_cancellations() -> None:
    nc = SwallowingClient(swallowed=3)
    task = asyncio.create_task(
        connect_cancellably(cast(Client, nc), allow_reconnect=True, max_reconnect_attempts=-1)
    )
    await _cancel_after_start(task)
    assert nc._transport is not None
    assert nc._transport.closed
    attempts = nc.attempts
    await asyncio.sleep(0.05)
    assert nc.attempts == attempts, "the abandoned connect is still retrying"


async def test_a_connect_that_succeeds_as_it_is_cancelled_is_closed() -> None:
    nc = SwallowingClient(swallowed=1, connect_after_swallow=True)
    task = asyncio.create_task(connect_cancellably(cast(Client, nc), allow_reconnect=True))
    await _cancel_after_start(task)
    assert nc.closed_by_close
