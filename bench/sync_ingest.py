"""Benchmark: branch outboxes drained through JetStream into central on PostgreSQL.

``python -m bench.sync_ingest [--pg-url URL] [--receipts N] [--branches B] [--workers W]``

What it does, in one run:

1. A PostgreSQL database (``--pg-url`` of a server, or a throwaway cluster it starts
   itself with initdb/pg_ctl on 127.0.0.1 and drops at the end), migrated; an
   embedded nats-server; ``B`` registered branches.
2. The branches' outboxes: N receipts of about 8 lines each, encoded exactly as the
   agent's outbox stores them (gapless per-branch sequence, UUIDv7 ids).
3. **Central**: W ingest worker processes (``python -m central ingest``) drain the up
   stream while the outboxes are published (``Nats-Msg-Id`` = event id, windows of
   concurrent publishes); timed from the first publish to the last receipt stored.
4. **Raw limits**, same machine, same run: (a) JetStream publish + consume (fetch,
   ack, decode) of the same messages by W consumer processes, no database; (b) a bulk
   insert (COPY, one transaction per batch, 2,000 receipts by default) of the same rows central writes
   (event log, receipts, lines, payments, stock ledger), no NATS. The raw limit is the
   slower of the two; the ratio is central's rate over it.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from bench.pg import throwaway_postgres
from central.db import create_engine, create_sessionmaker, upgrade
from central.embedded_nats import EmbeddedNats
from protocol.codec import decode_envelope, encode
from protocol.events import EventEnvelope, Payment, ReceiptLine, ReceiptRecorded
from protocol.ids import new_event_id
from protocol.subjects import up_subject

__all__ = ["main"]

LINES_PER_RECEIPT = 8
SKUS_PER_BRANCH = 2000
RAW_STREAM = "BENCH_RAW"
RAW_DURABLE = "bench-raw"


# --- PostgreSQL ------------------------------------------------------------------


# Server options of this benchmark's throwaway cluster (durable like production).
PG_OPTIONS = "-c shared_buffers=256MB -c max_wal_size=2GB -c synchronous_commit=on"


async def _admin(url: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    u = make_url(url)
    conn = await asyncpg.connect(
        user=u.username, password=u.password, host=u.host, port=u.port, database=u.database
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def scratch_database(server_url: str, label: str) -> AsyncIterator[str]:
    name = f"backroom_bench_{label}_{uuid.uuid4().hex[:8]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        await upgrade(url)
        yield url
    finally:
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the branches' outboxes --------------------------------------------------------


def make_outboxes(receipts: int, branches: list[str]) -> list[tuple[str, str, bytes]]:
    """(subject, event id, payload) in the order the branches' senders would publish."""
    rng = random.Random(7)
    start = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    seqs = dict.fromkeys(branches, 0)
    rows: list[tuple[str, str, bytes]] = []
    for n in range(receipts):
        branch = branches[n % len(branches)]
        seqs[branch] += 1
        seq = seqs[branch]
        lines = []
        for line_no in range(1, LINES_PER_RECEIPT + 1):
            price = rng.randint(49, 2999)
            quantity = rng.choice((1000, 2000, 3000, 754, 1250))
            total = price * quantity // 1000
            lines.append(
                ReceiptLine(
                    line_no=line_no,
                    sku=f"SKU{rng.randrange(SKUS_PER_BRANCH):05d}",
                    name="Article",
                    quantity_milli=quantity,
                    unit_price=price,
                    vat_rate_bp=1900,
                    line_total=total,
                )
            )
        total = sum(line.line_total for line in lines)
        envelope = EventEnvelope(
            event_id=new_event_id(),
            branch=branch,
            seq=seq,
            occurred_at=start + timedelta(seconds=n),
            utc_offset_min=60,
            body=ReceiptRecorded(
                till="T1",
                shift_id=f"{branch}-S1",
                receipt_number=seq,
                sale_id=f"{branch}-{seq}",
                cashier="anna",
                lines=tuple(lines),
                payments=(Payment(type="cash", amount=total),),
                total=total,
                fiscal_number=f"F{seq:08d}",
            ),
        )
        rows.append(
            (up_subject(branch, "receipt_recorded"), str(envelope.event_id), encode(envelope))
        )
    return rows


