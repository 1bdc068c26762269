"""The records API over what ingestion stored: stock, documents, shifts, dead letters, sync."""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from central.ingest.worker import IngestWorker, MessageIn
from protocol.events import ReceiptRecorded
from tests.central.chain_events import BranchBooks, message
from tests.conftest import register_branch


async def test_records_routes(central: Any, central_client: Any) -> None:
    await register_branch(central, "A1")
    books = BranchBooks("A1")
    books.document("goods_receipt", [("MILK", 10_000, 100)], document_id="GR-1")
    books.open_shift()
    books.sale([("MILK", 2_000, 199)])
    books.close_shift()
    worker = IngestWorker(central.sessionmaker)
    await worker.process([message(e) for e in books.events])
    await worker.process([MessageIn(subject="up.A1.shift_opened", data=b"junk")])

    balances = (await central_client.get("/api/v1/stock/balances", params={"branch": "A1"})).json()
    assert [(b["sku"], b["quantity"], b["avg_cost"]) for b in balances["items"]] == [
        ("MILK", "8.000", 100)
    ]
    ledger = (
        await central_client.get("/api/v1/stock/ledger", params={"branch": "A1", "sku": "MILK"})
    ).json()
    assert [
        (m["doc_type"], m["quantity_milli"], m["value"], m["till"]) for m in ledger["items"]
    ] == [
        ("goods_receipt", 10_000, 1000, None),
        ("sale", -2_000, -200, "T1"),
    ]
    missing = await central_client.get("/api/v1/stock/ledger", params={"branch": "A1"})
    assert missing.status_code == 422
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert missing.json()["errors"] == [
        {"field": "sku", "message": "missing required query parameter"}
    ]
    doc = (await central_client.get("/api/v1/documents/A1/GR-1")).json()
    assert (doc["doc_type"], doc["value"], doc["lines"][0]["unit_cost"]) == (
        "goods_receipt",
        1000,
        100,
    )
    assert (await central_client.get("/api/v1/documents/A1/nope")).status_code == 404
    bad_type = await central_client.get("/api/v1/documents", params={"doc_type": "gift"})
    assert bad_type.status_code == 422
    assert bad_type.json()["errors"][0]["field"] == "doc_type"
    shifts = (await central_client.get("/api/v1/shifts", params={"branch": "A1"})).json()
    shift = shifts["items"][0]
    assert shift["z_turnover_total"] == shift["recorded"]["sales_total"] == books.sales_total
    assert shift["z_matches"] is True
    sync = (await central_client.get("/api/v1/sync/branches/A1")).json()
    assert (sync["contiguous_seq"], sync["max_seq"], sync["open_dead_letters"]) == (4, 4, 1)
    letters = (await central_client.get("/api/v1/dead-letters", params={"status": "open"})).json()
    letter_id = letters["items"][0]["id"]
    # The list leaves the raw bytes out (only their size); the letter itself has them.
    assert letters["items"][0]["raw_base64"] is None
    one = (await central_client.get(f"/api/v1/dead-letters/{letter_id}")).json()
    assert len(base64.b64decode(one["raw_base64"])) == one["size"] == letters["items"][0]["size"]
    assert one["size"] > 0
    replay = (await central_client.post(f"/api/v1/dead-letters/{letter_id}/replay")).json()
    assert replay["status"] == "open"
    discarded = await central_client.post(f"/api/v1/dead-letters/{letter_id}/discard")
    assert discarded.json()["status"] == "discarded"
    again = await central_client.post(f"/api/v1/dead-letters/{letter_id}/discard")
    assert again.status_code == 409
    closed = await central_client.post(
        "/api/v1/shifts/closed-days", json={"branch": "A1", "local_date": shift["local_date"]}
    )
    assert closed.status_code == 201, closed.text
    listed = (
        await central_client.get("/api/v1/shifts/closed-days", params={"branch": "A1"})
    ).json()
    assert [(d["branch"], d["local_date"]) for d in listed["items"]] == [
        ("A1", shift["local_date"])
    ]
    elsewhere = await central_client.get("/api/v1/shifts/closed-days", params={"branch": "B9"})
    assert elsewhere.status_code == 404  # an unknown branch, named
    assert elsewhere.json()["errors"][0]["field"] == "branch"


async def test_the_ledger_names_the_till_of_a_sale(central: Any, central_client: Any) -> None:
    """Sale ids are the till's own: two tills of a branch may both have sale 7. The
    ledger's doc_ref alone cannot tell their rows apart; its till can."""
    await register_branch(central, "A1")
    books = BranchBooks("A1")
    books.document("goods_receipt", [("MILK", 10_000, 100)], document_id="GR-1")
    books.open_shift()
    first = books.sale([("MILK", 1_000, 199)])
    assert isinstance(first.body, ReceiptRecorded)
    books.events.append(
        msgspec.structs.replace(
            books.sale([("MILK", 3_000, 199)]),
            body=msgspec.structs.replace(
                books.events[-1].body, till="T2", shift_id="S2", sale_id=first.body.sale_id
            ),
        )
    )
    del books.events[-2]
    stats = await IngestWorker(central.sessionmaker).process([message(e) for e in books.events])
    assert stats.dead_letters == 0
    ledger = (
        await central_client.get("/api/v1/stock/ledger", params={"branch": "A1", "sku": "MILK"})
    ).json()
    assert [(m["doc_ref"], m["till"], m["quantity_milli"]) for m in ledger["items"]] == [
        ("GR-1", None, 10_000),
        (first.body.sale_id, "T1", -1_000),
        (first.body.sale_id, "T2", -3_000),
    ]
