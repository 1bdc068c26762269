"""A store trades a whole day with NATS down; when the link returns, central ends with
exactly the branch's sales, returns, shifts and stock moves: nothing lost, nothing doubled.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from branch_agent.models import OutboxEvent, Sale
from branch_agent.settings import DeviceConfig, TillConfig
from branch_agent.stock import balances
from branch_agent.till_sim import TillSimulator
from central.embedded_nats import EmbeddedNats
from central.models import BranchStatus, IngestedEvent, Receipt, StockBalance
from devices.sim import SimulatorHandle, start_simulator_pty
from tests.conftest import asgi_client, register_branch, wait_until

MANAGER = {"Authorization": "Bearer boss"}


@pytest.fixture
def till_devices() -> Iterator[dict[str, SimulatorHandle]]:
    handles = {
        kind: start_simulator_pty(kind) for kind in ("fiscal", "printer", "display", "scale")
    }
    try:
        yield handles
    finally:
        for handle in handles.values():
            handle.stop()


def tills(handles: dict[str, SimulatorHandle]) -> tuple[TillConfig, ...]:
    return (
        TillConfig(
            id="T1",
            token="t1",
            fiscal_printer=DeviceConfig(port=handles["fiscal"].url),
            receipt_printer=DeviceConfig(port=handles["printer"].url),
            display=DeviceConfig(port=handles["display"].url),
            scale=DeviceConfig(port=handles["scale"].url),
        ),
        TillConfig(id="T2", token="t2"),
    )


async def central_books(central: Any, branch: str) -> dict[str, Any]:
    async with central.sessionmaker() as session:
        receipts = {
            r.sale_id: (r.total, r.fiscal_number)
            for r in await session.scalars(select(Receipt).where(Receipt.branch == branch))
        }
        kinds = Counter(
            await session.scalars(select(IngestedEvent.kind).where(IngestedEvent.branch == branch))
        )
        stock = {
            b.sku: b.quantity_milli
            for b in await session.scalars(
                select(StockBalance).where(StockBalance.branch == branch)
            )
            if b.quantity_milli
        }
    return {"receipts": receipts, "kinds": kinds, "stock": stock}


async def agent_books(agent: Any) -> dict[str, Any]:
    async with agent.sessionmaker() as session:
        receipts = {
            s.sale_id: (s.total, s.fiscal_number)
            for s in await session.scalars(select(Sale).where(Sale.status != "pending_fiscal"))
        }
        kinds = Counter(await session.scalars(select(OutboxEvent.kind)))
        stock = {sku: q for sku, q in (await balances(session)).items() if q}
    return {"receipts": receipts, "kinds": kinds, "stock": stock}


async def test_a_day_offline_then_central_has_exactly_the_branch_books(
    central: Any,
    nats_server: EmbeddedNats,
    make_agent: Any,
    till_devices: dict[str, SimulatorHandle],
    tmp_path: Path,
) -> None:
    await register_branch(central, "B1")
    nats_server.stop()
    # The agent even starts while the link is down: the store opens anyway.
    agent = await make_agent(
        "B1",
        nats_server.url,
        tills=tills(till_devices),
        manager_token="boss",
        fiscal_retry_interval_s=0.3,
        device_poll_interval_s=0.5,
    )
    fiscal = till_devices["fiscal"].sim
    # Till 1 weighs loose goods on its scale; till 2 scans label-scale codes.
    till_devices["scale"].sim.set_weight("0.875")
    till_1 = TillSimulator(
        "http://testserver", "t1", seed=11, shift_sales=12, return_rate=0.15, use_scale=True
    )
    till_2 = TillSimulator(
        "http://testserver", "t2", seed=22, shift_sales=30, return_rate=0.15, use_scale=False
    )
    async with asgi_client(agent.app) as client:
        await till_1.open_shift(client)
        await till_2.open_shift(client)
        for n in range(30):
            if n == 8:
                fiscal.paper_end = True  # the roll runs out; sales keep being taken
            if n == 14:
                # Sales of the paper-out hour wait for the printer, safe and visible.
                assert len(await agent.sales.pending_sales("T1")) >= 3
                fiscal.paper_end = False
            await till_1.step(client)
            await till_2.step(client)
        documents = [
            {
                "doc_type": "goods_receipt",
                "supplier": "DAIRY",
                "lines": [
                    {"sku": "MILK-1L", "quantity": "48", "unit_cost": 70},
                    # Enough for what the tills sold and what leaves below: a write-off
                    # or transfer out beyond the stock on hand is refused (409).
                    {"sku": "CHEESE-KG", "quantity": "200", "unit_cost": 800},
                    {"sku": "WATER-15", "quantity": "200", "unit_cost": 40},
                ],
            },
            {
                "doc_type": "write_off",
                "reason": "expired",
                "lines": [{"sku": "CHEESE-KG", "quantity": "0.500"}],
            },
            {
                "doc_type": "transfer_out",
                "counterpart_branch": "B2",
                "lines": [{"sku": "WATER-15", "quantity": "6"}],
            },
        ]
        for body in documents:
            posted = await client.post("/api/v1/stock/documents", json=body, headers=MANAGER)
            assert posted.status_code == 201, posted.text
        take = await client.post("/api/v1/stock/stocktakes", json={}, headers=MANAGER)
        doc_id = take.json()["document_id"]
        await client.post(
            f"/api/v1/stock/stocktakes/{doc_id}/sheets",
            json={"sheet": "1", "lines": [{"sku": "COFFEE-250", "counted": "12"}]},
            headers=MANAGER,
        )
        assert (
            await client.post(f"/api/v1/stock/stocktakes/{doc_id}/post", headers=MANAGER)
        ).status_code == 200

        async def nothing_pending() -> bool:
            return not await agent.sales.pending_sales()

        await wait_until(nothing_pending, timeout=20)
        assert (await till_1.close_shift(client)) is not None
        assert (await till_2.close_shift(client)) is not None

    assert till_1.log.refused == 0
    assert till_2.log.refused == 0
    assert len(till_1.log.sales) + len(till_2.log.sales) > 40
    # Every sale printed once: the printer's journal holds exactly the fiscalized sales.
    fiscal_numbers = [n for _, n in (await agent_books(agent))["receipts"].values() if n]
    assert sorted(str(r.number) for r in fiscal.receipts) == sorted(fiscal_numbers)
    assert len(fiscal_numbers) == len(till_1.log.sales)
    health = await agent.health()
    assert health.outbox_backlog > 40
    assert health.nats == "disconnected"

    nats_server.start()
    expected = await agent_books(agent)

    async def synced() -> bool:
        books = await central_books(central, "B1")
        return bool(books["kinds"].total() == expected["kinds"].total())

    await wait_until(synced, timeout=60)

    async def drained() -> bool:
        return bool((await agent.health()).outbox_backlog == 0)

    await wait_until(drained, timeout=20)
    await asyncio.sleep(0.5)
    books = await central_books(central, "B1")
    assert books["receipts"] == expected["receipts"]
    assert books["kinds"] == expected["kinds"]
    assert books["stock"] == expected["stock"]
    assert expected["kinds"]["customer_return_recorded"] > 0
    assert expected["kinds"]["shift_closed"] >= 2
    async with agent.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(OutboxEvent)) == sum(
            books["kinds"].values()
        )

    # Central knows how the branch is: its heartbeat after the catch-up.
    total = books["kinds"].total()

    async def heartbeat_caught_up() -> bool:
        async with central.sessionmaker() as session:
            row = await session.get(BranchStatus, "B1", populate_existing=True)
        return row is not None and (row.outbox_backlog, row.last_acked_seq) == (0, total)

    await wait_until(heartbeat_caught_up, timeout=20)
    async with central.sessionmaker() as session:
        row = await session.get(BranchStatus, "B1")
    assert row is not None
    assert row.last_recorded_seq == total
    states = {(d["till"], d["device"]): d["state"] for d in row.devices}
    assert states == {
        ("T1", "fiscal"): "ok",
        ("T1", "printer"): "ok",
        ("T1", "display"): "ok",
        ("T1", "scale"): "ok",
    }
