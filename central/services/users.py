"""API users, their roles and tokens."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from central.auth.context import Principal
from central.auth.roles import Role
from central.auth.tokens import hash_token, is_well_formed, new_token
from central.errors import ConflictError, NotFoundError, ValidationFailed
from central.models import ApiToken, ApiUser
from central.services.audit import record_change

__all__ = [
    "IssuedToken",
    "authenticate_token",
    "create_user",
    "issue_token",
    "list_users",
    "revoke_user",
    "user_snapshot",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
MAX_TOKEN_DAYS = 3650


@dataclass(frozen=True, slots=True)
class IssuedToken:
    user: ApiUser
    token: str
    expires_at: datetime | None


def user_snapshot(user: ApiUser) -> dict[str, object]:
    return {
        "name": user.name,
        "role": user.role,
        "revoked_at": user.revoked_at.isoformat() if user.revoked_at else None,
    }


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError as exc:
        choices = ", ".join(r.value for r in Role)
        raise ValidationFailed(f"unknown role {role!r}: one of {choices}", field="role") from exc


def _expiry(expires_in_days: int | None, now: datetime) -> datetime | None:
    if expires_in_days is None:
        return None
    if not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
        raise ValidationFailed(
            f"expires_in_days must be 1..{MAX_TOKEN_DAYS}", field="expires_in_days"
        )
    return now + timedelta(days=expires_in_days)


async def _user_by_name(session: AsyncSession, name: str) -> ApiUser:
    user = await session.scalar(select(ApiUser).where(ApiUser.name == name))
    if user is None:
        raise NotFoundError(f"no user {name!r}", field="name")
    return user


async def create_user(
    session: AsyncSession, *, name: str, role: str, expires_in_days: int | None = None
) -> IssuedToken:
    """A new user with its first token (the only time the token is shown)."""
    if not _NAME_RE.fullmatch(name):
        raise ValidationFailed(
            "a user name is 1-100 letters, digits, '.', '_', '@' or '-'", field="name"
        )
    checked = _role(role)
    now = datetime.now(UTC)
    expires_at = _expiry(expires_in_days, now)
    if await session.scalar(select(ApiUser.id).where(ApiUser.name == name)) is not None:
        raise ConflictError(f"user {name!r} already exists", field="name")
    user = ApiUser(name=name, role=checked.value, created_at=now)
    session.add(user)
    await session.flush()
    token = new_token()
    session.add(
        ApiToken(
            user_id=user.id,
            token_hash=hash_token(token),
            prefix=token[:12],
            created_at=now,
            expires_at=expires_at,
        )
    )
    await record_change(
        session, action="user.add", target=f"user:{name}", after=user_snapshot(user)
    )
    return IssuedToken(user=user, token=token, expires_at=expires_at)


async def issue_token(
    session: AsyncSession, *, name: str, expires_in_days: int | None = None
) -> IssuedToken:
    """One more token for an existing, active user."""
    user = await _user_by_name(session, name)
    if user.revoked_at is not None:
        raise ConflictError(f"user {name!r} is revoked", field="name")
    now = datetime.now(UTC)
    expires_at = _expiry(expires_in_days, now)
    token = new_token()
    session.add(
        ApiToken(
            user_id=user.id,
            token_hash=hash_token(token),
            prefix=token[:12],
            created_at=now,
            expires_at=expires_at,
        )
    )
    await record_change(
        session,
        action="user.token",
        target=f"user:{name}",
        after={"prefix": token[:12], "expires_at": expires_at.isoformat() if expires_at else None},
    )
    return IssuedToken(user=user, token=token, expires_at=expires_at)


async def revoke_user(session: AsyncSession, *, name: str) -> ApiUser:
    """The user and every token of it stop working at once."""
    user = await _user_by_name(session, name)
    before = user_snapshot(user)
    now = datetime.now(UTC)
    if user.revoked_at is None:
        user.revoked_at = now
    tokens = await session.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
    )
    for token in tokens:
        token.revoked_at = now
    await session.flush()
    await record_change(
        session,
        action="user.revoke",
        target=f"user:{name}",
        before=before,
        after=user_snapshot(user),
    )
    return user


async def list_users(
    session: AsyncSession, *, limit: int = 100, offset: int = 0
) -> tuple[list[ApiUser], int]:
    from sqlalchemy import func

    total = await session.scalar(select(func.count()).select_from(ApiUser))
    rows = await session.scalars(select(ApiUser).order_by(ApiUser.name).limit(limit).offset(offset))
    return list(rows), int(total or 0)


async def authenticate_token(session: AsyncSession, token: str) -> Principal | None:
    """The principal of a valid token; None for unknown, expired or revoked ones."""
    if not is_well_formed(token):
        return None
    row = (
        await session.execute(
            select(ApiToken, ApiUser)
            .join(ApiUser, ApiUser.id == ApiToken.user_id)
            .where(ApiToken.token_hash == hash_token(token))
        )
    ).first()
    if row is None:
        return None
    api_token, user = row[0], row[1]
    now = datetime.now(UTC)
    if api_token.revoked_at is not None or user.revoked_at is not None:
        return None
    if api_token.expires_at is not None and api_token.expires_at <= now:
        return None
    return Principal(user_id=user.id, name=user.name, role=user.role, token_id=api_token.id)
