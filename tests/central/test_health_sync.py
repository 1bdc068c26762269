"""What /health says of NATS and ingestion, with a real nats-server: NATS lost or never
reached is "degraded" (after the start's grace), and the shared ingest consumer's
backlog shows ingestion stalled when every worker is gone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import central.services.health as health_module
from central.embedded_nats import EmbeddedNats
from central.runtime import CentralRuntime
from central.services.health import health_of
from tests.central.chain_events import BranchBooks, ingest_env, publish_books
from tests.conftest import central_settings, register_branch, running_central, wait_until
from tests.faults.ingest_process import running_ingest


@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same rules, judged over a second instead of a quarter of a minute.
    monkeypatch.setattr(health_module, "NATS_GRACE_S", 0.5, raising=False)
    monkeypatch.setattr(health_module, "INGEST_STALL_S", 1.0, raising=False)


async def test_health_is_degraded_when_the_nats_server_is_gone(
    central: Any, nats_server: EmbeddedNats, short_grace: None
) -> None:
    await asyncio.sleep(0.6)
    health = await health_of(central)
    assert (health.status, health.nats, health.jetstream) == ("ok", "connected", "ready")
    assert health.ingest == "ok"
    nats_server.stop()

    async def lost() -> bool:
        return (await health_of(central)).nats == "disconnected"

    await wait_until(lost)
    health = await health_of(central)
    # Before: "ok" with "nats": "disconnected" for as long as it lasted.
    assert health.status == "degraded"
    # Before: "jetstream": "ready" over a link that was gone.
    assert health.jetstream == "connecting"
    assert health.ingest == "unknown"


async def test_health_is_degraded_when_central_never_gets_into_nats(
    db_url: str, tmp_path: Path, short_grace: None
) -> None:
    server = EmbeddedNats(
        tmp_path / "nats", extra_config="authorization { user: central, password: s3cret }"
    )
    server.start()
    runtime = CentralRuntime(central_settings(db_url, server.url))  # no credentials
    try:
        await runtime.start(ingest_workers=1)
        health = await health_of(runtime)
        assert health.status == "ok"  # still within the start's grace
        await asyncio.sleep(1.0)
        health = await health_of(runtime)
        # Before: "ok", "nats": "disconnected", "jetstream": "connecting" forever.
        assert (health.status, health.nats, health.jetstream) == (
            "degraded",
            "disconnected",
            "connecting",
        )
    finally:
        await runtime.stop()
        server.stop()


async def test_health_shows_the_ingest_backlog_and_a_stalled_ingestion(
    db_url: str, nats_server: EmbeddedNats, short_grace: None
) -> None:
    books = BranchBooks("B1")
    for n in range(30):
        books.sale([("MILK", 1_000 + n, 199)])
    # An API process without ingestion; every ingest worker is gone.
    settings = central_settings(db_url, nats_server.url)
    runtime = CentralRuntime(settings)
    try:
        await runtime.start(ingest_workers=0)
        await asyncio.wait_for(runtime.nats_ready.wait(), 20)
        await register_branch(runtime, "B1")
        await publish_books(nats_server.url, books)
        await asyncio.sleep(1.2)
        health = await health_of(runtime)
        assert health.ingest_pending == len(books.events)
        assert health.ingest_last_ack_age_s is not None
        assert health.ingest_last_ack_age_s > 1.0
        assert (health.status, health.ingest) == ("degraded", "stalled")

        async with running_central(settings):  # a worker again

            async def drained() -> bool:
                return (await health_of(runtime)).ingest_pending == 0

            await wait_until(drained)
        health = await health_of(runtime)
        assert (health.status, health.ingest) == ("ok", "ok")
        assert health.ingest_last_ack_age_s is not None
        assert health.ingest_last_ack_age_s < 5
    finally:
        await runtime.stop()


async def test_ingest_says_what_it_runs_at_start_and_at_stop(
    db_url: str, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    env = ingest_env(db_url, nats_server.url, str(tmp_path))
    log_path = tmp_path / "ingest.log"
    with log_path.open("wb") as log:
        async with running_ingest(env, log):

            async def started() -> bool:
                return "ingest: 1 worker(s)" in log_path.read_text()

            await wait_until(started)
    lines = log_path.read_text().splitlines()
    start = next(line for line in lines if "ingest: 1 worker(s)" in line)
    assert nats_server.url in start
    assert "BACKROOM_UP/central-ingest" in start
    assert any("ingest: stopped" in line for line in lines), lines
