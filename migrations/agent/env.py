"""Alembic environment of a branch agent's SQLite database."""

from branch_agent.models import AgentBase
from migrations.runner import run_migrations

run_migrations(AgentBase.metadata)
