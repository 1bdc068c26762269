"""Registering and changing branches: the row, its scopes (format, price zone) and
the master data a change of scope makes the branch need."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from nats.js import JetStreamContext
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from central.errors import ConflictError, NotFoundError, ValidationFailed
from central.models import Branch, BranchScopeHistory, PriceZone, StoreFormat
from central.services.audit import record_change
from central.services.masterdata_publisher import (
    DownKey,
    allocate_versions,
    enqueue,
    enqueue_snapshot,
    excluded_skus,
    product_targets,
)
from central.sync.jetstream import ensure_branch_consumer
from protocol.subjects import validate_branch_code
from protocol.zones import zone_problem

log = logging.getLogger(__name__)

__all__ = ["BranchPatch", "BranchUpdate", "add_branch", "check_branch_scopes", "update_branch"]


async def check_branch_scopes(
    session: AsyncSession, *, format_code: str | None, price_zone: str | None
) -> None:
    """A branch's format and price zone must exist: they decide which master data its
    consumer reads (``down.format.<fmt>.>``, ``down.zone.<zone>.>``), so a misspelt one
    would leave the branch silently without its assortment or its zone's prices."""
    if format_code is not None and await session.get(StoreFormat, format_code) is None:
        raise ValidationFailed(
            f"unknown format {format_code!r} (POST /api/v1/formats first)", field="format_code"
        )
    if price_zone is not None and await session.get(PriceZone, price_zone) is None:
        raise ValidationFailed(
            f"unknown price zone {price_zone!r} (POST /api/v1/zones first)", field="price_zone"
        )


def check_timezone(name: str, field: str = "timezone") -> None:
    """An IANA time zone this machine knows, named by place (as the agent's own setting
    must be: the two are compared), or a 422 naming ``field``."""
    problem = zone_problem(name)
    if problem is not None:
        raise ValidationFailed(problem, field=field)


async def add_branch(
    session: AsyncSession,
    *,
    code: str,
    name: str,
    timezone: str = "UTC",
    format_code: str | None = None,
    price_zone: str | None = None,
) -> Branch:
    try:
        validate_branch_code(code)
    except ValueError as exc:
        raise ValidationFailed(str(exc), field="code") from exc
    check_timezone(timezone)
    await check_branch_scopes(session, format_code=format_code, price_zone=price_zone)
    if await session.get(Branch, code) is not None:
        raise ConflictError(f"branch {code!r} already exists", field="code")
    # Codes are kept as given and compared exactly (they are NATS subject tokens and
    # the agents' settings), but two that differ only by letter case are one store
    # typed twice: refused, naming the one that exists.
    twin = await session.scalar(
        select(Branch.code).where(func.lower(Branch.code) == code.lower()).limit(1)
    )
    if twin is not None:
        raise ConflictError(
            f"branch {twin!r} already exists: {code!r} differs from it only by letter case "
            "(branch codes are case-sensitive; use the existing code, or another)",
            field="code",
        )
    branch = Branch(
        code=code,
        name=name or code,
        timezone=timezone,
        format_code=format_code,
        price_zone=price_zone,
        active=True,
    )
    session.add(branch)
    await session.flush()
    _record_scopes(session, branch, branch.created_at)
    await session.flush()
    if format_code is not None:
        # A product a format mate excludes reaches the format's branches at branch scope,
        # published only when it changes: the new branch's own buckets must go out now,
        # or its agent never gets those products (nothing else of the format changes).
        skus = await excluded_skus(session, format_code=format_code)
        keys = {k for k in await product_targets(session, skus) if k[1:3] == ("branch", code)}
        await _enqueue_keys(session, keys)
    return branch


async def _enqueue_keys(session: AsyncSession, keys: set[DownKey]) -> None:
    if keys:
        await enqueue(session, await allocate_versions(session), sorted(keys))


def _record_scopes(session: AsyncSession, branch: Branch, valid_from: datetime) -> None:
    """The branch's format and price zone from ``valid_from`` on (a past moment of the
    branch is priced with the scopes it had then: ``pricing.scopes_at``)."""
    session.add(
        BranchScopeHistory(
            branch=branch.code,
            valid_from=valid_from,
            format_code=branch.format_code,
            price_zone=branch.price_zone,
        )
    )


class BranchPatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fields to change; absent fields stay as they are (``null`` clears a scope)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    timezone: Annotated[str, msgspec.Meta(max_length=64)] | msgspec.UnsetType = msgspec.UNSET
    format_code: Annotated[str, msgspec.Meta(max_length=32)] | msgspec.UnsetType | None = (
        msgspec.UNSET
    )
    price_zone: Annotated[str, msgspec.Meta(max_length=32)] | msgspec.UnsetType | None = (
        msgspec.UNSET
    )


