"""Head office's catalog: products with barcodes, categories, CSV export."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.openapi_problems import CONFLICT
from central.api.pagination import Limit, Offset
from central.api.schemas import Page
from central.services.catalog import (
    CategoryIn,
    CategoryOut,
    ProductIn,
    ProductOut,
    ProductPatch,
    archive_product,
    create_category,
    create_product,
    get_product,
    list_categories,
    list_products,
    update_product,
)
from central.services.catalog_import import export_products_csv

__all__ = ["CategoryController", "ProductController"]

Sku = Annotated[str, PathParameter(name="sku", description="Product SKU")]


class ProductController(Controller):
    path = "/api/v1/products"
    tags = ["catalog"]

    @post(
        "/",
        operation_id="createProduct",
        responses=CONFLICT,
        summary="Create a product with its barcodes",
    )
    async def create(
        self, db_session: NamedDependency[AsyncSession], data: JSONBody[ProductIn]
    ) -> ProductOut:
        return await create_product(db_session, data)

    @get(
        "/",
        operation_id="listProducts",
        summary="Search products by name, SKU or barcode (q), or filter exactly",
    )
    async def list_all(
        self,
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 100,
        offset: Offset = 0,
        q: Annotated[
            str | None,
            QueryParameter(name="q", description="Part of the name or SKU, or a whole barcode"),
        ] = None,
        sku: Annotated[str | None, QueryParameter(name="sku")] = None,
        barcode: Annotated[str | None, QueryParameter(name="barcode")] = None,
        category: Annotated[str | None, QueryParameter(name="category")] = None,
        active: Annotated[bool | None, QueryParameter(name="active")] = None,
    ) -> Page[ProductOut]:
        return await list_products(
            db_session,
            q=q,
            sku=sku,
            barcode=barcode,
            category=category,
            active=active,
            limit=limit,
            offset=offset,
        )

    @get(
        "/export.csv",
        operation_id="exportProducts",
        summary="All products as CSV (the import format)",
        media_type="text/csv",
    )
    async def export(self, db_session: NamedDependency[AsyncSession]) -> Response[str]:
        return Response(await export_products_csv(db_session), media_type="text/csv")

    @get("/{sku:str}", operation_id="getProduct", summary="One product")
    async def get_one(self, db_session: NamedDependency[AsyncSession], sku: Sku) -> ProductOut:
        return await get_product(db_session, sku)

    @patch(
        "/{sku:str}",
        operation_id="updateProduct",
        responses=CONFLICT,
        summary="Change fields of a product",
    )
    async def update(
        self,
        db_session: NamedDependency[AsyncSession],
        sku: Sku,
        data: JSONBody[ProductPatch],
    ) -> ProductOut:
        return await update_product(db_session, sku, data)

    @post(
        "/{sku:str}/archive",
        operation_id="archiveProduct",
        summary="Stop selling a product everywhere (it leaves every branch's catalog)",
        status_code=200,
    )
    async def archive(self, db_session: NamedDependency[AsyncSession], sku: Sku) -> ProductOut:
        return await archive_product(db_session, sku)


class CategoryController(Controller):
    path = "/api/v1/categories"
    tags = ["catalog"]

    @post(
        "/",
        operation_id="createCategory",
        responses=CONFLICT,
        summary="Add a category under a parent (or a root)",
    )
    async def create(
        self, db_session: NamedDependency[AsyncSession], data: JSONBody[CategoryIn]
    ) -> CategoryOut:
        return await create_category(db_session, data)

    @get("/", operation_id="listCategories", summary="The category tree as a flat list")
    async def list_all(self, db_session: NamedDependency[AsyncSession]) -> list[CategoryOut]:
        return await list_categories(db_session)
