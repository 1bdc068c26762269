"""A gap under constant traffic (the ingest consumer always has messages out): an
event lost at publish is asked for and the gap closed in seconds, not after the ack
wait; events a worker was SIGKILLed holding are in flight, not lost: no resend is
asked, they come with the redelivery. Real nats-server, ingest processes, totals exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.msg import Msg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.db import create_engine, create_sessionmaker
from central.embedded_nats import EmbeddedNats
from central.models import BranchSyncState, IngestedEvent, Receipt
from central.services.branches import add_branch
from central.sync.jetstream import connect, ensure_ingest_consumer, ensure_streams
from protocol import encode, event_kind, up_subject
from protocol.codec import decode_resend
from protocol.subjects import down_branch_subject
from tests.central.chain_events import BranchBooks, ingest_env
from tests.conftest import wait_until
from tests.faults.ingest_process import ack_pending, start_ingest, stop_ingest

ACK_WAIT_S = 20.0
GAP_AFTER_S = 1.0
# Seconds between two events of the branch: a steady flow, so a worker's batch is
# always filling or being stored (messages outstanding at every look).
EVERY_S = 0.01


@dataclass
class _Branch:
    """A branch's sender on a normal day: one sale after the other, each published
    (JetStream-acked) in sequence order, and what central asks for published again
    under a new message id, as the agent does. ``lose`` is the sequence number whose
    publish is lost (the sender believes it acked)."""

    books: BranchBooks = field(default_factory=lambda: BranchBooks("K1"))
    lose: int | None = None
    lost_at: float | None = None
    resends: list[int] = field(default_factory=list)

    async def run(self, nats_url: str, stop: asyncio.Event) -> None:
        nc = await connect(nats_url, name="test-branch-K1")
        js = nc.jetstream()
        tasks: set[asyncio.Task[None]] = set()

        async def publish(seq: int, msg_id_suffix: str = "") -> None:
            envelope = self.books.events[seq - 1]
            await js.publish(
                up_subject(envelope.branch, event_kind(envelope.body)),
                encode(envelope),
                timeout=10,
                headers={"Nats-Msg-Id": f"{envelope.event_id}{msg_id_suffix}"},
            )

        async def resend(from_seq: int) -> None:
            for seq in range(from_seq, len(self.books.events) + 1):
                await publish(seq, ".1")

        async def on_resend(msg: Msg) -> None:
            request = decode_resend(msg.data)
            self.resends.append(request.from_seq)
            task = asyncio.create_task(resend(request.from_seq))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        sub = await nc.subscribe(down_branch_subject("K1", "command", "resend"), cb=on_resend)
        try:
            while not stop.is_set():
                seq = self.books.sale([("MILK", 1_000, 199 + len(self.books.events))]).seq
                if seq == self.lose:
                    self.lost_at = time.monotonic()
                else:
                    await publish(seq)
                await asyncio.sleep(EVERY_S)
            for task in list(tasks):
                await task
        finally:
            await sub.unsubscribe()
            await nc.drain()


@asynccontextmanager
async def _traffic(nats_url: str, branch: _Branch) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(branch.run(nats_url, stop))
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)


@asynccontextmanager
async def _chain(
    db_url: str, nats_url: str, ack_wait_s: float = ACK_WAIT_S
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Branch K1 registered, the up stream and the ingest consumer made."""
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    try:
        async with sessionmaker() as session, session.begin():
            await add_branch(session, code="K1", name="K1")
        nc = await connect(nats_url, name="test-setup")
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            await ensure_ingest_consumer(js, ack_wait_s=ack_wait_s)
        finally:
            await nc.drain()
        yield sessionmaker
    finally:
        await engine.dispose()


