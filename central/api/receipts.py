from __future__ import annotations

from datetime import date
from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.pagination import Late, Limit, Offset
from central.api.schemas import Page, ReceiptOut
from central.services.receipts import ReceiptQuery, list_receipts

__all__ = ["ReceiptController"]


class ReceiptController(Controller):
    path = "/api/v1/receipts"
    tags = ["records"]

    @get(
        "/",
        operation_id="listReceipts",
        summary="Receipts of the chain, filtered by branch, till, local date range, fiscal number, "
        "product or late flag",
    )
    async def list_receipts(
        self,
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 100,
        offset: Offset = 0,
        branch: Annotated[
            str | None, QueryParameter(name="branch", description="Branch code")
        ] = None,
        till: Annotated[str | None, QueryParameter(name="till")] = None,
        date_from: Annotated[
            date | None, QueryParameter(name="date_from", description="First local day, inclusive")
        ] = None,
        date_to: Annotated[
            date | None, QueryParameter(name="date_to", description="Last local day, inclusive")
        ] = None,
        fiscal_number: Annotated[str | None, QueryParameter(name="fiscal_number")] = None,
        sku: Annotated[
            str | None, QueryParameter(name="sku", description="Only receipts with this product")
        ] = None,
        late: Late = None,
    ) -> Page[ReceiptOut]:
        return await list_receipts(
            db_session,
            ReceiptQuery(
                branch=branch,
                till=till,
                date_from=date_from,
                date_to=date_to,
                fiscal_number=fiscal_number,
                sku=sku,
                late=late,
                limit=limit,
                offset=offset,
            ),
        )
