"""Stock documents and customer returns, as the branches posted them."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.pagination import Late, Limit, Offset
from central.api.schemas import Page
from central.services.documents import (
    CustomerReturnOut,
    StockDocumentOut,
    get_document,
    list_customer_returns,
    list_documents,
)

__all__ = ["CustomerReturnController", "DocumentController"]


class DocumentController(Controller):
    path = "/api/v1/documents"
    tags = ["records"]

    @get(
        "/",
        operation_id="listStockDocuments",
        summary="Goods receipts, write-offs, transfers, supplier returns and stocktakes",
    )
    async def list_documents(
        self,
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 100,
        offset: Offset = 0,
        branch: Annotated[str | None, QueryParameter(name="branch")] = None,
        doc_type: Annotated[str | None, QueryParameter(name="doc_type")] = None,
        date_from: Annotated[date | None, QueryParameter(name="date_from")] = None,
        date_to: Annotated[date | None, QueryParameter(name="date_to")] = None,
        sku: Annotated[str | None, QueryParameter(name="sku")] = None,
        late: Late = None,
    ) -> Page[StockDocumentOut]:
        return await list_documents(
            db_session,
            branch=branch,
            doc_type=doc_type,
            date_from=date_from,
            date_to=date_to,
            sku=sku,
            late=late,
            limit=limit,
            offset=offset,
        )

    @get(
        "/{branch:str}/{document_id:str}",
        operation_id="getStockDocument",
        summary="One stock document of a branch, with its lines and their cost",
    )
    async def get_document(
        self,
        db_session: NamedDependency[AsyncSession],
        branch: Annotated[str, PathParameter(name="branch")],
        document_id: Annotated[str, PathParameter(name="document_id")],
    ) -> StockDocumentOut:
        return await get_document(db_session, branch, document_id)


class CustomerReturnController(Controller):
    path = "/api/v1/customer-returns"
    tags = ["records"]

    @get("/", operation_id="listCustomerReturns", summary="Goods brought back by customers")
    async def list_returns(
        self,
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 100,
        offset: Offset = 0,
        branch: Annotated[str | None, QueryParameter(name="branch")] = None,
        date_from: Annotated[date | None, QueryParameter(name="date_from")] = None,
        date_to: Annotated[date | None, QueryParameter(name="date_to")] = None,
        original_sale_id: Annotated[str | None, QueryParameter(name="original_sale_id")] = None,
        original_till: Annotated[str | None, QueryParameter(name="original_till")] = None,
        late: Late = None,
    ) -> Page[CustomerReturnOut]:
        return await list_customer_returns(
            db_session,
            branch=branch,
            date_from=date_from,
            date_to=date_to,
            original_sale_id=original_sale_id,
            original_till=original_till,
            late=late,
            limit=limit,
            offset=offset,
        )
