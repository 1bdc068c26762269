"""Each branch is only itself on NATS: credentials issued by central, checked by a real
nats-server running with operator/JWT auth, and revocation without a server restart."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StreamConfig
from sqlalchemy import func, select

from branch_agent.downstream import DownMessage
from branch_agent.status import AgentStatus, format_status
from central.app import create_app
from central.embedded_nats import EmbeddedNats
from central.models import (
    AuditEntry,
    Branch,
    BranchCredential,
    BranchStatus,
    DeadLetter,
    NatsIssuerIdentity,
    Receipt,
)
from central.runtime import CentralRuntime
from central.services.nats_auth import (
    account_jwt_from_db,
    issue_branch_credentials,
    push_account_jwt,
    register_branch,
    revoke_branch,
    write_branch_creds,
)
from central.sync.nats_auth import NatsIssuer
from protocol import EventEnvelope, Payment, ReceiptLine, ReceiptRecorded, encode, new_event_id
from protocol.subjects import DOWN_STREAM, down_subject, up_subject
from tests.conftest import (
    asgi_client,
    central_settings,
    create_api_token,
    running_central,
    table_row_counts,
    wait_until,
)
from tests.conftest import register_branch as register_plain_branch
from tests.e2e.test_agent_cli import cli
from tests.e2e.test_agent_kill import AgentProcess, free_port, wait_healthy
from tests.e2e.test_skeleton import post_sale, receipts_at_central, sale


@pytest.fixture
def issuer(tmp_path: Path) -> NatsIssuer:
    return NatsIssuer.create(tmp_path / "issuer")


@pytest.fixture
def secure_nats(tmp_path: Path, issuer: NatsIssuer) -> Iterator[EmbeddedNats]:
    store = tmp_path / "secure-nats"
    server = EmbeddedNats(store, extra_config=issuer.server_config(store / "resolver"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def secure_central(
    db_url: str, secure_nats: EmbeddedNats, issuer: NatsIssuer
) -> AsyncIterator[CentralRuntime]:
    async with running_central(secure_settings(db_url, secure_nats, issuer)) as runtime:
        yield runtime


def secure_settings(db_url: str, server: EmbeddedNats, issuer: NatsIssuer) -> Any:
    """Central on ``server`` with the issuer's credentials, issuing the branches'."""
    return central_settings(
        db_url,
        server.url,
        nats_creds=str(issuer.central_creds_file()),
        nats_issuer_dir=str(issuer.directory),
    )


async def add_branch_with_creds(runtime: CentralRuntime, issuer: NatsIssuer, code: str) -> Path:
    async with runtime.sessionmaker() as session, session.begin():
        reg = await register_branch(session, issuer, code=code, name=code)
    return write_branch_creds(issuer, code, reg.user)


class Client:
    """A raw NATS client holding a branch's credentials; records denied operations."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Any = None
        self.closed = asyncio.Event()

    async def connect(self, url: str, creds: Path, branch: str) -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        async def on_closed() -> None:
            self.closed.set()

        # Kept before connecting so a refused connection can still be closed.
        self.nc = NATS()
        await self.nc.connect(
            url,
            user_credentials=str(creds),
            inbox_prefix=f"_INBOX.{branch}".encode(),
            error_cb=on_error,
            closed_cb=on_closed,
            max_reconnect_attempts=0,
            allow_reconnect=False,
        )
        return self

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


def receipt(branch: str, seq: int) -> bytes:
    return encode(
        EventEnvelope(
            event_id=new_event_id(),
            branch=branch,
            seq=seq,
            occurred_at=datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
            utc_offset_min=60,
            body=ReceiptRecorded(
                till="T1",
                shift_id="S1",
                receipt_number=seq,
                sale_id=f"{branch}-{seq}",
                lines=(
                    ReceiptLine(
                        line_no=1,
                        sku="MILK",
                        quantity_milli=1000,
                        unit_price=100,
                        vat_rate_bp=1000,
                        line_total=100,
                    ),
                ),
                payments=(Payment(type="cash", amount=100),),
                total=100,
            ),
        )
    )


async def branch_consumers_ready(runtime: CentralRuntime, *codes: str) -> None:
    assert runtime.js is not None
    js = runtime.js

    async def ready() -> bool:
        try:
            for code in codes:
                await js.consumer_info(DOWN_STREAM, f"branch-{code}")
        except Exception:
            return False
        return True

    await wait_until(ready)


