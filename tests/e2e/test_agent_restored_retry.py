"""A till's retry of a sale after its agent database was restored from a backup taken
before the sale: central lists what it holds past the restored database's numbers when
it answers the numbering question, so the retry is answered with a 409 naming
``sale_id`` (the original's receipt number, shift, total and fiscal number), nothing
recorded, nothing printed a second time; the receipt numbers of the shift open in the
backup go on past central's (a retry sent at once waits for central's answer, the
restore hold); central holds every sale once, with no dead letter, and
the branch's sequence runs on.

The same when the sales after the backup were sent but not stored at central yet (its
ingest worker SIGKILLed holding them): central reads them from its ingest queue, lists
them and numbers the restored database past them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from branch_agent.backup import backup_database, restore_database
from branch_agent.settings import DeviceConfig, TillConfig
from central.embedded_nats import EmbeddedNats
from central.models import DeadLetter
from central.services.sync_state import get_branch_sync
from devices.sim import SimulatorHandle, start_simulator_pty
from protocol.subjects import INGEST_DURABLE, UP_STREAM
from tests.central.chain_events import ingest_env
from tests.conftest import (
    asgi_client,
    central_settings,
    register_branch,
    running_central,
    wait_until,
)
from tests.e2e.test_skeleton import post_sale, receipts_at_central, sale
from tests.faults.ingest_process import start_ingest, stop_ingest

TOKEN = "B1-till-1"


async def _nothing() -> None:
    return None


async def _sell_back_up_and_restore(
    central: Any,
    nats_url: str,
    make_agent: Any,
    tmp_path: Path,
    fiscal: SimulatorHandle,
    *,
    after_backup: Callable[[], Awaitable[None]] = _nothing,
    sent: Callable[[Any], Awaitable[None]] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Sales s1..s4 at central, a backup, s5 and s6 recorded, printed and ``sent``
    (default: stored at central), the agent stopped and the backup put back: the
    restored agent (started) and s5's answer."""
    tills = (
        TillConfig(
            id="T1",
            token=TOKEN,
            fiscal_printer=DeviceConfig(port=fiscal.url, protocol="datecs-x"),
        ),
    )
    store = tmp_path / "store"
    agent = await make_agent("B1", nats_url, data_dir=str(store), tills=tills)
    for n in range(1, 5):
        assert (await post_sale(agent, sale(f"s{n}"), TOKEN)).status_code == 201
    await wait_until(lambda: at_central(central, 4))
    backup = tmp_path / "backup1.db"
    assert backup_database(store / "agent.db", backup)["last_event_seq"] > 0
    await after_backup()
    s5 = (await post_sale(agent, sale("s5"), TOKEN)).json()
    assert (await post_sale(agent, sale("s6"), TOKEN)).status_code == 201
    if sent is None:
        await wait_until(lambda: at_central(central, 6))
    else:
        await sent(agent)
    assert len(fiscal.sim.receipts) == 6
    await agent.stop()
    restore_database(backup, store / "agent.db", branch="B1")
    restored = await make_agent("B1", nats_url, data_dir=str(store), tills=tills)
    return restored, s5


async def _retry_is_refused(restored: Any, s5: dict[str, Any], fiscal: SimulatorHandle) -> None:
    """The till heard nothing back for s5 before the restore and sends it again at
    once: it waits for central's answer (the restore hold), then is refused; the next
    sale is numbered past central's receipts."""
    again = await post_sale(restored, sale("s5"), TOKEN)
    assert (await restored.status()).numbering_settled
    assert again.status_code == 409, again.text
    problem = again.json()
    assert problem["errors"][0]["field"] == "sale_id"
    assert f"number {s5['receipt_number']} of shift {s5['shift_id']}" in problem["detail"]
    assert f"fiscal number {s5['fiscal_number']}" in problem["detail"]
    assert len(fiscal.sim.receipts) == 6  # not printed again
    s7 = await post_sale(restored, sale("s7"), TOKEN)
    assert s7.status_code == 201, s7.text
    # The shift open in the backup numbers on past central's receipts.
    assert s7.json()["receipt_number"] == s5["receipt_number"] + 2
    assert len(fiscal.sim.receipts) == 7


