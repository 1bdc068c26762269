"""Fixtures of central's tests shared by several modules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.db import create_engine, create_sessionmaker
from tests.central.test_reports_coverage import load


@pytest.fixture
async def chain(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The reports' known chain history (``test_reports_coverage.load``) in ``db_url``."""
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    try:
        await load(sessionmaker)
        yield sessionmaker
    finally:
        await engine.dispose()
