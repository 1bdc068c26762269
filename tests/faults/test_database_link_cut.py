"""The link between an ingest process and PostgreSQL cut while it stores batches (a
planned restart, a fail-over): it logs one line when the failure starts and one when it
ends, not a traceback per retried batch, and once the link is back every sale is
stored and summarised exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from central.db import create_sessionmaker
from central.embedded_nats import EmbeddedNats
from central.models import IngestedEvent, SummaryBacklog
from tests.central.chain_events import BranchBooks, ingest_env, publish_books
from tests.central.summaries import assert_books_stored_once
from tests.conftest import PG_URL_ENV, wait_until
from tests.faults.ingest_process import running_ingest

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"needs {PG_URL_ENV}"),
]


class CuttableLink:
    """A TCP relay on 127.0.0.1 in front of the database: ``cut`` resets every
    connection and refuses new ones (as a server that went away), ``restore`` listens
    again on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                end.transport.abort()
                self._writers.discard(end)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def close(self) -> None:
        if self._server is not None and self._server.is_serving():
            await self.cut()

    async def restore(self) -> None:
        await self.start()


async def test_a_cut_database_link_logs_its_state_and_loses_nothing(
    pg_engine: AsyncEngine, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    sessionmaker = create_sessionmaker(pg_engine)
    url = pg_engine.url
    link = CuttableLink(url.host or "127.0.0.1", url.port or 5432)
    await link.start()
    books = BranchBooks("B1")
    books.document("goods_receipt", [("MILK", 900_000, 100), ("BREAD", 900_000, 150)])
    for n in range(400):
        books.sale([("MILK", 1_000 + n, 199), ("BREAD", 500, 320)])
    await publish_books(nats_server.url, books)
    via_link = make_url(url).set(host="127.0.0.1", port=link.port)
    env = ingest_env(
        via_link.render_as_string(hide_password=False),
        nats_server.url,
        str(tmp_path),
        BACKROOM_INGEST_BATCH="10",
        BACKROOM_SUMMARY_INTERVAL_S="0.3",
    )

    async def count(what: type) -> int:
        async with sessionmaker() as session:
            return int(await session.scalar(select(func.count()).select_from(what)) or 0)

    log_path = tmp_path / "ingest.log"
    try:
        with log_path.open("wb") as log:
            async with running_ingest(env, log):

                async def storing() -> bool:
                    return await count(IngestedEvent) > 0

                await wait_until(storing, timeout=60, interval=0.02)
                await link.cut()  # in the middle of the stream's batches
                assert await count(IngestedEvent) < len(books.events)
                await asyncio.sleep(5)  # batches retried every second meanwhile
                await link.restore()

                async def caught_up() -> bool:
                    return (
                        await count(IngestedEvent) == len(books.events)
                        and await count(SummaryBacklog) == 0
                    )

                await wait_until(caught_up, timeout=60)
    finally:
        await link.close()  # nothing left listening or connected
    text = log_path.read_text()
    assert "Traceback" not in text, text
    failing = [line for line in text.splitlines() if "ingest batch failing" in line]
    assert 1 <= len(failing) <= 3, text  # a state change, not one per retry
    assert "database unavailable" in failing[0]
    assert "ingest batch recovered" in text
    await assert_books_stored_once(sessionmaker, books)
