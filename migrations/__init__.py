"""Alembic migrations: ``central/`` for head office, ``agent/`` for a branch agent's SQLite."""
