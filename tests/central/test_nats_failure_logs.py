"""NATS failures that repeat (a refused authorization at every reconnect attempt, a
JetStream without leader during a node loss) are logged once per change with words
that say what is wrong, not several times a second."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest
from nats.js.errors import ServiceUnavailableError

from central.embedded_nats import EmbeddedNats
from central.failures import nats_reason
from central.sync.jetstream import connect


async def test_a_refused_authorization_is_logged_once_not_at_every_attempt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = EmbeddedNats(
        tmp_path / "nats", extra_config="authorization { user: central, password: s3cret }"
    )
    server.start()
    try:
        with caplog.at_level(logging.WARNING, logger="central.sync.jetstream"):
            # Central without its credentials: nats-py retries forever (0.5 s apart).
            attempt = asyncio.create_task(connect(server.url, name="central"))
            await asyncio.sleep(3.0)
            attempt.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await attempt
    finally:
        server.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "central.sync.jetstream"]
    # About 6 attempts: the refusal, and the reset that may follow it, once each.
    assert 1 <= len(lines) <= 2, lines
    assert all("nats link (central) failing" in line for line in lines)
    assert any("authorization violation" in line.lower() for line in lines)


def test_a_jetstream_without_leader_is_said_in_words() -> None:
    # nats-py's text for it: "code=None err_code=None description='None'".
    reason = nats_reason(ServiceUnavailableError())
    assert "None" not in reason
    assert "JetStream unavailable" in reason
