"""The branch agent with a large catalog: first sync, barcode lookup, sale commit, memory.

    python -m bench.agent_catalog [--products 200000] [--lookups 20000] [--sales 2000]

1. A real nats-server; the down stream and the branch's durable consumer as central
   creates them; the catalog published as central publishes it (product and price
   buckets per ``protocol.masterdata``, then the version mark).
2. The agent as a real process (``python -m branch_agent run``) on an empty database:
   first full catalog sync = process start until its status reports the applied
   version (start-up and migrations included; the time from "healthy" is printed too).
   Then lookups and sales through its HTTP till API; its peak resident memory (VmHWM)
   covers the sync and that load.
3. In process, on the synced database, with the agent's own engines: the barcode
   lookup (``resolve_code``, one session per lookup as the API does; its reads go to
   the engine's plain sqlite3 read connection) and the sale commit (``SaleService`` on
   the inline sale engine, a till without fiscal printer: printer excluded), each
   timed call by call.

Raw limits measured in the same run sit beside each figure: one indexed SQLite row
read, one synchronous=FULL SQLite commit, fetching every catalog message from NATS
without applying it, and the resident memory of a bare Python with the agent imported.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ean13(n: int) -> str:
    from devices.scanner import ean_check_digit

    body = f"400{n:09d}"
    return body + str(ean_check_digit(body))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_agent(config: Path, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "branch_agent", "--config", str(config), "run"],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def publish_catalog(js: Any, products: int) -> tuple[int, int]:
    """Publish ``products`` products and prices in buckets; returns (messages, bytes)."""
    from protocol.masterdata import (
        BUCKETS,
        PriceBucket,
        PriceEntry,
        ProductBucket,
        ProductRecord,
        VersionMark,
        bucket_key,
        bucket_of,
        encode_masterdata,
    )
    from protocol.subjects import down_subject

    since = datetime.now(UTC) - timedelta(days=1)
    by_bucket: dict[int, list[tuple[ProductRecord, PriceEntry]]] = {b: [] for b in range(BUCKETS)}
    for n in range(products):
        sku = f"P{n:06d}"
        weighed = n % 20 == 0
        record = ProductRecord(
            sku=sku,
            name=f"Product {n} {'loose' if weighed else 'pack'}",
            unit="kg" if weighed else "pcs",
            weighed=weighed,
            scale_plu=(n // 20) % 100000 if weighed else None,
            barcodes=(ean13(n),),
            category=f"C{n % 300:03d}",
            category_path=(f"D{n % 12:02d}", f"C{n % 300:03d}"),
            vat_rate_bp=2000 if n % 3 else 1000,
            vat_group="A" if n % 3 else "B",
            version=1,
        )
        price = PriceEntry(sku=sku, price=50 + n % 5000, effective_at=since, version=1)
        by_bucket[bucket_of(sku)].append((record, price))
    messages = 0
    size = 0
    for bucket, items in by_bucket.items():
        for kind, message in (
            (
                "product",
                ProductBucket(
                    scope="all", bucket=bucket, version=1, products=tuple(r for r, _ in items)
                ),
            ),
            (
                "price",
                PriceBucket(
                    scope="all", bucket=bucket, version=1, entries=tuple(p for _, p in items)
                ),
            ),
        ):
            data = encode_masterdata(message)
            await js.publish(down_subject("all", None, kind, bucket_key(bucket)), data)
            messages += 1
            size += len(data)
    mark = encode_masterdata(VersionMark(version=1, published_at=datetime.now(UTC)))
    await js.publish(down_subject("all", None, "version", "current"), mark)
    return messages + 1, size + len(mark)


async def raw_fetch_all(js: Any, count: int) -> float:
    """Fetching every catalog message once, no applying: the transport's floor."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from protocol.subjects import DOWN_STREAM

    await js.add_consumer(
        DOWN_STREAM,
        ConsumerConfig(
            durable_name="bench-raw",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject="down.>",
        ),
    )
    sub = await js.pull_subscribe_bind("bench-raw", stream=DOWN_STREAM)
    started = time.perf_counter()
    got = 0
    while got < count:
        for msg in await sub.fetch(256, timeout=5):
            await msg.ack()
            got += 1
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    await js.delete_consumer(DOWN_STREAM, "bench-raw")
    return elapsed


async def timed(calls: int, fn: Callable[[int], Awaitable[Any]]) -> list[float]:
    times = []
    for i in range(calls):
        started = time.perf_counter()
        await fn(i)
        times.append((time.perf_counter() - started) * 1000)
    return times


