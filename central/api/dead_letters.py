"""Dead letters: messages that could not be ingested; replay after a fix, or discard."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.openapi_problems import CONFLICT
from central.api.pagination import Limit, Offset
from central.api.schemas import DeadLetterOut, Page
from central.auth.roles import Role, allow
from central.runtime import CentralRuntime
from central.services.dead_letters import (
    ReplayOut,
    discard_dead_letter,
    get_dead_letter,
    list_dead_letters,
    replay_all,
    replay_dead_letter,
)

__all__ = ["DeadLetterController"]

DeadLetterId = Annotated[int, PathParameter(name="dead_letter_id", ge=1)]


class DeadLetterController(Controller):
    path = "/api/v1/dead-letters"
    tags = ["sync"]

    @get("/", operation_id="listDeadLetters", summary="Messages that could not be ingested")
    async def list_dead_letters(
        self,
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 100,
        offset: Offset = 0,
        status: Annotated[
            str | None, QueryParameter(name="status", description="open, replayed or discarded")
        ] = None,
        branch: Annotated[str | None, QueryParameter(name="branch")] = None,
    ) -> Page[DeadLetterOut]:
        return await list_dead_letters(
            db_session, status=status, branch=branch, limit=limit, offset=offset
        )

    @get("/{dead_letter_id:int}", operation_id="getDeadLetter", summary="One dead letter")
    async def get_dead_letter(
        self, db_session: NamedDependency[AsyncSession], dead_letter_id: DeadLetterId
    ) -> DeadLetterOut:
        return await get_dead_letter(db_session, dead_letter_id)

    @post(
        "/{dead_letter_id:int}/replay",
        operation_id="replayDeadLetter",
        responses=CONFLICT,
        summary="Process the stored message again (after a fix); it stays open if it fails again",
        status_code=200,
        # Operations on the sync pipeline: admins only (analysts read dead letters).
        opt=allow(Role.ADMIN),
    )
    async def replay(
        self, runtime: NamedDependency[CentralRuntime], dead_letter_id: DeadLetterId
    ) -> ReplayOut:
        return await replay_dead_letter(runtime.sessionmaker, dead_letter_id)

    @post(
        "/replay",
        operation_id="replayOpenDeadLetters",
        summary="Replay the open dead letters (of one branch), oldest first, up to limit",
        status_code=200,
        opt=allow(Role.ADMIN),
    )
    async def replay_open(
        self,
        runtime: NamedDependency[CentralRuntime],
        branch: Annotated[str | None, QueryParameter(name="branch")] = None,
        limit: Limit = 100,
    ) -> list[ReplayOut]:
        return await replay_all(runtime.sessionmaker, branch=branch, limit=limit)

    @post(
        "/{dead_letter_id:int}/discard",
        operation_id="discardDeadLetter",
        responses=CONFLICT,
        summary="Decide not to store the message (kept for the record)",
        status_code=200,
        opt=allow(Role.ADMIN),
    )
    async def discard(
        self, db_session: NamedDependency[AsyncSession], dead_letter_id: DeadLetterId
    ) -> DeadLetterOut:
        return await discard_dead_letter(db_session, dead_letter_id)
