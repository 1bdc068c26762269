"""The publisher of production's central killed at the worst moment of its catch-up
with a stream another database published into (a process on a stale copy): right
after it moved its counter past the stream's mark and queued the snapshots, before
publishing. The restarted process publishes them once: the till ends exactly at
production's state with the price change made meanwhile, with one snapshot and one
audit entry, nothing published twice."""

from __future__ import annotations

import asyncio
from asyncio.subprocess import DEVNULL
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from central.db import create_engine, create_sessionmaker
from central.embedded_nats import EmbeddedNats
from central.ingest.worker import CRASH_EXIT_CODE
from central.models import AuditEntry, MasterDataOutbox
from central.services.masterdata_publisher import current_version
from protocol.subjects import UP_STREAM
from tests.central.chain_events import ingest_env
from tests.conftest import central_settings, running_central, wait_until
from tests.e2e.test_central_restored import _pg, _restored, _stale_copy
from tests.e2e.test_masterdata_snapshot import (
    _assert_exactly_central,
    _offline_changes,
    _price,
    _setup,
    _synced,
    till_price,
)
from tests.faults.ingest_process import INGEST


async def test_killed_after_moving_past_a_stale_copys_versions_publishes_once_restarted(
    db_url: str, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    settings = central_settings(db_url, nats_server.url)
    async with running_central(settings) as central:
        await _setup(central)
        agent = await make_agent("B1", nats_server.url, demo_catalog=False)
        await _synced(central, agent)
    stale_url = await _stale_copy(db_url, tmp_path)
    async with running_central(settings) as central:
        await _offline_changes(central)
        await _synced(central, agent)

    engine = create_engine(db_url)
    production = SimpleNamespace(sessionmaker=create_sessionmaker(engine))
    log = (tmp_path / "ingest.log").open("wb")
    process = None
    try:
        # Production's process with the fault on, running before the stale one publishes.
        env = ingest_env(
            db_url,
            nats_server.url,
            str(tmp_path / "central-data"),
            BACKROOM_FAULT_CRASH_AFTER_MASTERDATA_CATCH_UP="1",
        )
        process = await asyncio.create_subprocess_exec(*INGEST, env=env, stdout=DEVNULL, stderr=log)
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()

            async def production_pulls() -> bool:
                info = await js.consumer_info(UP_STREAM, "central-ingest")
                return bool(info.num_waiting)

            # Its first check done (the stream not ahead yet), it is pulling.
            await wait_until(production_pulls, timeout=30)
        finally:
            await nc.close()
        async with running_central(central_settings(stale_url, nats_server.url)) as copy:
            await wait_until(lambda: _restored(copy), timeout=30)
            stale_version = await _synced(copy, agent)
        assert await till_price(agent, "SKU000") == 100  # the copy's; production's: 500
        snapshots_before = agent.masterdata.stats.snapshots_completed

        # A price change at production: its publisher moves past the stream, then dies.
        await _price(production, "SKU000", 333)
        assert await asyncio.wait_for(process.wait(), 60) == CRASH_EXIT_CODE
        async with production.sessionmaker() as s:
            assert await current_version(s) > stale_version
            pending = await s.scalar(
                select(func.count())
                .select_from(MasterDataOutbox)
                .where(MasterDataOutbox.published_at.is_(None))
            )
        assert pending == 2  # the price change and B1's snapshot, both above the stream
        assert await till_price(agent, "SKU000") == 100

        async with running_central(settings) as central:

            async def sells_at_333() -> bool:
                return await till_price(agent, "SKU000") == 333

            await wait_until(sells_at_333, timeout=30)
            await _synced(central, agent)
            await _assert_exactly_central(central, agent)
            async with central.sessionmaker() as s:
                audited = await s.scalar(
                    select(func.count()).where(
                        AuditEntry.action == "masterdata.database_behind_stream"
                    )
                )
            assert audited == 1
            assert agent.masterdata.stats.snapshots_completed == snapshots_before + 1
    finally:
        if process is not None and process.returncode is None:
            process.kill()  # the test failed before the crash: stop it
            await process.wait()
        log.close()
        await engine.dispose()
        if make_url(db_url).get_backend_name() != "sqlite":
            await _pg(db_url, f'DROP DATABASE "{make_url(stale_url).database}" WITH (FORCE)')