@dataclass(frozen=True, slots=True)
class BranchUpdate:
    branch: Branch
    # The format or price zone changed: the branch's consumer must read the new scopes.
    scopes_changed: bool
    # The version of the snapshot queued for the branch (None: none was needed).
    snapshot: int | None
    # The scopes before the change (format, price zone).
    previous_scopes: tuple[str | None, str | None] = (None, None)


async def update_branch(session: AsyncSession, code: str, patch: BranchPatch) -> BranchUpdate:
    """Change a branch's name, time zone, format or price zone (validated as on
    registration), audited. A new format or price zone changes which master data the
    branch must hold: its replica has the old scope's products and prices, and its
    consumer never delivered the new scope's messages already in the stream. So a
    snapshot of the branch is queued in the same transaction (the path a branch that
    lost its database takes): the publisher builds it from the database and the agent
    ends with exactly its new scopes' data, the old scope's keys deleted at its end."""
    from central.services.nats_auth import branch_snapshot  # nats_auth imports this module

    branch = await session.get(Branch, code)
    if branch is None:
        raise NotFoundError(f"no branch {code!r}", field="code")
    if patch.timezone is not msgspec.UNSET:
        check_timezone(patch.timezone)
    format_code = branch.format_code if patch.format_code is msgspec.UNSET else patch.format_code
    price_zone = branch.price_zone if patch.price_zone is msgspec.UNSET else patch.price_zone
    await check_branch_scopes(
        session,
        format_code=None if patch.format_code is msgspec.UNSET else format_code,
        price_zone=None if patch.price_zone is msgspec.UNSET else price_zone,
    )
    before = branch_snapshot(branch)
    previous_scopes = (branch.format_code, branch.price_zone)
    scopes_changed = (format_code, price_zone) != previous_scopes
    if patch.name is not msgspec.UNSET:
        branch.name = patch.name
    if patch.timezone is not msgspec.UNSET:
        branch.timezone = patch.timezone
    # The branch's exclusions decide what its old and new format mates get at branch
    # scope and what stays in each format's buckets: both sides are republished.
    moved = await excluded_skus(session, branch=code) if format_code != previous_scopes[0] else []
    mates_before = await product_targets(session, moved)
    branch.format_code = format_code
    branch.price_zone = price_zone
    if scopes_changed:
        _record_scopes(session, branch, datetime.now(UTC))
    await session.flush()
    await _enqueue_keys(session, mates_before | await product_targets(session, moved))
    snapshot = None
    if scopes_changed and branch.active:
        snapshot = await enqueue_snapshot(session, code)
    after = branch_snapshot(branch)
    if after != before:
        await record_change(
            session,
            action="branch.update",
            target=f"branch:{code}",
            before=before,
            after={**after, "snapshot": snapshot} if snapshot is not None else after,
        )
    return BranchUpdate(
        branch=branch,
        scopes_changed=scopes_changed,
        snapshot=snapshot,
        previous_scopes=previous_scopes,
    )


async def change_branch(
    session: AsyncSession, js: JetStreamContext | None, code: str, patch: BranchPatch
) -> BranchUpdate:
    """``update_branch`` in its own transaction. With a snapshot queued, the branch's
    down consumer reads the new scopes before the commit (the snapshot can only be
    published after it): a change of the new scope made after the snapshot was built
    is then delivered, not skipped by a consumer still filtered to the old one. If
    the commit fails, the consumer is put back (the keeper of consumers only acts on
    what it sees change in the database, so it would not)."""
    switched_from: tuple[str | None, str | None] | None = None
    try:
        async with session.begin():
            change = await update_branch(session, code, patch)
            branch = change.branch
            if change.snapshot is not None and js is not None:
                try:
                    await ensure_branch_consumer(
                        js,
                        branch.code,
                        format_code=branch.format_code,
                        price_zone=branch.price_zone,
                    )
                    switched_from = change.previous_scopes
                except Exception as exc:
                    # The keeper in every central process applies the new filter within
                    # seconds of the commit.
                    log.warning("down consumer of %s not updated yet: %s", branch.code, exc)
    except Exception:
        if switched_from is not None and js is not None:
            with contextlib.suppress(Exception):
                await ensure_branch_consumer(
                    js, code, format_code=switched_from[0], price_zone=switched_from[1]
                )
        raise
    return change
