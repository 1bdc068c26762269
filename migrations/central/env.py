"""Alembic environment of central's database (async engines: aiosqlite, asyncpg)."""

from central.models import Base
from migrations.runner import run_migrations

run_migrations(Base.metadata)
