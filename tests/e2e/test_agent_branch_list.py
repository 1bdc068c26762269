"""A transfer to a branch the chain does not have is refused at the store: central sends
the codes of its branches with its answer to the agent's position report (only when the
agent's copy differs), the agent keeps them in its database, and a transfer naming
another code is a 422 naming ``counterpart_branch``, with the link up or down. Before,
it was posted offline, its stock left, and central could only flag it
``unknown_branch``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.embedded_nats import EmbeddedNats
from central.models import StockDocument, StockTransferDiscrepancy
from protocol.masterdata import branch_list_digest
from tests.conftest import asgi_client, register_branch, wait_until

MANAGER = {"Authorization": "Bearer boss"}


def transfer(to: str, document_id: str) -> dict[str, Any]:
    return {
        "document_id": document_id,
        "doc_type": "transfer_out",
        "counterpart_branch": to,
        "lines": [{"sku": "MILK-1L", "quantity": "1"}],
    }


async def test_a_transfer_to_a_branch_the_chain_does_not_have_is_refused(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    await register_branch(central, "B001")
    await register_branch(central, "B002")
    agent = await make_agent("B001", nats_server.url, manager_token="boss")

    async def knows(*codes: str) -> bool:
        return bool(agent.masterdata.branches_digest == branch_list_digest(codes))

    await wait_until(lambda: knows("B001", "B002"))
    reports = central.snapshots.requests
    async with asgi_client(agent.app) as client:
        receipt = {
            "document_id": "GR-1",
            "doc_type": "goods_receipt",
            "supplier": "DAIRY",
            "lines": [{"sku": "MILK-1L", "quantity": "24", "unit_cost": 70}],
        }
        assert (
            await client.post("/api/v1/stock/documents", json=receipt, headers=MANAGER)
        ).status_code == 201
        wrong = await client.post(
            "/api/v1/stock/documents", json=transfer("B999", "TO-X"), headers=MANAGER
        )
        assert wrong.status_code == 422, wrong.text
        assert wrong.json()["errors"][0]["field"] == "counterpart_branch"
        assert "B999 is not a branch of the chain" in wrong.json()["detail"]
        sent = await client.post(
            "/api/v1/stock/documents", json=transfer("B002", "TO-1"), headers=MANAGER
        )
        assert sent.status_code == 201, sent.text

        # A branch registered at central reaches the store with its next report.
        await register_branch(central, "B003")
        central.snapshots.BRANCH_LIST_CACHE_S = 0.0
        assert agent.masterdata.requester is not None
        agent.masterdata.requester.poke()
        await wait_until(lambda: knows("B001", "B002", "B003"))
        assert central.snapshots.requests > reports
        opened = await client.post(
            "/api/v1/stock/documents", json=transfer("B003", "TO-2"), headers=MANAGER
        )
        assert opened.status_code == 201, opened.text

    async def at_central() -> bool:
        async with central.sessionmaker() as session:
            ids = set(await session.scalars(select(StockDocument.document_id)))
        return ids == {"GR-1", "TO-1", "TO-2"}

    await wait_until(at_central)
    async with central.sessionmaker() as session:
        flagged = list(await session.scalars(select(StockTransferDiscrepancy.kind)))
    assert flagged == []

    # The list is the agent's own: restarted with the link down, it still refuses.
    await agent.stop()
    nats_server.stop()
    offline = await make_agent("B001", nats_server.url, manager_token="boss")
    assert offline.masterdata.branches_digest == branch_list_digest(["B001", "B002", "B003"])
    async with asgi_client(offline.app) as client:
        wrong = await client.post(
            "/api/v1/stock/documents", json=transfer("B999", "TO-Y"), headers=MANAGER
        )
        assert wrong.status_code == 422, wrong.text
        assert wrong.json()["errors"][0]["field"] == "counterpart_branch"
        sent = await client.post(
            "/api/v1/stock/documents", json=transfer("B002", "TO-3"), headers=MANAGER
        )
        assert sent.status_code == 201, sent.text
