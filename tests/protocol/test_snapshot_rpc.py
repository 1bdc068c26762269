"""The position report and its answer across releases: the chain's branch list is sent
against a digest of the agent's copy, and agents and centrals of either release read
each other's messages."""

from __future__ import annotations

import msgspec

from protocol.masterdata import (
    SnapshotReply,
    SnapshotRequest,
    branch_list_digest,
    decode_snapshot_reply,
    decode_snapshot_request,
    encode_snapshot_rpc,
)


def test_the_digest_of_a_branch_list_is_the_same_in_any_order() -> None:
    digest = branch_list_digest(["B002", "B001", "B001"])
    assert digest == branch_list_digest(("B001", "B002"))
    assert len(digest) == 32
    assert digest != branch_list_digest(["B001", "B002", "B003"])
    assert digest != branch_list_digest(["B001B002"])


def test_a_report_and_an_answer_carry_the_branch_list_and_older_ones_decode() -> None:
    request = SnapshotRequest(branch="B001", branches_digest=branch_list_digest(["B001"]))
    assert decode_snapshot_request(encode_snapshot_rpc(request)) == request
    reply = SnapshotReply(action="none", branches=("B001", "B002"))
    assert decode_snapshot_reply(encode_snapshot_rpc(reply)).branches == ("B001", "B002")
    # From a release before the list: none reported, none sent (the agent keeps its own).
    old_request = msgspec.msgpack.encode({"kind": "snapshot_request", "branch": "B001"})
    assert decode_snapshot_request(old_request).branches_digest == ""
    old_reply = msgspec.msgpack.encode({"kind": "snapshot_reply", "action": "none"})
    assert decode_snapshot_reply(old_reply).branches is None
