"""Two tills of one branch using the same sale_id and return_id, from the till API to
head office through a real nats-server: both sales and both returns reach central,
none is a dead letter, the branch's sequence is whole and the totals are the tills'."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from branch_agent.models import OutboxEvent
from branch_agent.settings import TillConfig
from central.embedded_nats import EmbeddedNats
from central.models import BranchSyncState, CustomerReturn, DeadLetter, Receipt
from tests.conftest import asgi_client, register_branch, wait_until

T1 = {"Authorization": "Bearer B001-till-1"}
T2 = {"Authorization": "Bearer B001-till-2"}


async def test_two_tills_same_ids_reach_central_once_each(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    await register_branch(central, "B001")
    agent = await make_agent(
        "B001",
        nats_server.url,
        tills=(TillConfig(id="T1", token="B001-till-1"), TillConfig(id="T2", token="B001-till-2")),
    )
    async with asgi_client(agent.app) as client:
        for till in (T1, T2):
            opened = await client.post("/api/v1/shifts", json={"cashier": "anna"}, headers=till)
            assert opened.status_code == 201, opened.text
        bread = {
            "sale_id": "u4",
            "lines": [{"sku": "BREAD-500"}],
            "payments": [{"type": "cash", "amount": 500}],
        }
        coffee = {
            "sale_id": "u4",
            "lines": [{"sku": "COFFEE-250", "quantity": "5"}],
            "payments": [{"type": "credit_card", "amount": 5 * 699}],
        }
        sold = [
            await client.post("/api/v1/sales", json=bread, headers=T1),
            await client.post("/api/v1/sales", json=coffee, headers=T2),
        ]
        assert [s.status_code for s in sold] == [201, 201], [s.text for s in sold]
        back = {"return_id": "r1", "original_sale_id": "u4"}
        returned = [
            await client.post(
                "/api/v1/returns",
                json=back | {"lines": [{"line_no": 1, "quantity": "2"}], "original_till": "T2"},
                headers=T1,
            ),
            await client.post(
                "/api/v1/returns",
                json=back | {"lines": [{"line_no": 1, "quantity": "1"}]},
                headers=T2,
            ),
        ]
        assert [r.status_code for r in returned] == [201, 201], [r.text for r in returned]
    async with agent.sessionmaker() as session:
        last_seq = await session.scalar(select(func.max(OutboxEvent.seq)))

    async def arrived() -> bool:
        async with central.sessionmaker() as session:
            receipts = await session.scalar(select(func.count(Receipt.id)))
            returns = await session.scalar(select(func.count()).select_from(CustomerReturn))
        return (receipts, returns) == (2, 2)

    await wait_until(arrived, timeout=30)

    async def whole() -> bool:
        async with central.sessionmaker() as session:
            state = await session.get(BranchSyncState, "B001")
        return state is not None and state.contiguous_seq == last_seq

    await wait_until(whole, timeout=30)
    async with central.sessionmaker() as session:
        assert await session.scalar(select(func.count(DeadLetter.id))) == 0
        state = await session.get(BranchSyncState, "B001")
        assert state is not None
        # Every event of the branch (two shifts opened, two sales, two returns), no gap.
        assert (state.contiguous_seq, state.max_seq) == (last_seq, last_seq) == (6, 6)
        receipts = (
            await session.execute(select(Receipt.till, Receipt.sale_id, Receipt.total))
        ).all()
        assert sorted(tuple(r) for r in receipts) == [
            ("T1", "u4", sold[0].json()["total"]),
            ("T2", "u4", sold[1].json()["total"]),
        ]
        returns = (
            await session.execute(
                select(
                    CustomerReturn.till,
                    CustomerReturn.return_id,
                    CustomerReturn.original_till,
                    CustomerReturn.total,
                )
            )
        ).all()
        assert sorted(tuple(r) for r in returns) == [
            ("T1", "r1", "T2", returned[0].json()["total"]),
            ("T2", "r1", "T2", returned[1].json()["total"]),
        ]
