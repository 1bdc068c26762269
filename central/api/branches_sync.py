"""Per-branch sync state: the highest contiguous sequence central holds, gaps, resends."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import PathParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.pagination import Limit, Offset
from central.api.schemas import Page
from central.services.sync_state import BranchSyncOut, get_branch_sync, list_branch_sync

__all__ = ["BranchSyncController"]


class BranchSyncController(Controller):
    path = "/api/v1/sync/branches"
    tags = ["sync"]

    @get("/", operation_id="listBranchSync", summary="Sync state of every branch")
    async def list_sync(
        self, db_session: NamedDependency[AsyncSession], limit: Limit = 100, offset: Offset = 0
    ) -> Page[BranchSyncOut]:
        return await list_branch_sync(db_session, limit=limit, offset=offset)

    @get("/{branch:str}", operation_id="getBranchSync", summary="Sync state of one branch")
    async def get_sync(
        self,
        db_session: NamedDependency[AsyncSession],
        branch: Annotated[str, PathParameter(name="branch")],
    ) -> BranchSyncOut:
        return await get_branch_sync(db_session, branch)
