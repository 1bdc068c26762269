"""Engine, sessions and migrations of central's database (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import migrations

__all__ = [
    "QUERY_CANCELED",
    "RECORD_REVISIONS",
    "MigrationRefused",
    "alembic_config",
    "create_engine",
    "create_sessionmaker",
    "current_revisions",
    "database_unavailable",
    "downgrade",
    "error_chain",
    "is_interrupted",
    "is_sqlite",
    "limit_statement_time",
    "schema_behind",
    "sqlstate_of",
    "upgrade",
]

# SQLSTATE of a statement the server cancelled (statement_timeout, pg_cancel_backend).
QUERY_CANCELED = "57014"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def limit_statement_time(session: AsyncSession, seconds: float) -> None:
    """Every later statement of the session may run at most ``seconds``, 0: no limit.

    PostgreSQL: lock waits included, then the server cancels it (SQLSTATE 57014); set
    for the session's transaction, so the pooled connection keeps none of it. SQLite:
    the statement is interrupted (``sqlite3.Connection.interrupt``, made to be called
    from another thread than the one running it: aiosqlite's), an "interrupted"
    OperationalError (:func:`is_interrupted`); the timers are the session's
    connection's own, gone with it."""
    if seconds <= 0:
        return
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT set_config('statement_timeout', :limit, true)"),
            {"limit": f"{max(1, round(seconds * 1000))}ms"},
        )
        return
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    # aiosqlite's Connection keeps the sqlite3 one as _conn (SQLAlchemy's adapter
    # reaches it the same way).
    sqlite = raw.driver_connection._conn  # type: ignore[union-attr]
    timers: list[asyncio.TimerHandle] = []

    def disarm(*_: Any) -> None:
        while timers:
            timers.pop().cancel()

    def arm(*_: Any) -> None:
        disarm()
        timers.append(asyncio.get_running_loop().call_later(seconds, sqlite.interrupt))

    sync = connection.sync_connection
    assert sync is not None
    event.listen(sync, "before_cursor_execute", arm)
    event.listen(sync, "after_cursor_execute", disarm)
    # A failed statement has no "after": its timer goes with the transaction, before
    # the connection returns to the pool (where it would interrupt another's statement).
    event.listen(sync, "rollback", disarm)
    event.listen(sync, "commit", disarm)


def is_interrupted(exc: BaseException) -> bool:
    """A SQLite statement interrupted at its time limit (:func:`limit_statement_time`)."""
    return any(
        isinstance(e, sqlite3.OperationalError) and str(e) == "interrupted"
        for e in error_chain(exc)
    )


def error_chain(exc: BaseException) -> list[BaseException]:
    """The exception, then what it wraps (a DBAPI error's ``orig``) or was raised from."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        orig = getattr(current, "orig", None) if isinstance(current, DBAPIError) else None
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return chain


# SQLSTATEs of a database that is not there: connection exceptions (class 08) and a
# server shutting down, restarting or not accepting connections yet (57P01-57P03).
_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03")


def database_unavailable(exc: BaseException) -> str | None:
    """One line saying why the database cannot be reached, when ``exc`` says it (server
    down, refusing, shutting down, a connection lost); None for any other error."""
    for e in error_chain(exc):
        state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(state, str) and (state.startswith("08") or state in _UNAVAILABLE_STATES):
            return _first_line(e)
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return _first_line(e.orig if e.orig is not None else e)
        if isinstance(e, OSError) or (
            type(e).__name__ in ("ConnectionDoesNotExistError", "InterfaceError")
            and "connection" in str(e).lower()
        ):
            return _first_line(e)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (from the driver's exception in the chain)."""
    for e in error_chain(exc):
        state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def alembic_config(url: str) -> Config:
    script_location = Path(migrations.__file__).parent / "central"
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _upgrade_sync(url: str, revision: str) -> None:
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


