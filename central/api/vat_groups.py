"""The chain's VAT groups: the rate of each fiscal-printer tax group (admin writes)."""

from __future__ import annotations

from litestar import Controller, get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from central.services.vat_groups import VatGroupsIn, VatGroupsOut, get_vat_groups, set_vat_groups

__all__ = ["VatGroupController"]


class VatGroupController(Controller):
    path = "/api/v1/vat-groups"
    tags = ["catalog"]

    @get("/", operation_id="getVatGroups", summary="The rate of each VAT group")
    async def get_all(self, db_session: NamedDependency[AsyncSession]) -> VatGroupsOut:
        return await get_vat_groups(db_session)

    @put(
        "/",
        operation_id="setVatGroups",
        summary="Set the rate of each VAT group (refused if an active product disagrees)",
    )
    async def set_all(
        self, db_session: NamedDependency[AsyncSession], data: JSONBody[VatGroupsIn]
    ) -> VatGroupsOut:
        return await set_vat_groups(db_session, data)
