"""Shift ids stay unique at central whatever happened to the agent's database.

They came from the database's own counters (T2-1, T2-2, ...): a database restored
from a backup, or a new one replacing a store's server, gave ids central held from
other shifts, and central merged the two into one row (one float, one Z, both
shifts' receipts). Now a shift's number goes on past central's numbering answer,
and a shift opened before that answer (offline) carries a random tag."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nats
from sqlalchemy import func, select

from bench.chaos.proxy import LinkProxy
from branch_agent.backup import backup_database, restore_database
from branch_agent.models import OutboxEvent
from branch_agent.settings import DeviceConfig, TillConfig
from central.embedded_nats import EmbeddedNats
from central.models import DeadLetter, IngestedEvent, ShiftIdConflict
from central.reports import service
from central.services.shifts import ShiftOut, list_shifts
from devices.sim import SimulatorHandle, start_simulator_pty
from protocol import decode_envelope, event_kind, up_subject
from protocol.subjects import INGEST_DURABLE, UP_STREAM
from tests.conftest import asgi_client, register_branch, wait_until
from tests.e2e.test_skeleton import sale

T1 = "B1-till-1"
T2 = "B1-till-2"


def tills(fiscal: SimulatorHandle) -> tuple[TillConfig, ...]:
    """T1 without devices, T2 with a fiscal printer (its Z reports)."""
    return (
        TillConfig(id="T1", token=T1),
        TillConfig(
            id="T2", token=T2, fiscal_printer=DeviceConfig(port=fiscal.url, protocol="datecs-x")
        ),
    )


async def call(agent: Any, token: str, path: str, body: Any = None) -> Any:
    async with asgi_client(agent.app) as client:
        answer = await client.post(
            path, json=body or {}, headers={"Authorization": f"Bearer {token}"}
        )
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


async def open_shift(agent: Any, token: str, cashier: str, opening_float: int) -> str:
    opened = await call(
        agent, token, "/api/v1/shifts", {"cashier": cashier, "opening_float": opening_float}
    )
    return str(opened["shift_id"])


async def sell(agent: Any, token: str, shift_id: str, sale_id: str) -> int:
    body = {**sale(sale_id), "shift_id": shift_id, "cashier": ""}
    sold = await call(agent, token, "/api/v1/sales", body)
    assert sold["status"] in ("fiscalized", "recorded"), sold
    return int(sold["total"])


async def close(agent: Any, token: str) -> dict[str, Any]:
    closed: dict[str, Any] = await call(agent, token, "/api/v1/shifts/current/close")
    return closed


async def shifts_at_central(central: Any) -> dict[str, ShiftOut]:
    async with central.sessionmaker() as session:
        page = await list_shifts(
            session, branch="B1", till=None, date_from=None, date_to=None, limit=100, offset=0
        )
    return {s.shift_id: s for s in page.items}


async def outbox(agent: Any) -> list[bytes]:
    async with agent.sessionmaker() as session:
        return list(await session.scalars(select(OutboxEvent.payload)))


async def redeliver(central: Any, nats_url: str, payloads: list[bytes]) -> None:
    """Every event once more into the stream, without the dedup id JetStream would
    drop them by: only central's own checks stand between them and a double."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for payload in payloads:
            env = decode_envelope(payload)
            await js.publish(up_subject(env.branch, event_kind(env.body)), payload)
    finally:
        await nc.close()

    async def drained() -> bool:
        info = await central.js.consumer_info(UP_STREAM, INGEST_DURABLE)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await wait_until(drained, timeout=30)


async def counts(central: Any) -> tuple[int, int, int]:
    """Events stored, shift id conflicts, dead letters."""
    async with central.sessionmaker() as session:
        return (
            int(await session.scalar(select(func.count()).select_from(IngestedEvent)) or 0),
            int(await session.scalar(select(func.count()).select_from(ShiftIdConflict)) or 0),
            int(await session.scalar(select(func.count()).select_from(DeadLetter)) or 0),
        )


def summary(shift: ShiftOut) -> tuple[Any, ...]:
    """cashier, float, status, receipts central recorded, the till's count, the Z."""
    return (
        shift.cashier,
        shift.opening_float,
        shift.status,
        shift.recorded.receipts_count,
        shift.reported.receipts_count,
        shift.z_report_number,
    )