async def test_branch_credentials_reach_only_the_branchs_own_subjects(
    secure_central: CentralRuntime, secure_nats: EmbeddedNats, issuer: NatsIssuer
) -> None:
    creds_a = await add_branch_with_creds(secure_central, issuer, "BA")
    await add_branch_with_creds(secure_central, issuer, "BB")
    await branch_consumers_ready(secure_central, "BA", "BB")
    assert secure_central.js is not None
    await secure_central.js.publish(down_subject("branch", "BB", "probe", "k"), b"for-BB")
    await secure_central.js.publish(down_subject("branch", "BA", "probe", "k"), b"for-BA")

    a = await Client().connect(secure_nats.url, creds_a, "BA")
    try:
        # Short API timeouts: a denied request is never answered.
        js = a.nc.jetstream(timeout=0.5)
        # Its own: publish up, read its down consumer.
        ack = await js.publish(up_subject("BA", "probe"), b"mine", timeout=3)
        assert ack.stream == "BACKROOM_UP"
        own = await js.pull_subscribe_bind("branch-BA", stream=DOWN_STREAM)
        [msg] = await own.fetch(1, timeout=3)
        assert msg.data == b"for-BA"
        await msg.ack()

        # Another branch's up subject.
        with pytest.raises(NatsTimeoutError):
            await js.publish(up_subject("BB", "probe"), b"forged", timeout=0.5)
        # Another branch's down consumer.
        other = await js.pull_subscribe_bind("branch-BB", stream=DOWN_STREAM)
        with pytest.raises(NatsTimeoutError):
            await other.fetch(1, timeout=0.5)
        # Stream administration.
        with pytest.raises(NatsTimeoutError):
            await js.add_stream(StreamConfig(name="EVIL", subjects=["evil.>"]))
        with pytest.raises(NatsTimeoutError):
            await js.delete_stream("BACKROOM_UP")
        with pytest.raises(NatsTimeoutError):
            await js.delete_consumer(DOWN_STREAM, "branch-BB")
        # Listening to the raw streams or to other inboxes.
        await a.nc.subscribe("up.>")
        await a.nc.subscribe("_INBOX.BB.>")
        await a.nc.flush(timeout=2)
        await asyncio.sleep(0.3)
    finally:
        await a.close()

    denied = " ".join(a.errors)
    for subject in (
        'publish to "up.bb.probe"',
        'publish to "$js.api.consumer.msg.next.backroom_down.branch-bb"',
        'publish to "$js.api.stream.create.evil"',
        'publish to "$js.api.stream.delete.backroom_up"',
        'publish to "$js.api.consumer.delete.backroom_down.branch-bb"',
        'subscription to "up.>"',
        'subscription to "_inbox.bb.>"',
    ):
        assert subject in denied, (subject, a.errors)

    # Nothing of BA's forgery reached the up stream as BB's; BB's message is unread.
    info = await secure_central.js.consumer_info(DOWN_STREAM, "branch-BB")
    assert info.num_pending == 1
    assert (await secure_central.js.stream_info("BACKROOM_UP")).state.messages == 1


async def test_agent_with_issued_credentials_syncs_both_ways(
    secure_central: CentralRuntime,
    secure_nats: EmbeddedNats,
    issuer: NatsIssuer,
    make_agent: Any,
) -> None:
    creds = await add_branch_with_creds(secure_central, issuer, "B1")
    await branch_consumers_ready(secure_central, "B1")
    agent = await make_agent("B1", secure_nats.url, nats_creds=str(creds))
    got: list[bytes] = []

    async def on_probe(message: DownMessage) -> None:
        got.append(message.data)

    agent.downstream.register("probe", on_probe)
    assert secure_central.js is not None
    await secure_central.js.publish(down_subject("branch", "B1", "probe", "x"), b"down-ok")

    async def synced() -> bool:
        async with secure_central.sessionmaker() as session:
            status = await session.get(BranchStatus, "B1")
        return status is not None and got == [b"down-ok"]

    # Heartbeats up (JetStream acks back through the branch's own inbox), probe down.
    await wait_until(synced, timeout=30)


