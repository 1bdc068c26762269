"""The agent's fast paths: sales on the inline engine, lookups on the read connection."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import func, select

from branch_agent.db import create_engine, create_sessionmaker, read_connection, upgrade
from branch_agent.models import Sale
from tests.branch_agent.conftest import Store
from tests.branch_agent.test_sales_and_fiscal import basket


async def test_a_sale_waits_for_another_process_holding_the_write_lock(store: Store) -> None:
    """SQLite's write lock held elsewhere: the sale waits with asyncio sleeps (the loop
    keeps serving), then commits once the lock is released, exactly once."""
    other = sqlite3.connect(store.agent.settings.database_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        sale = asyncio.create_task(store.sale(basket("while-locked")))
        await asyncio.sleep(0.6)
        assert not sale.done()
        # About 60 ticks in 0.6 s when nothing blocks the loop; a sale sleeping in
        # SQLite's busy handler in this thread would have frozen it.
        assert ticks >= 30
        other.execute("COMMIT")
        answer = await asyncio.wait_for(sale, 15)
        ticker.cancel()
        assert answer.status_code == 201, answer.text
    finally:
        other.close()
    again = await store.sale(basket("while-locked"))
    assert again.status_code == 200
    async with store.agent.sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).select_from(Sale).where(Sale.sale_id == "while-locked")
        )
    assert count == 1


async def test_the_read_connection_sees_committed_data_only(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    await upgrade(path)
    engine = create_engine(path)
    try:
        async with create_sessionmaker(engine)() as session:
            reader = read_connection(session.get_bind())
        assert reader is not None
        writer = sqlite3.connect(path, isolation_level=None)
        try:
            writer.execute("BEGIN")
            writer.execute("INSERT INTO counters (name, value) VALUES ('probe', 7)")
            # WAL: the reader neither waits for the writer nor sees its open transaction.
            assert reader.fetch("SELECT value FROM counters WHERE name = ?", ("probe",)) == []
            writer.execute("COMMIT")
        finally:
            writer.close()
        assert reader.fetch("SELECT value FROM counters WHERE name = ?", ("probe",)) == [(7,)]
        # Read only: a lookup path can never write.
        with pytest.raises(sqlite3.OperationalError):
            reader.fetch("DELETE FROM counters")
    finally:
        await engine.dispose()
    assert reader._connection is None  # closed with its engine
