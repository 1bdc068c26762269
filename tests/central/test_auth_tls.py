"""TLS to NATS: the embedded server with a throwaway self-signed certificate and auth."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from central.embedded_nats import EmbeddedNats
from central.services.nats_auth import client_tls_options
from central.settings import CentralSettings
from central.sync.nats_auth import NatsIssuer
from tests.conftest import self_signed


async def test_central_talks_tls_to_nats_and_plain_text_is_refused(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    issuer = NatsIssuer.create(tmp_path / "issuer")
    server = EmbeddedNats(
        tmp_path / "nats",
        extra_config=issuer.server_config(tmp_path / "nats" / "resolver"),
        tls={"cert_file": str(cert), "key_file": str(key)},
    )
    server.start()
    try:
        assert server.url.startswith("tls://")
        settings = CentralSettings(nats_tls_ca=str(cert))
        nc = await asyncio.wait_for(
            nats.connect(
                server.url,
                user_credentials=str(issuer.central_creds_file()),
                allow_reconnect=False,
                **client_tls_options(settings),
            ),
            10,
        )
        try:
            reply = await nc.jetstream().account_info()
            assert reply.limits is not None
            assert nc.connected_url is not None
            assert nc._transport is not None  # connected over the TLS transport
        finally:
            await nc.close()

        async def quiet(_exc: Exception) -> None:
            return None

        # The server requires TLS; a client that does not trust its CA cannot connect.
        plain = NATS()
        with pytest.raises(Exception):  # noqa: B017, PT011 - nats-py raises several kinds
            # nats-py retries a refused first connect: bound it.
            await asyncio.wait_for(
                plain.connect(
                    f"nats://127.0.0.1:{server.port}",
                    user_credentials=str(issuer.central_creds_file()),
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    connect_timeout=2,
                    error_cb=quiet,
                ),
                3,
            )
        # nats-py's close can hang after a failed TLS handshake: bounded.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(plain.close(), 2)
    finally:
        server.stop()


async def test_an_agent_publishes_over_tls_with_its_own_ca_and_branch_credentials(
    tmp_path: Path,
) -> None:
    from branch_agent.agent import Agent
    from central.sync.jetstream import ensure_streams
    from protocol.masterdata import SnapshotReply, encode_snapshot_rpc, snapshot_request_subject
    from protocol.subjects import UP_STREAM
    from tests.conftest import agent_settings, asgi_client, wait_until

    cert, key = self_signed(tmp_path)
    issuer = NatsIssuer.create(tmp_path / "issuer")
    server = EmbeddedNats(
        tmp_path / "nats",
        extra_config=issuer.server_config(tmp_path / "nats" / "resolver"),
        tls={"cert_file": str(cert), "key_file": str(key)},
    )
    server.start()
    central_nc: NATS | None = None
    agent: Agent | None = None
    try:
        central_nc = await nats.connect(
            server.url,
            user_credentials=str(issuer.central_creds_file()),
            allow_reconnect=False,
            **client_tls_options(CentralSettings(nats_tls_ca=str(cert))),
        )
        js = central_nc.jetstream()
        await ensure_streams(js)

        # Central's part in the agent's position report (a new database asks where its
        # event numbers start): answered over the same TLS link.
        async def answer(msg: Any) -> None:
            await msg.respond(encode_snapshot_rpc(SnapshotReply(action="none", event_seq_start=1)))

        await central_nc.subscribe(snapshot_request_subject("B1"), cb=answer)
        creds = issuer.write_secret("B1.creds", issuer.branch_user("B1").creds)
        agent = Agent(
            agent_settings(tmp_path, "B1", server.url, nats_creds=str(creds), nats_tls_ca=str(cert))
        )
        await agent.start()
        async with asgi_client(agent.app) as client:
            opened = await client.post(
                "/api/v1/shifts", json={}, headers={"Authorization": "Bearer B1-till-1"}
            )
            assert opened.status_code == 201, opened.text
            response = await client.post(
                "/api/v1/sales",
                json={
                    "sale_id": "tls-1",
                    "lines": [{"sku": "MILK-1L", "quantity": "1"}],
                    "payments": [{"type": "cash", "amount": 500}],
                },
                headers={"Authorization": "Bearer B1-till-1"},
            )
        assert response.status_code == 201, response.text

        async def stored() -> bool:
            info = await js.stream_info(UP_STREAM, subjects_filter="up.B1.receipt_recorded")
            return (info.state.subjects or {}).get("up.B1.receipt_recorded") == 1

        try:
            await wait_until(stored, timeout=20)
        except AssertionError:
            raise AssertionError(f"not stored; sender: {agent.sender.state}") from None
    finally:
        if agent is not None:
            await agent.stop()
        if central_nc is not None:
            await central_nc.close()
        server.stop()
