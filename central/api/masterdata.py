"""The head-office master-data routes, registered together by ``create_app``."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from central.api.assortment import AssortmentController, FormatController
from central.api.catalog import CategoryController, ProductController
from central.api.price_tags import PriceTagController
from central.api.prices import PriceController, PriceZoneController, RepricingController
from central.api.promotions import PromotionController
from central.api.vat_groups import VatGroupController

__all__ = ["MASTER_DATA_CONTROLLERS"]

MASTER_DATA_CONTROLLERS: list[ControllerRouterHandler] = [
    ProductController,
    CategoryController,
    FormatController,
    AssortmentController,
    PriceController,
    PriceZoneController,
    RepricingController,
    PromotionController,
    PriceTagController,
    VatGroupController,
]
