"""Counted cash from the till's close to head office through a real nats-server: the
shift's count and expected cash at central, in GET /api/v1/shifts and the shift
reconciliation report (rows, CSV, and the total cash over/short of the counted shifts);
a closing from an agent from before counted cash (no such fields on the wire) ingests
as not counted."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import select

from central.embedded_nats import EmbeddedNats
from central.models import DeadLetter, Shift
from tests.central.chain_events import BranchBooks, outbox_items, publish_raw
from tests.conftest import admin_client, asgi_client, register_branch, wait_until
from tests.e2e.test_skeleton import sale

T1 = {"Authorization": "Bearer B1-till-1"}


async def close_counted(agent: Any, shift_id: str, counted: int | None) -> Any:
    async with asgi_client(agent.app) as client:
        opened = await client.post(
            "/api/v1/shifts", json={"shift_id": shift_id, "opening_float": 2000}, headers=T1
        )
        assert opened.status_code == 201, opened.text
        sold = await client.post(
            "/api/v1/sales",
            json={**sale(f"{shift_id}-s", cash=1000), "shift_id": shift_id},
            headers=T1,
        )
        assert sold.status_code == 201, sold.text
        body = {} if counted is None else {"counted_cash": counted}
        closed = await client.post("/api/v1/shifts/current/close", json=body, headers=T1)
        assert closed.status_code == 200, closed.text
        return closed.json()


async def test_counted_cash_reaches_central_and_its_reconciliation_report(
    central: Any, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    for code in ("B1", "B2"):
        await register_branch(central, code)
    agent = await make_agent("B1", nats_server.url)
    # 2000 float + 463 cash (change given from 1000): short 0.63, then over 0.37.
    short = await close_counted(agent, "S1", 2400)
    assert (short["shift"]["expected_cash"], short["shift"]["cash_difference"]) == (2463, -63)
    over = await close_counted(agent, "S2", 2500)
    assert over["shift"]["cash_difference"] == 37
    uncounted = await close_counted(agent, "S3", None)
    assert uncounted["shift"]["cash_difference"] is None

    # B2 runs an agent from before counted cash: its closing has neither field.
    old = BranchBooks("B2", start=datetime.now(UTC))
    old.open_shift("O1")
    old.sale([("MILK", 1_000, 199)], shift="O1")
    closing = old.close_shift("O1")
    as_dict = msgspec.to_builtins(closing)
    del as_dict["body"]["counted_cash"], as_dict["body"]["expected_cash"]
    items = outbox_items(old)
    subject, _, msg_id = items[-1]
    items[-1] = (subject, msgspec.msgpack.encode(as_dict), msg_id)
    await publish_raw(nats_server.url, items)

    async def all_closed() -> bool:
        async with central.sessionmaker() as session:
            shifts = (await session.scalars(select(Shift))).all()
        return len(shifts) == 4 and all(s.closed_at is not None for s in shifts)

    await wait_until(all_closed, timeout=30)
    async with central.sessionmaker() as session:
        assert (await session.scalars(select(DeadLetter))).all() == []

    async with admin_client(central) as api:
        listed = (await api.get("/api/v1/shifts", params={"limit": 10})).json()["items"]
        by_id = {s["shift_id"]: s for s in listed}
        assert {
            k: (v["counted_cash"], v["expected_cash"], v["cash_difference"])
            for k, v in by_id.items()
        } == {
            "S1": (2400, 2463, -63),
            "S2": (2500, 2463, 37),
            "S3": (None, 2463, None),
            "O1": (None, None, None),
        }
        days = sorted({s["local_date"] for s in listed})
        period = {"date_from": days[0], "date_to": days[-1]}
        report = (await api.get("/api/v1/reports/shifts", params=period)).json()
        rows = {r["shift_id"]: r for r in report["rows"]}
        assert (rows["S1"]["counted_cash"], rows["S1"]["cash_difference"]) == (2400, -63)
        assert rows["O1"]["counted_cash"] is rows["O1"]["cash_difference"] is None
        # over/short across the shifts that were counted: -0.63 + 0.37
        assert (report["counted_shifts"], report["cash_difference_total"]) == (2, -26)
        # the count is a fact of the drawer, not a difference between records
        assert rows["S1"]["differences"] == []
        as_csv = await api.get("/api/v1/reports/shifts", params={**period, "format": "csv"})
        assert as_csv.status_code == 200, as_csv.text
        lines = {r["shift_id"]: r for r in csv.DictReader(io.StringIO(as_csv.text))}
        assert (
            lines["S1"]["expected_cash"],
            lines["S1"]["counted_cash"],
            lines["S1"]["cash_difference"],
        ) == ("24.63", "24.00", "-0.63")
        assert (lines["O1"]["counted_cash"], lines["O1"]["cash_difference"]) == ("", "")
