"""Alembic environment of central's database (async engines: aiosqlite, asyncpg)."""

from central.models import Base
from central.partitions import include_name
from migrations.runner import run_migrations

# Child partitions (stock_ledger_y2026m11, ..._default) are not in the models.
run_migrations(Base.metadata, include_name=include_name)
