"""The database going away: the API answers 503 problems a load balancer or client can
act on (Retry-After), ingest and the summary applier log one line per failure state,
not a traceback per retry; nothing is lost or doubled when it comes back."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

from central.db import create_engine, create_sessionmaker


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens on it once closed


async def test_api_answers_503_with_retry_after_when_the_database_is_unreachable(
    central: Any, central_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    assert (await central_client.get("/api/v1/branches")).status_code == 200
    real = central.sessionmaker
    gone = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/backroom")
    central.sessionmaker = create_sessionmaker(gone)
    try:
        with caplog.at_level(logging.WARNING):
            for path in ("/api/v1/branches", "/api/v1/products"):
                answer = await central_client.get(path)
                assert answer.status_code == 503, answer.text
                assert answer.headers["content-type"] == "application/problem+json"
                assert int(answer.headers["retry-after"]) > 0
                problem = answer.json()
                assert problem["status"] == 503
                assert problem["title"] == "Database unavailable"
                assert "database is unavailable" in problem["detail"]
        warnings = [r for r in caplog.records if "database unavailable" in r.getMessage()]
        assert len(warnings) == 2
        assert not any(r.exc_info for r in caplog.records), "no traceback for an outage"
    finally:
        central.sessionmaker = real
        await gone.dispose()
    assert (await central_client.get("/api/v1/branches")).status_code == 200
