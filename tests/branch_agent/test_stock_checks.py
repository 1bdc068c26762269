"""What a store's stock documents are checked against before they are posted: a repeat
of a document posted without an id, a transfer taken in twice, more stock leaving than
the store has, a transfer to a branch the chain does not have, blank texts, a stocktake
posted again. Each refusal names what to do to post it anyway; sales are never refused
for stock."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from branch_agent.masterdata import MasterDataApplier
from branch_agent.masterdata_snapshot import SnapshotRequester
from branch_agent.models import StockDocument
from protocol import masterdata as md
from tests.branch_agent.conftest import MANAGER, Store
from tests.branch_agent.test_stock_documents import (
    balances_of,
    counts,
    post_doc,
    receive,
    refused,
)

BREAD_RECEIPT = {
    "doc_type": "goods_receipt",
    "supplier": "BAKERY",
    "lines": [{"sku": "BREAD-500", "quantity": "10", "unit_cost": 120}],
}


async def test_a_document_without_an_id_posted_again_is_not_doubled(store: Store) -> None:
    """The manager runs ``stock goods-receipt BREAD-500=10@120 --supplier BAKERY`` again
    after a timeout: the second is refused, naming the first, and stock is 10, not 20."""
    first = await post_doc(store, BREAD_RECEIPT)
    assert first.status_code == 201, first.text
    number, document_id = first.json()["number"], first.json()["document_id"]
    before = (await counts(store), await balances_of(store))
    repeats = [
        BREAD_RECEIPT,
        # Written otherwise, the same content: quantities, blanks, line order, author.
        BREAD_RECEIPT
        | {
            "supplier": " BAKERY ",
            "lines": [{"sku": "BREAD-500", "quantity": "10.000", "unit_cost": 120}],
        },
        BREAD_RECEIPT | {"author": "someone else"},
    ]
    for body in repeats:
        detail = refused(await post_doc(store, body), 409, "document_id")
        assert f"{number} (document_id {document_id})" in detail, detail
        assert "without an id: " in detail, detail
        assert "again: true (CLI --again)" in detail
        assert "its own document_id (CLI --id" in detail
    assert (await counts(store), await balances_of(store)) == before
    assert before[1]["BREAD-500"] == 10_000

    # Other content is another document; so is one the caller gives its own id.
    other = BREAD_RECEIPT | {"lines": [{"sku": "BREAD-500", "quantity": "11", "unit_cost": 120}]}
    assert (await post_doc(store, other)).status_code == 201
    assert (await post_doc(store, BREAD_RECEIPT | {"document_id": "DN-4711"})).status_code == 201
    # A second delivery of the same, said so: posted.
    again = await post_doc(store, BREAD_RECEIPT | {"again": True})
    assert again.status_code == 201, again.text
    assert again.json()["document_id"] != document_id
    assert (await balances_of(store))["BREAD-500"] == 41_000
    # Other document types are not compared with it.
    write_off = {
        "doc_type": "write_off",
        "reason": "mouldy",
        "lines": [{"sku": "BREAD-500", "quantity": "1"}],
    }
    assert (await post_doc(store, write_off)).status_code == 201
    refused(await post_doc(store, write_off), 409, "document_id")

    # Beyond the window (ten minutes) the same content is a new document.
    async with store.agent.sessionmaker() as session, session.begin():
        for row in await session.scalars(select(StockDocument)):
            assert row.posted_at is not None
            row.posted_at -= timedelta(minutes=11)
    assert (await post_doc(store, BREAD_RECEIPT)).status_code == 201
    assert (await post_doc(store, write_off)).status_code == 201
    assert (await balances_of(store))["BREAD-500"] == 49_000


async def test_a_transfer_is_taken_in_once(store: Store) -> None:
    transfer_in = {
        "document_id": "TI-1",
        "doc_type": "transfer_in",
        "counterpart_branch": "B001",
        "transfer_ref": "TO-1",
        "lines": [
            {"sku": "WATER-15", "quantity": "11"},
            {"sku": "COFFEE-250", "quantity": "2"},
        ],
    }
    first = await post_doc(store, transfer_in)
    assert first.status_code == 201, first.text
    # The same document again is a retry: the original.
    retry = await post_doc(store, transfer_in)
    assert retry.status_code == 200, retry.text
    assert retry.json() == first.json()
    before = (await counts(store), await balances_of(store))
    # The same transfer under another id, or under none: refused, naming the first.
    second = transfer_in | {"document_id": "TI-2", "lines": [{"sku": "WATER-15", "quantity": "1"}]}
    for body in (second, {k: v for k, v in second.items() if k != "document_id"}):
        detail = refused(await post_doc(store, body), 409, "transfer_ref")
        assert "transfer TO-1 from B001 was taken in already by B1-TI-1 (document_id TI-1)" in (
            detail
        )
        assert "again: true (CLI --again)" in detail
    assert (await counts(store), await balances_of(store)) == before
    # Another branch's transfer out may carry the same id: its own transfer.
    other_sender = second | {"document_id": "TI-3", "counterpart_branch": "B003"}
    assert (await post_doc(store, other_sender)).status_code == 201
    # More goods of TO-1 arrived later, said so: posted (central lists it received_twice).
    late = await post_doc(store, second | {"again": True})
    assert late.status_code == 201, late.text
    assert (await balances_of(store))["WATER-15"] == 13_000
    # Its retry (with the flag or without) is the document: the original.
    for body in (second | {"again": True}, second):
        repeat = await post_doc(store, body)
        assert repeat.status_code == 200, repeat.text
        assert repeat.json() == late.json()
    assert (await balances_of(store))["WATER-15"] == 13_000


async def test_no_more_leaves_than_is_on_hand_unless_allowed(store: Store) -> None:
    await receive(store, "COFFEE-250", "6")
    await receive(store, "CHEESE-KG", "1")
    before = (await counts(store), await balances_of(store))
    theft = {
        "document_id": "WO-3",
        "doc_type": "write_off",
        "reason": "theft",
        "lines": [{"sku": "COFFEE-250", "quantity": "50"}],
    }
    response = await post_doc(store, theft)
    detail = refused(response, 409, "lines[0].quantity")
    assert "COFFEE-250: 6 on hand, 50 to take out" in detail, detail
    assert "allow_negative: true (CLI --allow-negative)" in detail
    # Each line short is named; a product never received has 0 on hand.
    both = theft | {
        "document_id": "WO-4",
        "lines": [{"sku": "MILK-1L", "quantity": "1"}, {"sku": "COFFEE-250", "quantity": "7"}],
    }
    response = await post_doc(store, both)
    refused(response, 409, "lines[0].quantity")
    assert [(e["field"], e["message"]) for e in response.json()["errors"]] == [
        ("lines[0].quantity", "MILK-1L: 0 on hand, 1 to take out"),
        ("lines[1].quantity", "COFFEE-250: 6 on hand, 7 to take out"),
    ]
    # Weighed goods to the gram; a supplier return and a transfer out alike.
    others = [
        {
            "doc_type": "supplier_return",
            "supplier": "DAIRY",
            "lines": [{"sku": "CHEESE-KG", "quantity": "1.001"}],
        },
        {
            "doc_type": "transfer_out",
            "counterpart_branch": "B2",
            "lines": [{"sku": "COFFEE-250", "quantity": "7"}],
        },
    ]
    detail = refused(await post_doc(store, others[0]), 409, "lines[0].quantity")
    assert "CHEESE-KG: 1 on hand, 1.001 to take out" in detail, detail
    refused(await post_doc(store, others[1]), 409, "lines[0].quantity")
    assert (await counts(store), await balances_of(store)) == before

    # All of it may leave.
    whole = others[0] | {"lines": [{"sku": "CHEESE-KG", "quantity": "1"}]}
    assert (await post_doc(store, whole)).status_code == 201
    # The books are wrong (the goods were there): said so, posted, stock below zero.
    forced = await post_doc(store, theft | {"allow_negative": True})
    assert forced.status_code == 201, forced.text
    assert (await balances_of(store))["COFFEE-250"] == -44_000
    # A retry of it, with the flag or without, is the document: the original.
    for body in (theft, theft | {"allow_negative": True}):
        repeat = await post_doc(store, body)
        assert repeat.status_code == 200, repeat.text
        assert repeat.json() == forced.json()
    # The flag is for documents that take stock out.
    receipt = {
        "doc_type": "goods_receipt",
        "supplier": "DAIRY",
        "allow_negative": True,
        "lines": [{"sku": "MILK-1L", "quantity": "1", "unit_cost": 70}],
    }
    refused(await post_doc(store, receipt), 422, "allow_negative")
    # A sale is never refused for stock.
    sale = await store.sale(
        {
            "sale_id": "s-1",
            "lines": [{"sku": "MILK-1L", "quantity": "3"}],
            "payments": [{"type": "cash", "amount": 500}],
        }
    )
    assert sale.status_code == 201, sale.text
    assert (await balances_of(store))["MILK-1L"] == -3_000


async def test_two_write_offs_at_once_cannot_both_take_the_last_stock(store: Store) -> None:
    """Each is checked under the agent's write lock in the transaction that posts it:
    the second sees the first's moves."""
    await receive(store, "COFFEE-250", "6")
    bodies = [
        {
            "document_id": f"WO-{n}",
            "doc_type": "write_off",
            "reason": "broken",
            "lines": [{"sku": "COFFEE-250", "quantity": "4"}],
        }
        for n in (1, 2)
    ]
    answers = await asyncio.gather(*(post_doc(store, body) for body in bodies))
    assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
    assert (await balances_of(store))["COFFEE-250"] == 2_000
    assert len(await store.events("stock_document_posted")) == 2  # the receipt, one write-off

    # A sale and a write-off at once: the sale goes through whatever the order; the
    # write-off only if it came first.
    sale = {
        "sale_id": "s-9",
        "lines": [{"sku": "COFFEE-250", "quantity": "2"}],
        "payments": [{"type": "cash", "amount": 2000}],
    }
    await store.open_shift()
    sold, wrote_off = await asyncio.gather(
        store.client.post(
            "/api/v1/sales", json=sale, headers={"Authorization": "Bearer till-1-secret"}
        ),
        post_doc(
            store,
            bodies[0] | {"document_id": "WO-5", "lines": [{"sku": "COFFEE-250", "quantity": "2"}]},
        ),
    )
    assert sold.status_code == 201, sold.text
    assert wrote_off.status_code in (201, 409), wrote_off.text
    expected = 0 if wrote_off.status_code == 409 else -2_000
    assert (await balances_of(store))["COFFEE-250"] == expected