async def test_payload_naming_another_branch_is_dead_lettered(
    secure_central: CentralRuntime, secure_nats: EmbeddedNats, issuer: NatsIssuer
) -> None:
    creds_a = await add_branch_with_creds(secure_central, issuer, "BA")
    await add_branch_with_creds(secure_central, issuer, "BB")
    a = await Client().connect(secure_nats.url, creds_a, "BA")
    try:
        js = a.nc.jetstream()
        # On its own subject (NATS allows it) but claiming to be BB.
        await js.publish(up_subject("BA", "receipt_recorded"), receipt("BB", 1), timeout=3)
        await js.publish(up_subject("BA", "receipt_recorded"), receipt("BA", 1), timeout=3)
    finally:
        await a.close()

    async def settled() -> bool:
        async with secure_central.sessionmaker() as session:
            letters = (await session.scalars(select(DeadLetter))).all()
            receipts = (await session.scalars(select(Receipt))).all()
        return len(letters) == 1 and len(receipts) == 1

    await wait_until(settled)
    async with secure_central.sessionmaker() as session:
        [letter] = (await session.scalars(select(DeadLetter))).all()
        [stored] = (await session.scalars(select(Receipt))).all()
    assert letter.subject == "up.BA.receipt_recorded"
    assert "BB" in letter.reason
    assert stored.branch == "BA"


async def test_revoked_branch_is_refused_without_restarting_nats(
    secure_central: CentralRuntime, secure_nats: EmbeddedNats, issuer: NatsIssuer
) -> None:
    creds_a = await add_branch_with_creds(secure_central, issuer, "BA")
    creds_b = await add_branch_with_creds(secure_central, issuer, "BB")
    pid = secure_nats.pid
    a = await Client().connect(secure_nats.url, creds_a, "BA")
    try:
        ack = await a.nc.jetstream().publish(up_subject("BA", "probe"), b"before", timeout=3)
        assert ack.seq >= 1

        async with secure_central.sessionmaker() as session, session.begin():
            account_jwt = await revoke_branch(session, issuer, "BA")
        assert await push_account_jwt(issuer, secure_nats.url, account_jwt)

        # The live connection is cut, and the credentials no longer open one.
        await asyncio.wait_for(a.closed.wait(), 10)
        refused_client = Client()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await refused_client.connect(secure_nats.url, creds_a, "BA")
        await refused_client.close()
        # Same server process; the other branch is unaffected.
        assert secure_nats.pid == pid
        assert secure_nats.is_running()
        b = await Client().connect(secure_nats.url, creds_b, "BB")
        try:
            await b.nc.jetstream().publish(up_subject("BB", "probe"), b"still-fine", timeout=3)
        finally:
            await b.close()
    finally:
        await a.close()

    # An event of the revoked branch still in the stream is refused by central. (The
    # worker caches the branch list for branch_cache_s, 5 s by default: that bounds how
    # late a revocation takes effect at central; here it reads the list every time.)
    for worker in secure_central.workers:
        worker.branch_cache_s = 0.0
    assert secure_central.js is not None
    await secure_central.js.publish(up_subject("BA", "receipt_recorded"), receipt("BA", 1))

    async def refused() -> bool:
        async with secure_central.sessionmaker() as session:
            letters = (await session.scalars(select(DeadLetter))).all()
        return any("revoked" in d.reason for d in letters)

    await wait_until(refused)
    async with secure_central.sessionmaker() as session:
        assert (await session.scalars(select(Receipt))).all() == []


