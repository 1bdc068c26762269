"""Backing up the agent database and putting a backup back (the technician's commands).

A backup is SQLite's online backup (consistent while the agent runs and writes; a plain
copy of ``agent.db`` under a running agent can miss what is still in its WAL file). A
restore refuses a file that is not a sound agent database of this branch, and moves
the database it replaces aside (with its WAL) instead of deleting it. The restored
database asks central where its numbering stands at its next start
(``branch_agent.numbering``): sales it numbers after the backup's do not reuse numbers
central holds. The restored database is marked (``RESTORED_UNANSWERED``) until central
has answered: with the answer it learns the sales and returns it lost
(``branch_agent.restored``), and its sales wait a little for it.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from protocol.codec import decode_envelope_seq

__all__ = [
    "RESTORED_UNANSWERED",
    "BackupError",
    "backup_database",
    "foreign_branch",
    "restore_database",
]

# Set in a database this module restored, until central has answered its numbering
# question (``branch_agent.numbering``): its sales wait a little for that answer.
RESTORED_UNANSWERED = "restored_unanswered"

_SIDECARS = ("-wal", "-shm")


class BackupError(Exception):
    """The backup or restore was refused; nothing was changed."""


def _facts(path: Path) -> dict[str, Any]:
    """Integrity and contents of an agent database; raises BackupError if unsound."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            check = db.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"{path} fails SQLite's integrity check: {check}")
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            if not {"outbox", "counters", "alembic_version"} <= tables:
                raise BackupError(f"{path} is not a Backroom agent database")
            last = db.execute("SELECT seq, payload FROM outbox ORDER BY seq DESC LIMIT 1")
            row = last.fetchone()
            counters = dict(db.execute("SELECT name, value FROM counters"))
            revision = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a readable SQLite database: {exc}") from exc
    head = decode_envelope_seq(row[1]) if row else None
    return {
        "branch": head[0] if head else None,
        "last_event_seq": int(counters.get("event_seq", 0)),
        "revision": revision[0] if revision else None,
    }


def foreign_branch(db: sqlite3.Connection, branch: str) -> str | None:
    """Another branch code the events of an agent database were recorded for, or None.

    An event's branch is fixed when it is recorded (its envelope and its subject
    ``up.<branch>.<kind>``): a database made under a misspelt ``branch`` keeps sending
    to that branch's subjects, which the right credentials may not publish on. The
    newest event's envelope says whose the database is; an event of another branch
    anywhere (a database already used under two codes) is found by its subject."""
    row = db.execute("SELECT payload FROM outbox ORDER BY seq DESC LIMIT 1").fetchone()
    head = decode_envelope_seq(row[0]) if row else None
    if head is not None and head[0] != branch:
        return str(head[0])
    other = db.execute(
        "SELECT subject FROM outbox WHERE substr(subject, 1, ?) != ? LIMIT 1",
        (len(branch) + 4, f"up.{branch}."),
    ).fetchone()
    if other is None:
        return None
    parts = str(other[0]).split(".")
    return parts[1] if len(parts) == 3 else str(other[0])


def database_branch(database: Path, branch: str) -> str | None:
    """``foreign_branch`` of the database at ``database`` (None when there is none yet,
    or no outbox: nothing recorded)."""
    if not database.exists():
        return None
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        if "outbox" not in tables:
            return None
        return foreign_branch(db, branch)


def backup_database(database: Path, dest: Path) -> dict[str, Any]:
    """Copy ``database`` to ``dest`` (which must not exist) with SQLite's online backup,
    check the copy, and say what it holds."""
    if not database.exists():
        raise BackupError(f"no database at {database}")
    if dest.exists():
        raise BackupError(f"{dest} exists already: choose a new name")
    if not dest.parent.is_dir():
        raise BackupError(f"no directory {dest.parent}: create it first")
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        with (
            closing(sqlite3.connect(database)) as source,
            closing(sqlite3.connect(partial)) as copy,
        ):
            source.backup(copy)
            # The copy takes the agent's WAL mode; a backup is one self-contained file
            # (no -wal/-shm beside it that a clean-up by name would leave behind).
            copy.execute("PRAGMA journal_mode=DELETE")
        facts = _facts(partial)
        # Only a complete, checked copy gets the name asked for.
        os.replace(partial, dest)
    finally:
        for suffix in ("", *_SIDECARS):
            Path(f"{partial}{suffix}").unlink(missing_ok=True)
    return {"backup": str(dest), "bytes": dest.stat().st_size, **facts}


def restore_database(backup: Path, database: Path, *, branch: str) -> dict[str, Any]:
    """Put ``backup`` in place of ``database`` (the agent must be stopped): refused
    unless it is a sound agent database of ``branch``; the replaced database and its
    WAL are kept beside it, renamed."""
    if not backup.exists():
        raise BackupError(f"no backup at {backup}")
    facts = _facts(backup)
    other = database_branch(backup, branch)
    if other is not None:
        raise BackupError(f"{backup} is a backup of branch {other!r}, not {branch!r}")
    kept = None
    if database.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = database.with_name(f"{database.name}.before-restore-{stamp}")
        # The WAL goes with its database: SQLite finds it by the database's name.
        for suffix in ("", *_SIDECARS):
            old = Path(f"{database}{suffix}")
            if old.exists():
                os.replace(old, Path(f"{kept}{suffix}"))
    else:
        for suffix in _SIDECARS:
            Path(f"{database}{suffix}").unlink(missing_ok=True)
    database.parent.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(database.name + ".partial")
    with (
        closing(sqlite3.connect(f"file:{backup}?mode=ro", uri=True)) as source,
        closing(sqlite3.connect(partial)) as copy,
    ):
        source.backup(copy)
        with copy:
            copy.execute(
                "INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)",
                (RESTORED_UNANSWERED, int(datetime.now(UTC).timestamp())),
            )
    os.replace(partial, database)
    return {
        "restored": str(database),
        "from": str(backup),
        "kept": str(kept) if kept else None,
        **facts,
    }