async def test_a_transfer_names_a_branch_of_the_chain(store: Store) -> None:
    transfer = {
        "doc_type": "transfer_out",
        "lines": [{"sku": "MILK-1L", "quantity": "1"}],
        "allow_negative": True,
    }
    # Central has not listed the chain's branches yet: not checked (central flags it).
    assert (await post_doc(store, transfer | {"counterpart_branch": "B998"})).status_code == 201
    applier = store.agent.masterdata
    await applier.set_branches(("B1", "B2", "B3"))
    before = await counts(store)
    for body in (
        transfer | {"counterpart_branch": "B999", "document_id": "TO-X"},
        {
            "doc_type": "transfer_in",
            "counterpart_branch": "B999",
            "transfer_ref": "TO-7",
            "lines": [{"sku": "MILK-1L", "quantity": "1"}],
        },
    ):
        detail = refused(await post_doc(store, body), 422, "counterpart_branch")
        assert "B999 is not a branch of the chain" in detail, detail
        assert "has 3 branches" in detail
    assert await counts(store) == before
    assert (await post_doc(store, transfer | {"counterpart_branch": "B2"})).status_code == 201

    # Kept in the database (a restart with the link down still knows it), and reported
    # to central by its digest, so central sends the list again only when it changed.
    with closing(sqlite3.connect(store.agent.settings.database_path)) as db:
        assert db.execute("SELECT code FROM md_branches ORDER BY code").fetchall() == [
            ("B1",),
            ("B2",),
            ("B3",),
        ]
    reloaded = MasterDataApplier(store.agent.sessionmaker, asyncio.Lock())
    await reloaded.load()
    assert reloaded.branches_digest == md.branch_list_digest(["B3", "B2", "B1"])
    assert applier.requester is not None
    assert applier.requester._request().branches_digest == reloaded.branches_digest


