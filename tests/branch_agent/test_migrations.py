"""The agent's local schema is migrated, never recreated, and matches its models."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection


async def test_agent_migrations_match_the_agent_models(tmp_path: Path) -> None:
    from branch_agent.db import create_engine as agent_engine
    from branch_agent.db import upgrade as agent_upgrade
    from branch_agent.models import AgentBase

    path = tmp_path / "agent.db"
    await agent_upgrade(path)
    await agent_upgrade(path)  # idempotent: an upgrade never recreates
    engine = agent_engine(path)

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, AgentBase.metadata))

    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(diff) == []
    finally:
        await engine.dispose()
