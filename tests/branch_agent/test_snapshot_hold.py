"""A snapshot pending while the down stream was held (another database of the branch
read it) is asked for anew once this one reads again; one asked for after is not."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from branch_agent.masterdata import SnapshotState
from branch_agent.masterdata_snapshot import SnapshotRequester


@dataclass
class _Applier:
    snapshot: SnapshotState = field(default_factory=SnapshotState)
    applied_version: int = 0
    branches_digest: str = ""


def _requester(applier: _Applier) -> SnapshotRequester:
    return SnapshotRequester("B1", applier)  # type: ignore[arg-type]


def _report(requester: SnapshotRequester) -> Any:
    return requester._request()


def test_a_snapshot_pending_through_a_hold_is_asked_for_again() -> None:
    applier = _Applier()
    applier.snapshot.pending = 7
    requester = _requester(applier)
    assert _report(requester).incomplete_snapshot == 0  # promised just now: it comes
    requester.hold_began()
    requester.hold_ended()
    assert _report(requester).incomplete_snapshot == 7


def test_a_snapshot_asked_for_after_the_hold_is_awaited() -> None:
    applier = _Applier()
    requester = _requester(applier)
    requester.hold_began()  # nothing pending while held
    requester.hold_ended()
    applier.snapshot.pending = 8  # central's answer once this database may read
    assert _report(requester).incomplete_snapshot == 0