class _Answer:
    def __init__(self, data: bytes) -> None:
        self.data = data


class _Central:
    """A NATS client whose position reports central answers with ``reply``."""

    def __init__(self, reply: md.SnapshotReply) -> None:
        self.reply = reply
        self.reports: list[Any] = []

    async def request(self, subject: str, data: bytes, timeout: float) -> _Answer:
        self.reports.append(md.decode_snapshot_request(data))
        return _Answer(md.encode_snapshot_rpc(self.reply))


async def test_the_branch_list_comes_with_the_answer_to_the_position_report(
    store: Store,
) -> None:
    applier = store.agent.masterdata
    requester = SnapshotRequester("B1", applier)
    central = _Central(md.SnapshotReply(action="none", branches=("B2", "B1")))
    await requester.check(central)  # type: ignore[arg-type]
    assert central.reports[-1].branches_digest == ""
    assert applier.branches_digest == md.branch_list_digest(["B1", "B2"])
    # Unchanged (central sends none): kept as it is.
    central.reply = md.SnapshotReply(action="none")
    await requester.check(central)  # type: ignore[arg-type]
    assert central.reports[-1].branches_digest == md.branch_list_digest(["B1", "B2"])
    refused(
        await post_doc(
            store,
            {
                "doc_type": "transfer_in",
                "counterpart_branch": "B5",
                "transfer_ref": "TO-1",
                "lines": [{"sku": "MILK-1L", "quantity": "1"}],
            },
        ),
        422,
        "counterpart_branch",
    )
    # A new list replaces it whole.
    central.reply = md.SnapshotReply(action="none", branches=("B1", "B5"))
    await requester.check(central)  # type: ignore[arg-type]
    with closing(sqlite3.connect(store.agent.settings.database_path)) as db:
        assert db.execute("SELECT code FROM md_branches ORDER BY code").fetchall() == [
            ("B1",),
            ("B5",),
        ]


