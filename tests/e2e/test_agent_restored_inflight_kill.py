"""SIGKILL of central's process while it reads a restored agent's in-flight messages
(the read's consumer on the up stream, a long backlog of the branch's not ingested):
the agent keeps its restore hold and asks again; the consumer the dead process left
goes by itself; central started again reads the backlog whole, lists the sales the
restore lost, so the till's retry of one is refused and not printed again, and the
numbering goes on past them; once ingestion runs, central holds every sale once, with
no dead letter, and the branch's numbers run on without a gap."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

from sqlalchemy import func, select

from branch_agent.backup import backup_database, restore_database
from branch_agent.settings import DeviceConfig, TillConfig
from central.db import create_engine, create_sessionmaker, upgrade
from central.embedded_nats import EmbeddedNats, free_port
from central.models import DeadLetter, Receipt
from central.sync.jetstream import connect
from devices.sim import start_simulator_pty
from protocol.codec import encode
from protocol.messages import BranchHeartbeat
from protocol.subjects import INGEST_DURABLE, UP_STREAM
from tests.central.chain_events import ingest_env
from tests.conftest import register_branch, wait_until
from tests.e2e.test_agent_restored_retry import TOKEN, _retry_is_refused, at_central, caught_up
from tests.e2e.test_skeleton import post_sale, sale
from tests.faults.ingest_process import start_ingest, stop_ingest

# Enough of B1's messages above the ingest floor that the read lasts long enough to
# be caught at (about a second here).
BACKLOG = 40_000


async def _serve(env: dict[str, str], log: IO[bytes]) -> asyncio.subprocess.Process:
    """``python -m central serve`` without ingestion: it answers the agents' reports."""
    env = {**env, "BACKROOM_INGEST_IN_PROCESS": "false", "BACKROOM_HTTP_PORT": str(free_port())}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "central", "serve", env=env, stdout=log, stderr=log
    )


async def test_sigkill_of_central_reading_the_in_flight_messages_loses_and_doubles_nothing(
    db_url: str, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    await upgrade(db_url)
    engine = create_engine(db_url)
    central = SimpleNamespace(sessionmaker=create_sessionmaker(engine))
    await register_branch(central, "B1")
    env = ingest_env(db_url, nats_server.url, str(tmp_path / "central"))
    fiscal = start_simulator_pty("fiscal")
    tills = (
        TillConfig(
            id="T1", token=TOKEN, fiscal_printer=DeviceConfig(port=fiscal.url, protocol="datecs-x")
        ),
    )
    store = tmp_path / "store"
    nc = await connect(nats_server.url, name="test")
    js = nc.jetstream()
    log = (tmp_path / "central.log").open("wb")
    serving = await _serve(env, log)
    ingest = await start_ingest(env, log)
    try:
        agent = await make_agent("B1", nats_server.url, data_dir=str(store), tills=tills)
        for n in range(1, 5):
            assert (await post_sale(agent, sale(f"s{n}"), TOKEN)).status_code == 201
        await wait_until(lambda: at_central(central, 4), timeout=30)
        backup = tmp_path / "backup1.db"
        assert backup_database(store / "agent.db", backup)["last_event_seq"] > 0
        # Central's ingestion stops for hours: s5, s6 and a long backlog wait in the stream.
        await stop_ingest(ingest)
        s5 = (await post_sale(agent, sale("s5"), TOKEN)).json()
        assert (await post_sale(agent, sale("s6"), TOKEN)).status_code == 201

        async def sent() -> bool:
            return await agent.last_acked_seq() == await agent.last_recorded_seq()

        await wait_until(sent)
        last = await agent.last_recorded_seq()
        beat = encode(
            BranchHeartbeat(branch="B1", sent_at=datetime.now(UTC), last_recorded_seq=last)
        )
        for start in range(0, BACKLOG, 2_000):
            await asyncio.gather(
                *(js.publish("up.B1.heartbeat", beat) for _ in range(start, start + 2_000))
            )
        assert len(fiscal.sim.receipts) == 6
        await agent.stop()
        restore_database(backup, store / "agent.db", branch="B1")

        async def reading() -> list[str]:
            names = [c.name or "" for c in await js.consumers_info(UP_STREAM)]
            return [name for name in names if name.startswith("in-flight-B1")]

        # The restored agent asks; central reads its in-flight messages: killed then.
        restored = await make_agent(
            "B1", nats_server.url, data_dir=str(store), tills=tills, restore_hold_s=120.0
        )
        await wait_until(lambda: _non_empty(reading()), timeout=30, interval=0.005)
        os.kill(serving.pid, signal.SIGKILL)
        await serving.wait()
        assert not (await restored.status()).numbering_settled
        # Left behind by the dead process: the server deletes it once idle.
        assert await reading()
        await wait_until(lambda: _empty(reading()), timeout=40)

        serving = await _serve(env, log)
        await wait_until(
            lambda: _settled(restored),
            timeout=60,  # the agent's next report after the kill
        )
        assert await reading() == []
        assert await at_central(central, 4)  # read from the stream, not the database
        await _retry_is_refused(restored, s5, fiscal)
        status = await restored.status()
        assert (status.restored_records, status.restore_unknown) == (2, 0)

        ingest = await start_ingest(env, log)
        await wait_until(lambda: at_central(central, 7), timeout=60)
        await wait_until(lambda: caught_up(central), timeout=60)
        async with central.sessionmaker() as session:
            assert (await session.scalars(select(DeadLetter))).all() == []
            sale_ids = (await session.scalars(select(Receipt.sale_id))).all()
            total = await session.scalar(select(func.sum(Receipt.total)))
        assert sorted(sale_ids) == [f"s{n}" for n in range(1, 8)]
        assert total == 7 * s5["total"]
        assert len(fiscal.sim.receipts) == 7
        info = await js.consumer_info(UP_STREAM, INGEST_DURABLE)
        assert info.num_pending == 0
    finally:
        await stop_ingest(ingest)
        if serving.returncode is None:
            serving.terminate()
            await asyncio.wait_for(serving.wait(), 20)
        log.close()
        await nc.drain()
        await engine.dispose()
        fiscal.stop()


async def _non_empty(names: Any) -> bool:
    return bool(await names)


async def _empty(names: Any) -> bool:
    return not await names


async def _settled(agent: Any) -> bool:
    return bool((await agent.status()).numbering_settled)
