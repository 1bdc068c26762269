"""Branches: list (every role), register, change, revoke and reinstate, issue and list
NATS credentials (admin); credentials are shown once."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.openapi_problems import CONFLICT
from central.api.pagination import Limit, Offset
from central.api.schemas import Page
from central.auth.roles import Role, allow
from central.models import Branch
from central.runtime import CentralRuntime
from central.services.branches import BranchPatch, change_branch
from central.services.dead_letters import replay_all
from central.services.nats_auth import (
    CredentialOut,
    chain_issuer,
    client_tls_options,
    issue_branch_credentials,
    list_branch_credentials,
    push_account_jwt,
    register_branch,
    reinstate_branch,
    revoke_branch,
    settle_issued,
)

__all__ = ["BranchController"]

log = logging.getLogger(__name__)


class BranchOut(msgspec.Struct, kw_only=True):
    code: str
    name: str
    timezone: str
    format_code: str | None
    price_zone: str | None
    active: bool
    created_at: datetime
    revoked_at: datetime | None


class BranchIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""
    timezone: Annotated[str, msgspec.Meta(max_length=64)] = "UTC"
    format_code: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    price_zone: Annotated[str, msgspec.Meta(max_length=32)] | None = None


class BranchCredentialsOut(msgspec.Struct, kw_only=True):
    branch: str
    nats_url: str
    # The NATS .creds file of the branch's agent: shown only here.
    creds: str
    nats_user: str
    # Keys of the earlier credentials retired (retire_previous=true).
    retired: list[str] = []
    # Whether the running NATS servers took the retirement now (None: nothing retired).
    pushed_to_nats: bool | None = None


class BranchReinstatedOut(msgspec.Struct, kw_only=True):
    branch: str
    nats_url: str
    # The NATS .creds file of the branch's agent: shown only here.
    creds: str
    nats_user: str
    # The branch's dead letters replayed now (stored), and those still failing.
    replayed: int
    still_open: int


class BranchRevokedOut(msgspec.Struct, kw_only=True):
    branch: str
    revoked_at: datetime | None
    # Whether the running NATS servers took the revocation now (else at their next update).
    pushed_to_nats: bool


def _out(b: Branch) -> BranchOut:
    return BranchOut(
        code=b.code,
        name=b.name,
        timezone=b.timezone,
        format_code=b.format_code,
        price_zone=b.price_zone,
        active=b.active,
        created_at=b.created_at,
        revoked_at=b.revoked_at,
    )


def _nats_url(runtime: CentralRuntime) -> str:
    return runtime.settings.nats_public_url or runtime.nats_url


BranchCode = Annotated[str, PathParameter(name="code", max_length=32)]


class BranchController(Controller):
    path = "/api/v1/branches"
    tags = ["branches"]

    @get("/", operation_id="listBranches", summary="Registered branches")
    async def list_branches(
        self, db_session: NamedDependency[AsyncSession], limit: Limit = 100, offset: Offset = 0
    ) -> Page[BranchOut]:
        total = await db_session.scalar(select(func.count()).select_from(Branch))
        rows = await db_session.scalars(
            select(Branch).order_by(Branch.code).limit(limit).offset(offset)
        )
        return Page(
            items=[_out(b) for b in rows], total=int(total or 0), limit=limit, offset=offset
        )

    @post(
        "/",
        operation_id="addBranch",
        responses=CONFLICT,
        summary="Register a branch; returns its NATS credentials once",
    )
    async def add_branch(
        self,
        db_session: NamedDependency[AsyncSession],
        runtime: NamedDependency[CentralRuntime],
        data: JSONBody[BranchIn],
    ) -> Response[BranchCredentialsOut]:
        async with db_session.begin():
            issuer = await chain_issuer(db_session, runtime.settings)
            reg = await register_branch(
                db_session,
                issuer,
                code=data.code,
                name=data.name or data.code,
                timezone=data.timezone,
                format_code=data.format_code,
                price_zone=data.price_zone,
            )
        out = BranchCredentialsOut(
            branch=reg.branch.code,
            nats_url=_nats_url(runtime),
            creds=reg.user.creds,
            nats_user=reg.user.public_key,
        )
        return Response(out, status_code=201)

    @patch(
        "/{code:str}",
        operation_id="updateBranch",
        summary="Change a branch's name, time zone, format or price zone",
        description=(
            "Absent fields stay as they are; `null` clears the format or price zone. "
            "A new format or price zone queues a master-data snapshot for the branch, "
            "so its agent ends with exactly its new scopes' products and prices."
        ),
    )
    async def update(
        self,
        db_session: NamedDependency[AsyncSession],
        runtime: NamedDependency[CentralRuntime],
        code: BranchCode,
        data: JSONBody[BranchPatch],
    ) -> BranchOut:
        change = await change_branch(db_session, runtime.js, code, data)
        if change.snapshot is not None:
            runtime.publisher.wake()
        return _out(change.branch)

    @post(
        "/{code:str}/credentials",
        operation_id="issueBranchCredentials",
        responses=CONFLICT,
        summary="New NATS credentials of a branch (shown once)",
        description=(
            "The earlier credentials stay valid, unless `retire_previous=true`: then NATS "
            "refuses them (cut at once, pushed like a revocation) and only the new ones "
            "connect. `GET` lists the branch's credentials."
        ),
    )
    async def issue_credentials(
        self,
        db_session: NamedDependency[AsyncSession],
        runtime: NamedDependency[CentralRuntime],
        code: BranchCode,
        retire_previous: Annotated[bool, QueryParameter(name="retire_previous")] = False,
    ) -> Response[BranchCredentialsOut]:
        async with db_session.begin():
            issuer = await chain_issuer(db_session, runtime.settings)
            issued = await issue_branch_credentials(
                db_session, issuer, code, retire_previous=retire_previous
            )
        pushed = await settle_issued(
            issuer, issued, runtime.nats_url, **client_tls_options(runtime.settings)
        )
        out = BranchCredentialsOut(
            branch=code,
            nats_url=_nats_url(runtime),
            creds=issued.user.creds,
            nats_user=issued.user.public_key,
            retired=issued.retired,
            pushed_to_nats=pushed,
        )
        return Response(out, status_code=201)

    @get(
        "/{code:str}/credentials",
        operation_id="listBranchCredentials",
        summary="A branch's issued NATS credentials (keys, issued and retired when)",
        # Who holds which key is the admins' business, like issuing them.
        opt=allow(Role.ADMIN),
    )
    async def list_credentials(
        self, db_session: NamedDependency[AsyncSession], code: BranchCode
    ) -> list[CredentialOut]:
        return await list_branch_credentials(db_session, code)

    @post(
        "/{code:str}/reinstate",
        operation_id="reinstateBranch",
        responses=CONFLICT,
        summary="Lift a branch's revocation; returns its new NATS credentials once",
        description=(
            "Central takes the branch's events again and replays its open dead letters "
            "(those refused while it was revoked). Its revoked credentials stay refused: "
            "its agent needs the new ones."
        ),
    )
    async def reinstate(
        self,
        db_session: NamedDependency[AsyncSession],
        runtime: NamedDependency[CentralRuntime],
        code: BranchCode,
    ) -> Response[BranchReinstatedOut]:
        async with db_session.begin():
            issuer = await chain_issuer(db_session, runtime.settings)
            issued = await reinstate_branch(db_session, issuer, code)
        await settle_issued(
            issuer, issued, runtime.nats_url, **client_tls_options(runtime.settings)
        )
        user = issued.user
        replayed = await replay_all(runtime.sessionmaker, branch=code)
        out = BranchReinstatedOut(
            branch=code,
            nats_url=_nats_url(runtime),
            creds=user.creds,
            nats_user=user.public_key,
            replayed=sum(1 for r in replayed if r.status == "replayed"),
            still_open=sum(1 for r in replayed if r.status == "open"),
        )
        return Response(out, status_code=201)

    @post(
        "/{code:str}/revoke",
        operation_id="revokeBranch",
        summary="Revoke a branch: NATS refuses its credentials, central its events",
        status_code=200,
    )
    async def revoke(
        self,
        db_session: NamedDependency[AsyncSession],
        runtime: NamedDependency[CentralRuntime],
        code: BranchCode,
    ) -> BranchRevokedOut:
        async with db_session.begin():
            issuer = await chain_issuer(db_session, runtime.settings)
            account_jwt = await revoke_branch(db_session, issuer, code)
            branch = await db_session.get(Branch, code)
        pushed = await push_account_jwt(
            issuer, runtime.nats_url, account_jwt, **client_tls_options(runtime.settings)
        )
        return BranchRevokedOut(
            branch=code, revoked_at=branch.revoked_at if branch else None, pushed_to_nats=pushed
        )
