"""Managers' interventions on the branches' fiscal printers."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.pagination import Limit, Offset
from central.api.schemas import Page
from central.services.fiscal import FiscalInterventionOut, list_fiscal_interventions

__all__ = ["FiscalInterventionController"]


class FiscalInterventionController(Controller):
    path = "/api/v1/fiscal-interventions"
    tags = ["records"]

    @get(
        "/",
        operation_id="listFiscalInterventions",
        summary="Managers' interventions on fiscal printers: receipts finished, documents "
        "completed without the printer",
    )
    async def list_fiscal_interventions(
        self,
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 100,
        offset: Offset = 0,
        branch: Annotated[
            str | None, QueryParameter(name="branch", description="Branch code")
        ] = None,
        till: Annotated[str | None, QueryParameter(name="till")] = None,
        action: Annotated[
            str | None,
            QueryParameter(
                name="action",
                description="cancelled, closed, completed_unfiscal, printed_on_new_printer, or a"
                " settle-pending decision (cash_move_printed, ..., z_report_not_printed)",
            ),
        ] = None,
        date_from: Annotated[
            date | None, QueryParameter(name="date_from", description="First local day, inclusive")
        ] = None,
        date_to: Annotated[
            date | None, QueryParameter(name="date_to", description="Last local day, inclusive")
        ] = None,
    ) -> Page[FiscalInterventionOut]:
        return await list_fiscal_interventions(
            db_session,
            branch=branch,
            till=till,
            action=action,
            date_from=date_from,
            date_to=date_to,
            limit=limit,
            offset=offset,
        )
