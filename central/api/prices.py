"""Prices: changes at chain/format/zone/branch scope, zones, repricing documents,
and what each branch has applied."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.openapi_problems import CONFLICT
from central.api.pagination import Limit, Offset
from central.api.schemas import Page
from central.services.pricing import (
    BranchPricesAppliedOut,
    ExpectedPrice,
    PriceChangeIn,
    PriceEntryOut,
    PriceMismatchOut,
    PriceZoneIn,
    RepricingDocumentIn,
    RepricingDocumentOut,
    approve_repricing,
    branch_sync_status,
    create_price_zone,
    create_repricing,
    expected_price,
    get_repricing,
    list_price_zones,
    list_prices,
    price_mismatches,
    set_price,
    withdraw_override,
)

__all__ = ["PriceController", "PriceZoneController", "RepricingController"]

BranchCode = Annotated[str, PathParameter(name="branch", description="Branch code")]


class PriceController(Controller):
    path = "/api/v1/prices"
    tags = ["prices"]

    @post(
        "/",
        operation_id="setPrice",
        summary="A price at a scope (all, format, zone, branch), now or scheduled",
    )
    async def set_one(
        self, db_session: NamedDependency[AsyncSession], data: JSONBody[PriceChangeIn]
    ) -> PriceEntryOut:
        return await set_price(db_session, data)

    @post(
        "/withdraw",
        operation_id="withdrawPriceOverride",
        summary="Withdraw a format, zone or branch price of a product",
        status_code=200,
    )
    async def withdraw(
        self,
        db_session: NamedDependency[AsyncSession],
        price_scope: Annotated[str, QueryParameter(name="scope")],
        scope_id: Annotated[str, QueryParameter(name="scope_id")],
        sku: Annotated[str, QueryParameter(name="sku")],
    ) -> dict[str, int]:
        return {
            "withdrawn": await withdraw_override(
                db_session, scope=price_scope, scope_id=scope_id, sku=sku
            )
        }

    @get("/", operation_id="listPrices", summary="Price entries (history and scheduled)")
    async def list_all(
        self,
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 100,
        offset: Offset = 0,
        sku: Annotated[str | None, QueryParameter(name="sku")] = None,
        price_scope: Annotated[str | None, QueryParameter(name="scope")] = None,
        scope_id: Annotated[str | None, QueryParameter(name="scope_id")] = None,
    ) -> Page[PriceEntryOut]:
        items, total = await list_prices(
            db_session, sku=sku, scope=price_scope, scope_id=scope_id, limit=limit, offset=offset
        )
        return Page(items=items, total=total, limit=limit, offset=offset)

    @get(
        "/branches",
        operation_id="listBranchPriceSync",
        summary="Per branch: the master-data version it has applied versus central's",
    )
    async def sync(self, db_session: NamedDependency[AsyncSession]) -> list[BranchPricesAppliedOut]:
        return await branch_sync_status(db_session)

    @get(
        "/branches/{branch:str}/mismatches",
        operation_id="listPriceMismatches",
        summary="Products whose latest till price differs from head office's price then",
    )
    async def mismatches(
        self,
        db_session: NamedDependency[AsyncSession],
        branch: BranchCode,
        limit: Limit = 100,
    ) -> list[PriceMismatchOut]:
        return await price_mismatches(db_session, branch, limit=limit)

    @get(
        "/branches/{branch:str}/products/{sku:str}",
        operation_id="getExpectedPrice",
        summary="The price a branch must sell a product at (now or at a moment)",
    )
    async def expected(
        self,
        db_session: NamedDependency[AsyncSession],
        branch: BranchCode,
        sku: Annotated[str, PathParameter(name="sku")],
        at: Annotated[
            datetime | None,
            QueryParameter(
                name="at",
                description="A moment with its zone (2026-11-29T10:00:00Z); default now",
            ),
        ] = None,
    ) -> ExpectedPrice:
        return await expected_price(db_session, branch, sku, at)


class PriceZoneController(Controller):
    path = "/api/v1/zones"
    tags = ["prices"]

    @post(
        "/",
        operation_id="createPriceZone",
        responses=CONFLICT,
        summary="A price zone (branches join by price_zone)",
    )
    async def create(
        self, db_session: NamedDependency[AsyncSession], data: JSONBody[PriceZoneIn]
    ) -> PriceZoneIn:
        return await create_price_zone(db_session, data)

    @get("/", operation_id="listPriceZones", summary="Price zones")
    async def list_all(self, db_session: NamedDependency[AsyncSession]) -> list[PriceZoneIn]:
        return await list_price_zones(db_session)


class RepricingController(Controller):
    path = "/api/v1/repricing"
    tags = ["prices"]

    @post("/", operation_id="createRepricing", summary="A draft repricing document")
    async def create(
        self, db_session: NamedDependency[AsyncSession], data: JSONBody[RepricingDocumentIn]
    ) -> RepricingDocumentOut:
        return await create_repricing(db_session, data)

    @get("/{document_id:int}", operation_id="getRepricing", summary="A repricing document")
    async def get_one(
        self,
        db_session: NamedDependency[AsyncSession],
        document_id: Annotated[int, PathParameter(name="document_id")],
    ) -> RepricingDocumentOut:
        return await get_repricing(db_session, document_id)

    @post(
        "/{document_id:int}/approve",
        operation_id="approveRepricing",
        responses=CONFLICT,
        summary="Approve: schedule the new prices and record the stock revaluation",
        status_code=200,
    )
    async def approve(
        self,
        db_session: NamedDependency[AsyncSession],
        document_id: Annotated[int, PathParameter(name="document_id")],
    ) -> RepricingDocumentOut:
        return await approve_repricing(db_session, document_id)
