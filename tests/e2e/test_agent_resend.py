"""Central asks a branch to resend from a sequence number: the events go out again with
their ids, central recognises them, and nothing is stored twice. JetStream stores the
resend (a new message id: its duplicate window would otherwise drop an event central
asked for because it lacks it); a retried publish of the resend is still a duplicate."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from central.embedded_nats import EmbeddedNats
from protocol.codec import encode
from protocol.messages import ResendRequested
from protocol.subjects import UP_STREAM, down_branch_subject
from tests.conftest import register_branch, wait_until
from tests.e2e.test_skeleton import post_sale, receipts_at_central, sale


async def test_a_resend_request_reaches_the_agent_and_doubles_nothing(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    await register_branch(central, "B1")
    agent = await make_agent("B1", nats_server.url)
    for n in range(3):
        assert (await post_sale(agent, sale(f"s{n}"), "B1-till-1")).status_code == 201

    async def three_at_central() -> bool:
        return len(await receipts_at_central(central)) == 3

    await wait_until(three_at_central)
    request = ResendRequested(branch="B1", from_seq=2, requested_at=datetime.now(UTC))
    assert central.js is not None
    await central.js.publish(down_branch_subject("B1", "command", "resend"), encode(request))

    (worker,) = central.workers
    before = worker.stats.duplicates

    async def resent() -> bool:
        return bool(agent.resends == 1 and worker.stats.duplicates - before >= 2)

    await wait_until(resent, timeout=30)
    assert agent.sender.state.duplicates == 0
    assert (await agent.health()).outbox_backlog == 0
    assert len(await receipts_at_central(central)) == 3
    # The resent events went out under new message ids, each once more in the stream.
    # (Counted per subject: the stream's total has the agent's heartbeats too.)
    info = await central.js.stream_info(UP_STREAM, subjects_filter="up.B1.receipt_recorded")
    assert info.state.subjects == {"up.B1.receipt_recorded": 5}