async def publish_all(
    nats_url: str, rows: list[tuple[str, str, bytes]], window: int = 1000
) -> None:
    from central.sync.jetstream import connect

    nc = await connect(nats_url, name="bench-publisher")
    js = nc.jetstream()
    try:
        for start in range(0, len(rows), window):
            await asyncio.gather(
                *(
                    js.publish(subject, payload, timeout=30, headers={"Nats-Msg-Id": msg_id})
                    for subject, msg_id, payload in rows[start : start + window]
                )
            )
    finally:
        await nc.drain()


# --- central's run -----------------------------------------------------------------


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        if p.poll() is None:
            p.terminate()
    for p in processes:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def run_central(
    db_url: str,
    nats: EmbeddedNats,
    rows: list[tuple[str, str, bytes]],
    branches: list[str],
    workers: int,
    batch: int,
    workdir: Path,
) -> tuple[float, float]:
    """Seconds until every receipt is stored, and until the report summaries hold them."""
    from central.models import BranchSyncState, Receipt, ReceiptLineRow, SalesProductDaily
    from central.models.reports import SummaryBacklog
    from central.services.branches import add_branch
    from central.sync.jetstream import connect, ensure_ingest_consumer, ensure_streams

    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        for code in branches:
            await add_branch(session, code=code, name=code)
    nc = await connect(nats.url, name="bench-setup")
    js = nc.jetstream()
    await ensure_streams(js)
    await ensure_ingest_consumer(js)
    await nc.drain()
    env = {
        **os.environ,
        "BACKROOM_DATABASE_URL": db_url,
        "BACKROOM_NATS_URL": nats.url,
        "BACKROOM_INGEST_BATCH": str(batch),
        "BACKROOM_DATA_DIR": str(workdir / "central"),
    }
    processes = [
        _spawn(["-m", "central", "ingest"], env, workdir / f"ingest-{i}.log")
        for i in range(workers)
    ]
    try:
        await asyncio.sleep(2.0)  # workers connected and bound before the clock starts
        started = time.perf_counter()
        publisher = asyncio.create_task(publish_all(nats.url, rows))
        # Progress from the branches' sync state (20 rows: every branch's receipts are
        # seq 1..n, stored when contiguous), not count(*) of receipts every 50 ms, which
        # took a share of the database's CPU from the run it measures.
        while True:
            async with sessionmaker() as session:
                stored = await session.scalar(select(func.sum(BranchSyncState.contiguous_seq)))
            if (stored or 0) >= len(rows):
                break
            if any(p.poll() is not None for p in processes):
                raise SystemExit(f"an ingest worker exited; see {workdir}")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        print(f"stored in {elapsed:.3f} s; waiting for the summaries", file=sys.stderr)
        # Then until the per-product report summaries hold every receipt too: the
        # workers' appliers empty the summary backlog (at most a second behind).
        while True:
            async with sessionmaker() as session:
                waiting = await session.scalar(
                    select(SummaryBacklog.id).order_by(SummaryBacklog.id).limit(1)
                )
            if waiting is None:
                break
            await asyncio.sleep(0.05)
        summarized = time.perf_counter() - started
        await publisher
        async with sessionmaker() as session:
            receipts = await session.scalar(select(func.count(Receipt.id)))
            line_qty = await session.scalar(select(func.sum(ReceiptLineRow.quantity_milli)))
            summed_qty = await session.scalar(select(func.sum(SalesProductDaily.qty_milli)))
        if receipts != len(rows):
            raise SystemExit(f"{receipts} receipts stored of {len(rows)}")
        if summed_qty != line_qty:
            raise SystemExit(f"product summaries hold {summed_qty} of {line_qty} sold (milli)")
        return elapsed, summarized
    finally:
        _stop(processes)
        await engine.dispose()


# --- raw limits ----------------------------------------------------------------------


async def raw_consume(nats_url: str, count: int, batch: int) -> None:
    """Child process: fetch, ack and decode ``count`` messages, no database."""
    from nats.errors import TimeoutError as NatsTimeoutError

    from central.sync.jetstream import connect

    nc = await connect(nats_url, name="bench-raw-consumer")
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(RAW_DURABLE, stream=RAW_STREAM)
    done = 0
    try:
        while done < count:
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except NatsTimeoutError:
                continue
            for m in msgs:
                decode_envelope(m.data)
                await m.ack()
            done += len(msgs)
    finally:
        await nc.drain()