async def test_central_pushes_an_account_jwt_whose_branch_permissions_changed(
    db_url: str, tmp_path: Path, issuer: NatsIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server still running with an older account JWT (before the branch template
    allowed the master-data position report) is brought up to date when central starts."""
    from central.sync import nats_auth as auth

    allowed = auth.BRANCH_PERMISSION_TEMPLATE["pub"]["allow"]
    monkeypatch.setitem(
        auth.BRANCH_PERMISSION_TEMPLATE["pub"],
        "allow",
        [s for s in allowed if not s.startswith("rpc.")],
    )
    issuer.store_account_jwt(issuer.account_jwt())
    monkeypatch.undo()
    store = tmp_path / "old-nats"
    server = EmbeddedNats(store, extra_config=issuer.server_config(store / "resolver"))
    server.start()
    try:
        runtime = CentralRuntime(secure_settings(db_url, server, issuer))
        async with runtime.sessionmaker() as session, session.begin():
            reg = await register_branch(session, issuer, code="B7", name="B7")
        creds = write_branch_creds(issuer, "B7", reg.user)
        before = await Client().connect(server.url, creds, "B7")
        try:
            await before.nc.publish("rpc.B7.md_snapshot", b"{}")
            await before.nc.flush()

            async def denied() -> bool:
                return bool(before.errors)

            await wait_until(denied, timeout=5, interval=0.05)
            assert "permissions violation" in before.errors[0].lower()
        finally:
            await before.close()

        await runtime.start(ingest_workers=0)
        try:
            await asyncio.wait_for(runtime.nats_ready.wait(), 20)
            stored = (issuer.directory / "account.jwt").read_text()
            assert "rpc.{{name()}}.md_snapshot" in str(auth.decode_jwt_claims(stored))
            after = await Client().connect(server.url, creds, "B7")
            try:
                await after.nc.publish("rpc.B7.md_snapshot", b"{}")
                await after.nc.flush()
                await asyncio.sleep(0.3)
                assert after.errors == []
            finally:
                await after.close()
        finally:
            await runtime.stop()
    finally:
        server.stop()


async def test_a_revocation_outlives_a_restore_of_centrals_database(
    db_url: str, secure_nats: EmbeddedNats, issuer: NatsIssuer, tmp_path: Path
) -> None:
    """Central's database restored from a backup taken before a branch was revoked:
    at its start central re-signed the account from the database (no revocation) and
    pushed it, letting the branch connect again. The revocation stays (the account
    JWT central stored last keeps it), and the database has the branch revoked again."""
    from tests.e2e.test_central_restored import backup_of

    settings = secure_settings(db_url, secure_nats, issuer)
    async with running_central(settings) as central:
        creds = await add_branch_with_creds(central, issuer, "BA")
    restore = await backup_of(db_url, tmp_path)
    async with running_central(settings) as central:
        async with central.sessionmaker() as session, session.begin():
            account_jwt = await revoke_branch(session, issuer, "BA")
        assert await push_account_jwt(issuer, secure_nats.url, account_jwt)
    await restore()

    async with running_central(settings) as central:
        refused = Client()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await refused.connect(secure_nats.url, creds, "BA")
        await refused.close()
        async with central.sessionmaker() as session:
            branch = await session.get(Branch, "BA")
            audited = await session.scalar(
                select(func.count()).where(AuditEntry.action == "branch.revocation_restored")
            )
        assert branch is not None
        assert (branch.active, branch.revoked_at is not None, audited) == (False, True, 1)


async def test_agent_with_another_branchs_credentials_shows_the_denial_and_keeps_its_sales(
    secure_central: CentralRuntime,
    secure_nats: EmbeddedNats,
    issuer: NatsIssuer,
    make_agent: Any,
    tmp_path: Path,
) -> None:
    """Branch BA's agent given BB's credentials (a copied creds file): it connects, so the
    link looked fine while every operation was denied. Its status says degraded, with the
    server's permissions violation; its sales wait in the outbox; with its own
    credentials they all reach central, once."""
    creds_a = await add_branch_with_creds(secure_central, issuer, "BA")
    creds_b = await add_branch_with_creds(secure_central, issuer, "BB")
    await branch_consumers_ready(secure_central, "BA", "BB")
    data_dir = str(tmp_path / "agent-BA")
    wrong = await make_agent("BA", secure_nats.url, nats_creds=str(creds_b), data_dir=data_dir)
    for n in range(3):
        assert (await post_sale(wrong, sale(f"ba-{n}"), "BA-till-1")).status_code == 201

    async def degraded() -> bool:
        return (await wrong.status()).link == "degraded"

    await wait_until(degraded, timeout=30)
    async with asgi_client(wrong.app) as client:
        shown = (await client.get("/health/status")).json()
        health = (await client.get("/health")).json()
    assert shown["link"] == "degraded"
    assert "permissions violation for" in shown["nats_error"]
    assert ".ba" in shown["nats_error"]  # the subject of branch BA it was denied
    assert shown["nats_error"] in shown["nats_denied"]
    assert shown["outbox_backlog"] == 3
    assert health["nats"] == "degraded"
    text = format_status(msgspec.convert(shown, AgentStatus))
    assert "link to central  degraded" in text
    assert "permissions violation" in text
    assert "not this branch's" in text
    await wrong.stop()
    assert await receipts_at_central(secure_central) == []

    # Its own credentials (the technician put the right file in place and restarted it).
    right = await make_agent("BA", secure_nats.url, nats_creds=str(creds_a), data_dir=data_dir)

    async def arrived() -> bool:
        return len(await receipts_at_central(secure_central)) == 3

    await wait_until(arrived, timeout=30)
    status = await right.status()
    assert (status.link, status.nats_error, status.nats_denied) == ("connected", "", [])
    assert status.outbox_backlog == 0
    assert sorted(s for _, s in await receipts_at_central(secure_central)) == [
        "ba-0",
        "ba-1",
        "ba-2",
    ]
    async with secure_central.sessionmaker() as session:
        assert (await session.scalars(select(DeadLetter))).all() == []


def start_agent_process(
    tmp_path: Path, server: EmbeddedNats, creds: Path
) -> tuple[AgentProcess, Path, str]:
    """Branch BA's agent as a process using the credentials file ``creds`` (till T1,
    token t1); the process, its config and its till API's URL."""
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nbranch = "BA"\ndata_dir = "{tmp_path / "agent"}"\n'
        f'nats_url = "{server.url}"\nnats_creds = "{creds}"\nhttp_port = {port}\n'
        'demo_catalog = true\nmanager_token = "boss"\nheartbeat_interval_s = 0.5\n'
        '[[agent.tills]]\nid = "T1"\ntoken = "t1"\n'
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    return agent, config, f"http://127.0.0.1:{port}"


