"""API users and tokens (admin only): a token is shown once, when it is made."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.openapi_problems import CONFLICT
from central.api.pagination import Limit, Offset
from central.api.schemas import Page
from central.auth.roles import Role, allow
from central.models import ApiUser
from central.runtime import CentralRuntime
from central.services.users import create_user, issue_token, list_users, revoke_user

__all__ = ["UserController"]


class UserOut(msgspec.Struct, kw_only=True):
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None


class UserIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    role: Annotated[str, msgspec.Meta(description="admin, merchandiser or analyst")]
    # Omitted: the server's default (api_token_ttl_days).
    expires_in_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None


class TokenIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    expires_in_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None


class TokenOut(msgspec.Struct, kw_only=True):
    name: str
    role: str
    # Shown only here: the server keeps a hash.
    token: str
    expires_at: datetime | None


def _out(user: ApiUser) -> UserOut:
    return UserOut(
        name=user.name, role=user.role, created_at=user.created_at, revoked_at=user.revoked_at
    )


def _ttl(runtime: CentralRuntime, days: int | None) -> int | None:
    if days is not None:
        return days
    return runtime.settings.api_token_ttl_days or None


UserName = Annotated[str, PathParameter(name="name", max_length=100)]


class UserController(Controller):
    path = "/api/v1/users"
    tags = ["security"]
    opt = allow(Role.ADMIN)

    @get("/", operation_id="listUsers", summary="API users and their roles")
    async def list_users(
        self, db_session: NamedDependency[AsyncSession], limit: Limit = 100, offset: Offset = 0
    ) -> Page[UserOut]:
        users, total = await list_users(db_session, limit=limit, offset=offset)
        return Page(items=[_out(u) for u in users], total=total, limit=limit, offset=offset)

    @post(
        "/",
        operation_id="createUser",
        responses=CONFLICT,
        summary="Create a user; its token is shown once",
    )
    async def create_user(
        self,
        db_session: NamedDependency[AsyncSession],
        runtime: NamedDependency[CentralRuntime],
        data: JSONBody[UserIn],
    ) -> Response[TokenOut]:
        async with db_session.begin():
            issued = await create_user(
                db_session,
                name=data.name,
                role=data.role,
                expires_in_days=_ttl(runtime, data.expires_in_days),
            )
        out = TokenOut(
            name=issued.user.name,
            role=issued.user.role,
            token=issued.token,
            expires_at=issued.expires_at,
        )
        return Response(out, status_code=201)

    @post(
        "/{name:str}/tokens",
        operation_id="issueUserToken",
        responses=CONFLICT,
        summary="Another token for a user (shown once)",
    )
    async def issue_token(
        self,
        db_session: NamedDependency[AsyncSession],
        runtime: NamedDependency[CentralRuntime],
        name: UserName,
        data: JSONBody[TokenIn],
    ) -> Response[TokenOut]:
        async with db_session.begin():
            issued = await issue_token(
                db_session, name=name, expires_in_days=_ttl(runtime, data.expires_in_days)
            )
        out = TokenOut(
            name=issued.user.name,
            role=issued.user.role,
            token=issued.token,
            expires_at=issued.expires_at,
        )
        return Response(out, status_code=201)

    @post(
        "/{name:str}/revoke",
        operation_id="revokeUser",
        summary="Revoke a user and all its tokens",
        status_code=200,
    )
    async def revoke_user(
        self, db_session: NamedDependency[AsyncSession], name: UserName
    ) -> UserOut:
        async with db_session.begin():
            user = await revoke_user(db_session, name=name)
        return _out(user)
