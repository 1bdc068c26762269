"""The store clock against central's: the middle of the round trip against central's
time (the middle of its handling)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from branch_agent.masterdata_snapshot import clock_offset_ms

T = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_a_clock_behind_by_five_minutes_with_a_two_second_round_trip() -> None:
    # Sent at 12:00:00 and answered at 12:00:02 here; central's middle was 12:05:01.
    assert clock_offset_ms(T, T + timedelta(seconds=2), T + timedelta(minutes=5, seconds=1)) == (
        -300_000
    )


def test_a_clock_ahead_and_the_answer_in_the_middle() -> None:
    central = T - timedelta(seconds=42, milliseconds=500)
    assert clock_offset_ms(T, T + timedelta(milliseconds=10), central) == 42_505


def test_clocks_in_step() -> None:
    assert clock_offset_ms(T, T + timedelta(milliseconds=4), T + timedelta(milliseconds=2)) == 0
