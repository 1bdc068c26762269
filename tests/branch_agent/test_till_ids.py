"""Sale, return and cash-move ids are the till's, through the till API of a real agent
(SQLite file): two tills may use the same id, a return finds its original sale per
till, and an id posted again with other content is refused, not answered with the
original."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from branch_agent.agent import Agent
from branch_agent.models import CashMove, CustomerReturn, OutboxEvent, Sale
from branch_agent.settings import AgentSettings, TillConfig
from tests.conftest import asgi_client

T1 = {"Authorization": "Bearer till-1-secret"}
T2 = {"Authorization": "Bearer till-2-secret"}
T3 = {"Authorization": "Bearer till-3-secret"}
BREAD = "4001686301265"
COFFEE = "8711000530085"


@pytest.fixture
async def tills(tmp_path: Path) -> AsyncIterator[tuple[Agent, httpx.AsyncClient]]:
    """A store whose three tills have no devices (each sale recorded at once)."""
    agent = Agent(
        AgentSettings(
            branch="B001",
            data_dir=str(tmp_path / "agent"),
            nats_url="nats://127.0.0.1:9",  # nothing listens: the store trades offline
            demo_catalog=True,
            manager_token="manager-secret",
            tills=tuple(TillConfig(id=f"T{n}", token=f"till-{n}-secret") for n in range(1, 4)),
        )
    )
    await agent.start()
    try:
        async with asgi_client(agent.app) as client:
            for headers in (T1, T2, T3):
                opened = await client.post(
                    "/api/v1/shifts", json={"cashier": "anna"}, headers=headers
                )
                assert opened.status_code == 201, opened.text
            yield agent, client
    finally:
        await agent.stop()


def sale(sale_id: str, barcode: str, quantity: str, pay: str, amount: int) -> dict[str, Any]:
    return {
        "sale_id": sale_id,
        "lines": [{"barcode": barcode, "quantity": quantity}],
        "payments": [{"type": pay, "amount": amount}],
    }


def ret(return_id: str, quantity: str, **extra: Any) -> dict[str, Any]:
    return {
        "return_id": return_id,
        "original_sale_id": "u4",
        "lines": [{"line_no": 1, "quantity": quantity}],
        **extra,
    }


async def two_u4_sales(client: httpx.AsyncClient) -> None:
    """T1's u4: one bread; T2's u4: five coffees by card."""
    bread = await client.post("/api/v1/sales", json=sale("u4", BREAD, "1", "cash", 500), headers=T1)
    coffee = await client.post(
        "/api/v1/sales", json=sale("u4", COFFEE, "5", "credit_card", 5 * 699), headers=T2
    )
    assert (bread.status_code, coffee.status_code) == (201, 201), (bread.text, coffee.text)
    assert [x["sku"] for x in bread.json()["lines"]] == ["BREAD-500"]
    assert [x["sku"] for x in coffee.json()["lines"]] == ["COFFEE-250"]


async def test_a_return_counts_what_was_returned_of_its_own_tills_sale(
    tills: tuple[Agent, httpx.AsyncClient],
) -> None:
    agent, client = tills
    await two_u4_sales(client)
    # T1 takes back two of T2's coffees, naming T2's receipt.
    first = await client.post(
        "/api/v1/returns", json=ret("r1", "2", original_till="T2"), headers=T1
    )
    assert first.status_code == 201, first.text
    assert (first.json()["original_till"], first.json()["lines"][0]["sku"]) == ("T2", "COFFEE-250")
    # T2 takes back one of its own u4 without naming a till: its own sale, three left.
    own = await client.post("/api/v1/returns", json=ret("r2", "1"), headers=T2)
    assert own.status_code == 201, own.text
    assert (own.json()["original_till"], own.json()["lines"][0]["sku"]) == ("T2", "COFFEE-250")
    # T1's own u4 is the bread: what T2's sale had returned does not count against it.
    bread = await client.post("/api/v1/returns", json=ret("r3", "1"), headers=T1)
    assert bread.status_code == 201, bread.text
    assert (bread.json()["original_till"], bread.json()["lines"][0]["sku"]) == ("T1", "BREAD-500")
    # Of T2's five coffees two went back to T1, one to T2: two are left.
    too_many = await client.post("/api/v1/returns", json=ret("r4", "3"), headers=T2)
    assert too_many.status_code == 422, too_many.text
    assert too_many.json()["errors"][0]["field"] == "lines[0].quantity"
    assert "only 2.000 of line 1" in too_many.json()["detail"]
    async with agent.sessionmaker() as session:
        kept = (
            await session.execute(
                select(
                    CustomerReturn.till, CustomerReturn.return_id, CustomerReturn.original_till
                ).order_by(CustomerReturn.id)
            )
        ).all()
    assert [tuple(k) for k in kept] == [("T1", "r1", "T2"), ("T2", "r2", "T2"), ("T1", "r3", "T1")]
    events = [e for e in await outbox(agent) if e["kind"] == "customer_return_recorded"]
    assert [(e["till"], e["original_till"]) for e in events] == [
        ("T1", "T2"),
        ("T2", "T2"),
        ("T1", "T1"),
    ]


async def test_a_return_from_a_till_without_the_sale_takes_the_one_other_tills(
    tills: tuple[Agent, httpx.AsyncClient],
) -> None:
    _, client = tills
    only = await client.post("/api/v1/sales", json=sale("u9", COFFEE, "1", "cash", 699), headers=T2)
    assert only.status_code == 201, only.text
    taken = await client.post(
        "/api/v1/returns", json=ret("r1", "1") | {"original_sale_id": "u9"}, headers=T3
    )
    assert taken.status_code == 201, taken.text
    assert taken.json()["original_till"] == "T2"


async def test_a_return_of_a_sale_id_several_other_tills_used_must_name_the_till(
    tills: tuple[Agent, httpx.AsyncClient],
) -> None:
    agent, client = tills
    await two_u4_sales(client)
    ambiguous = await client.post("/api/v1/returns", json=ret("r1", "1"), headers=T3)
    assert ambiguous.status_code == 409, ambiguous.text
    assert ambiguous.json()["errors"][0]["field"] == "original_till"
    assert "T1, T2" in ambiguous.json()["detail"]
    unknown = await client.post(
        "/api/v1/returns", json=ret("r1", "1", original_till="T3"), headers=T3
    )
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["errors"][0]["field"] == "original_sale_id"
    async with agent.sessionmaker() as session:
        assert await session.scalar(select(func.count(CustomerReturn.id))) == 0
    named = await client.post(
        "/api/v1/returns", json=ret("r1", "1", original_till="T1"), headers=T3
    )
    assert named.status_code == 201, named.text
    assert named.json()["lines"][0]["sku"] == "BREAD-500"


async def outbox(agent: Agent) -> list[dict[str, Any]]:
    """The bodies of the outbox's events, in sequence order, with their kind."""
    from protocol.codec import decode_envelope

    async with agent.sessionmaker() as session:
        payloads = await session.scalars(select(OutboxEvent.payload).order_by(OutboxEvent.seq))
        import msgspec

        return [
            {"kind": e.body.__struct_config__.tag} | msgspec.to_builtins(e.body)
            for e in map(decode_envelope, payloads)
        ]