async def sell(client: httpx.AsyncClient, numbers: range, *, open_shift: bool = False) -> None:
    """Sales ba-N at till T1 of the agent process, into its shift S1 (opened first)."""
    if open_shift:
        opened = await client.post(
            "/api/v1/shifts", json={"shift_id": "S1"}, headers={"Authorization": "Bearer t1"}
        )
        assert opened.status_code == 201, opened.text
    for n in numbers:
        posted = await client.post(
            "/api/v1/sales", json=sale(f"ba-{n}"), headers={"Authorization": "Bearer t1"}
        )
        assert posted.status_code == 201, posted.text


async def test_agent_process_killed_while_denied_then_given_its_credentials_loses_nothing(
    secure_central: CentralRuntime, secure_nats: EmbeddedNats, issuer: NatsIssuer, tmp_path: Path
) -> None:
    """The same as a technician meets it: ``status`` of a running agent process says
    degraded and why; the process is SIGKILLed while its operations are being denied,
    its credentials file replaced by the right one, and it is started again: every sale
    reaches central exactly once."""
    creds_a = await add_branch_with_creds(secure_central, issuer, "BA")
    creds_b = await add_branch_with_creds(secure_central, issuer, "BB")
    await branch_consumers_ready(secure_central, "BA", "BB")
    creds = tmp_path / "branch.creds"
    creds.write_bytes(creds_b.read_bytes())  # another branch's file copied by mistake
    agent, config, url = start_agent_process(tmp_path, secure_nats, creds)
    try:
        await wait_healthy(url)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            await sell(client, range(4), open_shift=True)

        async def degraded() -> bool:
            return "link to central  degraded" in cli(config, "status").stdout

        await wait_until(degraded, timeout=40, interval=0.5)
        shown = cli(config, "status").stdout
        assert 'permissions violation for publish to "' in shown
        assert "its credentials are not this branch's (BA)" in shown
        as_json = json.loads(cli(config, "status", "--json").stdout)
        assert as_json["link"] == "degraded"
        assert as_json["nats_denied"]
        assert as_json["outbox_backlog"] == 5  # the shift and the four sales
        agent.kill()
        assert await receipts_at_central(secure_central) == []

        creds.write_bytes(creds_a.read_bytes())
        agent.start()
        await wait_healthy(url)

        async def arrived() -> bool:
            return len(await receipts_at_central(secure_central)) == 4

        await wait_until(arrived, timeout=40)

        async def connected() -> bool:
            answer = json.loads(cli(config, "status", "--json").stdout)
            return answer["link"] == "connected" and answer["outbox_backlog"] == 0

        await wait_until(connected, timeout=20, interval=0.5)
    finally:
        agent.stop()
    assert sorted(s for _, s in await receipts_at_central(secure_central)) == [
        f"ba-{n}" for n in range(4)
    ]
    async with secure_central.sessionmaker() as session:
        assert (await session.scalars(select(DeadLetter))).all() == []


# A chain has one NATS issuer whatever central host answers: a second API host without
# the shared nats_issuer_dir (or with another issuer) refuses to issue or revoke branch
# credentials with a 503 problem and says so at start (/health), instead of minting
# credentials the servers refuse and revocations they ignore.