async def test_shifts_after_restoring_a_backup_are_each_their_own_at_central(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    await register_branch(central, "B1")
    fiscal = start_simulator_pty("fiscal")
    store = tmp_path / "store"
    try:
        agent = await make_agent("B1", nats_server.url, data_dir=str(store), tills=tills(fiscal))
        await wait_until(lambda: _settled(agent))
        ann = await open_shift(agent, T2, "ann", 100)
        await sell(agent, T2, ann, "ann-1")
        await wait_until(lambda: _at_central(central, {ann: 1}))
        # The nightly backup, while ann's shift is open.
        backup = tmp_path / "pre.db"
        backup_database(store / "agent.db", backup)
        ann_z = (await close(agent, T2))["z_report_number"]
        eve = await open_shift(agent, T2, "eve", 777)
        await sell(agent, T2, eve, "eve-1")
        await sell(agent, T2, eve, "eve-2")
        eve_z = (await close(agent, T2))["z_report_number"]
        await wait_until(lambda: _at_central(central, {ann: 1, eve: 2}, closed={ann, eve}))
        before = await outbox(agent)
        await agent.stop()

        # The disk fails; the technician restores the backup and starts the agent.
        restore_database(backup, store / "agent.db", branch="B1")
        restored = await make_agent("B1", nats_server.url, data_dir=str(store), tills=tills(fiscal))
        await wait_until(lambda: _settled(restored))
        # Ann's shift is open again in the restored database: closed a second time.
        again_z = (await close(restored, T2))["z_report_number"]
        zoe = await open_shift(restored, T2, "zoe", 1)
        assert zoe not in (ann, eve)
        assert re.fullmatch(r"T2-\d+", zoe), zoe  # readable: no tag once central answered
        await sell(restored, T2, zoe, "zoe-1")
        await wait_until(lambda: _at_central(central, {ann: 1, eve: 2, zoe: 1}))

        shifts = await shifts_at_central(central)
        assert set(shifts) == {ann, eve, zoe}
        assert summary(shifts[ann]) == ("ann", 100, "closed", 1, 1, ann_z)
        assert summary(shifts[eve]) == ("eve", 777, "closed", 2, 2, eve_z)
        assert summary(shifts[zoe]) == ("zoe", 1, "open", 1, None, None)
        # The restored database's second closing of ann's shift is kept beside it, not
        # over the first one's counts and Z.
        assert [(c.kind, c.z_report_number) for c in shifts[ann].id_conflicts] == [
            ("closed", again_z)
        ]
        assert shifts[eve].id_conflicts == shifts[zoe].id_conflicts == []
        stored = await counts(central)
        assert stored[1:] == (1, 0)

        # Every event of both databases delivered again: nothing doubles.
        await redeliver(central, nats_server.url, before + await outbox(restored))
        assert await counts(central) == stored
        assert await shifts_at_central(central) == shifts
    finally:
        fiscal.stop()


async def test_shifts_of_a_new_database_for_the_branch_are_each_their_own_at_central(
    central: Any, nats_server: EmbeddedNats, make_agent: Any, tmp_path: Path
) -> None:
    await register_branch(central, "B1")
    fiscal = start_simulator_pty("fiscal")
    link = LinkProxy(nats_server.port)
    await link.start()
    try:
        old = await make_agent(
            "B1", nats_server.url, data_dir=str(tmp_path / "old"), tills=tills(fiscal)
        )
        await wait_until(lambda: _settled(old))
        ann = await open_shift(old, T1, "ann", 50)
        await sell(old, T1, ann, "ann-1")
        bob = await open_shift(old, T2, "bob", 200)
        await sell(old, T2, bob, "bob-1")
        await close(old, T1)
        bob_z = (await close(old, T2))["z_report_number"]
        await wait_until(lambda: _at_central(central, {ann: 1, bob: 1}, closed={ann, bob}))
        before = await outbox(old)
        # The store's server is replaced (README): the old one stops, the new one
        # starts with an empty database and its link down, and sells at once.
        await old.stop()
        await link.cut("reset")
        new = await make_agent("B1", link.url, data_dir=str(tmp_path / "new"), tills=tills(fiscal))
        cat = await open_shift(new, T1, "cat", 30)
        # Opened before central could answer: its number may be another shift's, the
        # tag keeps it apart.
        assert re.fullmatch(r"T1-\d+-[2-9a-z]{5}", cat), cat
        await sell(new, T1, cat, "cat-1")
        assert not new.numbering.settled
        await link.restore()
        await wait_until(lambda: _settled(new), timeout=30)
        await close(new, T1)
        dan = await open_shift(new, T1, "dan", 40)
        await sell(new, T1, dan, "dan-1")
        await sell(new, T1, dan, "dan-2")
        await close(new, T1)
        eve = await open_shift(new, T2, "eve", 60)
        await sell(new, T2, eve, "eve-1")
        eve_z = (await close(new, T2))["z_report_number"]
        ids = [ann, bob, cat, dan, eve]
        assert len(set(ids)) == 5
        for shift_id in (dan, eve):
            assert re.fullmatch(r"T[12]-\d+", shift_id), shift_id
        await wait_until(
            lambda: _at_central(central, {ann: 1, bob: 1, cat: 1, dan: 2, eve: 1}, closed=set(ids)),
            timeout=30,
        )
        shifts = await shifts_at_central(central)
        assert set(shifts) == set(ids)
        assert summary(shifts[ann]) == ("ann", 50, "closed", 1, 1, None)
        assert summary(shifts[bob]) == ("bob", 200, "closed", 1, 1, bob_z)
        assert summary(shifts[cat]) == ("cat", 30, "closed", 1, 1, None)
        assert summary(shifts[dan]) == ("dan", 40, "closed", 2, 2, None)
        assert summary(shifts[eve]) == ("eve", 60, "closed", 1, 1, eve_z)
        assert all(s.id_conflicts == [] for s in shifts.values())
        assert shifts[bob].z_matches is shifts[eve].z_matches is True
        async with central.sessionmaker() as session:
            day = shifts[ann].local_date
            report = await service.shift_reconciliation(
                session, date_from=day, date_to=day, branch="B1"
            )
        assert sorted(r.shift_id for r in report.rows) == sorted(ids)
        assert [r.differences for r in report.rows] == [[]] * 5
        stored = await counts(central)
        assert stored[1:] == (0, 0)

        await redeliver(central, nats_server.url, before + await outbox(new))
        assert await counts(central) == stored
        assert await shifts_at_central(central) == shifts
    finally:
        await link.close()
        fiscal.stop()


async def _settled(agent: Any) -> bool:
    return bool(agent.numbering.settled and agent.numbering.start)


async def _at_central(
    central: Any, receipts: dict[str, int], closed: set[str] | None = None
) -> bool:
    shifts = await shifts_at_central(central)
    for shift_id, count in receipts.items():
        shift = shifts.get(shift_id)
        if shift is None or shift.opened_at is None or shift.recorded.receipts_count != count:
            return False
    return all(shifts[s].closed_at is not None for s in closed or ())
