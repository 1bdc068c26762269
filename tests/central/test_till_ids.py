"""Sale and return ids are the till's: two tills of one branch using the same sale_id
(or return_id) are two receipts (two returns) at central, through a real nats-server,
stored once each however often they are delivered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Date, Uuid, bindparam, func, select, text

from central.db import create_sessionmaker, downgrade, upgrade
from central.embedded_nats import EmbeddedNats
from central.ingest.worker import IngestWorker
from central.models import (
    BranchSyncState,
    CustomerReturn,
    DeadLetter,
    IngestedEvent,
    Receipt,
    StockBalance,
)
from central.models.base import UTCDateTime
from central.services.documents import list_customer_returns
from protocol import (
    CustomerReturnRecorded,
    EventEnvelope,
    Payment,
    ReceiptLine,
    ReceiptRecorded,
    encode,
    event_kind,
    new_event_id,
    up_subject,
)
from protocol.events import BranchEvent
from protocol.subjects import INGEST_DURABLE, UP_STREAM
from tests.central.chain_events import message, publish_raw
from tests.conftest import engine_with_branch, register_branch, wait_until

START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
# Bound as the models bind them (raw SQL of the rows an earlier release stored).
_TYPED = (
    bindparam("e", type_=Uuid()),
    bindparam("at", type_=UTCDateTime()),
    bindparam("day", type_=Date()),
)


def _line(sku: str, qty: int, price: int) -> ReceiptLine:
    return ReceiptLine(
        line_no=1,
        sku=sku,
        quantity_milli=qty,
        unit_price=price,
        vat_rate_bp=1900,
        line_total=price * qty // 1000,
    )


def _sale(till: str, sale_id: str, sku: str, qty: int, price: int, pay: str) -> ReceiptRecorded:
    line = _line(sku, qty, price)
    return ReceiptRecorded(
        till=till,
        shift_id=f"S-{till}",
        receipt_number=1,
        sale_id=sale_id,
        lines=(line,),
        payments=(Payment(type=pay, amount=line.line_total),),  # type: ignore[arg-type]
        total=line.line_total,
    )


def _return(
    till: str, return_id: str, original_till: str | None, sku: str, qty: int, price: int
) -> CustomerReturnRecorded:
    line = _line(sku, qty, price)
    return CustomerReturnRecorded(
        till=till,
        shift_id=f"S-{till}",
        return_number=1,
        return_id=return_id,
        original_sale_id="u4",
        original_till=original_till,
        lines=(line,),
        refunds=(Payment(type="cash", amount=line.line_total),),
        total=line.line_total,
    )


def _events(branch: str) -> list[EventEnvelope]:
    bodies: list[BranchEvent] = [
        _sale("T1", "u4", "BREAD", 1_000, 129, "cash"),
        _sale("T2", "u4", "COFFEE", 5_000, 450, "credit_card"),
        # T1 takes back two of T2's coffees; T2 one of its own: the same return id.
        _return("T1", "r1", "T2", "COFFEE", 2_000, 450),
        _return("T2", "r1", "T2", "COFFEE", 1_000, 450),
    ]
    return [
        EventEnvelope(
            event_id=new_event_id(),
            branch=branch,
            seq=n,
            occurred_at=START + timedelta(minutes=n),
            utc_offset_min=60,
            body=body,
        )
        for n, body in enumerate(bodies, start=1)
    ]


def _items(events: list[EventEnvelope], suffix: str = "") -> list[tuple[str, bytes, str]]:
    return [
        (up_subject(e.branch, event_kind(e.body)), encode(e), f"{e.event_id}{suffix}")
        for e in events
    ]


async def test_two_tills_same_sale_and_return_ids_are_both_stored_once(
    central: Any, nats_server: EmbeddedNats
) -> None:
    await register_branch(central, "B001")
    events = _events("B001")
    await publish_raw(nats_server.url, _items(events))
    sessionmaker = central.sessionmaker

    async def stored() -> bool:
        async with sessionmaker() as session:
            state = await session.get(BranchSyncState, "B001")
            letters = await session.scalar(select(func.count(DeadLetter.id)))
        return letters == 0 and state is not None and state.contiguous_seq == 4

    await wait_until(stored)
    # Redelivered past JetStream's dedup window (another Nats-Msg-Id): nothing doubled.
    await publish_raw(nats_server.url, _items(events, "-again"))
    await _wait_drained(nats_server.url)

    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(IngestedEvent)) == 4
        assert await session.scalar(select(func.count(DeadLetter.id))) == 0
        receipts = (
            await session.execute(
                select(Receipt.till, Receipt.sale_id, Receipt.total).order_by(Receipt.till)
            )
        ).all()
        assert [tuple(r) for r in receipts] == [("T1", "u4", 129), ("T2", "u4", 2250)]
        returns = (
            await session.execute(
                select(
                    CustomerReturn.till,
                    CustomerReturn.return_id,
                    CustomerReturn.original_till,
                    CustomerReturn.total,
                ).order_by(CustomerReturn.till)
            )
        ).all()
        assert [tuple(r) for r in returns] == [("T1", "r1", "T2", 900), ("T2", "r1", "T2", 450)]
        balances = dict(
            (await session.execute(select(StockBalance.sku, StockBalance.quantity_milli))).all()
        )
        assert balances == {"BREAD": -1_000, "COFFEE": -2_000}
        page = await list_customer_returns(
            session,
            branch="B001",
            date_from=None,
            date_to=None,
            original_sale_id="u4",
            original_till="T2",
            limit=10,
            offset=0,
        )
        assert sorted((x.till, x.total) for x in page.items) == [("T1", 900), ("T2", 450)]


async def _wait_drained(nats_url: str) -> None:
    """Every message of the stream acked by the ingest consumer (the redeliveries too)."""
    from central.sync.jetstream import connect

    nc = await connect(nats_url, name="test-drained")
    try:
        js = nc.jetstream()

        async def drained() -> bool:
            info = await js.consumer_info(UP_STREAM, INGEST_DURABLE)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_until(drained)
    finally:
        await nc.drain()


async def test_returns_stored_before_get_the_till_of_their_original(db_url: str) -> None:
    """Returns stored before migration 1712 get original_till from the branch's receipt
    under their original_sale_id (then unique per branch)."""
    engine = await engine_with_branch(db_url)
    sessionmaker = create_sessionmaker(engine)
    try:
        await engine.dispose()
        await downgrade(db_url, "1711", drop_records=True)
        events = _events("B1")
        # Before 1712 a branch had one receipt per sale id: T2's sale and the returns
        # of it, sent by agents that did not name the original's till.
        old = [events[1], events[2]]
        # The worker of this release writes original_till, which 1711 lacks: store the
        # rows as that release did, through SQL.
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO receipts (event_id, branch, till, shift_id, receipt_number,"
                    " sale_id, cashier, occurred_at, utc_offset_min, local_date, total,"
                    " change, currency, late, negative_stock, voided_lines) VALUES"
                    " (:e, 'B1', 'T2', 'S', 1, 'u4', '', :at, 60, :day, 2250, 0, 'EUR',"
                    " false, false, 0)"
                ).bindparams(*_TYPED),
                {"e": old[0].event_id, "at": START, "day": START.date()},
            )
            await connection.execute(
                text(
                    "INSERT INTO customer_returns (event_id, branch, till, shift_id,"
                    " return_number, return_id, original_sale_id, cashier, occurred_at,"
                    " utc_offset_min, local_date, total, currency, reason, refunds, late)"
                    " VALUES (:e, 'B1', 'T1', 'S', 1, 'r1', 'u4', '', :at, 60, :day, 900,"
                    " 'EUR', '', '[]', false)"
                ).bindparams(*_TYPED),
                {"e": old[1].event_id, "at": START, "day": START.date()},
            )
        await engine.dispose()
        await upgrade(db_url)
        async with sessionmaker() as session:
            assert (
                await session.scalar(
                    select(CustomerReturn.original_till).where(CustomerReturn.return_id == "r1")
                )
                == "T2"
            )
        # And now T1's own u4 is a receipt beside T2's.
        stats = await IngestWorker(sessionmaker).process([message(events[0])])
        assert stats.dead_letters == 0
        async with sessionmaker() as session:
            assert await session.scalar(select(func.count(Receipt.id))) == 2
    finally:
        await engine.dispose()
