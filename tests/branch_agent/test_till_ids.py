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
import msgspec
import pytest
from sqlalchemy import func, select

from branch_agent.agent import Agent
from branch_agent.models import CashMove, CustomerReturn, OutboxEvent, Sale
from branch_agent.settings import AgentSettings, TillConfig
from protocol.codec import decode_envelope
from tests.branch_agent.conftest import Store
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
    async with agent.sessionmaker() as session:
        payloads = await session.scalars(select(OutboxEvent.payload).order_by(OutboxEvent.seq))
        return [
            {"kind": e.body.__struct_config__.tag} | msgspec.to_builtins(e.body)
            for e in map(decode_envelope, payloads)
        ]


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
    sale holds their products: T1's return of T2's coffee is T2's, not T1's bread; a
    sale of then (no manual discount amounts) is still told from other content."""
    agent, client = tills
    await two_u4_sales(client)
    for till, return_id, original in ((T1, "r1", "T2"), (T2, "r2", "T2"), (T1, "r3", "T1")):
        done = await client.post(
            "/api/v1/returns", json=ret(return_id, "1", original_till=original), headers=till
        )
        assert done.status_code == 201, done.text
    discounted = {
        "sale_id": "u8",
        "lines": [{"barcode": BREAD, "quantity": "2", "manual_discount": 50}],
        "payments": [{"type": "cash", "amount": 1000}],
    }
    assert (await client.post("/api/v1/sales", json=discounted, headers=T3)).status_code == 201
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
            # A sale recorded before the upgrade kept no discount amounts: its retry
            # is taken, one without the discount is other content.
            retry = await again.post("/api/v1/sales", json=discounted, headers=T3)
            assert retry.status_code == 200, retry.text
            undiscounted = {**discounted, "lines": [{"barcode": BREAD, "quantity": "2"}]}
            other = await again.post("/api/v1/sales", json=undiscounted, headers=T3)
            assert (other.status_code, problem_field(other)) == (409, "sale_id")
    finally:
        await restarted.stop()


# The same id with other content ----------------------------------------------------


async def counts(agent: Agent) -> tuple[int, int, int, int]:
    """Sales, returns, cash moves and outbox events recorded."""
    async with agent.sessionmaker() as session:
        return (
            await session.scalar(select(func.count(Sale.id))) or 0,
            await session.scalar(select(func.count(CustomerReturn.id))) or 0,
            await session.scalar(select(func.count(CashMove.id))) or 0,
            await session.scalar(select(func.count()).select_from(OutboxEvent)) or 0,
        )


def problem_field(response: httpx.Response) -> str:
    return str(response.json()["errors"][0]["field"])


async def test_a_sale_id_posted_again_with_another_basket_is_refused(
    tills: tuple[Agent, httpx.AsyncClient],
) -> None:
    agent, client = tills
    body = {
        "sale_id": "u5",
        "cashier": "anna",
        "lines": [
            {"barcode": BREAD, "quantity": "2", "manual_discount": 50},
            {"sku": "COFFEE-250"},
        ],
        "payments": [{"type": "cash", "amount": 2000}],
    }
    first = await client.post("/api/v1/sales", json=body, headers=T1)
    assert first.status_code == 201, first.text
    recorded = await counts(agent)
    # The till's answer was lost to a timeout: it sends the same sale again, spelling
    # the quantities its own way. The original comes back; nothing is recorded twice.
    retry = body | {
        "lines": [
            {"barcode": BREAD, "quantity": "2.000", "manual_discount": 50},
            {"sku": "COFFEE-250", "quantity": "1"},
        ]
    }
    again = await client.post("/api/v1/sales", json=retry, headers=T1)
    assert again.status_code == 200, again.text
    assert again.json() == first.json() | {"event_seq": None}
    assert await counts(agent) == recorded
    others = {
        "another quantity": body
        | {"lines": [{"barcode": BREAD, "quantity": "3", "manual_discount": 50}, body["lines"][1]]},
        "another product": body | {"lines": [body["lines"][0], {"sku": "MILK-1L"}]},
        "a line less": body | {"lines": body["lines"][:1]},
        "another manual discount": body
        | {"lines": [{"barcode": BREAD, "quantity": "2", "manual_discount": 60}, body["lines"][1]]},
        "other payments": body | {"payments": [{"type": "credit_card", "amount": 1000}]},
        "another cashier": body | {"cashier": "bob"},
    }
    for what, other in others.items():
        refused = await client.post("/api/v1/sales", json=other, headers=T1)
        assert refused.status_code == 409, (what, refused.text)
        assert problem_field(refused) == "sale_id", what
        assert "other content" in refused.json()["detail"], what
    assert await counts(agent) == recorded
    # The same id at another till is that till's own sale.
    other_till = await client.post("/api/v1/sales", json=others["another quantity"], headers=T2)
    assert other_till.status_code == 201, other_till.text


async def test_a_return_id_posted_again_with_other_lines_is_refused(
    tills: tuple[Agent, httpx.AsyncClient],
) -> None:
    agent, client = tills
    await two_u4_sales(client)
    first = await client.post("/api/v1/returns", json=ret("r1", "2", reason="broken"), headers=T2)
    assert first.status_code == 201, first.text
    recorded = await counts(agent)
    retry = await client.post(
        "/api/v1/returns", json=ret("r1", "2.000", reason="broken", original_till="T2"), headers=T2
    )
    assert retry.status_code == 200, retry.text
    assert retry.json() == first.json()
    for what, other in {
        "another quantity": ret("r1", "1", reason="broken"),
        "another reason": ret("r1", "2", reason="wrong size"),
        "another sale": ret("r1", "2", reason="broken") | {"original_sale_id": "u5"},
        "another refund": ret("r1", "2", reason="broken", refund_type="cash"),
    }.items():
        refused = await client.post("/api/v1/returns", json=other, headers=T2)
        assert refused.status_code == 409, (what, refused.text)
        assert problem_field(refused) == "return_id", what
    assert await counts(agent) == recorded


async def test_a_move_id_posted_again_with_another_amount_is_refused(
    tills: tuple[Agent, httpx.AsyncClient],
) -> None:
    agent, client = tills
    move = {"move_id": "m1", "direction": "in", "amount": 500, "reason": "float"}
    first = await client.post("/api/v1/cash-moves", json=move, headers=T1)
    assert first.status_code == 201, first.text
    recorded = await counts(agent)
    again = await client.post("/api/v1/cash-moves", json=move, headers=T1)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    for other in (move | {"direction": "out"}, move | {"amount": 600}, move | {"reason": "x"}):
        refused = await client.post("/api/v1/cash-moves", json=other, headers=T1)
        assert refused.status_code == 409, refused.text
        assert problem_field(refused) == "move_id"
    assert await counts(agent) == recorded
    shift = (await client.get("/api/v1/shifts/current", headers=T1)).json()
    assert (shift["cash_in"], shift["cash_out"]) == (500, 0)


async def test_a_fiscal_cash_move_retried_after_a_lost_answer_must_be_the_same(
    store: Store,
) -> None:
    """On a till with a fiscal printer: the answer of a cash-out is lost (the printer
    went deaf after printing it); a post of its id with another amount is refused and
    prints nothing, the same move again is settled from the printer: 200, printed once."""
    from decimal import Decimal

    from devices.fiscal_datecs import CMD_CASH_IN_OUT
    from tests.branch_agent.conftest import TILL
    from tests.branch_agent.test_sales_and_fiscal import basket

    def power_cut(sim: Any) -> None:
        sim.power_loss(30.0)

    sim = store.fiscal.sim
    sim.at_command(CMD_CASH_IN_OUT, power_cut, nth=2)
    await store.sale(basket("s-cash"))
    post = {"move_id": "out-1", "direction": "out", "amount": 300}
    lost = await store.client.post("/api/v1/cash-moves", json=post, headers=TILL)
    assert lost.status_code == 503, lost.text
    sim.deaf_until = 0.0
    other = await store.client.post("/api/v1/cash-moves", json=post | {"amount": 200}, headers=TILL)
    assert other.status_code == 409, other.text
    assert problem_field(other) == "move_id"
    assert sim.cash_moves == [(1, Decimal("3.00"))]
    again = await store.client.post("/api/v1/cash-moves", json=post, headers=TILL)
    assert again.status_code == 200, again.text
    assert again.json()["amount"] == 300
    assert sim.cash_moves == [(1, Decimal("3.00"))]