def raw_sqlite_ms(db_path: Path, rounds: int) -> tuple[float, float]:
    """p99 of one indexed row read and of one synchronous=FULL commit, same disk."""
    con = sqlite3.connect(db_path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE IF NOT EXISTS bench_raw (id INTEGER PRIMARY KEY, v TEXT)")
    codes = [r[0] for r in con.execute("SELECT barcode FROM md_barcodes LIMIT 5000")]
    reads, writes = [], []
    for i in range(rounds):
        code = codes[i % len(codes)]
        started = time.perf_counter()
        con.execute("SELECT sku FROM md_barcodes WHERE barcode = ?", (code,)).fetchone()
        reads.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        with con:
            con.execute("INSERT INTO bench_raw (v) VALUES (?)", ("x" * 200,))
        writes.append((time.perf_counter() - started) * 1000)
    con.execute("DROP TABLE bench_raw")
    con.close()
    return pct(reads, 0.99), pct(writes, 0.99)


def bare_rss_mb() -> float:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec.
            "import branch_agent.agent, pathlib;"
            "print(next(l.split()[1] for l in pathlib.Path('/proc/self/status').read_text()"
            ".splitlines() if l.startswith('VmHWM:')))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip()) / 1024


async def run(products: int, lookups: int, sales: int) -> dict[str, Any]:
    from branch_agent.db import create_engine, create_sessionmaker
    from branch_agent.lookup import resolve_code, weight_layout
    from branch_agent.sales import SaleService
    from branch_agent.schemas import PaymentIn, SaleIn, SaleLineIn
    from branch_agent.settings import load_settings
    from central.embedded_nats import EmbeddedNats
    from central.sync.jetstream import connect, ensure_branch_consumer, ensure_streams

    rng = random.Random(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    nats_server = EmbeddedNats(tmp / "nats")
    nats_server.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        nc = await connect(nats_server.url, name="bench")
        js = nc.jetstream()
        await ensure_streams(js)
        await ensure_branch_consumer(js, "B1")
        started = time.perf_counter()
        messages, size = await publish_catalog(js, products)
        publish_s = time.perf_counter() - started
        raw_fetch_s = await raw_fetch_all(js, messages)
        await nc.close()

        port = free_port()
        config = tmp / "agent.toml"
        config.write_text(
            f'[agent]\nbranch = "B1"\ndata_dir = "{tmp / "agent"}"\n'
            f'nats_url = "{nats_server.url}"\nhttp_port = {port}\n'
            '[[agent.tills]]\nid = "T2"\ntoken = "t2"\n'
        )
        url = f"http://127.0.0.1:{port}"
        log = (tmp / "agent.log").open("wb")
        started = time.perf_counter()
        proc = start_agent(config, log)
        healthy_at = None
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                try:
                    status = (await client.get(f"{url}/health/status")).json()
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
                    continue
                healthy_at = healthy_at or time.perf_counter()
                if status["applied_version"] >= 1:
                    break
                if time.perf_counter() - started > 600:
                    raise RuntimeError("the agent did not apply the catalog within 10 minutes")
                await asyncio.sleep(0.05)
            first_sync_s = time.perf_counter() - started
            from_healthy_s = time.perf_counter() - healthy_at
            headers = {"Authorization": "Bearer t2"}
            codes = [ean13(rng.randrange(products)) for _ in range(lookups)]

            async def http_lookup(i: int) -> None:
                r = await client.get(
                    f"{url}/api/v1/products/by-barcode/{codes[i]}", headers=headers
                )
                assert r.status_code == 200, r.text

            http_lookup_ms = await timed(min(lookups, 5000), http_lookup)
            # Sales go into the till's open shift (this one stays open for the commits
            # measured below, on the same database).
            opened = await client.post(f"{url}/api/v1/shifts", json={}, headers=headers)
            assert opened.status_code in (200, 201), opened.text

            async def http_sale(i: int) -> None:
                body = {
                    "sale_id": f"http-{i}",
                    # A weighed item needs its quantity (1 kg here, as 1 piece of the rest).
                    "lines": [
                        {"barcode": codes[(i * 3 + k) % len(codes)], "quantity": "1"}
                        for k in range(3)
                    ],
                    "payments": [{"type": "cash", "amount": 100000}],
                }
                r = await client.post(f"{url}/api/v1/sales", json=body, headers=headers)
                assert r.status_code == 201, r.text

            http_sale_ms = await timed(min(sales, 1000), http_sale)
        peak_rss_mb = vm_hwm_mb(proc.pid)
        proc.terminate()
        proc.wait(30)
        proc = None
        log.close()

        settings = load_settings(config)
        db_path = settings.database_path
        engine = create_engine(db_path)
        sessionmaker = create_sessionmaker(engine)
        layout = weight_layout(settings.weight_barcode_layout)
        try:

            async def lookup(i: int) -> None:
                async with sessionmaker() as session:
                    found = await resolve_code(
                        session, codes[i], layout=layout, at=datetime.now(UTC)
                    )
                assert found is not None

            await timed(200, lookup)  # warm the page cache like a store's first minutes
            lookup_ms = await timed(lookups, lookup)
            # The agent's sale engine (SQLite calls in the loop's thread, see db.py).
            sale_engine = create_engine(db_path, inline=True)
            service = SaleService(settings, sale_engine, asyncio.Lock())

            async def commit(i: int) -> None:
                sale = SaleIn(
                    sale_id=f"bench-{i}",
                    lines=[
                        SaleLineIn(barcode=codes[(i * 7 + k) % len(codes)], quantity="1")
                        for k in range(3)
                    ],
                    payments=[PaymentIn(type="cash", amount=100000)],
                )
                _, created = await service.record_sale("T2", sale)
                assert created

            try:
                commit_ms = await timed(sales, commit)
            finally:
                await sale_engine.dispose()
        finally:
            await engine.dispose()
        raw_read_ms, raw_commit_ms = raw_sqlite_ms(db_path, 2000)
        bare_mb = bare_rss_mb()
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        nats_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "products": products,
        "catalog_messages": messages,
        "catalog_mb": round(size / 1e6, 1),
        "publish_s": round(publish_s, 2),
        "first_sync_s": round(first_sync_s, 2),
        "first_sync_from_healthy_s": round(from_healthy_s, 2),
        "raw_fetch_all_s": round(raw_fetch_s, 2),
        "lookup_p50_ms": round(statistics.median(lookup_ms), 3),
        "lookup_p99_ms": round(pct(lookup_ms, 0.99), 3),
        "raw_indexed_read_p99_ms": round(raw_read_ms, 3),
        "http_lookup_p99_ms": round(pct(http_lookup_ms, 0.99), 3),
        "sale_commit_p50_ms": round(statistics.median(commit_ms), 3),
        "sale_commit_p99_ms": round(pct(commit_ms, 0.99), 3),
        "raw_sqlite_commit_p99_ms": round(raw_commit_ms, 3),
        "http_sale_p99_ms": round(pct(http_sale_ms, 0.99), 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "bare_agent_import_rss_mb": round(bare_mb, 1),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_catalog", description=__doc__)
    parser.add_argument("--products", type=int, default=200_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--sales", type=int, default=2_000)
    args = parser.parse_args()
    result = asyncio.run(run(args.products, args.lookups, args.sales))
    targets = {
        "lookup_p99_ms": 1.0,
        "sale_commit_p99_ms": 5.0,
        "first_sync_s": 60.0,
        "peak_rss_mb": 150.0,
    }
    print(
        f"catalog: {result['products']} products in {result['catalog_messages']} messages "
        f"({result['catalog_mb']} MB), published in {result['publish_s']} s"
    )
    print(
        f"first full sync      {result['first_sync_s']:>9} s   (from healthy "
        f"{result['first_sync_from_healthy_s']} s; raw NATS fetch of all {result['raw_fetch_all_s']} s)"
        f"   target < 60 s"
    )
    print(
        f"barcode lookup p99   {result['lookup_p99_ms']:>9} ms  (p50 {result['lookup_p50_ms']}; "
        f"raw indexed SQLite read p99 {result['raw_indexed_read_p99_ms']} ms; over HTTP p99 "
        f"{result['http_lookup_p99_ms']} ms)   target < 1 ms"
    )
    print(
        f"sale commit p99      {result['sale_commit_p99_ms']:>9} ms  (p50 {result['sale_commit_p50_ms']}; "
        f"raw synchronous=FULL commit p99 {result['raw_sqlite_commit_p99_ms']} ms; over HTTP p99 "
        f"{result['http_sale_p99_ms']} ms)   target < 5 ms"
    )
    print(
        f"agent peak RSS       {result['peak_rss_mb']:>9} MB  (bare Python with the agent "
        f"imported {result['bare_agent_import_rss_mb']} MB)   target < 150 MB"
    )
    result["targets_met"] = {key: result[key] < limit for key, limit in targets.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