# Undoing one of these drops recorded data: no upgrade brings it back. The first
# releases' tables (the schema of no release that could run on the records), then
# columns and tables of records added since. Not here: report summaries (rebuilt from
# the records), derived or merged columns (1302, 1701), the branches' status (sent
# again with their next heartbeat), dead_letters.seq (the raw message is kept).
RECORD_REVISIONS: Mapping[str, str] = {
    "0001": "branches, receipts, dead letters",
    "0101": "stock ledger and documents, shifts, returns, cash moves",
    "0201": "catalog, prices, promotions",
    "0301": "users, tokens, audit log",
    "1102": "receipts' voided lines, promotions and manual discounts",
    "1710": "transfer discrepancies and the transfers' parts",
    "1711": "price history (withdrawn_at, branch scope history)",
    "1712": "returns' original till",
    "1715": "repricing documents' per-branch lines",
    "1716": "shift id conflicts",
    "1717": "late stock documents' flag",
    "1801": "fiscal interventions, late fiscal numbers, receipts' fiscalized_at",
    "1806": "the chain's VAT groups",
    "1901": "customer returns without receipt (and who approved them)",
    "1902": "shifts' counted and expected cash at the close",
    "1906": "whether a Z report was printed for shifts closed without its figures",
    "1907": "the branch's UTC offset at shifts' close",
}


class MigrationRefused(Exception):
    """A migration command that would do the wrong thing (the text says why); nothing done."""


async def current_revisions(url: str) -> tuple[str, ...]:
    """The revisions the database is at (empty: no schema yet)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            heads = await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_heads()
            )
    finally:
        await engine.dispose()
    return tuple(sorted(heads))


def _ancestry(script: ScriptDirectory, heads: tuple[str, ...]) -> set[str]:
    """The revisions applied when the database is at ``heads`` (they included)."""
    applied: set[str] = set()
    for head in heads:
        applied.update(r.revision for r in script.iterate_revisions(head, "base"))
    return applied


def schema_behind(url: str, current: tuple[str, ...]) -> bool:
    """Whether a database at ``current`` lacks revisions of this release. A revision
    this release does not know is a newer release's: not behind."""
    script = ScriptDirectory.from_config(alembic_config(url))
    try:
        applied = _ancestry(script, current)
    except (CommandError, RevisionError):
        return False
    return any(head not in applied for head in script.get_heads())


async def upgrade(url: str, revision: str = "heads") -> None:
    """Migrate the database to ``revision``; alembic's env runs its own event loop.

    A ``revision`` the database is already past is refused (MigrationRefused): alembic
    would do nothing and say nothing, and going back is ``downgrade``."""
    script = ScriptDirectory.from_config(alembic_config(url))
    current = await current_revisions(url) if revision not in ("head", "heads") else ()
    if current:
        try:
            target = script.get_revision(revision)
        except (CommandError, RevisionError) as exc:
            raise MigrationRefused(str(exc)) from exc
        if (
            target is not None
            and target.revision not in current
            and target.revision in _ancestry(script, current)
        ):
            raise MigrationRefused(
                f"the database is at {', '.join(current)}, past {target.revision}: "
                "to go back, use `db downgrade`"
            )
    await asyncio.to_thread(_upgrade_sync, url, revision)


async def downgrade(url: str, revision: str, *, drop_records: bool = False) -> None:
    """Migrate the database back to ``revision`` (rolling a release back: run the
    older release's processes only after this).

    Undoing a revision of ``RECORD_REVISIONS`` drops recorded data: refused
    (MigrationRefused, nothing done) unless ``drop_records``."""
    config = alembic_config(url)
    if not drop_records:
        script = ScriptDirectory.from_config(config)
        undone: set[str] = set()
        try:
            for head in await current_revisions(url):
                undone.update(
                    r.revision
                    for r in script.iterate_revisions(head, revision, select_for_downgrade=True)
                )
        except (CommandError, RevisionError) as exc:
            raise MigrationRefused(str(exc)) from exc
        dropping = sorted(undone & RECORD_REVISIONS.keys())
        if dropping:
            what = "; ".join(f"{r}: {RECORD_REVISIONS[r]}" for r in dropping)
            raise MigrationRefused(
                f"downgrading to {revision} drops recorded data ({what}): give "
                "--drop-records if that is meant"
            )
    await asyncio.to_thread(command.downgrade, config, revision)
