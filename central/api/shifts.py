"""Shifts with the fiscal Z totals beside the recorded receipts; closing a day."""

from __future__ import annotations

from datetime import date
from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.openapi_problems import CONFLICT
from central.api.pagination import Limit, Offset
from central.api.schemas import Page
from central.auth.roles import Role, allow
from central.services.shifts import (
    ClosedDayOut,
    ShiftOut,
    close_day,
    list_closed_days,
    list_shifts,
)
from protocol.limits import Text64

__all__ = ["CloseDayIn", "ShiftController"]


class CloseDayIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    branch: str
    local_date: date
    # Who closed it; absent: the user of the request.
    closed_by: Text64 | None = None


class ShiftController(Controller):
    path = "/api/v1/shifts"
    tags = ["records"]

    @get(
        "/",
        operation_id="listShifts",
        summary="Till shifts: the Z report's totals beside what central recorded",
    )
    async def list_shifts(
        self,
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 100,
        offset: Offset = 0,
        branch: Annotated[str | None, QueryParameter(name="branch")] = None,
        till: Annotated[str | None, QueryParameter(name="till")] = None,
        date_from: Annotated[date | None, QueryParameter(name="date_from")] = None,
        date_to: Annotated[date | None, QueryParameter(name="date_to")] = None,
    ) -> Page[ShiftOut]:
        return await list_shifts(
            db_session,
            branch=branch,
            till=till,
            date_from=date_from,
            date_to=date_to,
            limit=limit,
            offset=offset,
        )

    @get(
        "/closed-days",
        operation_id="listClosedDays",
        summary="Days head office closed, latest first",
    )
    async def list_closed_days(
        self,
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 100,
        offset: Offset = 0,
        branch: Annotated[str | None, QueryParameter(name="branch")] = None,
        date_from: Annotated[date | None, QueryParameter(name="date_from")] = None,
        date_to: Annotated[date | None, QueryParameter(name="date_to")] = None,
    ) -> Page[ClosedDayOut]:
        return await list_closed_days(
            db_session,
            branch=branch,
            date_from=date_from,
            date_to=date_to,
            limit=limit,
            offset=offset,
        )

    @post(
        "/closed-days",
        operation_id="closeDay",
        responses=CONFLICT,
        summary="Close a branch's local day: sales filed into it later are flagged late",
        # Closing a day changes how later sales are filed: admins only.
        opt=allow(Role.ADMIN),
    )
    async def close_day(
        self, db_session: NamedDependency[AsyncSession], data: JSONBody[CloseDayIn]
    ) -> ClosedDayOut:
        return await close_day(
            db_session, branch=data.branch, local_date=data.local_date, closed_by=data.closed_by
        )
