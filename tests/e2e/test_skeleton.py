"""One sale from a till to head office, through a real nats-server, exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import func, select

from branch_agent.models import Shift
from central.app import create_app
from central.embedded_nats import EmbeddedNats
from central.models import DeadLetter, Receipt
from tests.conftest import asgi_client, create_api_token, register_branch, wait_until


def sale(sale_id: str, *, cash: int = 1000) -> dict[str, Any]:
    return {
        "sale_id": sale_id,
        "shift_id": "S1",
        "cashier": "anna",
        "lines": [
            {"barcode": "4006381333931", "quantity": "2"},
            {"sku": "APPLE-KG", "quantity": "0.754"},
        ],
        "payments": [{"type": "cash", "amount": cash}],
    }


async def post_sale(agent: Any, body: dict[str, Any], token: str) -> httpx.Response:
    """Post a sale as the till with ``token``, into the shift it names (opened if not)."""
    await open_shift_quietly(agent, token, body.get("shift_id") or "S1")
    async with asgi_client(agent.app) as client:
        return await client.post(
            "/api/v1/sales", json=body, headers={"Authorization": f"Bearer {token}"}
        )


async def open_shift_quietly(agent: Any, token: str, shift_id: str) -> None:
    """The till's shift open in the agent's database, without its ShiftOpened event:
    the agent takes sales only into the till's open shift, and these tests count the
    branch's events by number (receipts only)."""
    till = next((t.id for t in agent.settings.tills if t.token == token), None)
    if till is None:
        return  # a wrong token: the sale is refused before any shift matters
    async with agent.sessionmaker() as session, session.begin():
        if await session.get(Shift, shift_id) is None:
            session.add(Shift(shift_id=shift_id, till=till, cashier="anna"))


async def receipts_at_central(central: Any) -> list[tuple[str, str]]:
    async with central.sessionmaker() as session:
        rows = await session.execute(select(Receipt.branch, Receipt.sale_id).order_by(Receipt.id))
        return [(r.branch, r.sale_id) for r in rows]


async def test_sales_at_two_agents_reach_central_exactly_once(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    for code in ("B1", "B2"):
        await register_branch(central, code)
    a1 = await make_agent("B1", nats_server.url)
    a2 = await make_agent("B2", nats_server.url)
    first = await post_sale(a1, sale("s-1"), "B1-till-1")
    assert first.status_code == 201, first.text
    receipt = first.json()
    # 2 x 1.19 + 0.754 kg x 2.99 (225.446 -> 225) = 463; change from 10.00 cash.
    assert (receipt["total"], receipt["change"]) == (463, 537)
    assert (await post_sale(a1, sale("s-2"), "B1-till-1")).status_code == 201
    assert (await post_sale(a2, sale("s-1"), "B2-till-1")).status_code == 201
    # The till repeats a sale it did not hear back about: the original comes back.
    repeat = await post_sale(a1, sale("s-1"), "B1-till-1")
    assert repeat.status_code == 200
    assert repeat.json()["receipt_number"] == receipt["receipt_number"]

    expected = [("B1", "s-1"), ("B1", "s-2"), ("B2", "s-1")]

    async def arrived() -> bool:
        return sorted(await receipts_at_central(central)) == expected

    await wait_until(arrived)
    await asyncio.sleep(0.5)
    assert sorted(await receipts_at_central(central)) == expected

    # And it is readable through the head-office API.
    token = await create_api_token(central, "analyst")
    async with asgi_client(
        create_app(central.settings, runtime=central),
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        page = (await client.get("/api/v1/receipts", params={"branch": "B1"})).json()
        assert page["total"] == 2
        assert page["items"][0]["lines"][1]["quantity"] == "0.754"
        assert page["items"][0]["payments"] == [{"type": "cash", "amount": 1000}]
        bad = await client.get(
            "/api/v1/receipts", params={"date_from": "2026-02-02", "date_to": "2026-01-01"}
        )
        assert bad.status_code == 422
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert bad.json()["errors"][0]["field"] == "date_from"


async def test_sales_made_while_nats_is_down_arrive_after_it_returns(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    await register_branch(central, "B1")
    agent = await make_agent("B1", nats_server.url)
    assert (await post_sale(agent, sale("before"), "B1-till-1")).status_code == 201
    await wait_until(lambda: _count(central, 1))
    nats_server.stop()
    for n in range(5):
        response = await post_sale(agent, sale(f"offline-{n}"), "B1-till-1")
        assert response.status_code == 201, "the store keeps selling while the link is down"
    health = await agent.health()
    assert health.outbox_backlog == 5
    nats_server.start()
    await wait_until(lambda: _count(central, 6), timeout=30)
    await wait_until(lambda: _backlog_is(agent, 0))
    await asyncio.sleep(0.5)
    assert len(await receipts_at_central(central)) == 6


async def test_malformed_message_is_dead_lettered_and_the_next_one_flows(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    await register_branch(central, "B1")
    assert central.js is not None
    await central.js.publish("up.B1.receipt_recorded", b"not a message")
    agent = await make_agent("B1", nats_server.url)
    assert (await post_sale(agent, sale("after-garbage"), "B1-till-1")).status_code == 201
    await wait_until(lambda: _count(central, 1))
    async with central.sessionmaker() as session:
        letters = (await session.scalars(select(DeadLetter))).all()
    assert len(letters) == 1
    assert letters[0].raw == b"not a message"
    assert "malformed event" in letters[0].reason


async def test_bad_sales_get_a_problem_and_record_nothing(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    agent = await make_agent("B1", nats_server.url)
    cases = [
        (
            {**sale("x1"), "lines": [{"barcode": "0000000000000", "quantity": "1"}]},
            "lines[0].barcode",
        ),
        ({**sale("x2"), "lines": [{"sku": "MILK-1L", "quantity": "-1"}]}, "lines[0].quantity"),
        ({**sale("x3"), "expected_total": 1}, "expected_total"),
        (sale("x4", cash=100), "payments"),
        ({**sale("x5"), "lines": [{"sku": "MILK-1L", "quantity": "1.5"}]}, "lines[0].quantity"),
    ]
    for body, field in cases:
        response = await post_sale(agent, body, "B1-till-1")
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"][0]["field"] == field
    assert (await post_sale(agent, sale("x6"), "wrong-token")).status_code == 401
    assert (await agent.health()).outbox_backlog == 0
    async with agent.sessionmaker() as session:
        from branch_agent.models import OutboxEvent, Sale

        assert await session.scalar(select(func.count()).select_from(Sale)) == 0
        assert await session.scalar(select(func.count()).select_from(OutboxEvent)) == 0


async def _count(central: Any, n: int) -> bool:
    return len(await receipts_at_central(central)) == n


async def _backlog_is(agent: Any, n: int) -> bool:
    return bool((await agent.health()).outbox_backlog == n)