async def test_blank_texts_are_refused_naming_the_field(store: Store) -> None:
    await receive(store, "MILK-1L", "10")
    before = await counts(store)
    line = [{"sku": "MILK-1L", "quantity": "1"}]
    cases: list[tuple[dict[str, Any], str]] = [
        (BREAD_RECEIPT | {"supplier": "  "}, "supplier"),
        (BREAD_RECEIPT | {"supplier": ""}, "supplier"),
        ({"doc_type": "supplier_return", "supplier": "\t\n", "lines": line}, "supplier"),
        ({"doc_type": "write_off", "reason": "   ", "lines": line}, "reason"),
        (
            {"doc_type": "transfer_out", "counterpart_branch": "  ", "lines": line},
            "counterpart_branch",
        ),
        (
            {
                "doc_type": "transfer_in",
                "counterpart_branch": "B2",
                "transfer_ref": "   ",
                "lines": line,
            },
            "transfer_ref",
        ),
        (BREAD_RECEIPT | {"document_id": "   "}, "document_id"),
    ]
    for body, field in cases:
        refused(await post_doc(store, body), 422, field)
    opened = await store.client.post(
        "/api/v1/stock/stocktakes", json={"document_id": " "}, headers=MANAGER
    )
    refused(opened, 422, "document_id")
    opened = await store.client.post(
        "/api/v1/stock/stocktakes", json={"document_id": "st-1"}, headers=MANAGER
    )
    assert opened.status_code == 201, opened.text
    sheet = await store.client.post(
        "/api/v1/stock/stocktakes/st-1/sheets",
        json={"sheet": "  ", "lines": [{"sku": "MILK-1L", "counted": "1"}]},
        headers=MANAGER,
    )
    refused(sheet, 422, "sheet")
    assert await counts(store) == (before[0] + 1, *before[1:])  # the stocktake draft

    # Texts are kept stripped, and a retry written with blanks is the same document.
    receipt = BREAD_RECEIPT | {"document_id": "gr-9", "supplier": " BAKERY ", "author": " anna "}
    posted = await post_doc(store, receipt)
    assert posted.status_code == 201, posted.text
    assert (posted.json()["supplier"], posted.json()["author"]) == ("BAKERY", "anna")
    retry = await post_doc(store, receipt | {"supplier": "BAKERY  ", "author": "anna"})
    assert retry.status_code == 200, retry.text
    transfer = {
        "doc_type": "transfer_in",
        "counterpart_branch": " B2 ",
        "transfer_ref": " TO-5 ",
        "lines": line,
    }
    posted = await post_doc(store, transfer)
    assert posted.status_code == 201, posted.text
    assert (posted.json()["counterpart_branch"], posted.json()["transfer_ref"]) == ("B2", "TO-5")


async def test_a_posted_stocktake_posted_again_is_the_posted_one(store: Store) -> None:
    await receive(store, "MILK-1L", "10")
    opened = await store.client.post(
        "/api/v1/stock/stocktakes", json={"document_id": "ST-1"}, headers=MANAGER
    )
    assert opened.status_code == 201, opened.text
    sheet = {"sheet": "shelf-3", "lines": [{"sku": "MILK-1L", "counted": "8"}]}
    url = "/api/v1/stock/stocktakes/ST-1"
    assert (await store.client.post(f"{url}/sheets", json=sheet, headers=MANAGER)).json() == {
        "products": 1
    }
    first = await store.client.post(f"{url}/post", headers=MANAGER)
    assert first.status_code == 200, first.text
    before = (await counts(store), await balances_of(store))
    assert before[1]["MILK-1L"] == 8_000
    again = await store.client.post(f"{url}/post", headers=MANAGER)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    # The sheet it counted, sent again: answered as then; another sheet: a 409.
    resent = await store.client.post(f"{url}/sheets", json=sheet, headers=MANAGER)
    assert resent.status_code == 200, resent.text
    assert resent.json() == {"products": 1}
    for other in (
        sheet | {"lines": [{"sku": "MILK-1L", "counted": "9"}]},
        sheet | {"sheet": "shelf-4"},
    ):
        detail = refused(
            await store.client.post(f"{url}/sheets", json=other, headers=MANAGER), 409, "sheet"
        )
        assert "ST-1 is already posted (B1-ST-1)" in detail
    assert (await counts(store), await balances_of(store)) == before
