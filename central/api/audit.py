"""The audit log of changes made through the API (admin only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.pagination import Limit, Offset
from central.api.schemas import Page
from central.auth.roles import Role, allow
from central.services.audit import AuditQuery, list_audit

__all__ = ["AuditController"]


class AuditEntryOut(msgspec.Struct, kw_only=True):
    id: int
    at: datetime
    actor: str
    actor_role: str
    method: str
    path: str
    action: str
    target: str
    before: Any | None
    after: Any | None


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["security"]
    opt = allow(Role.ADMIN)

    @get("/", operation_id="listAudit", summary="Who changed what, when: newest first")
    async def list_audit(
        self,
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 100,
        offset: Offset = 0,
        actor: Annotated[str | None, QueryParameter(name="actor", max_length=100)] = None,
        action: Annotated[
            str | None, QueryParameter(name="action", max_length=100, description="e.g. branch.add")
        ] = None,
        target: Annotated[
            str | None,
            QueryParameter(name="target", max_length=200, description="e.g. branch:B001"),
        ] = None,
        since: Annotated[
            datetime | None,
            QueryParameter(
                name="since", description="From this moment, with its zone (Z or +hh:mm)"
            ),
        ] = None,
        until: Annotated[
            datetime | None,
            QueryParameter(name="until", description="Before this moment, with its zone"),
        ] = None,
    ) -> Page[AuditEntryOut]:
        rows, total = await list_audit(
            db_session,
            AuditQuery(
                actor=actor,
                action=action,
                target=target,
                since=since,
                until=until,
                limit=limit,
                offset=offset,
            ),
        )
        items = [
            AuditEntryOut(
                id=r.id,
                at=r.at,
                actor=r.actor,
                actor_role=r.actor_role,
                method=r.method,
                path=r.path,
                action=r.action,
                target=r.target,
                before=r.before,
                after=r.after,
            )
            for r in rows
        ]
        return Page(items=items, total=total, limit=limit, offset=offset)