@asynccontextmanager
async def api(runtime: CentralRuntime) -> AsyncIterator[httpx.AsyncClient]:
    token = await create_api_token(runtime, "admin")
    app = create_app(runtime.settings, runtime=runtime)
    async with asgi_client(app, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def host_b_settings(db_url: str, server: EmbeddedNats, issuer: NatsIssuer, data: Path) -> Any:
    """A second API host: the same database and NATS (with central's NATS credentials),
    its own data directory, so its own (absent) nats-issuer."""
    return central_settings(
        db_url, server.url, nats_creds=str(issuer.central_creds_file()), data_dir=str(data)
    )


async def _creds_file(tmp_path: Path, name: str, creds: str) -> Path:
    path = tmp_path / f"{name}.creds"
    path.write_text(creds)
    return path


def _assert_issuer_problem(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert "not the chain's" in problem["detail"]
    assert "nats_issuer_dir" in problem["detail"]


@pytest.mark.parametrize("host_b_issuer", ["missing", "another"])
async def test_a_second_host_without_the_chains_issuer_refuses_credential_operations(
    db_url: str,
    tmp_path: Path,
    issuer: NatsIssuer,
    secure_nats: EmbeddedNats,
    host_b_issuer: str,
) -> None:
    data_b = tmp_path / "host-b"
    if host_b_issuer == "another":
        NatsIssuer.create(data_b / "nats-issuer")
    async with running_central(secure_settings(db_url, secure_nats, issuer)) as host_a:
        # Host A connects with the issuer's credentials: its start recorded the issuer.
        assert host_a.nats_issuer == "ok"
        async with host_a.sessionmaker() as s:
            assert await s.get(NatsIssuerIdentity, 1) is not None
        # Host A registers a branch: the chain's issuer is recorded, the creds connect.
        async with api(host_a) as client_a:
            r = await client_a.post("/api/v1/branches", json={"code": "B001"})
            assert r.status_code == 201, r.text
            creds_b001 = await _creds_file(tmp_path, "B001", r.json()["creds"])
        branch = await Client().connect(secure_nats.url, creds_b001, "B001")
        await branch.close()
        async with host_a.sessionmaker() as s:
            recorded = await s.get(NatsIssuerIdentity, 1)
        assert recorded is not None
        assert recorded.operator_public_key == issuer.operator_public_key

        settings_b = host_b_settings(db_url, secure_nats, issuer, data_b)
        async with running_central(settings_b) as host_b, api(host_b) as client_b:
            # It says so at start.
            health = (await client_b.get("/health")).json()
            assert health["nats_issuer"].startswith("error: this host's NATS issuer is not")
            assert health["status"] == "degraded"
            before = await table_row_counts(host_b)
            audit_before = before[AuditEntry.__tablename__]

            _assert_issuer_problem(await client_b.post("/api/v1/branches", json={"code": "B005"}))
            _assert_issuer_problem(await client_b.post("/api/v1/branches/B001/credentials"))
            _assert_issuer_problem(await client_b.post("/api/v1/branches/B001/revoke"))

            # Nothing changed (the tokens made for the test aside), no second operator.
            after = await table_row_counts(host_b)
            assert after[AuditEntry.__tablename__] == audit_before
            assert after == before
            async with host_b.sessionmaker() as s:
                assert await s.get(Branch, "B005") is None
                assert (await s.get(Branch, "B001")).active  # type: ignore[union-attr]
                assert len((await s.scalars(select(BranchCredential))).all()) == 1
            if host_b_issuer == "missing":
                assert not (data_b / "nats-issuer" / "issuer.json").exists()

        # B001 still connects (not revoked); host A's operations still work.
        branch = await Client().connect(secure_nats.url, creds_b001, "B001")
        await branch.close()
        async with api(host_a) as client_a:
            r = await client_a.post("/api/v1/branches/B001/revoke")
            assert r.status_code == 200, r.text
            assert r.json()["pushed_to_nats"] is True
        refused = Client()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await refused.connect(secure_nats.url, creds_b001, "B001")
        await refused.close()


async def test_a_host_sharing_the_issuer_dir_issues_credentials_that_connect(
    db_url: str, tmp_path: Path, issuer: NatsIssuer, secure_nats: EmbeddedNats
) -> None:
    """The documented way: every API host runs with the same nats_issuer_dir."""
    async with (
        running_central(secure_settings(db_url, secure_nats, issuer)) as host_a,
        running_central(
            central_settings(
                db_url,
                secure_nats.url,
                nats_creds=str(issuer.central_creds_file()),
                nats_issuer_dir=str(issuer.directory),
                data_dir=str(tmp_path / "host-b"),
            )
        ) as host_b,
    ):
        assert host_a.nats_issuer == "ok"
        assert host_b.nats_issuer == "ok"
        async with api(host_b) as client_b:
            r = await client_b.post("/api/v1/branches", json={"code": "B007"})
            assert r.status_code == 201, r.text
            creds = await _creds_file(tmp_path, "B007", r.json()["creds"])
            assert json.dumps((await client_b.get("/health")).json()).count("error") == 0
        branch = await Client().connect(secure_nats.url, creds, "B007")
        await branch.close()


async def revoke_credentials(
    runtime: CentralRuntime, issuer: NatsIssuer, server: EmbeddedNats, public_key: str
) -> None:
    """Revoke one credentials key of a branch (rotated credentials: the branch stays),
    pushed to the running server: it cuts the connections using the key with an
    ``-ERR 'Authorization Violation'``, which closes nats-py's client for good."""
    async with runtime.sessionmaker() as session, session.begin():
        credential = await session.scalar(
            select(BranchCredential).where(BranchCredential.public_key == public_key)
        )
        assert credential is not None
        credential.revoked_at = datetime.now(UTC)
        await session.flush()
        account_jwt = await account_jwt_from_db(session, issuer)
    assert await push_account_jwt(issuer, server.url, account_jwt)


async def test_revoked_agent_says_so_keeps_its_sales_and_does_not_flood_the_log(
    secure_central: CentralRuntime,
    secure_nats: EmbeddedNats,
    issuer: NatsIssuer,
    make_agent: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The branch is revoked while its agent is connected: the server's -ERR closes the
    NATS client. The agent's status names the reason, /health is degraded, the sales
    wait in the outbox, and the log says it once (not every second) while the agent
    keeps asking the server, with backoff, for a new connection."""
    creds_a = await add_branch_with_creds(secure_central, issuer, "BA")
    await branch_consumers_ready(secure_central, "BA")
    agent = await make_agent("BA", secure_nats.url, nats_creds=str(creds_a))
    assert (await post_sale(agent, sale("ba-0"), "BA-till-1")).status_code == 201

    async def arrived() -> bool:
        return len(await receipts_at_central(secure_central)) == 1

    await wait_until(arrived, timeout=30)
    first_client = agent.nc
    async with secure_central.sessionmaker() as session, session.begin():
        account_jwt = await revoke_branch(session, issuer, "BA")
    assert await push_account_jwt(issuer, secure_nats.url, account_jwt)

    async def refused() -> bool:
        return "authorization violation" in (await agent.status()).nats_error

    await wait_until(refused, timeout=20)
    caplog.clear()
    for n in range(1, 4):
        assert (await post_sale(agent, sale(f"ba-{n}"), "BA-till-1")).status_code == 201
    await asyncio.sleep(6)
    async with asgi_client(agent.app) as client:
        shown = (await client.get("/health/status")).json()
        health = (await client.get("/health")).json()
    assert shown["link"] == "disconnected"
    assert shown["nats_error"] == (
        "authorization violation: credentials revoked or not valid for this branch"
    )
    assert shown["outbox_backlog"] == 3
    assert (health["status"], health["nats"]) == ("degraded", "disconnected")
    assert "credentials revoked" in format_status(msgspec.convert(shown, AgentStatus))
    # The closed client was replaced (the agent keeps trying), quietly.
    assert agent.nc is not first_client
    noisy = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(noisy) <= 3, [r.getMessage() for r in noisy]
    assert await receipts_at_central(secure_central) == [("BA", "ba-0")]


async def test_agent_whose_client_the_server_closes_connects_again_and_loses_nothing(
    secure_central: CentralRuntime,
    secure_nats: EmbeddedNats,
    issuer: NatsIssuer,
    tmp_path: Path,
) -> None:
    """Credentials rotated under a running agent process: its old key is revoked, the
    server's -ERR closes its NATS client for good. With the new file in place the agent
    connects again by itself (no restart), and is SIGKILLed right then, while its
    outbox drains; started again, every sale reaches central exactly once."""
    creds_a = await add_branch_with_creds(secure_central, issuer, "BA")
    await branch_consumers_ready(secure_central, "BA")
    creds = tmp_path / "branch.creds"
    creds.write_bytes(creds_a.read_bytes())  # the branch's file is written anew below
    async with secure_central.sessionmaker() as session, session.begin():
        new_user = (await issue_branch_credentials(session, issuer, "BA")).user
        old_key = await session.scalar(
            select(BranchCredential.public_key).where(
                BranchCredential.branch == "BA",
                BranchCredential.public_key != new_user.public_key,
            )
        )
    assert old_key is not None
    creds_new = write_branch_creds(issuer, "BA", new_user)
    agent, config, url = start_agent_process(tmp_path, secure_nats, creds)
    total = 40
    try:
        await wait_healthy(url)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            await sell(client, range(4), open_shift=True)

            async def first_arrived() -> bool:
                return len(await receipts_at_central(secure_central)) == 4

            await wait_until(first_arrived, timeout=40)
            await revoke_credentials(secure_central, issuer, secure_nats, old_key)

            async def refused() -> bool:
                answer = json.loads(cli(config, "status", "--json").stdout)
                return "authorization violation" in answer["nats_error"]

            await wait_until(refused, timeout=30, interval=0.5)
            health = (await client.get("/health")).json()
            assert health["status"] == "degraded"
            await sell(client, range(4, total))
        assert len(await receipts_at_central(secure_central)) == 4

        # The new file in place: the agent's next client reads it.
        creds.write_bytes(creds_new.read_bytes())

        async def draining() -> bool:
            return len(await receipts_at_central(secure_central)) > 4

        await wait_until(draining, timeout=60, interval=0.05)
        agent.kill()  # reconnected by itself, killed while its outbox drains
        agent.start()
        await wait_healthy(url)

        async def all_arrived() -> bool:
            return len(await receipts_at_central(secure_central)) >= total

        await wait_until(all_arrived, timeout=60)

        async def connected() -> bool:
            answer = json.loads(cli(config, "status", "--json").stdout)
            return answer["link"] == "connected" and answer["outbox_backlog"] == 0

        await wait_until(connected, timeout=30, interval=0.5)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.get("/health")).json()["status"] == "ok"
    finally:
        agent.stop()
    got = sorted(s for _, s in await receipts_at_central(secure_central))
    assert got == sorted(f"ba-{n}" for n in range(total))
    async with secure_central.sessionmaker() as session:
        assert (await session.scalars(select(DeadLetter))).all() == []


async def test_agent_whose_nats_client_is_closed_connects_again_with_a_new_one(
    central: CentralRuntime, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    """Any close of the NATS client (nats-py never reconnects a closed one): the agent
    makes a new client, and the sales recorded meanwhile reach central once."""
    await register_plain_branch(central, "B1")
    agent = await make_agent("B1", nats_server.url)
    assert (await post_sale(agent, sale("b1-0"), "B1-till-1")).status_code == 201

    async def arrived(count: int) -> bool:
        return len(await receipts_at_central(central)) == count

    await wait_until(lambda: arrived(1), timeout=30)
    first_client = agent.nc
    await first_client.close()
    for n in range(1, 4):
        assert (await post_sale(agent, sale(f"b1-{n}"), "B1-till-1")).status_code == 201
    await wait_until(lambda: arrived(4), timeout=30)
    assert agent.nc is not first_client
    assert agent.link_state() == "connected"
    assert sorted(s for _, s in await receipts_at_central(central)) == [f"b1-{n}" for n in range(4)]


async def test_a_stray_issuer_whose_link_is_refused_does_not_claim_the_chain(
    db_url: str, tmp_path: Path, issuer: NatsIssuer, secure_nats: EmbeddedNats
) -> None:
    """Upgrading a chain that recorded no issuer yet: a host with a stray issuer of its
    own (its central.creds as nats_creds) starts first. The servers trust the chain's
    operator and refuse its link; it must not record its issuer as the chain's (the
    right hosts would then refuse every credential operation)."""
    stray = NatsIssuer.create(tmp_path / "stray" / "nats-issuer")
    settings = central_settings(
        db_url,
        secure_nats.url,
        nats_creds=str(stray.central_creds_file()),
        nats_issuer_dir=str(stray.directory),
    )
    runtime = CentralRuntime(settings)
    await runtime.start(ingest_workers=0)
    try:
        await asyncio.sleep(3.0)  # its link tries and is refused meanwhile
        assert runtime.js is None or runtime.nats_ready.is_set() is False
        async with runtime.sessionmaker() as s:
            assert await s.get(NatsIssuerIdentity, 1) is None
    finally:
        await runtime.stop()
    # The chain's own host then records its issuer once its link is up.
    async with running_central(secure_settings(db_url, secure_nats, issuer)) as host_a:

        async def recorded_now() -> bool:
            async with host_a.sessionmaker() as s:
                return await s.get(NatsIssuerIdentity, 1) is not None

        await wait_until(recorded_now, timeout=10)
        async with host_a.sessionmaker() as s:
            recorded = await s.get(NatsIssuerIdentity, 1)
        assert recorded is not None
        assert recorded.operator_public_key == issuer.operator_public_key
