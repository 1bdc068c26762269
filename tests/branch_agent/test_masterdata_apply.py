"""Applying a price bucket leaves exactly the message's entries, whatever was stored."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from branch_agent import masterdata
from branch_agent.db import create_engine, create_sessionmaker, upgrade
from branch_agent.downstream import DownMessage
from branch_agent.masterdata import MasterDataApplier
from protocol.masterdata import PriceBucket, PriceEntry, VersionMark, encode_masterdata

T0 = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)


def _message(seq: int, version: int, entries: list[PriceEntry], bucket: int = 7) -> DownMessage:
    data = encode_masterdata(
        PriceBucket(scope="all", bucket=bucket, version=version, entries=tuple(entries))
    )
    subject = f"down.all.price.b{bucket:03d}"
    return DownMessage(subject, "all", None, "price", f"b{bucket:03d}", data, seq)


async def _rows(applier_path: Path) -> list[tuple[object, ...]]:
    engine = create_engine(applier_path)
    try:
        async with engine.connect() as conn:
            result = await conn.exec_driver_sql(
                "SELECT bucket, sku, price, effective_at, effective_local, version "
                "FROM md_prices ORDER BY bucket, sku, effective_at, version, price"
            )
            return [tuple(r) for r in result]
    finally:
        await engine.dispose()


async def test_bucket_rows_follow_each_message_exactly(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    await upgrade(path)
    engine = create_engine(path)
    applier = MasterDataApplier(create_sessionmaker(engine), asyncio.Lock())
    later = T0 + timedelta(days=1)
    try:
        other = _message(1, 1, [PriceEntry(sku="Z", price=9, effective_at=T0, version=1)], 8)
        first = _message(
            2,
            2,
            [
                PriceEntry(sku="A", price=100, effective_at=T0, version=1),
                PriceEntry(sku="B", price=200, effective_at=T0, version=2),
                PriceEntry(sku="C", price=300, effective_at=T0, version=2),
            ],
        )
        await applier.handle_batch([other, first])
        # A changed (new entry beside the old), B's price corrected under the same
        # moment and version, C withdrawn, D new, a wall-clock entry, a duplicate.
        second = _message(
            3,
            5,
            [
                PriceEntry(sku="A", price=100, effective_at=T0, version=1),
                PriceEntry(sku="A", price=110, effective_at=later, version=5),
                PriceEntry(sku="B", price=210, effective_at=T0, version=2),
                PriceEntry(
                    sku="D",
                    price=400,
                    effective_at=later,
                    version=5,
                    effective_local="2026-01-06T06:00:00",
                ),
                PriceEntry(
                    sku="D",
                    price=400,
                    effective_at=later,
                    version=5,
                    effective_local="2026-01-06T06:00:00",
                ),
            ],
        )
        await applier.handle_batch([second])
        stamp = "2026-01-05 06:00:00.000000"
        stamp_later = "2026-01-06 06:00:00.000000"
        expected = [
            (7, "A", 100, stamp, None, 1),
            (7, "A", 110, stamp_later, None, 5),
            (7, "B", 210, stamp, None, 2),
            (7, "D", 400, stamp_later, "2026-01-06T06:00:00", 5),
            (7, "D", 400, stamp_later, "2026-01-06T06:00:00", 5),
            (8, "Z", 9, stamp, None, 1),
        ]
        assert await _rows(path) == expected
        # Redelivered older message: skipped by the version guard, rows unchanged.
        await applier.handle_batch([first])
        assert applier.stats.stale_skipped == 1
        assert await _rows(path) == expected
        # An empty bucket clears it.
        await applier.handle_batch([_message(4, 6, [])])
        assert await _rows(path) == [(8, "Z", 9, stamp, None, 1)]
    finally:
        await engine.dispose()


def _upgrade_to(path: Path, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent / "agent"))
    config.set_main_option("sqlalchemy.url", f"sqlite+aiosqlite:///{path}")
    command.upgrade(config, revision)


async def test_migration_keeps_existing_price_rows_and_applying_goes_on_from_them(
    tmp_path: Path,
) -> None:
    """A replica filled before md_price_buckets existed: rows kept (same ids), each
    bucket's value built from them, and the next message changes only what differs."""
    path = tmp_path / "agent.db"
    await asyncio.to_thread(_upgrade_to, path, "a1001")
    stamp = "2026-01-05 06:00:00.000000"
    old_rows = [
        (1, "all", "", 7, "A", 100, stamp, None, 1),
        (2, "all", "", 7, "B", 200, stamp, None, 2),
        (3, "all", "", 7, "D", 400, stamp, "2026-01-05T06:00:00", 2),
        (4, "all", "", 7, "D", 400, stamp, "2026-01-05T06:00:00", 2),
        (5, "zone", "north", 7, "A", 90, stamp, None, 3),
    ]
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO md_prices (id, scope, scope_id, bucket, sku, price, effective_at, "
            "effective_local, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            old_rows,
        )
    db.close()
    await upgrade(path)

    def stored() -> tuple[list[tuple[object, ...]], dict[tuple[str, str, int], Any], list[str]]:
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT * FROM md_prices ORDER BY id").fetchall()
            buckets = {
                (scope, scope_id, bucket): json.loads(value)
                for scope, scope_id, bucket, value in db.execute(
                    "SELECT scope, scope_id, bucket, rows FROM md_price_buckets"
                )
            }
            indexes = [
                r[0]
                for r in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index' "
                    "AND tbl_name = 'md_prices' AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
        db.close()
        return rows, buckets, indexes

    rows, buckets, indexes = stored()
    assert rows == old_rows
    assert indexes == ["ix_md_prices_sku"]
    assert buckets == {
        ("all", "", 7): {
            "ids": [1, 2, 3, 4],
            "rows": [
                ["A", 100, stamp, None, 1],
                ["B", 200, stamp, None, 2],
                ["D", 400, stamp, "2026-01-05T06:00:00", 2],
                ["D", 400, stamp, "2026-01-05T06:00:00", 2],
            ],
        },
        ("zone", "north", 7): {"ids": [5], "rows": [["A", 90, stamp, None, 3]]},
    }

    engine = create_engine(path)
    applier = MasterDataApplier(create_sessionmaker(engine), asyncio.Lock())
    later = T0 + timedelta(days=1)
    try:
        # A kept, B withdrawn, one of the two D entries gone, E new.
        await applier.handle_batch(
            [
                _message(
                    10,
                    6,
                    [
                        PriceEntry(sku="A", price=100, effective_at=T0, version=1),
                        PriceEntry(
                            sku="D",
                            price=400,
                            effective_at=T0,
                            version=2,
                            effective_local="2026-01-05T06:00:00",
                        ),
                        PriceEntry(sku="E", price=500, effective_at=later, version=6),
                    ],
                )
            ]
        )
    finally:
        await engine.dispose()
    rows, buckets, _ = stored()
    stamp_later = "2026-01-06 06:00:00.000000"
    assert rows == [
        (1, "all", "", 7, "A", 100, stamp, None, 1),
        (3, "all", "", 7, "D", 400, stamp, "2026-01-05T06:00:00", 2),
        (5, "zone", "north", 7, "A", 90, stamp, None, 3),
        (6, "all", "", 7, "E", 500, stamp_later, None, 6),
    ]
    kept = buckets[("all", "", 7)]
    assert sorted(zip(kept["ids"], kept["rows"], strict=True)) == [
        (1, ["A", 100, stamp, None, 1]),
        (3, ["D", 400, stamp, "2026-01-05T06:00:00", 2]),
        (6, ["E", 500, stamp_later, None, 6]),
    ]


def _replica(path: Path) -> list[tuple[object, ...]]:
    """md_prices rows (with ids), after checking that md_price_buckets lists exactly them."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT id, scope, scope_id, bucket, sku, price, effective_at, effective_local, "
            "version FROM md_prices ORDER BY id"
        ).fetchall()
        listed = sorted(
            (row_id, scope, scope_id, bucket, *values)
            for scope, scope_id, bucket, value in db.execute(
                "SELECT scope, scope_id, bucket, rows FROM md_price_buckets"
            )
            for row_id, values in zip(
                json.loads(value)["ids"], json.loads(value)["rows"], strict=True
            )
        )
    db.close()
    assert listed == rows
    return rows


def _bulk(seq: int, version: int, price: int, skus: int = 40) -> list[DownMessage]:
    """One message per bucket (as central publishes a bulk), each SKU's entry in force
    before and its new one, then the version mark."""
    later = T0 + timedelta(hours=version)
    messages = [
        _message(
            seq + bucket,
            version,
            [
                entry
                for i in range(bucket, skus, 4)
                for entry in (
                    PriceEntry(sku=f"S{i:03d}", price=100, effective_at=T0, version=1),
                    PriceEntry(
                        sku=f"S{i:03d}", price=price + i, effective_at=later, version=version
                    ),
                )
            ],
            bucket,
        )
        for bucket in range(4)
    ]
    mark = encode_masterdata(VersionMark(version=version, published_at=T0))
    messages.append(
        DownMessage("down.all.version.current", "all", None, "version", "current", mark, seq + 4)
    )
    return messages


async def test_crash_between_commit_and_ack_redelivers_without_doubling(tmp_path: Path) -> None:
    """The run was committed but its acks were lost (the process died): the restarted
    agent gets the same messages again, then the next ones; nothing doubled, nothing
    rewritten, the applied version goes on."""
    path = tmp_path / "agent.db"
    await upgrade(path)
    first, second = _bulk(1, 2, 200), _bulk(10, 3, 300)
    engine = create_engine(path)
    try:
        applier = MasterDataApplier(create_sessionmaker(engine), asyncio.Lock())
        await applier.handle_batch(first)
        after_first = _replica(path)
        assert len(after_first) == 80
    finally:
        await engine.dispose()  # the crash: nothing acked
    engine = create_engine(path)
    try:
        applier = MasterDataApplier(create_sessionmaker(engine), asyncio.Lock())
        assert await applier.load() == 2
        await applier.handle_batch(first)  # redelivered: same rows, same ids
        assert _replica(path) == after_first
        await applier.handle_batch(second[:2])
        await applier.handle_batch(second[2:])
        await applier.handle_batch(second[2:])  # a second redelivery of the tail
        rows = _replica(path)
        assert applier.applied_version == 3
    finally:
        await engine.dispose()
    # Each SKU: the old entry (kept under its id) and the latest one; version 2's gone.
    assert len(rows) == 80
    kept = {r[0] for r in after_first if r[5] == 100}
    assert kept <= {r[0] for r in rows}
    assert sorted((r[4], r[5]) for r in rows if r[5] != 100) == [
        (f"S{i:03d}", 300 + i) for i in range(40)
    ]


async def test_failure_in_the_middle_of_a_run_leaves_nothing_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run fails after some buckets were written in the driver's thread: all of it is
    rolled back (rows, bucket values, versions), and its redelivery applies it exactly."""
    path = tmp_path / "agent.db"
    await upgrade(path)
    first, second = _bulk(1, 2, 200), _bulk(10, 3, 300)
    engine = create_engine(path)
    try:
        applier = MasterDataApplier(create_sessionmaker(engine), asyncio.Lock())
        await applier.handle_batch(first)
        before = _replica(path)
        calls = 0
        real = masterdata._replace_prices

        def failing(*args: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise sqlite3.OperationalError("disk I/O error")
            real(*args)

        monkeypatch.setattr(masterdata, "_replace_prices", failing)
        with pytest.raises(sqlite3.OperationalError):
            await applier.handle_batch(second)
        assert calls == 3
        assert _replica(path) == before
        assert applier.applied_version == 2
        monkeypatch.setattr(masterdata, "_replace_prices", real)
        await applier.handle_batch(second)
        assert applier.applied_version == 3
        rows = _replica(path)
    finally:
        await engine.dispose()
    assert sorted((r[4], r[5]) for r in rows if r[5] != 100) == [
        (f"S{i:03d}", 300 + i) for i in range(40)
    ]
    assert applier.stats.stale_skipped == 0
