"""Assortment: store formats, their products, and per-branch exceptions."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.openapi_problems import CONFLICT
from central.services.assortment import (
    AssortmentChange,
    AssortmentExceptionIn,
    AssortmentExceptionList,
    FormatIn,
    branch_assortment,
    change_format_products,
    create_format,
    list_formats,
    remove_exception,
    set_exception,
    set_exceptions,
)

__all__ = ["AssortmentController", "FormatController"]

BranchCode = Annotated[str, PathParameter(name="branch", description="Branch code")]


class FormatController(Controller):
    path = "/api/v1/formats"
    tags = ["assortment"]

    @post(
        "/",
        operation_id="createFormat",
        responses=CONFLICT,
        summary="A store format (cluster of branches)",
    )
    async def create(
        self, db_session: NamedDependency[AsyncSession], data: JSONBody[FormatIn]
    ) -> FormatIn:
        return await create_format(db_session, data)

    @get("/", operation_id="listFormats", summary="Store formats")
    async def list_all(self, db_session: NamedDependency[AsyncSession]) -> list[FormatIn]:
        return await list_formats(db_session)

    @post(
        "/{format_code:str}/products",
        operation_id="changeFormatProducts",
        summary="Add products to and remove products from a format's assortment",
        status_code=200,
    )
    async def change(
        self,
        db_session: NamedDependency[AsyncSession],
        format_code: Annotated[str, PathParameter(name="format_code")],
        data: JSONBody[AssortmentChange],
    ) -> dict[str, int]:
        return {"products": await change_format_products(db_session, format_code, data)}


class AssortmentController(Controller):
    path = "/api/v1/assortment/branches"
    tags = ["assortment"]

    @get(
        "/{branch:str}",
        operation_id="getBranchAssortment",
        summary="The SKUs a branch sells (its format's, with its exceptions)",
    )
    async def get_one(
        self, db_session: NamedDependency[AsyncSession], branch: BranchCode
    ) -> list[str]:
        return await branch_assortment(db_session, branch)

    @put(
        "/{branch:str}/exceptions",
        operation_id="setAssortmentException",
        summary="A branch sells a product its format does not, or does not sell one it does",
        description=(
            'One exception `{"sku": ..., "include": true|false}`, or a list of them '
            "(all or nothing: one version, one publication); the body comes back."
        ),
    )
    async def set_some(
        self,
        db_session: NamedDependency[AsyncSession],
        branch: BranchCode,
        data: JSONBody[AssortmentExceptionIn | AssortmentExceptionList],
    ) -> AssortmentExceptionIn | list[AssortmentExceptionIn]:
        if isinstance(data, AssortmentExceptionIn):
            return await set_exception(db_session, branch, data)
        return await set_exceptions(db_session, branch, data)

    @delete(
        "/{branch:str}/exceptions/{sku:str}",
        operation_id="removeAssortmentException",
        summary="Back to the format's assortment for this product",
    )
    async def remove(
        self,
        db_session: NamedDependency[AsyncSession],
        branch: BranchCode,
        sku: Annotated[str, PathParameter(name="sku")],
    ) -> None:
        await remove_exception(db_session, branch, sku)
