"""The audit log: ``record_change`` in the same transaction as the change itself.

Services call ``record_change(session, action=..., target=..., before=..., after=...)``
with JSON-able snapshots. The actor, method and path come from the request the API
middleware is serving (``cli:<user>`` from the command line). A successful write
request for which no service recorded anything still gets a generic entry from the
middleware (the request body as ``after``), so nothing escapes the log.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from central.auth.context import RequestAudit, current_request_audit
from central.errors import ValidationFailed, check_aware
from central.models import AuditEntry

__all__ = [
    "SUMMARY_KEYS",
    "AuditQuery",
    "bulk_summary",
    "cli_actor",
    "list_audit",
    "record_change",
    "snapshot",
]

# A bulk change (CSV import, repricing) is recorded as counts and this many keys,
# not row by row: the audit line stays small whatever the size of the change.
SUMMARY_KEYS = 20


def snapshot(value: Any) -> Any:
    """A JSON-able copy of a record (msgspec Struct, dict, list...) for ``before``/``after``:
    datetimes and dates as ISO text, money and quantities as the integers they are."""
    if value is None:
        return None
    return msgspec.to_builtins(value)


def bulk_summary(keys: Iterable[str], **counts: int) -> dict[str, Any]:
    """``{"count": n, "keys": [first SUMMARY_KEYS], **counts}`` for a change of many rows."""
    listed: list[str] = []
    count = 0
    for key in keys:
        if count < SUMMARY_KEYS:
            listed.append(key)
        count += 1
    return {"count": count, "keys": listed, **counts}


def cli_actor() -> RequestAudit:
    """The actor of changes made with ``python -m central`` on the server."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return RequestAudit(actor=f"cli:{user}", actor_role="admin", method="CLI", path="")


async def record_change(
    session: AsyncSession,
    *,
    action: str,
    target: str,
    before: Any = None,
    after: Any = None,
    actor: RequestAudit | None = None,
) -> AuditEntry:
    who = actor or current_request_audit.get() or cli_actor()
    entry = AuditEntry(
        actor=who.actor,
        actor_role=who.actor_role,
        method=who.method,
        path=who.path[:500],
        action=action,
        target=target[:200],
        before=snapshot(before),
        after=snapshot(after),
    )
    session.add(entry)
    who.entries += 1
    await session.flush()
    return entry


@dataclass(frozen=True, slots=True)
class AuditQuery:
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    offset: int = 0


async def list_audit(session: AsyncSession, query: AuditQuery) -> tuple[list[AuditEntry], int]:
    check_aware(query.since, "since")
    check_aware(query.until, "until")
    # A reversed range would answer an empty page that looks like "nothing happened".
    if query.since and query.until and query.since > query.until:
        raise ValidationFailed(f"since {query.since} is after until {query.until}", field="since")
    stmt = select(AuditEntry)
    if query.actor:
        stmt = stmt.where(AuditEntry.actor == query.actor)
    if query.action:
        stmt = stmt.where(AuditEntry.action == query.action)
    if query.target:
        stmt = stmt.where(AuditEntry.target == query.target)
    if query.since:
        stmt = stmt.where(AuditEntry.at >= query.since)
    if query.until:
        stmt = stmt.where(AuditEntry.at < query.until)
    total = await session.scalar(select(func.count()).select_from(stmt.subquery()))
    rows = await session.scalars(
        stmt.order_by(AuditEntry.id.desc()).limit(query.limit).offset(query.offset)
    )
    return list(rows), int(total or 0)
