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


def test_held_records_travel_on_the_report_subject_and_older_peers_ignore_them() -> None:
    from protocol.masterdata import (
        HeldRecordsReply,
        HeldRecordsRequest,
        HeldReturn,
        HeldSale,
        decode_branch_rpc,
        decode_held_records_reply,
    )

    ask = HeldRecordsRequest(branch="B1", after_seq=4, through_seq=9)
    assert decode_branch_rpc(encode_snapshot_rpc(ask)) == ask
    report = SnapshotRequest(branch="B1", settled_instance="ab", settled_last_seq=4)
    assert decode_branch_rpc(encode_snapshot_rpc(report)) == report
    page = HeldRecordsReply(
        sales=(
            HeldSale(seq=5, till="T1", sale_id="s5", receipt_number=5, shift_id="T1-2", total=99),
        ),
        returns=(
            HeldReturn(seq=6, till="T1", return_id="r1", return_number=1, shift_id="T1-2", total=9),
        ),
        next_after_seq=6,
    )
    assert decode_held_records_reply(encode_snapshot_rpc(page)) == page
    # A new central's answer read by an older agent: the count is an unknown field.
    reply = SnapshotReply(action="none", event_seq_start=10, held_records=2)
    old_reply = msgspec.msgpack.Decoder(dict).decode(encode_snapshot_rpc(reply))
    assert old_reply["held_records"] == 2
    assert decode_snapshot_reply(msgspec.msgpack.encode(old_reply)).held_records == 2
    # An older central's answer: none announced, so the agent asks for none.
    old = msgspec.msgpack.encode(
        {"kind": "snapshot_reply", "action": "none", "event_seq_start": 10}
    )
    assert decode_snapshot_reply(old).held_records == 0
    # An older central reads a page question as a bad report (it never announces one).
    try:
        decode_snapshot_request(encode_snapshot_rpc(ask))
    except ValueError:
        pass
    else:
        raise AssertionError("an older central cannot read a page question")


def test_an_answer_about_records_on_their_way_reads_across_releases() -> None:
    reply = SnapshotReply(
        action="none",
        event_seq_start=10,
        held_records=3,
        held_in_flight=2,
        held_unknown=1,
    )
    assert decode_snapshot_reply(encode_snapshot_rpc(reply)) == reply
    wait = SnapshotReply(action="none", numbering_refused="reading", numbering_wait=True)
    assert decode_snapshot_reply(encode_snapshot_rpc(wait)).numbering_wait
    # An older central's answer: nothing on its way, nothing unknown, no wait.
    old = msgspec.msgpack.encode(
        {"kind": "snapshot_reply", "action": "none", "event_seq_start": 10, "held_records": 3}
    )
    decoded = decode_snapshot_reply(old)
    assert (decoded.held_in_flight, decoded.held_unknown, decoded.numbering_wait) == (0, 0, False)
    # An older agent reads the wait as a refusal (it asks again within 30 s), and the
    # numbers it cannot read are ignored.
    older = msgspec.msgpack.Decoder(dict).decode(encode_snapshot_rpc(wait))
    assert older["numbering_refused"] == "reading"
    assert older.get("event_seq_start", 0) == 0