__all__ = ["CashMove", "Sale"]


def _migrate(path: Path, revision: str, *, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    import migrations
    from branch_agent.db import database_url

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent / "agent"))
    config.set_main_option("sqlalchemy.url", database_url(path))
    (command.downgrade if down else command.upgrade)(config, revision)


async def test_returns_recorded_before_the_upgrade_find_the_till_of_their_sale(
    tills: tuple[Agent, httpx.AsyncClient],
) -> None:
    """Returns recorded by the release before (no original_till) get the till whose
    sale holds their products: T1's return of T2's coffee is T2's, not T1's bread."""
    agent, client = tills
    await two_u4_sales(client)
    for till, return_id, original in ((T1, "r1", "T2"), (T2, "r2", "T2"), (T1, "r3", "T1")):
        done = await client.post(
            "/api/v1/returns", json=ret(return_id, "1", original_till=original), headers=till
        )
        assert done.status_code == 201, done.text
    path = agent.settings.database_path
    await agent.stop()
    await asyncio.to_thread(_migrate, path, "a1802", down=True)
    await asyncio.to_thread(_migrate, path, "heads")
    restarted = Agent(agent.settings)
    await restarted.start()
    try:
        async with restarted.sessionmaker() as session:
            kept = (
                await session.execute(
                    select(CustomerReturn.return_id, CustomerReturn.original_till).order_by(
                        CustomerReturn.id
                    )
                )
            ).all()
        assert [tuple(k) for k in kept] == [("r1", "T2"), ("r2", "T2"), ("r3", "T1")]
        async with asgi_client(restarted.app) as again:
            # Three coffees of T2's u4 left, none of T1's bread.
            last = await again.post("/api/v1/returns", json=ret("r4", "3"), headers=T2)
            assert last.status_code == 201, last.text
            none = await again.post("/api/v1/returns", json=ret("r5", "1"), headers=T1)
            assert none.status_code == 422, none.text
    finally:
        await restarted.stop()
