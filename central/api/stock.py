"""Stock: balances, the ledger of a product at a branch, transfers (in transit, with
their discrepancies)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.pagination import Limit, Offset
from central.api.schemas import Page
from central.services.stock import (
    StockBalanceOut,
    StockMovementOut,
    TransferOut,
    list_balances,
    list_ledger,
    list_transfers,
)

__all__ = ["StockController"]


class StockController(Controller):
    path = "/api/v1/stock"
    tags = ["records"]

    @get(
        "/balances",
        operation_id="listStockBalances",
        summary="Stock on hand, its value and moving average cost, per branch and product",
    )
    async def balances(
        self,
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 100,
        offset: Offset = 0,
        branch: Annotated[str | None, QueryParameter(name="branch")] = None,
        sku: Annotated[str | None, QueryParameter(name="sku")] = None,
        negative: Annotated[
            bool, QueryParameter(name="negative", description="Only balances below zero")
        ] = False,
    ) -> Page[StockBalanceOut]:
        return await list_balances(
            db_session, branch=branch, sku=sku, negative_only=negative, limit=limit, offset=offset
        )

    @get(
        "/ledger",
        operation_id="listStockLedger",
        summary="Movements of one product at one branch, in posting order, with cost",
    )
    async def ledger(
        self,
        db_session: NamedDependency[AsyncSession],
        branch: Annotated[str, QueryParameter(name="branch", min_length=1)],
        sku: Annotated[str, QueryParameter(name="sku", min_length=1)],
        limit: Limit = 100,
        offset: Offset = 0,
        date_from: Annotated[date | None, QueryParameter(name="date_from")] = None,
        date_to: Annotated[date | None, QueryParameter(name="date_to")] = None,
    ) -> Page[StockMovementOut]:
        return await list_ledger(
            db_session,
            branch=branch,
            sku=sku,
            date_from=date_from,
            date_to=date_to,
            limit=limit,
            offset=offset,
        )

    @get(
        "/transfers",
        operation_id="listStockTransfers",
        summary="Transfers between branches, matched out and in: goods in transit, "
        "differences and discrepancies",
    )
    async def transfers(
        self,
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 100,
        offset: Offset = 0,
        branch: Annotated[str | None, QueryParameter(name="branch")] = None,
        in_transit: Annotated[
            bool,
            QueryParameter(
                name="in_transit", description="Only goods sent and not received by a receiver"
            ),
        ] = False,
        discrepancies: Annotated[
            bool,
            QueryParameter(
                name="discrepancies",
                description="Only transfers with a discrepancy: a line received short, over "
                "or not sent, a wrong receiver or sender, received or sent twice, an "
                "unknown branch",
            ),
        ] = False,
    ) -> Page[TransferOut]:
        return await list_transfers(
            db_session,
            branch=branch,
            in_transit_only=in_transit,
            discrepancies_only=discrepancies,
            limit=limit,
            offset=offset,
        )
