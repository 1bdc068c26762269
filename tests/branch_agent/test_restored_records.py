"""A database restored from a backup, once central has listed the sales and returns it
holds that the database lost: a till's retry of one is a 409 naming its id, nothing
recorded or printed, and a look-up of one a 410 saying what is known of it; the
receipt and return numbers go on past central's. Until central has read what the
branch sent (``numbering_wait``) the agent asks again within seconds, the restore
hold kept, and the status says where the hold stands."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from branch_agent.backup import RESTORED_UNANSWERED
from branch_agent.db import create_sessionmaker
from branch_agent.masterdata_snapshot import SnapshotRequester
from branch_agent.models import Sale
from branch_agent.numbering import RESTORE_UNKNOWN, EventNumbering
from branch_agent.restored import flag_recorded_again
from branch_agent.status import format_status, offline_status
from protocol.masterdata import (
    HeldRecordsReply,
    HeldReturn,
    HeldSale,
    SnapshotReply,
    encode_snapshot_rpc,
)
from tests.branch_agent.conftest import MANAGER, TILL, Store
from tests.branch_agent.test_sales_and_fiscal import basket
from tests.branch_agent.test_storno_cash_z import post_return, return_body


async def _held(store: Store, page: HeldRecordsReply) -> None:
    numbering = store.agent.numbering
    await numbering.keep_held(page)


async def test_a_retry_of_a_sale_or_return_central_holds_is_refused_and_numbers_go_on(
    store: Store,
) -> None:
    first = (await store.sale(basket("s-1"))).json()
    assert first["receipt_number"] == 1
    shift = first["shift_id"]
    page = HeldRecordsReply(
        sales=(
            HeldSale(
                seq=7,
                till="T1",
                sale_id="s-2",
                receipt_number=2,
                shift_id=shift,
                total=463,
                fiscal_number="1002",
            ),
            HeldSale(seq=8, till="T1", sale_id="s-3", receipt_number=3, shift_id=shift, total=5),
        ),
        returns=(
            HeldReturn(
                seq=9, till="T1", return_id="r-1", return_number=4, shift_id=shift, total=100
            ),
        ),
    )
    await _held(store, page)
    await _held(store, page)  # a crash before the answer was taken: fetched again
    printed = len(store.fiscal.sim.receipts)

    again = await store.sale(basket("s-2"))
    assert again.status_code == 409
    problem = again.json()
    assert problem["errors"][0]["field"] == "sale_id"
    assert "recorded before this agent's database was restored" in problem["detail"]
    assert "number 2 of shift" in problem["detail"]
    assert "total 4.63, fiscal number 1002" in problem["detail"]
    assert "not recorded or printed again" in problem["detail"]
    assert len(store.fiscal.sim.receipts) == printed
    async with store.agent.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Sale)) == 1
    # The till looks it up (its answer was lost): not a plain 404, what is known of it.
    looked_up = await store.client.get("/api/v1/sales/s-2", headers=TILL)
    assert looked_up.status_code == 410, looked_up.text
    gone = looked_up.json()
    assert gone["errors"][0]["field"] == "sale_id"
    assert "recorded before this agent's database was restored" in gone["detail"]
    assert gone["extra"]["recorded_before_restore"] == {
        "sale_id": "s-2",
        "till": "T1",
        "receipt_number": 2,
        "shift_id": shift,
        "total": 463,
        "fiscal_number": "1002",
    }
    assert (await store.client.get("/api/v1/sales/s-9", headers=TILL)).status_code == 404
    assert (await store.agent.status()).restored_records == 3

    refused = await post_return(store, return_body("r-1", "s-1", (1, "1")))
    assert refused.status_code == 409
    assert refused.json()["errors"][0]["field"] == "return_id"
    assert not store.fiscal.sim.storno_receipts
    assert len(await store.events("customer_return_recorded")) == 0

    # Other ids are new sales and returns, numbered past central's.
    new = await store.sale(basket("s-4"))
    assert new.status_code == 201
    assert new.json()["receipt_number"] == 4
    ret = await post_return(store, return_body("r-2", "s-1", (1, "1")))
    assert ret.status_code == 201, ret.text
    assert ret.json()["return_number"] == 5
    assert len(store.fiscal.sim.receipts) == printed + 1


async def test_sales_at_a_restored_database_wait_for_centrals_answer_a_bounded_time(
    agent_engine: Callable[..., AsyncEngine],
) -> None:
    engine = agent_engine()
    first = EventNumbering(create_sessionmaker(engine), asyncio.Lock(), lambda: None)
    await first.load()
    await first.settle(1)  # a numbered database, as a backup of one is
    async with engine.begin() as connection:
        # What branch_agent.backup.restore_database leaves in the database it restored.
        await connection.execute(
            text("INSERT INTO counters (name, value) VALUES (:name, 1)"),
            {"name": RESTORED_UNANSWERED},
        )

    def restored(hold_s: float) -> EventNumbering:
        sessions = create_sessionmaker(engine)
        return EventNumbering(sessions, asyncio.Lock(), lambda: None, restore_hold_s=hold_s)

    # Central answers within the hold: the sale goes on at the answer.
    numbering = restored(10.0)
    await numbering.load()
    assert numbering.restored
    assert numbering.restore_hold() == "holding"
    waiting = asyncio.create_task(numbering.hold_after_restore())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await numbering.settle(5, unknown=2)
    await asyncio.wait_for(waiting, 1)
    assert numbering.restore_hold() == ""
    async with engine.connect() as connection:
        kept = await connection.scalar(
            text("SELECT value FROM counters WHERE name = :name"), {"name": RESTORE_UNKNOWN}
        )
    assert kept == 2  # the status shows the numbers central will never receive
    # Answered: the mark is gone, a restart does not wait.
    again = restored(10.0)
    await again.load()
    assert not again.restored
    await asyncio.wait_for(again.hold_after_restore(), 0.1)

    # No answer (the link down): the store trades on once the hold is over.
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO counters (name, value) VALUES (:name, 1)"),
            {"name": RESTORED_UNANSWERED},
        )
    offline = restored(0.3)
    await offline.load()
    started = time.monotonic()
    await offline.hold_after_restore()
    assert 0.2 < time.monotonic() - started < 2
    await asyncio.wait_for(offline.hold_after_restore(), 0.05)  # once, not per sale
    assert offline.restore_hold() == "expired"  # the status: sales taken unchecked


class _Central:
    """A NATS client whose position reports central answers with ``reply``."""

    def __init__(self, reply: SnapshotReply) -> None:
        self.reply = reply
        self.reports = 0

    async def request(self, subject: str, data: bytes, timeout: float) -> Any:
        self.reports += 1
        return SimpleNamespace(data=encode_snapshot_rpc(self.reply))


async def test_while_central_reads_what_was_sent_the_agent_asks_again_soon_and_holds(
    store: Store,
) -> None:
    agent = store.agent
    numbering = agent.numbering
    # A restored database asking central, which still reads what the branch sent.
    numbering.confirmed, numbering.restored = False, True
    numbering.start, numbering.checked = 1, 4
    numbering._hold_until = time.monotonic() + 30
    requester = SnapshotRequester("B1", agent.masterdata, retry_s=0.05, interval_s=300)
    requester.numbering = numbering
    reason = "central's ingest queue holds more of branch B1's messages than it reads at once"
    central = _Central(SnapshotReply(action="none", numbering_refused=reason, numbering_wait=True))
    stop = asyncio.Event()
    task = asyncio.create_task(requester.run(central, stop))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.5)
        # Asked again every retry_s (not every 30 s), nothing settled, sales held.
        assert central.reports >= 4
        assert not numbering.settled
        assert numbering.waiting
        status = await agent.status()
        assert (status.numbering_refused, status.restore_hold) == (reason, "holding")
        assert "sales and returns wait" in format_status(status)
        # Read: the answer is taken, the hold ends.
        central.reply = SnapshotReply(action="none", event_seq_start=5)
        await asyncio.wait_for(numbering._answered.wait(), 2)
        assert numbering.settled
        assert not numbering.waiting
        assert (await agent.status()).restore_hold == ""
    finally:
        stop.set()
        requester.poke()
        await asyncio.wait_for(task, 2)


async def test_a_retry_taken_unchecked_before_centrals_list_is_flagged_once(
    store: Store, caplog: Any
) -> None:
    """The restore hold expired (the link down): a till's retries of a sale and a return
    central holds were recorded and printed again. Central's answer comes: each is
    flagged with the original beside it (database, status, manager's route, log), once;
    a sale that is no retry is not, and is counted as unchecked when central says some
    numbers after the backup never reached it."""
    agent = store.agent
    numbering = agent.numbering
    before = (await store.sale(basket("s-1"))).json()  # in the backup
    shift = before["shift_id"]
    async with agent.sessionmaker() as session, session.begin():
        # Recorded before the restore (the marker's moment, as restore_database sets it).
        await session.execute(text("UPDATE sales SET created_at = '2026-01-01 00:00:00'"))
        await session.execute(
            text("INSERT INTO counters (name, value) VALUES (:name, :at)"),
            {"name": RESTORED_UNANSWERED, "at": int(time.time()) - 5},
        )
    numbering.confirmed, numbering.restored = False, True
    numbering.start, numbering.checked = 1, len(await store.events())
    numbering._hold_until = time.monotonic()  # expired: taken unchecked
    printed = len(store.fiscal.sim.receipts)
    again = await store.sale(basket("s-2"))  # the till's retry of central's s-2
    assert again.status_code == 201, again.text
    second = again.json()
    assert (await store.sale(basket("s-3"))).status_code == 201  # a new sale
    returned = await post_return(store, return_body("r-1", "s-1", (1, "1")))
    assert returned.status_code == 201, returned.text
    assert len(store.fiscal.sim.receipts) == printed + 2  # printed again, unchecked
    page = HeldRecordsReply(
        sales=(
            HeldSale(
                seq=7,
                till="T1",
                sale_id="s-2",
                receipt_number=2,
                shift_id=shift,
                total=second["total"],
                fiscal_number="1002",
            ),
        ),
        returns=(
            HeldReturn(
                seq=8, till="T1", return_id="r-1", return_number=3, shift_id=shift, total=100
            ),
        ),
    )
    await _held(store, page)
    caplog.set_level("ERROR", logger="branch_agent.numbering")
    await numbering.settle(9, unknown=1)

    listed = (
        await store.client.get("/api/v1/manager/sales/recorded-again", headers=MANAGER)
    ).json()
    assert [(r["kind"], r["till"], r["record_id"]) for r in listed] == [
        ("sale", "T1", "s-2"),
        ("return", "T1", "r-1"),
    ]
    sale = listed[0]
    assert (sale["number"], sale["fiscal_number"], sale["seq"]) == (2, "1002", 7)
    assert (sale["again_number"], sale["again_total"]) == (
        second["receipt_number"],
        second["total"],
    )
    assert sale["again_fiscal_number"] == second["fiscal_number"]
    assert sale["again_seq"] is not None
    assert sale["again_seq"] >= 9
    assert listed[1]["again_total"] == returned.json()["total"]
    tills = await store.client.get("/api/v1/manager/sales/recorded-again", headers=TILL)
    assert tills.status_code == 403
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    flagged = [m for m in errors if "recorded and printed again before central listed" in m]
    assert len(flagged) == 2
    assert "T1 sale s-2" in flagged[0]
    assert "charged twice" in flagged[0]
    assert "T1 return r-1" in flagged[1]
    assert "refunded twice" in flagged[1]

    status = await agent.status()
    assert len(status.recorded_again) == 2
    assert status.recorded_again[0].startswith(
        f"T1 sale s-2: recorded again as receipt {second['receipt_number']} of shift {shift}"
    )
    assert "central holds receipt 2" in status.recorded_again[0]
    assert status.restore_unchecked == 1  # s-3: no retry central holds, none it knows
    text_page = format_status(status)
    assert "RECORDED AGAIN   T1 sale s-2" in text_page
    assert "1 sale(s)/return(s) taken unchecked" in text_page
    # The stopped agent's page says the same, from its database.
    offline = offline_status(Path(agent.settings.data_dir) / "agent.db", "B1")
    assert (offline.recorded_again, offline.restore_unchecked) == (status.recorded_again, 1)

    # Flagged once: the same list again (a crash before the answer was taken) flags
    # nothing new, and the found moment stays.
    async with agent.sessionmaker() as session, session.begin():
        assert await flag_recorded_again(session) == []
    assert (
        await store.client.get("/api/v1/manager/sales/recorded-again", headers=MANAGER)
    ).json() == listed

    # The manager refunded the second charge: settled, it leaves the status and the
    # start's log, and stays listed with who settled it and why.
    url = "/api/v1/manager/sales/recorded-again/sale/T1/s-2/settle"
    body = {"settled_by": "maria", "note": "second receipt refunded, return r-9"}
    assert (await store.client.post(url, json=body, headers=TILL)).status_code == 403
    for bad, field in (
        ({"settled_by": " ", "note": "x"}, "settled_by"),  # blank
        ({"note": "x"}, "settled_by"),  # missing
        ({"settled_by": "maria", "note": "  "}, "note"),
    ):
        refused = await store.client.post(url, json=bad, headers=MANAGER)
        assert refused.status_code in (400, 422), refused.text
        assert refused.json()["errors"][0]["field"] == field, refused.text
    unknown = await store.client.post(
        "/api/v1/manager/sales/recorded-again/sale/T1/s-3/settle", json=body, headers=MANAGER
    )
    assert unknown.status_code == 404, unknown.text  # s-3 was no retry: nothing to settle
    done = await store.client.post(url, json=body, headers=MANAGER)
    assert done.status_code == 200, done.text
    settled = done.json()
    assert (settled["settled_by"], settled["settled_note"]) == (body["settled_by"], body["note"])
    assert settled["settled_at"] is not None
    again = await store.client.post(url, json=body, headers=MANAGER)  # a retry: the same
    assert (again.status_code, again.json()) == (200, settled)
    other = await store.client.post(url, json=body | {"note": "other"}, headers=MANAGER)
    assert other.status_code == 409, other.text
    assert "settled by maria" in other.json()["detail"]
    status = await agent.status()
    assert [line.split(":")[0] for line in status.recorded_again] == ["T1 return r-1"]
    offline = offline_status(Path(agent.settings.data_dir) / "agent.db", "B1")
    assert offline.recorded_again == status.recorded_again
    listed = (
        await store.client.get("/api/v1/manager/sales/recorded-again", headers=MANAGER)
    ).json()
    assert [(r["record_id"], r["settled_by"]) for r in listed] == [("s-2", "maria"), ("r-1", "")]
