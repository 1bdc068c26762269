"""When central decides a branch needs a master-data snapshot (pure rule)."""

from __future__ import annotations

from central.services.masterdata_snapshot import PositionFacts, snapshot_reason
from protocol.masterdata import SnapshotRequest


def _facts(**kw: object) -> PositionFacts:
    values: dict[str, object] = {
        "ack_floor": 100,
        "first_missing": None,
        "first_seq": 1,
        "lossy": False,
    }
    values.update(kw)
    return PositionFacts(**values)  # type: ignore[arg-type]


def test_usable_positions_need_no_snapshot() -> None:
    # Up to date; behind but everything above it still in the stream and not acked yet.
    assert snapshot_reason(SnapshotRequest(branch="B1", last_stream_seq=100), _facts()) is None
    behind = SnapshotRequest(branch="B1", last_stream_seq=50)
    assert snapshot_reason(behind, _facts(ack_floor=50, first_missing=60)) is None
    # A new branch on a new consumer: the stream replays everything.
    assert (
        snapshot_reason(SnapshotRequest(branch="B1"), _facts(ack_floor=0, first_missing=1)) is None
    )
    # Without age/count limits a high first sequence only means replaced values.
    assert snapshot_reason(behind, _facts(ack_floor=50, first_seq=900)) is None


def test_lost_database_history_aged_out_and_incomplete_snapshot_need_one() -> None:
    empty = SnapshotRequest(branch="B1")
    assert "acknowledged" in (snapshot_reason(empty, _facts(first_missing=7)) or "")
    old = SnapshotRequest(branch="B1", last_stream_seq=40)
    assert "aged out" in (
        snapshot_reason(old, _facts(ack_floor=40, first_seq=90, lossy=True)) or ""
    )
    # Exactly at the first sequence nothing was lost.
    assert snapshot_reason(old, _facts(ack_floor=40, first_seq=41, lossy=True)) is None
    broken = SnapshotRequest(branch="B1", last_stream_seq=100, incomplete_snapshot=5)
    assert "missing" in (snapshot_reason(broken, _facts()) or "")


def test_a_stream_numbered_below_the_branchs_position_needs_one() -> None:
    """Created again (the NATS server lost it) from a number below the branch's."""
    ahead = SnapshotRequest(branch="B1", last_stream_seq=500)
    reason = snapshot_reason(ahead, _facts(ack_floor=0, last_seq=40))
    assert "below the branch's position" in (reason or "")
    # At or below the stream's last sequence the position is the stream's own.
    assert snapshot_reason(ahead, _facts(ack_floor=500, last_seq=500)) is None
    # With a snapshot on its way, none more: its end moves the position to the new numbers.
    promised = SnapshotRequest(branch="B1", last_stream_seq=500, pending_snapshot=7)
    assert snapshot_reason(promised, _facts(ack_floor=0, last_seq=40)) is None
