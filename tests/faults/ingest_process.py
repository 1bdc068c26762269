"""``python -m central ingest`` as a separate process, for the kill tests."""

from __future__ import annotations

import asyncio
import sys
from asyncio.subprocess import DEVNULL
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import IO

from central.ingest.worker import CRASH_EXIT_CODE
from central.sync.jetstream import connect
from protocol.subjects import INGEST_DURABLE, UP_STREAM

INGEST = (sys.executable, "-m", "central", "ingest")


async def ingest_until_crash(env: dict[str, str], fault: str, log: IO[bytes]) -> None:
    """Run an ingest process with the fault injection ``fault`` (its environment
    variable) on, until it dies the hard way (``os._exit``, as a SIGKILL would leave
    it) at that point."""
    crashing = await asyncio.create_subprocess_exec(
        *INGEST, env={**env, fault: "1"}, stdout=DEVNULL, stderr=log
    )
    assert await asyncio.wait_for(crashing.wait(), 60) == CRASH_EXIT_CODE


async def start_ingest(env: dict[str, str], log: IO[bytes]) -> asyncio.subprocess.Process:
    """An ingest process; the caller stops it (``stop_ingest``)."""
    return await asyncio.create_subprocess_exec(*INGEST, env=env, stdout=DEVNULL, stderr=log)


async def stop_ingest(process: asyncio.subprocess.Process) -> int:
    """SIGTERM (a no-op if it is gone already) and its exit status."""
    if process.returncode is None:
        process.terminate()
    return await asyncio.wait_for(process.wait(), 20)


@asynccontextmanager
async def running_ingest(env: dict[str, str], log: IO[bytes]) -> AsyncIterator[None]:
    """An ingest process for the block, terminated at its end."""
    process = await start_ingest(env, log)
    try:
        yield
    finally:
        await stop_ingest(process)


async def ack_pending(nats_url: str) -> int:
    """Messages the ingest consumer has delivered and not had acked."""
    nc = await connect(nats_url, name="test-probe")
    try:
        info = await nc.jetstream().consumer_info(UP_STREAM, INGEST_DURABLE)
        return info.num_ack_pending or 0
    finally:
        await nc.drain()
