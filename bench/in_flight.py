"""Benchmark: central reading a branch's messages not ingested yet (``central.sync.in_flight``).

``python -m bench.in_flight [--messages N] [--others K] [--runs R]``

A nats-server from the wheel on 127.0.0.1, the up stream and the ingest consumer as
central creates them, nothing acknowledged (ingestion stopped for hours). The stream
holds N receipts of branch B1 (about 8 lines each, encoded as the agent's outbox
encodes them) interleaved one for one with N receipts of K other branches. Measures

- ``read_per_s``: the read an agent start waits for (``read_in_flight``: a short-lived
  pull consumer filtered on ``up.B1.>``, decoding every message), median of R runs,
  and ``read_s``, its time for all N (the budget is ``IN_FLIGHT_BUDGET_S``);
- ``lookup_per_s``: the read before it, one next-message-by-subject lookup a message
  (on the first 10,000 of B1's);
- ``raw_per_s``: the limit under both, a plain ordered push consumer of the whole
  stream, counting messages without decoding them.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from itertools import chain, zip_longest
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bench.sync_ingest import make_outboxes, publish_all
from central.embedded_nats import EmbeddedNats
from central.sync.in_flight import read_in_flight
from central.sync.jetstream import connect, ensure_ingest_consumer, ensure_streams
from protocol.subjects import UP_STREAM

__all__ = ["main"]

LOOKUPS = 10_000


async def _lookups(js: JetStreamContext, branch: str) -> float:
    """The former read's rate: one JetStream lookup per message."""
    cursor, count = 1, 0
    started = time.monotonic()
    while count < LOOKUPS:
        try:
            msg = await js.get_msg(UP_STREAM, seq=cursor, subject=f"up.{branch}.>", next=True)
        except NotFoundError:
            break
        count += 1
        cursor = (msg.seq or cursor) + 1
    return count / (time.monotonic() - started)


async def _raw(js: JetStreamContext, total: int) -> float:
    """Every message of the stream through an ordered push consumer, counted only."""
    done = asyncio.get_running_loop().create_future()
    count = 0

    async def delivered(msg: Msg) -> None:
        nonlocal count
        count += 1
        if count == total and not done.done():
            done.set_result(None)

    started = time.monotonic()
    sub = await js.subscribe(
        "up.>",
        stream=UP_STREAM,
        ordered_consumer=True,
        cb=delivered,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        pending_msgs_limit=total + 1,
        pending_bytes_limit=1 << 31,
    )
    await asyncio.wait_for(done, 300)
    elapsed = time.monotonic() - started
    await sub.unsubscribe()
    return total / elapsed


async def run(messages: int, others: int, runs: int, workdir: Path) -> dict[str, Any]:
    nats = EmbeddedNats(workdir / "nats")
    nats.start()
    try:
        nc = await connect(nats.url, name="bench-in-flight")
        js = nc.jetstream()
        try:
            await ensure_streams(js)
            await ensure_ingest_consumer(js)
            mine = make_outboxes(messages, ["B1"])
            theirs = make_outboxes(messages, [f"B{n}" for n in range(2, others + 2)])
            rows = [row for row in chain(*zip_longest(mine, theirs)) if row is not None]
            started = time.monotonic()
            await publish_all(nats.url, rows, window=2000)
            print(f"published {len(rows):,} messages in {time.monotonic() - started:.1f} s")
            times = []
            for n in range(runs):
                started = time.monotonic()
                found = await read_in_flight(js, "B1", max_messages=10 * messages, budget_s=300)
                times.append(time.monotonic() - started)
                if found.unread or found.messages != messages or len(found.sales) != messages:
                    raise SystemExit(f"incomplete read: {found.messages} {found.unread}")
                print(f"read {n + 1}: {messages:,} of B1's in {times[-1]:.2f} s")
            consumers = [c.name for c in await js.consumers_info(UP_STREAM)]
            if consumers != ["central-ingest"]:
                raise SystemExit(f"consumers left behind: {consumers}")
            read_s = statistics.median(times)
            lookup = await _lookups(js, "B1")
            print(f"lookups: {lookup:,.0f}/s")
            raw = await _raw(js, len(rows))
            print(f"raw ordered consumer: {raw:,.0f}/s")
        finally:
            await nc.drain()
    finally:
        nats.stop()
    return {
        "benchmark": "in_flight",
        "messages": messages,
        "stream_messages": len(rows),
        "read_s": round(read_s, 2),
        "read_per_s": round(messages / read_s),
        "lookup_per_s": round(lookup),
        "raw_per_s": round(raw),
        "speedup": round(messages / read_s / lookup, 1),
        "ratio_to_raw": round(messages / read_s / raw, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-in-flight-"))
    try:
        result = asyncio.run(run(args.messages, args.others, args.runs, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
