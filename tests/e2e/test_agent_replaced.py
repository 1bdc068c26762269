"""A store's server replaced (its disk lost): the new agent database numbers its events
after the branch's earlier ones, as central says, so none is taken for a duplicate of
the old database's; the old database's unsent events are given up, counted, and not
asked for again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.chaos.proxy import LinkProxy
from branch_agent.models import OutboxEvent
from central.embedded_nats import EmbeddedNats
from central.models import BranchStatus, DeadLetter, IngestedEvent
from central.reports.service import sync_health
from central.services.sync_state import get_branch_sync
from protocol.codec import decode_envelope
from tests.conftest import register_branch, wait_until
from tests.e2e.test_skeleton import post_sale, receipts_at_central, sale

TOKEN = "B1-till-1"


async def _outbox_seqs(agent: Any) -> list[tuple[int, int]]:
    """(row number, the number inside its payload) of every outbox event."""
    async with agent.sessionmaker() as session:
        rows = (await session.execute(select(OutboxEvent.seq, OutboxEvent.payload))).all()
    return sorted((seq, decode_envelope(payload).seq) for seq, payload in rows)


async def receipts_and_dead_letters(central: Any) -> tuple[list[int], int]:
    """The event numbers of B1's receipts at central, and how many dead letters."""
    async with central.sessionmaker() as session:
        letters = await session.scalar(select(func.count()).select_from(DeadLetter))
        seqs = list(
            await session.scalars(
                select(IngestedEvent.seq)
                .where(IngestedEvent.branch == "B1", IngestedEvent.kind == "receipt_recorded")
                .order_by(IngestedEvent.seq)
            )
        )
    return seqs, int(letters or 0)


async def sell_unsent(central: Any, agent: Any, sale_ids: list[str], *, recorded: int) -> None:
    """``agent``'s outbox stops sending (fault injected); it records the sales, and its
    heartbeats tell central it has recorded ``recorded`` events."""

    async def stuck(*_: Any) -> int:
        return 0

    agent.sender.send_once = stuck
    for sale_id in sale_ids:
        assert (await post_sale(agent, sale(sale_id), TOKEN)).status_code == 201

    async def heard() -> bool:
        async with central.sessionmaker() as session:
            status = await session.get(BranchStatus, "B1")
        return status is not None and status.last_recorded_seq == recorded

    await wait_until(heard)


async def test_a_new_agent_database_numbers_after_the_old_one_and_loses_nothing_it_had(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    await register_branch(central, "B1")
    old = await make_agent("B1", nats_server.url)
    for n in range(4):
        assert (await post_sale(old, sale(f"old-{n}"), TOKEN)).status_code == 201

    async def at_central(count: int) -> bool:
        return len(await receipts_at_central(central)) == count

    await wait_until(lambda: at_central(4))

    # Its outbox stops sending (fault injected: events recorded, not sent); two more
    # sales are recorded, and the heartbeats tell central about them.
    await sell_unsent(central, old, ["old-4", "old-5"], recorded=6)
    # Then the server dies with its disk; a technician installs a new one, and the
    # store sells on it while its link to head office is still down: its events wait,
    # numbered from 1 for now.
    await old.stop()
    link = LinkProxy(nats_server.port)
    await link.start()
    try:
        await _replacement(central, make_agent, link, tmp_path)
    finally:
        await link.close()


async def _replacement(central: Any, make_agent: Any, link: LinkProxy, tmp_path: Path) -> None:
    async def at_central(count: int) -> bool:
        return len(await receipts_at_central(central)) == count

    await link.cut("reset")
    new = await make_agent("B1", link.url, data_dir=str(tmp_path / "replacement"))
    for n in range(3):
        assert (await post_sale(new, sale(f"new-{n}"), TOKEN)).status_code == 201
    assert await _outbox_seqs(new) == [(1, 1), (2, 2), (3, 3)]
    waiting = await new.status()
    assert (waiting.numbering_settled, waiting.outbox_backlog) == (False, 3)
    await link.restore()
    await wait_until(lambda: at_central(7), timeout=30)
    settled = await new.status()
    assert (settled.numbering_settled, settled.first_event_seq) == (True, 7)
    # Renumbered where they waited: row and payload agree, 7.. after the old 1..6.
    assert await _outbox_seqs(new) == [(7, 7), (8, 8), (9, 9)]
    assert await new.last_recorded_seq() == 9
    receipts = await receipts_at_central(central)
    assert sorted(sale_id for _, sale_id in receipts) == sorted(
        [f"old-{n}" for n in range(4)] + [f"new-{n}" for n in range(3)]
    )
    seqs, letters = await receipts_and_dead_letters(central)
    assert letters == 0
    assert seqs == [1, 2, 3, 4, 7, 8, 9]

    async def settled_at_central() -> bool:
        async with central.sessionmaker() as session:
            sync = await get_branch_sync(session, "B1")
            status = await session.get(BranchStatus, "B1")
        # Its heartbeat says where its numbers start (below: not at the branch).
        first = status.first_seq if status else 0
        return sync.contiguous_seq == 9 and sync.last_recorded_seq == 9 and first == 7

    await wait_until(settled_at_central)
    async with central.sessionmaker() as session:
        sync = await get_branch_sync(session, "B1")
    assert (sync.restarted_at_seq, sync.lost_from_seq, sync.lost_to_seq) == (7, 5, 6)
    assert (sync.lost_events, sync.missing, sync.resend_requested_from) == (2, 2, None)
    # Head office's sync health report says so too.
    async with central.sessionmaker() as session:
        (row,) = (await sync_health(session)).rows
    assert row.agent_replaced_at is not None
    assert (row.lost_events, row.contiguous_seq) == (2, 9)

    # The new agent restarts: the same database, numbered already: central confirms
    # where it stands, nothing moves.
    await new.stop()
    again = await make_agent("B1", link.url, data_dir=str(tmp_path / "replacement"))
    assert again.numbering.start == 7

    async def confirmed() -> bool:
        return bool(again.numbering.settled)

    await wait_until(confirmed)
    assert (await post_sale(again, sale("new-3"), TOKEN)).status_code == 201
    await wait_until(lambda: at_central(8))
    assert await _outbox_seqs(again) == [(7, 7), (8, 8), (9, 9), (10, 10)]
