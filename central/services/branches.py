"""Registering branches: the row, and the JetStream consumer of their down stream."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.ext.asyncio import AsyncSession

from central.errors import ConflictError, ValidationFailed
from central.models import Branch, PriceZone, StoreFormat
from protocol.subjects import validate_branch_code

__all__ = ["add_branch", "check_branch_scopes"]


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
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationFailed(f"unknown time zone {timezone!r}", field="timezone") from exc
    await check_branch_scopes(session, format_code=format_code, price_zone=price_zone)
    if await session.get(Branch, code) is not None:
        raise ConflictError(f"branch {code!r} already exists", field="code")
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
    return branch