async def raw_nats(
    nats: EmbeddedNats, rows: list[tuple[str, str, bytes]], workers: int, batch: int, workdir: Path
) -> float:
    from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

    from central.sync.jetstream import connect

    nc = await connect(nats.url, name="bench-raw-setup")
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=RAW_STREAM,
            subjects=["raw.>"],
            storage=StorageType.FILE,
            duplicate_window=86400.0,
        )
    )
    await js.add_consumer(
        RAW_STREAM,
        ConsumerConfig(
            durable_name=RAW_DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_ack_pending=20000,
        ),
    )
    await nc.drain()
    raw_rows = [("raw." + subject, msg_id, payload) for subject, msg_id, payload in rows]
    shares = [len(rows) // workers + (1 if i < len(rows) % workers else 0) for i in range(workers)]
    # Each consumer stops after its share; the shared consumer hands out in fetch-sized
    # pieces, so shares can differ slightly: the run ends when all messages are acked.
    processes = [
        _spawn(
            [
                "-m",
                "bench.sync_ingest",
                "--raw-consumer",
                nats.url,
                "--count",
                str(share),
                "--batch",
                str(batch),
            ],
            dict(os.environ),
            workdir / f"raw-{i}.log",
        )
        for i, share in enumerate(shares)
    ]
    try:
        await asyncio.sleep(1.0)
        started = time.perf_counter()
        await publish_all(nats.url, raw_rows)
        nc = await connect(nats.url, name="bench-raw-watch")
        js = nc.jetstream()
        try:
            while True:
                info = await js.consumer_info(RAW_STREAM, RAW_DURABLE)
                if info.ack_floor.stream_seq >= len(rows) and info.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.02)
        finally:
            await nc.drain()
        return time.perf_counter() - started
    finally:
        _stop(processes)


def receipt_rows(rows: list[tuple[str, str, bytes]]) -> list[EventEnvelope]:
    return [decode_envelope(payload) for _, _, payload in rows]


async def raw_database(db_url: str, rows: list[tuple[str, str, bytes]], batch: int) -> float:
    """COPY the rows central writes, one transaction per batch, no NATS and no logic."""
    from central.ingest.bulk import allocate_ids, insert_rows, table_of
    from central.models import (
        IngestedEvent,
        Receipt,
        ReceiptLineRow,
        ReceiptPaymentRow,
        StockMovement,
    )

    envelopes = receipt_rows(rows)
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    now = datetime.now(UTC)
    try:
        started = time.perf_counter()
        for start in range(0, len(envelopes), batch):
            chunk = envelopes[start : start + batch]
            async with sessionmaker() as session, session.begin():
                await session.execute(text("SELECT 1"))
                ids = await allocate_ids(session, table_of(Receipt), len(chunk))
                events: list[dict[str, Any]] = []
                receipts: list[dict[str, Any]] = []
                lines: list[dict[str, Any]] = []
                payments: list[dict[str, Any]] = []
                ledger: list[dict[str, Any]] = []
                for rid, env in zip(ids, chunk, strict=True):
                    body = env.body
                    assert isinstance(body, ReceiptRecorded)
                    day = (env.occurred_at + timedelta(minutes=env.utc_offset_min)).date()
                    events.append(
                        {
                            "event_id": env.event_id,
                            "branch": env.branch,
                            "seq": env.seq,
                            "kind": "receipt_recorded",
                            "occurred_at": env.occurred_at,
                            "utc_offset_min": env.utc_offset_min,
                            "local_date": day,
                            "received_at": now,
                            "schema_version": 1,
                        }
                    )
                    receipts.append(
                        {
                            "id": rid,
                            "event_id": env.event_id,
                            "branch": env.branch,
                            "till": body.till,
                            "shift_id": body.shift_id,
                            "receipt_number": body.receipt_number,
                            "sale_id": body.sale_id,
                            "cashier": body.cashier,
                            "occurred_at": env.occurred_at,
                            "utc_offset_min": env.utc_offset_min,
                            "local_date": day,
                            "total": body.total,
                            "change": body.change,
                            "currency": body.currency,
                            "fiscal_number": body.fiscal_number,
                            "late": False,
                            "negative_stock": False,
                        }
                    )
                    for line in body.lines:
                        lines.append(
                            {
                                "receipt_id": rid,
                                "line_no": line.line_no,
                                "sku": line.sku,
                                "name": line.name,
                                "barcode": line.barcode,
                                "quantity_milli": line.quantity_milli,
                                "unit_price": line.unit_price,
                                "discount": line.discount,
                                "vat_rate_bp": line.vat_rate_bp,
                                "line_total": line.line_total,
                                "local_date": day,
                            }
                        )
                        ledger.append(
                            {
                                "branch": env.branch,
                                "sku": line.sku,
                                "doc_type": "sale",
                                "doc_ref": body.sale_id,
                                "event_id": env.event_id,
                                "line_no": line.line_no,
                                "quantity_milli": -line.quantity_milli,
                                "unit_cost": 0,
                                "value": 0,
                                "quantity_after": 0,
                                "value_after": 0,
                                "avg_cost_after": 0,
                                "occurred_at": env.occurred_at,
                                "local_date": day,
                            }
                        )
                    payments.extend(
                        {"receipt_id": rid, "type": p.type, "amount": p.amount}
                        for p in body.payments
                    )
                await insert_rows(session, table_of(IngestedEvent), events)
                await insert_rows(session, table_of(Receipt), receipts)
                await insert_rows(session, table_of(ReceiptLineRow), lines)
                await insert_rows(session, table_of(ReceiptPaymentRow), payments)
                await insert_rows(session, table_of(StockMovement), ledger)
        return time.perf_counter() - started
    finally:
        await engine.dispose()


