"""An ingest worker that stops (SIGTERM), fails on the database or dies mid-batch: the
batch reaches another worker promptly (SIGTERM, failure: handed back with a nak) or
after the ack wait (SIGKILL), and the gap it leaves meanwhile is not asked of the
branch (no resend storm after every deploy or database blip); totals exact."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.db import create_engine, create_sessionmaker
from central.embedded_nats import EmbeddedNats
from central.models import BranchSyncState, IngestedEvent, Receipt
from central.services.branches import add_branch
from tests.central.chain_events import BranchBooks, ingest_env, publish_books
from tests.conftest import wait_until
from tests.faults.ingest_process import ack_pending, start_ingest, stop_ingest

SALES = 60
BATCH = 10
ACK_WAIT_S = 30.0


async def _stored(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(IngestedEvent)) or 0


async def _published(nats_url: str) -> BranchBooks:
    books = BranchBooks("K1")
    for n in range(SALES):
        books.sale([("MILK", 1_000 + n, 199)])
    await publish_books(nats_url, books)
    return books


@asynccontextmanager
async def _chain(
    db_url: str, nats_server: EmbeddedNats
) -> AsyncIterator[tuple[async_sessionmaker[AsyncSession], BranchBooks]]:
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await add_branch(session, code="K1", name="K1")
    try:
        yield sessionmaker, await _published(nats_server.url)
    finally:
        await engine.dispose()


async def _assert_books(sessionmaker: async_sessionmaker[AsyncSession], books: BranchBooks) -> None:
    async with sessionmaker() as session:
        receipts = await session.scalar(select(func.count(Receipt.id)))
        total = await session.scalar(select(func.sum(Receipt.total)))
        state = await session.get(BranchSyncState, "K1")
    assert (receipts, total) == (SALES, books.sales_total)
    assert state is not None
    assert state.contiguous_seq == SALES
    # The branch was never asked to resend: the gap was the batch out with a worker.
    assert state.resend_requested_from is None


def _env(db_url: str, nats_server: EmbeddedNats, tmp_path: Path, **extra: str) -> dict[str, str]:
    settings = {
        "BACKROOM_INGEST_BATCH": str(BATCH),
        "BACKROOM_INGEST_ACK_WAIT_S": str(ACK_WAIT_S),
        "BACKROOM_RESEND_GAP_AFTER_S": "1",
        "BACKROOM_RESEND_RETRY_S": "1",
    }
    return ingest_env(db_url, nats_server.url, str(tmp_path), **{**settings, **extra})


@asynccontextmanager
async def _one_holds_a_batch_other_stores_the_rest(
    db_url: str,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    sessionmaker: async_sessionmaker[AsyncSession],
    ack_wait_s: float,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """The first worker pulls a batch and sits on it; the second stores the rest (a gap
    until the first batch is stored). Yields the first; both are stopped at the end."""
    with (tmp_path / "ingest.log").open("wb") as log:
        wait = str(ack_wait_s)
        holding_env = _env(
            db_url,
            nats_server,
            tmp_path,
            BACKROOM_FAULT_HOLD_BATCH_S="120",
            BACKROOM_INGEST_ACK_WAIT_S=wait,
        )
        holding = await start_ingest(holding_env, log)
        other: asyncio.subprocess.Process | None = None
        try:

            async def holds_a_batch() -> bool:
                return await ack_pending(nats_server.url) >= BATCH

            await wait_until(holds_a_batch, timeout=30, interval=0.2)
            held = await ack_pending(nats_server.url)
            other_env = _env(db_url, nats_server, tmp_path, BACKROOM_INGEST_ACK_WAIT_S=wait)
            other = await start_ingest(other_env, log)

            async def rest_stored() -> bool:
                # (With a short ack wait the held batch may have come back already.)
                return await _stored(sessionmaker) >= SALES - held

            await wait_until(rest_stored, timeout=30)
            yield holding
        finally:
            await stop_ingest(holding)
            if other is not None:
                await stop_ingest(other)


async def _wait_all_stored(sessionmaker: async_sessionmaker[AsyncSession], timeout: float) -> None:
    async def all_stored() -> bool:
        return await _stored(sessionmaker) == SALES

    await wait_until(all_stored, timeout=timeout)


async def test_sigterm_hands_the_batch_to_another_worker_at_once(
    db_url: str, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with (
        _chain(db_url, nats_server) as (sessionmaker, books),
        _one_holds_a_batch_other_stores_the_rest(
            db_url, nats_server, tmp_path, sessionmaker, ACK_WAIT_S
        ) as holding,
    ):
        # The gap has been there for well over resend_gap_after_s (1 s).
        await asyncio.sleep(3)
        stopped_at = time.monotonic()
        assert await stop_ingest(holding) == 0
        await _wait_all_stored(sessionmaker, timeout=20)
        # Handed back, not redelivered after the ack wait (30 s).
        assert time.monotonic() - stopped_at < ACK_WAIT_S / 2
        await asyncio.sleep(2)
        await _assert_books(sessionmaker, books)


async def test_database_failure_hands_the_batch_back(
    db_url: str, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with _chain(db_url, nats_server) as (sessionmaker, books):
        env = _env(db_url, nats_server, tmp_path, BACKROOM_FAULT_FAIL_BATCHES="1")
        with (tmp_path / "ingest.log").open("wb") as log:
            started = time.monotonic()
            worker = await start_ingest(env, log)
            try:
                await _wait_all_stored(sessionmaker, timeout=25)
                # The failed batch came back in a second or so, not after the ack wait.
                assert time.monotonic() - started < ACK_WAIT_S - 5
                await asyncio.sleep(2)
            finally:
                assert await stop_ingest(worker) == 0
        log_text = (tmp_path / "ingest.log").read_text()
        assert "fault injection: the database is unavailable" in log_text
        await _assert_books(sessionmaker, books)


async def test_sigkill_mid_batch_waits_for_the_redelivery_not_a_resend(
    db_url: str, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """A worker killed holding a batch cannot hand it back: it comes after the ack wait,
    and the gap monitor waits for it (the consumer has it out) instead of asking."""
    async with (
        _chain(db_url, nats_server) as (sessionmaker, books),
        _one_holds_a_batch_other_stores_the_rest(
            db_url, nats_server, tmp_path, sessionmaker, 6.0
        ) as holding,
    ):
        holding.kill()
        await holding.wait()
        await _wait_all_stored(sessionmaker, timeout=30)
        await asyncio.sleep(2)
        await _assert_books(sessionmaker, books)