async def _each_sale_once(central: Any) -> None:
    await wait_until(lambda: at_central(central, 7), timeout=30)
    await wait_until(lambda: caught_up(central), timeout=30)
    async with central.sessionmaker() as session:
        assert (await session.scalars(select(DeadLetter))).all() == []
    receipts = await receipts_at_central(central)
    assert sorted(sale_id for _, sale_id in receipts) == [f"s{n}" for n in range(1, 8)]


async def test_a_retry_after_a_restore_is_not_recorded_or_printed_again(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    await register_branch(central, "B1")
    fiscal = start_simulator_pty("fiscal")
    try:
        restored, s5 = await _sell_back_up_and_restore(
            central, nats_server.url, make_agent, tmp_path, fiscal
        )
        await _retry_is_refused(restored, s5, fiscal)
        await _each_sale_once(central)
    finally:
        fiscal.stop()


async def test_a_retry_of_a_sale_still_in_centrals_ingest_queue_is_refused(
    db_url: str, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    env = ingest_env(db_url, nats_server.url, str(tmp_path / "ingest"))
    fiscal = start_simulator_pty("fiscal")
    settings = central_settings(db_url, nats_server.url)
    with (tmp_path / "ingest.log").open("wb") as log:
        async with running_central(settings, ingest_workers=0) as central:
            await register_branch(central, "B1")
            ingest = await start_ingest(env, log)

            async def a_worker_that_holds_its_batch() -> None:
                # The next batch (s5, s6) is taken by a worker that holds it before
                # storing it: SIGKILLed then, it is neither stored nor acknowledged.
                nonlocal ingest
                await stop_ingest(ingest)
                ingest = await start_ingest({**env, "BACKROOM_FAULT_HOLD_BATCH_S": "300"}, log)

            async def published_and_held(agent: Any) -> None:
                async def acked() -> bool:
                    return await agent.last_acked_seq() == await agent.last_recorded_seq()

                async def held() -> bool:
                    info = await central.js.consumer_info(UP_STREAM, INGEST_DURABLE)
                    return bool(info.num_ack_pending)

                await wait_until(acked)
                await wait_until(held)
                ingest.kill()
                await ingest.wait()

            try:
                restored, s5 = await _sell_back_up_and_restore(
                    central,
                    nats_server.url,
                    make_agent,
                    tmp_path,
                    fiscal,
                    after_backup=a_worker_that_holds_its_batch,
                    sent=published_and_held,
                )
                await _retry_is_refused(restored, s5, fiscal)
                # Nothing was stored meanwhile: s5 and s6 were read from the queue.
                assert await at_central(central, 4)
                status = await restored.status()
                assert (status.restored_records, status.restore_hold) == (2, "")
                assert status.restore_unknown == 0
                async with asgi_client(restored.app) as till:
                    looked_up = await till.get(
                        "/api/v1/sales/s5", headers={"Authorization": f"Bearer {TOKEN}"}
                    )
                assert looked_up.status_code == 410, looked_up.text
                known = looked_up.json()["extra"]["recorded_before_restore"]
                assert known["receipt_number"] == s5["receipt_number"]
                assert known["fiscal_number"] == s5["fiscal_number"]
                ingest = await start_ingest(env, log)
                await _each_sale_once(central)
            finally:
                await stop_ingest(ingest)
                fiscal.stop()


async def at_central(central: Any, count: int) -> bool:
    return len(await receipts_at_central(central)) == count


async def caught_up(central: Any) -> bool:
    """Central holds every number of B1 up to its highest: nothing missing."""
    async with central.sessionmaker() as session:
        sync = await get_branch_sync(session, "B1")
    return sync.contiguous_seq == sync.max_seq and sync.missing == 0
