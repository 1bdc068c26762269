"""Direct units of work: the sale's statements run straight on sqlite3, stored as the ORM stores them."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from branch_agent.db import create_engine, create_sessionmaker, table_of, upgrade
from branch_agent.direct_sql import DirectStatement, direct_unit, run
from branch_agent.models import Sale
from branch_agent.outbox import next_counter

_COLUMNS = ("till", "sale_id", "shift_id", "receipt_number", "created_at", "total")
_INSERT = DirectStatement(
    insert(table_of(Sale)).values(
        {c: bindparam(c) for c in (*_COLUMNS, "receipt", "event_id", "cashier")}
    ),
    table_of(Sale),
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    await upgrade(tmp_path / "agent.db")
    engine = create_engine(tmp_path / "agent.db", inline=True)
    yield engine
    await engine.dispose()


def sale(**values: object) -> dict[str, object]:
    base: dict[str, object] = {c: "1" for c in _COLUMNS}
    extra = {"created_at": datetime.now(UTC), "receipt": {}, "event_id": None, "cashier": ""}
    return base | extra | values


def raw_rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT * FROM sales ORDER BY id").fetchall()


async def test_a_direct_insert_stores_what_the_orm_stores(engine: AsyncEngine) -> None:
    # A zone-shifted moment, a UUID and JSON: each goes through its column type.
    at = datetime(2026, 3, 29, 2, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    event_id = uuid.uuid4()
    values = {
        "till": "T1",
        "sale_id": "s-1",
        "shift_id": "T1-1",
        "receipt_number": 1,
        "created_at": at,
        "total": 1234,
        "receipt": {"lines": [{"sku": "MILK", "name": "Milk ü"}], "total": 1234},
        "event_id": event_id,
        "cashier": "ann",
    }
    async with create_sessionmaker(engine)() as session, session.begin():
        session.add(Sale(**values))
    async with direct_unit(engine) as db:
        db.execute(_INSERT, values | {"sale_id": "s-2"})
    path = Path(str(engine.url.database))
    orm_row, direct_row = raw_rows(path)
    # Same bytes in every column but the id and the sale id; column defaults
    # (status, change, fiscal attempts) filled in as the ORM fills them.
    assert orm_row[0] + 1 == direct_row[0]
    assert (orm_row[1], *orm_row[3:]) == (direct_row[1], *direct_row[3:])
    async with create_sessionmaker(engine)() as session:
        read = await session.scalar(select(Sale).where(Sale.sale_id == "s-2"))
    assert read is not None
    assert read.created_at == at.astimezone(UTC)
    assert read.event_id == event_id
    assert read.receipt == values["receipt"]
    assert (read.status, read.change, read.fiscal_attempts) == ("recorded", 0, 0)


async def test_a_failed_direct_unit_leaves_nothing(engine: AsyncEngine) -> None:
    async with direct_unit(engine) as db:
        assert await next_counter(db, "receipt_number:T1") == 1

    async def refused_half_way() -> None:
        async with direct_unit(engine) as db:
            assert await next_counter(db, "receipt_number:T1") == 2
            db.execute(_INSERT, sale())
            raise RuntimeError("the till's line was refused")

    with pytest.raises(RuntimeError):
        await refused_half_way()
    path = Path(str(engine.url.database))
    assert raw_rows(path) == []
    # The counter is gapless: the failed unit's bump was rolled back with it.
    async with create_sessionmaker(engine)() as session, session.begin():
        assert await next_counter(session, "receipt_number:T1") == 2


async def test_a_required_value_left_out_is_refused(engine: AsyncEngine) -> None:
    async with direct_unit(engine) as db:
        with pytest.raises(KeyError, match="total"):
            db.execute(_INSERT, {k: v for k, v in sale().items() if k != "total"})


async def test_run_gives_the_same_rows_through_a_session(engine: AsyncEngine) -> None:
    statement = DirectStatement(select(Sale.sale_id, Sale.created_at).where(Sale.till == "T9"))
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with direct_unit(engine) as db:
        db.execute(_INSERT, sale(till="T9", created_at=at))
        direct = await run(db, statement, {})
    async with create_sessionmaker(engine)() as session:
        through_session = await run(session, statement, {})
    assert direct == through_session == [("1", at)]