def _env(db_url: str, nats_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    settings = {
        "BACKROOM_INGEST_BATCH": "10",
        "BACKROOM_INGEST_ACK_WAIT_S": str(ACK_WAIT_S),
        "BACKROOM_RESEND_GAP_AFTER_S": str(GAP_AFTER_S),
        "BACKROOM_RESEND_RETRY_S": "60",
    }
    return ingest_env(db_url, nats_url, str(tmp_path), **{**settings, **extra})


async def _state(sessionmaker: async_sessionmaker[AsyncSession]) -> BranchSyncState | None:
    async with sessionmaker() as session:
        return await session.get(BranchSyncState, "K1")


async def _contiguous(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    state = await _state(sessionmaker)
    return state.contiguous_seq if state is not None else 0


async def _assert_books(sessionmaker: async_sessionmaker[AsyncSession], books: BranchBooks) -> None:
    """Every sale once: stored events, receipts and their total as the branch has them."""
    every = len(books.events)

    async def all_there() -> bool:
        return await _contiguous(sessionmaker) == every

    await wait_until(all_there, timeout=30)
    async with sessionmaker() as session:
        events = await session.scalar(select(func.count()).select_from(IngestedEvent))
        receipts = await session.scalar(select(func.count(Receipt.id)))
        total = await session.scalar(select(func.sum(Receipt.total)))
    assert (events, receipts, total) == (every, every, books.sales_total)


async def test_an_event_lost_at_publish_is_asked_for_in_seconds_under_traffic(
    db_url: str, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    branch = _Branch(lose=150)
    with (tmp_path / "ingest.log").open("wb") as log:
        async with _chain(db_url, nats_server.url) as sessionmaker:
            worker = await start_ingest(_env(db_url, nats_server.url, tmp_path), log)
            try:
                async with _traffic(nats_server.url, branch):

                    async def closed() -> bool:
                        return await _contiguous(sessionmaker) > 150

                    await wait_until(closed, timeout=60, interval=0.05)
                    assert branch.lost_at is not None
                    took = time.monotonic() - branch.lost_at
                    # Events kept flowing all along (the consumer had messages out)...
                    assert len(branch.books.events) > 150 + took / EVERY_S / 4
                    await asyncio.sleep(1)
                # ...and the gap closed in seconds, not after the ack wait (20 s) plus
                # resend_gap_after_s (1 s), as when outstanding messages made it wait.
                assert took < 10, f"the gap closed after {took:.1f} s"
                assert branch.resends == [150]
                state = await _state(sessionmaker)
                assert state is not None
                assert state.resend_requested_from == 150
                await _assert_books(sessionmaker, branch.books)
            finally:
                assert await stop_ingest(worker) == 0


async def test_a_batch_out_with_a_killed_worker_under_traffic_is_not_asked_for(
    db_url: str, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """The first worker pulls a batch and is SIGKILLed with it; the second stores what
    follows while events keep flowing. The held events are in the stream, unacked: the
    consumer's ack floor stays below them, so the gap they leave is not asked for; they
    are stored when redelivered after the ack wait."""
    # Longer than what runs from the pull to the kill (a second worker's start, the gap
    # growing, 3 s): with 8 s a loaded machine (beside other test workers) killed the
    # holder after its batch had already been redelivered.
    ack_wait_s = 20.0
    branch = _Branch()
    env = _env(db_url, nats_server.url, tmp_path, BACKROOM_INGEST_ACK_WAIT_S=str(ack_wait_s))
    with (tmp_path / "ingest.log").open("wb") as log:
        async with _chain(db_url, nats_server.url, ack_wait_s) as sessionmaker:
            holding = await start_ingest({**env, "BACKROOM_FAULT_HOLD_BATCH_S": "120"}, log)
            other: asyncio.subprocess.Process | None = None
            try:
                async with _traffic(nats_server.url, branch):

                    async def holds_a_batch() -> bool:
                        return await ack_pending(nats_server.url) >= 10

                    await wait_until(holds_a_batch, timeout=30, interval=0.1)
                    pulled_at = time.monotonic()
                    other = await start_ingest(env, log)

                    async def gap_behind_the_held_batch() -> bool:
                        state = await _state(sessionmaker)
                        return state is not None and state.max_seq > state.contiguous_seq + 50

                    await wait_until(gap_behind_the_held_batch, timeout=30)
                    # The gap grows older than resend_gap_after_s (1 s), events flowing.
                    await asyncio.sleep(3)
                    holding.kill()
                    await holding.wait()
                    killed_at = time.monotonic()
                    assert killed_at - pulled_at < ack_wait_s - 2, "killed after the ack wait"
                    held_from = await _contiguous(sessionmaker) + 1

                    async def redelivered() -> bool:
                        return await _contiguous(sessionmaker) > held_from

                    await wait_until(redelivered, timeout=ack_wait_s + 20, interval=0.1)
                    # Stored from the redelivery (the ack wait after it was pulled, so
                    # some seconds after the kill), while events kept flowing.
                    assert time.monotonic() - killed_at > 1
                    await asyncio.sleep(2)
                # The traffic stopped: the rest reaches the other worker.
                await _assert_books(sessionmaker, branch.books)
            finally:
                await stop_ingest(holding)
                if other is not None:
                    assert await stop_ingest(other) == 0
            # In flight, not lost: the branch was never asked to resend.
            assert branch.resends == []
            state = await _state(sessionmaker)
            assert state is not None
            assert state.resend_requested_from is None
