"""Registering branches: the row, and the JetStream consumer of their down stream."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.ext.asyncio import AsyncSession

from central.errors import ConflictError, ValidationFailed
from central.models import Branch
from protocol.subjects import validate_branch_code

__all__ = ["add_branch"]


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
