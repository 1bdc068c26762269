"""Promotions: percent, amount off, N-for-M, for products or categories."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.openapi_problems import CONFLICT
from central.api.pagination import Limit, Offset
from central.api.schemas import Page
from central.services.promotions import (
    PromotionIn,
    PromotionOut,
    create_promotion,
    get_promotion,
    list_promotions,
    withdraw_promotion,
)

__all__ = ["PromotionController"]

PromotionId = Annotated[str, PathParameter(name="promotion_id")]


class PromotionController(Controller):
    path = "/api/v1/promotions"
    tags = ["promotions"]

    @post(
        "/",
        operation_id="createPromotion",
        responses=CONFLICT,
        summary="A promotion for branches and a time window",
    )
    async def create(
        self, db_session: NamedDependency[AsyncSession], data: JSONBody[PromotionIn]
    ) -> PromotionOut:
        return await create_promotion(db_session, data)

    @get("/", operation_id="listPromotions", summary="Promotions")
    async def list_all(
        self,
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 100,
        offset: Offset = 0,
        active: Annotated[bool | None, QueryParameter(name="active")] = None,
    ) -> Page[PromotionOut]:
        items, total = await list_promotions(db_session, active=active, limit=limit, offset=offset)
        return Page(items=items, total=total, limit=limit, offset=offset)

    @get("/{promotion_id:str}", operation_id="getPromotion", summary="One promotion")
    async def get_one(
        self, db_session: NamedDependency[AsyncSession], promotion_id: PromotionId
    ) -> PromotionOut:
        return await get_promotion(db_session, promotion_id)

    @post(
        "/{promotion_id:str}/withdraw",
        operation_id="withdrawPromotion",
        summary="End a promotion now (the tills stop applying it)",
        description=(
            "Withdrawing a promotion already withdrawn changes nothing (no new version, "
            "nothing published; the request is audited) and answers its state."
        ),
        status_code=200,
    )
    async def withdraw(
        self, db_session: NamedDependency[AsyncSession], promotion_id: PromotionId
    ) -> PromotionOut:
        return await withdraw_promotion(db_session, promotion_id)
