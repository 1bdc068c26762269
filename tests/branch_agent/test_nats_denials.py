"""Permissions violations the agent keeps for status: each until its operation succeeds."""

from __future__ import annotations

from branch_agent.nats_denials import STALE_S, NatsDenials, is_permission_violation

PUBLISH_UP = 'nats: permissions violation for publish to "up.ba.receipt_recorded"'
FETCH = (
    'nats: permissions violation for publish to "$js.api.consumer.msg.next.backroom_down.branch-ba"'
)
INBOX = 'nats: permissions violation for subscription to "_inbox.ba.x1.*"'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_denial_stays_until_its_own_operation_succeeds() -> None:
    clock = Clock()
    denials = NatsDenials(clock=clock)
    assert denials.record(PUBLISH_UP) is True
    clock.now += 1
    assert denials.record(FETCH) is True
    assert denials.record(FETCH) is False  # a retry denied again: not new
    assert denials.current() == [FETCH, PUBLISH_UP]

    # The heartbeat got through: the outbox subject is still denied.
    denials.succeeded(["up.BA.heartbeat"])
    assert denials.current() == [FETCH, PUBLISH_UP]
    # Subjects compare as the server reports them (lower case).
    denials.succeeded(["up.BA.receipt_recorded"])
    assert denials.current() == [FETCH]


def test_an_answer_clears_the_inbox_subscription_it_came_through() -> None:
    denials = NatsDenials(clock=Clock())
    denials.record(INBOX)
    denials.record(PUBLISH_UP)
    denials.succeeded(["rpc.BA.md_snapshot"])
    assert denials.current() == [PUBLISH_UP]


def test_a_denial_no_longer_repeated_is_dropped_once_something_succeeds() -> None:
    clock = Clock()
    denials = NatsDenials(clock=clock)
    denials.record(FETCH)
    clock.now += STALE_S + 1
    # Nothing succeeded: still shown, however old.
    assert denials.current() == [FETCH]
    denials.record(PUBLISH_UP)
    denials.succeeded(["up.BA.heartbeat"])
    assert denials.current() == [PUBLISH_UP]


def test_a_new_connection_starts_over() -> None:
    denials = NatsDenials(clock=Clock())
    denials.record(PUBLISH_UP)
    denials.clear()
    assert denials.current() == []


def test_only_permissions_violations_count() -> None:
    assert is_permission_violation(PUBLISH_UP)
    assert is_permission_violation("Permissions Violation for Publish to foo")
    assert not is_permission_violation("nats: authorization violation")
    assert not is_permission_violation("nats: stale connection")
