"""Shelf labels for a branch after price changes (printable HTML)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.services.price_tags import render_price_tags

__all__ = ["PriceTagController"]


class PriceTagController(Controller):
    path = "/api/v1/price-tags"
    tags = ["prices"]

    @get(
        "/{branch:str}",
        operation_id="getPriceTags",
        summary="Printable shelf labels of the products whose price changes in the window",
        media_type="text/html",
    )
    async def price_tags(
        self,
        db_session: NamedDependency[AsyncSession],
        branch: Annotated[str, PathParameter(name="branch", description="Branch code")],
        since: Annotated[
            datetime | None,
            QueryParameter(
                name="since", description="Window start, with its zone (default: a day ago)"
            ),
        ] = None,
        until: Annotated[
            datetime | None,
            QueryParameter(
                name="until", description="Window end, with its zone (default: a day ahead)"
            ),
        ] = None,
    ) -> Response[str]:
        return Response(
            await render_price_tags(db_session, branch, since, until), media_type="text/html"
        )
