"""People and machines allowed in: API users with a role, their tokens, branch NATS credentials.

Secrets are never stored: a token is kept as its SHA-256 (tokens are 256-bit random,
so a slow hash adds nothing), a branch's NATS credentials only as the user public key.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from central.models.base import Base, BigIntPK, utcnow

__all__ = ["ApiToken", "ApiUser", "BranchCredential", "NatsIssuerIdentity"]


class ApiUser(Base):
    __tablename__ = "api_users"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # admin, merchandiser or analyst (central.auth.roles.Role)
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("api_users.id"), index=True)
    # hex SHA-256 of the token
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters, to tell tokens apart in listings without revealing them.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class BranchCredential(Base):
    """One issued NATS user of a branch (its JWT's subject key)."""

    __tablename__ = "branch_credentials"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    branch: Mapped[str] = mapped_column(String(32), index=True)
    public_key: Mapped[str] = mapped_column(String(64), unique=True)
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class NatsIssuerIdentity(Base):
    """The public keys of the chain's one NATS issuer, recorded by the first central
    process that used it: a host with another issuer (or none) must not mint or revoke
    credentials, since the servers trust only this operator (one row, id 1)."""

    __tablename__ = "nats_issuer_identity"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    operator_public_key: Mapped[str] = mapped_column(String(64))
    account_public_key: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
