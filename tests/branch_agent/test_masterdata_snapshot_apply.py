"""A snapshot applied on top of a stale replica leaves exactly its content, survives a
redelivery after a lost ack, and reports a missing part instead of dropping data."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from branch_agent.db import create_engine, create_sessionmaker, upgrade
from branch_agent.downstream import DownMessage
from branch_agent.masterdata import MasterDataApplier
from protocol.masterdata import (
    MasterDataMessage,
    PriceBucket,
    PriceEntry,
    PromotionRecord,
    SnapshotMark,
    SnapshotPart,
    VersionMark,
    encode_masterdata,
)
from protocol.subjects import parse_down_subject
from tests.branch_agent.test_masterdata_apply import _replica

T0 = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)


def _msg(subject: str, seq: int, message: MasterDataMessage) -> DownMessage:
    scope, scope_id, kind, key = parse_down_subject(subject)
    return DownMessage(subject, scope, scope_id, kind, key, encode_masterdata(message), seq)


def _prices(bucket: int, version: int, price: int, sku: str) -> PriceBucket:
    entry = PriceEntry(sku=sku, price=price, effective_at=T0, version=version)
    return PriceBucket(scope="all", bucket=bucket, version=version, entries=(entry,))


def _snapshot(snapshot_id: int, seq: int) -> list[DownMessage]:
    values: list[tuple[str, PriceBucket | PromotionRecord]] = [
        ("down.all.price.b001", _prices(1, snapshot_id, 150, "A")),
        ("down.all.promo.KEEP", PromotionRecord(promotion_id="KEEP", version=3, percent_bp=100)),
    ]
    out = [
        _msg(
            "down.branch.B1.snapshot.begin",
            seq,
            SnapshotMark(snapshot_id=snapshot_id, phase="begin", parts=2, version=snapshot_id),
        )
    ]
    for part, (subject, value) in enumerate(values, start=1):
        out.append(
            _msg(
                f"down.branch.B1.snapshot.p{part:06d}",
                seq + part,
                SnapshotPart(snapshot_id=snapshot_id, part=part, subject=subject, message=value),
            )
        )
    out.append(
        _msg(
            "down.branch.B1.snapshot.end",
            seq + 3,
            SnapshotMark(snapshot_id=snapshot_id, phase="end", parts=2, version=snapshot_id),
        )
    )
    return out


async def _state(path: Path) -> tuple[list[tuple[object, ...]], list[str]]:
    engine = create_engine(path)
    try:
        async with engine.connect() as conn:
            prices = [
                tuple(r)
                for r in await conn.exec_driver_sql(
                    "SELECT bucket, sku, price FROM md_prices ORDER BY bucket, sku"
                )
            ]
            promos = [
                r[0] for r in await conn.exec_driver_sql("SELECT promotion_id FROM md_promotions")
            ]
        return prices, sorted(promos)
    finally:
        await engine.dispose()


async def _applier(path: Path) -> tuple[MasterDataApplier, object]:
    await upgrade(path)
    engine = create_engine(path)
    return MasterDataApplier(create_sessionmaker(engine), asyncio.Lock()), engine


async def test_snapshot_replaces_a_stale_replica_exactly(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    applier, engine = await _applier(path)
    try:
        # The stale replica: bucket 1 and 2 prices, two promotions, version 5.
        await applier.handle_batch(
            [
                _msg("down.all.price.b001", 1, _prices(1, 4, 100, "A")),
                _msg("down.all.price.b002", 2, _prices(2, 4, 200, "B")),
                _msg("down.all.promo.KEEP", 3, PromotionRecord(promotion_id="KEEP", version=3)),
                _msg("down.all.promo.GONE", 4, PromotionRecord(promotion_id="GONE", version=4)),
                _msg("down.all.version.current", 5, VersionMark(version=5, published_at=T0)),
            ]
        )
        assert applier.applied_version == 5
        await applier.set_pending_snapshot(9)
        snapshot = _snapshot(9, 100)
        # A live version mark before the snapshot does not report a version the
        # replica does not hold yet.
        await applier.handle_batch(
            [_msg("down.all.version.current", 50, VersionMark(version=8, published_at=T0))]
        )
        assert applier.applied_version == 5
        # Crash after committing begin + part 1, before the ack: both come again.
        await applier.handle_batch(snapshot[:2])
        await applier.handle_batch(snapshot)
        assert applier.stats.snapshots_completed == 1
        assert applier.applied_version == 9
        assert applier.snapshot.pending == 0
        # Bucket 2 and the promotion GONE were not in the snapshot: dropped.
        assert await _state(path) == ([(1, "A", 150)], ["KEEP"])
        # The bucket values the applier diffs against hold exactly the rows left.
        assert [row[4] for row in _replica(path)] == ["A"]
        # The state survives a restart.
        again = MasterDataApplier(applier._sessionmaker, asyncio.Lock())
        assert await again.load() == 9
        assert again.snapshot.completed == 9
    finally:
        await engine.dispose()  # type: ignore[attr-defined]


async def test_a_snapshot_with_a_missing_part_is_reported_and_drops_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.db"
    applier, engine = await _applier(path)
    try:
        await applier.handle_batch(
            [
                _msg("down.all.price.b002", 1, _prices(2, 4, 200, "B")),
                _msg("down.all.version.current", 2, VersionMark(version=4, published_at=T0)),
            ]
        )
        await applier.set_pending_snapshot(9)
        snapshot = _snapshot(9, 100)
        await applier.handle_batch([snapshot[0], snapshot[2], snapshot[3]])  # part 1 lost
        assert applier.stats.snapshots_incomplete == 1
        assert applier.snapshot.incomplete == 9
        assert applier.snapshot.pending == 9
        assert applier.applied_version == 4
        # Nothing was dropped on the strength of an incomplete snapshot.
        prices, promos = await _state(path)
        assert (2, "B", 200) in prices
        assert promos == ["KEEP"]
    finally:
        await engine.dispose()  # type: ignore[attr-defined]


class _Requester:
    """Counts the reports the applier asks for (a unit test's stand-in)."""

    def __init__(self) -> None:
        self.pokes = 0

    def poke(self) -> None:
        self.pokes += 1


async def test_a_stream_numbered_below_the_position_is_reported_and_its_snapshot_rebases(
    tmp_path: Path,
) -> None:
    """The down stream came back with lower numbers than the replica's (created again,
    or restored from an older copy): the branch reports at once, the snapshot that
    follows leaves exactly its content, and the position takes the new numbers."""
    path = tmp_path / "agent.db"
    applier, engine = await _applier(path)
    requester = _Requester()
    applier.requester = requester  # type: ignore[assignment]
    try:
        await applier.handle_batch(
            [
                _msg("down.all.price.b001", 1001, _prices(1, 4, 100, "A")),
                _msg("down.all.price.b002", 1002, _prices(2, 4, 200, "B")),
                _msg("down.all.promo.KEEP", 1003, PromotionRecord(promotion_id="KEEP", version=3)),
                _msg("down.all.promo.GONE", 1004, PromotionRecord(promotion_id="GONE", version=4)),
                _msg("down.all.version.current", 1005, VersionMark(version=5, published_at=T0)),
            ]
        )
        assert (applier.snapshot.last_stream_seq, requester.pokes) == (1005, 0)
        # Handed out again after a lost ack: nothing to report.
        again = _msg("down.all.price.b001", 1001, _prices(1, 4, 100, "A"))
        await applier.handle_batch([replace(again, delivered=2)])
        assert requester.pokes == 0
        # A new change first handed out at a number below the position: applied (its
        # version is newer) and reported.
        await applier.handle_batch([_msg("down.all.price.b001", 3, _prices(1, 6, 120, "A"))])
        assert requester.pokes == 1
        assert (1, "A", 120) in (await _state(path))[0]

        await applier.set_pending_snapshot(9)
        await applier.handle_batch(_snapshot(9, 10))
        assert applier.stats.snapshots_completed == 1
        # Bucket 2 and GONE (recorded at the old, higher numbers) were not in it: gone.
        assert await _state(path) == ([(1, "A", 150)], ["KEEP"])
        assert applier.snapshot.last_stream_seq == 13
        # Later changes go on from the new numbers; the state survives a restart.
        await applier.handle_batch([_msg("down.all.price.b001", 14, _prices(1, 10, 160, "A"))])
        restarted = MasterDataApplier(applier._sessionmaker, asyncio.Lock())
        await restarted.load()
        assert (restarted.snapshot.last_stream_seq, restarted.snapshot.rebase) == (14, False)
        assert await _state(path) == ([(1, "A", 160)], ["KEEP"])
    finally:
        await engine.dispose()  # type: ignore[attr-defined]
