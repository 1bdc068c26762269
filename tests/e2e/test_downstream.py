"""Central's down stream reaches exactly the branch it is meant for, in order."""

from __future__ import annotations

from typing import Any

from branch_agent.downstream import DownMessage
from central.embedded_nats import EmbeddedNats
from central.services.pricing import PriceZoneIn, create_price_zone
from protocol.subjects import down_subject
from tests.conftest import register_branch, wait_until


async def test_each_branch_reads_its_scopes_only_in_order(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    for zone in ("north", "south"):
        async with central.sessionmaker() as s:
            await create_price_zone(s, PriceZoneIn(code=zone, name=zone))
            await s.commit()
    await register_branch(central, "B1", price_zone="north")
    await register_branch(central, "B2", price_zone="south")
    received: dict[str, list[tuple[str, bytes]]] = {"B1": [], "B2": []}
    agents = {}
    for code in ("B1", "B2"):
        agent = await make_agent(code, nats_server.url)

        async def handler(message: DownMessage, code: str = code) -> None:
            received[code].append((message.subject, message.data))

        agent.downstream.register("probe", handler)
        agents[code] = agent
    assert central.js is not None
    published = [
        (down_subject("all", None, "probe", "k1"), b"chain"),
        (down_subject("zone", "north", "probe", "k2"), b"north"),
        (down_subject("zone", "south", "probe", "k3"), b"south"),
        (down_subject("branch", "B2", "probe", "k4"), b"only-b2"),
        (down_subject("branch", "B1", "probe", "k5"), b"only-b1"),
        (down_subject("all", None, "unknown_kind", "k6"), b"skipped"),
    ]
    for subject, data in published:
        await central.js.publish(subject, data)

    async def both_done() -> bool:
        return len(received["B1"]) == 3 and len(received["B2"]) == 3

    await wait_until(both_done, timeout=30)
    assert [d for _, d in received["B1"]] == [b"chain", b"north", b"only-b1"]
    assert [d for _, d in received["B2"]] == [b"chain", b"south", b"only-b2"]
    assert agents["B1"].downstream.state.skipped == 1