# --- main ------------------------------------------------------------------------------


async def run(args: argparse.Namespace, server_url: str) -> dict[str, Any]:
    branches = [f"B{n:04d}" for n in range(1, args.branches + 1)]
    rows = make_outboxes(args.receipts, branches)
    workdir = Path(tempfile.mkdtemp(prefix="backroom-bench-ingest."))
    try:
        nats = EmbeddedNats(workdir / "nats")
        await asyncio.to_thread(nats.start)
        try:
            async with scratch_database(server_url, "central") as db_url:
                central_s, summarized_s = await run_central(
                    db_url, nats, rows, branches, args.workers, args.batch, workdir
                )
            nats_s = await raw_nats(nats, rows, args.workers, args.batch, workdir)
        finally:
            await asyncio.to_thread(nats.stop)
        async with scratch_database(server_url, "raw") as raw_url:
            db_s = await raw_database(raw_url, rows, args.batch)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    n = args.receipts
    lines = n * LINES_PER_RECEIPT
    nats_rate = n / nats_s
    db_rate = n / db_s
    rate = n / central_s
    raw_limit = min(nats_rate, db_rate)
    return {
        "benchmark": "sync_ingest",
        "database": "postgresql",
        "receipts": n,
        "lines": lines,
        "branches": args.branches,
        "workers": args.workers,
        "batch": args.batch,
        "seconds": round(central_s, 3),
        "receipts_per_s": round(rate, 1),
        "lines_per_s": round(lines / central_s, 1),
        "summarized_seconds": round(summarized_s, 3),
        "summarized_receipts_per_s": round(n / summarized_s, 1),
        "raw_nats_receipts_per_s": round(nats_rate, 1),
        "raw_db_receipts_per_s": round(db_rate, 1),
        "raw_limit_receipts_per_s": round(raw_limit, 1),
        "ratio": round(rate / raw_limit, 3),
        "summarized_ratio": round(n / summarized_s / raw_limit, 3),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sync_ingest", description=__doc__)
    parser.add_argument(
        "--pg-url", default="", help="PostgreSQL server (admin URL); default: a throwaway cluster"
    )
    parser.add_argument("--receipts", type=int, default=50_000)
    parser.add_argument("--branches", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--raw-consumer", default="", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_consumer:
        asyncio.run(raw_consume(args.raw_consumer, args.count, args.batch))
        return
    if args.pg_url:
        result = asyncio.run(run(args, args.pg_url))
    else:
        with throwaway_postgres("pg", PG_OPTIONS) as server_url:
            result = asyncio.run(run(args, server_url))
    print(
        f"central:   {result['receipts_per_s']:>10,.0f} receipts/s  "
        f"{result['lines_per_s']:>10,.0f} lines/s  "
        f"({result['receipts']} receipts, {result['workers']} workers, {result['seconds']} s)"
    )
    print(
        f"summaries: {result['summarized_receipts_per_s']:>10,.0f} receipts/s  "
        f"(every per-product report row applied after {result['summarized_seconds']} s)"
    )
    print(
        f"raw NATS:  {result['raw_nats_receipts_per_s']:>10,.0f} receipts/s  (publish + consume, no database)"
    )
    print(
        f"raw DB:    {result['raw_db_receipts_per_s']:>10,.0f} receipts/s  (COPY of the same rows, no NATS)"
    )
    print(
        f"ratio:     {result['ratio']:.2f} of the raw limit ({result['raw_limit_receipts_per_s']:,.0f} receipts/s); "
        f"{result['summarized_ratio']:.2f} with the summaries applied"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        main()
