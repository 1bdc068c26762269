"""Central's bulk read of a branch's messages not ingested yet (``central.sync.in_flight``)
against a real nats-server: a backlog past the former 10,000 bound read whole, other
branches' messages skipped, the ingest floor moving meanwhile, and no consumer left on
the up stream whatever way the read ends."""

from __future__ import annotations

import asyncio
import time
from itertools import chain, zip_longest

import pytest
from nats.js import JetStreamContext

import central.sync.in_flight as in_flight
from central.embedded_nats import EmbeddedNats
from central.sync.in_flight import read_in_flight
from central.sync.jetstream import connect, ensure_ingest_consumer, ensure_streams
from protocol.codec import encode
from protocol.subjects import INGEST_DURABLE, UP_STREAM
from tests.central.chain_events import BranchBooks, outbox_items

BACKLOG = 12_000  # above the former bound of 10,000


def _books(branch: str, sales: int) -> BranchBooks:
    books = BranchBooks(branch)
    for n in range(sales):
        books.sale([("MILK", 1_000, 100 + n % 50)])
    return books


async def _publish(js: JetStreamContext, items: list[tuple[str, bytes, str]]) -> None:
    for start in range(0, len(items), 1_000):
        await asyncio.gather(
            *(
                js.publish(subject, payload, timeout=30, headers={"Nats-Msg-Id": msg_id})
                for subject, payload, msg_id in items[start : start + 1_000]
            )
        )


async def _consumers(js: JetStreamContext) -> list[str]:
    return sorted(c.name or "" for c in await js.consumers_info(UP_STREAM))


@pytest.fixture
async def backlog(nats_server: EmbeddedNats):  # type: ignore[no-untyped-def]
    """B1's BACKLOG sales interleaved one for one with B2's, none acknowledged."""
    b1, b2 = _books("B1", BACKLOG), _books("B2", BACKLOG)
    nc = await connect(nats_server.url, name="test")
    js = nc.jetstream()
    await ensure_streams(js)
    await ensure_ingest_consumer(js)
    mixed = chain(*zip_longest(outbox_items(b1), outbox_items(b2)))
    await _publish(js, [item for item in mixed if item is not None])
    try:
        yield js, b1, b2
    finally:
        await nc.drain()


async def test_a_backlog_past_the_former_bound_is_read_whole_and_other_branches_skipped(
    backlog: tuple[JetStreamContext, BranchBooks, BranchBooks],
) -> None:
    js, b1, b2 = backlog
    # A payload of B2's on B1's subject names no number of B1's: read, not taken.
    stray = b2.sale([("MILK", 1_000, 999)])
    await js.publish("up.B1.receipt_recorded", encode(stray))

    flight = await read_in_flight(js, "B1", after=100)
    assert flight.unread == ""
    assert flight.messages == BACKLOG + 1
    assert flight.high == BACKLOG
    assert flight.seqs == set(range(101, BACKLOG + 1))
    assert [s.seq for s in flight.sales] == list(range(101, BACKLOG + 1))
    assert (
        sum(s.total for s in flight.sales)
        == sum(
            e.body.total  # type: ignore[union-attr]
            for e in b1.events[100:]
        )
    )
    other = await read_in_flight(js, "B2")
    assert (other.unread, other.messages, other.high) == ("", BACKLOG, BACKLOG)
    assert await _consumers(js) == [INGEST_DURABLE]


async def test_the_read_stops_at_the_end_of_the_stream_as_it_began(
    backlog: tuple[JetStreamContext, BranchBooks, BranchBooks],
) -> None:
    js, _, _ = backlog
    more = _books("B1", BACKLOG + 2_000).events[BACKLOG:]  # numbered on from B1's
    later = outbox_items(BranchBooks("B1", events=more))

    async def send_on() -> None:
        await asyncio.sleep(0.05)
        await _publish(js, later)

    flight, _ = await asyncio.gather(read_in_flight(js, "B1"), send_on())
    assert flight.unread == ""
    # Everything there when it began, and no more than was sent meanwhile.
    assert set(range(1, BACKLOG + 1)) <= flight.seqs <= set(range(1, BACKLOG + 2_001))
    assert await _consumers(js) == [INGEST_DURABLE]


async def test_the_ingest_floor_moving_during_the_read_loses_nothing(
    backlog: tuple[JetStreamContext, BranchBooks, BranchBooks],
) -> None:
    js, _, _ = backlog
    pull = await js.pull_subscribe("up.>", durable=INGEST_DURABLE, stream=UP_STREAM)
    acked: set[int] = set()

    async def ingest() -> None:
        # Ingestion acknowledges (after its commit) while central reads.
        for _ in range(10):
            for msg in await pull.fetch(500, timeout=5):
                await msg.ack()
                if msg.subject.startswith("up.B1."):
                    acked.add(msg.metadata.sequence.stream)
            await asyncio.sleep(0)

    flight, _ = await asyncio.gather(read_in_flight(js, "B1"), ingest())
    await pull.unsubscribe()
    assert flight.unread == ""
    assert flight.high == BACKLOG
    # Every message of B1's not acknowledged by the end was read: stored or read.
    read_stream_seqs = {2 * seq - 1 for seq in flight.seqs}  # B1's are the odd ones
    assert read_stream_seqs | acked >= set(range(1, 2 * BACKLOG, 2))
    assert acked  # the floor did move
    assert await _consumers(js) == [INGEST_DURABLE]


async def test_a_read_cut_short_says_so_and_leaves_no_consumer(
    backlog: tuple[JetStreamContext, BranchBooks, BranchBooks],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    js, _, _ = backlog
    # More than it reads at once: said, so the branch asks again.
    cut = await read_in_flight(js, "B1", max_messages=7_000)
    assert "more of branch B1's messages than it reads at once (7000 read" in cut.unread
    assert await _consumers(js) == [INGEST_DURABLE]
    take = in_flight._take

    # Out of time in the middle (each message made slow: 12,000 take 6 s).
    def slow(*args: object) -> None:
        time.sleep(0.0005)
        take(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(in_flight, "_take", slow)
    late = await read_in_flight(js, "B1", budget_s=1.0)
    assert "more of branch B1's messages than it reads at once" in late.unread
    assert 0 < late.messages < BACKLOG
    assert await _consumers(js) == [INGEST_DURABLE]

    # An error in the middle of the read.
    taken = 0

    def failing(*args: object) -> None:
        nonlocal taken
        taken += 1
        if taken == 3_000:
            raise RuntimeError("boom")
        take(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(in_flight, "_take", failing)
    broken = await read_in_flight(js, "B1")
    assert "could not read its ingest queue" in broken.unread
    assert "RuntimeError: boom" in broken.unread
    assert await _consumers(js) == [INGEST_DURABLE]
