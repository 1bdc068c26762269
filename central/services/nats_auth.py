"""Branch NATS credentials: issued at registration, revoked at run time without a restart.

The issuer keys (``central.sync.nats_auth.NatsIssuer``) live in
``settings.nats_issuer_dir`` (default ``<data_dir>/nats-issuer``). The database keeps
which user keys each branch was given and which are revoked; the account JWT pushed
to the servers is derived from it, so any central process can rebuild it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from central.auth.context import RequestAudit
from central.embedded_nats import EmbeddedNats
from central.errors import ConflictError, DomainError, NotFoundError
from central.ingest.bulk import dialect_insert, table_of
from central.models import Branch, BranchCredential, NatsIssuerIdentity
from central.services.audit import record_change
from central.services.branches import add_branch
from central.settings import CentralSettings
from central.sync.nats_auth import (
    ISSUER_FILE,
    IssuedUser,
    NatsIssuer,
    account_claims_update,
    decode_jwt_claims,
)
from protocol.nats_link import close_unconnected, connect_cancellably

__all__ = [
    "BranchRegistration",
    "IssuerNotTheChains",
    "account_jwt_from_db",
    "chain_issuer",
    "check_chain_issuer",
    "client_tls_options",
    "connects_with_issuer",
    "embedded_nats_server",
    "issue_branch_credentials",
    "issuer_for",
    "list_branch_credentials",
    "push_account_jwt",
    "refresh_account_jwt",
    "register_branch",
    "reinstate_branch",
    "revoke_branch",
    "settle_issued",
    "write_branch_creds",
]

log = logging.getLogger(__name__)


def issuer_for(settings: CentralSettings) -> NatsIssuer:
    """This host's issuer, created when it has none (single machine, embedded NATS).
    Credential operations go through ``chain_issuer``, which checks it is the chain's."""
    return NatsIssuer.load_or_create(issuer_dir(settings))


def issuer_dir(settings: CentralSettings) -> Path:
    return Path(settings.nats_issuer_dir or settings.data_path / "nats-issuer")


class IssuerNotTheChains(DomainError):
    """This host's NATS issuer is missing or another than the one the chain's database
    recorded: credentials it signed would be refused by the servers, and its account
    updates (revocations) ignored."""

    status = 503
    title = "NATS issuer not the chain's"


def _not_the_chains(directory: Path, why: str) -> IssuerNotTheChains:
    return IssuerNotTheChains(
        f"this host's NATS issuer is not the chain's ({why}): share nats_issuer_dir "
        f"(now {directory}) between all central hosts, as the README's 'Running at "
        "scale' says; no credentials were issued or revoked",
        field="nats_issuer_dir",
    )


async def _recorded_identity(session: AsyncSession) -> NatsIssuerIdentity | None:
    return await session.get(NatsIssuerIdentity, 1, populate_existing=True)


async def _record_identity(session: AsyncSession, issuer: NatsIssuer) -> NatsIssuerIdentity:
    """Record ``issuer`` as the chain's unless another was recorded first (two hosts
    at once: one wins); returns what the database holds."""
    await session.execute(
        dialect_insert(session, table_of(NatsIssuerIdentity))
        .values(
            id=1,
            operator_public_key=issuer.operator_public_key,
            account_public_key=issuer.account_public_key,
            recorded_at=datetime.now(UTC),
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
    recorded = await _recorded_identity(session)
    assert recorded is not None
    return recorded


def _same(issuer: NatsIssuer, recorded: NatsIssuerIdentity) -> bool:
    return (issuer.operator_public_key, issuer.account_public_key) == (
        recorded.operator_public_key,
        recorded.account_public_key,
    )


async def chain_issuer(session: AsyncSession, settings: CentralSettings) -> NatsIssuer:
    """The chain's NATS issuer, in the caller's transaction: this host's, when it is the
    one the database recorded (recorded now when none was). A host without an issuer
    creates one only for a chain that has none yet (no recorded issuer, no credentials
    ever issued); otherwise, or when its issuer is another, ``IssuerNotTheChains``."""
    directory = issuer_dir(settings)
    recorded = await _recorded_identity(session)
    if (directory / ISSUER_FILE).exists():
        issuer = NatsIssuer.load(directory)
    else:
        issued = await session.scalar(select(BranchCredential.id).limit(1))
        if recorded is not None or issued is not None:
            # Never a second operator: the servers trust only the first one.
            raise _not_the_chains(directory, f"no {ISSUER_FILE} on this host")
        issuer = NatsIssuer.create(directory)
    if recorded is None:
        recorded = await _record_identity(session, issuer)
    if not _same(issuer, recorded):
        raise _not_the_chains(
            directory,
            f"its operator is {issuer.operator_public_key}, the chain's "
            f"{recorded.operator_public_key}",
        )
    return issuer


def connects_with_issuer(settings: CentralSettings) -> bool:
    """This process's own NATS link runs on the issuer's auth (the embedded server, or
    ``nats_creds`` from the issuer directory): its issuer is the servers' one."""
    if not settings.nats_url:
        return True
    creds = Path(settings.nats_creds) if settings.nats_creds else None
    return creds is not None and creds.resolve().parent == issuer_dir(settings).resolve()


async def check_chain_issuer(
    session: AsyncSession, settings: CentralSettings, *, link_up: bool = False
) -> str:
    """At start: "ok" (this host's issuer is the chain's, or none is recorded yet),
    "none" (no issuer here nor in the database: created on first use), or "error: ...".
    It records this host's issuer only once its own NATS link runs on it and is up
    (``link_up``: the servers accepted it; a stray issuer's link is refused, and must
    not claim the chain); otherwise the first credential operation does."""
    directory = issuer_dir(settings)
    recorded = await _recorded_identity(session)
    if not (directory / ISSUER_FILE).exists():
        issued = await session.scalar(select(BranchCredential.id).limit(1))
        if recorded is None and issued is None:
            return "none"
    elif recorded is None and not (link_up and connects_with_issuer(settings)):
        return "ok"
    try:
        await chain_issuer(session, settings)
    except IssuerNotTheChains as exc:
        return f"error: {exc.detail}"
    return "ok"


def client_tls_options(settings: CentralSettings) -> dict[str, Any]:
    """``nats.connect`` options for TLS to the servers (empty when not configured)."""
    if not (settings.nats_tls_ca or settings.nats_tls_cert):
        return {}
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=settings.nats_tls_ca or None
    )
    if settings.nats_tls_cert:
        context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key or None)
    return {"tls": context}


def embedded_nats_server(
    settings: CentralSettings, store_dir: Path, *, port: int = 4222
) -> tuple[EmbeddedNats, Path]:
    """The embedded nats-server with the issuer's auth on, and central's creds file."""
    issuer = issuer_for(settings)
    tls: dict[str, str] | None = None
    if settings.nats_server_tls_cert:
        tls = {"cert_file": settings.nats_server_tls_cert, "key_file": settings.nats_server_tls_key}
        if settings.nats_tls_ca:
            tls["ca_file"] = settings.nats_tls_ca
    server = EmbeddedNats(
        store_dir,
        port=port,
        extra_config=issuer.server_config(store_dir / "resolver"),
        max_payload=settings.nats_max_payload,
        tls=tls,
    )
    return server, issuer.central_creds_file()


@dataclass(frozen=True, slots=True)
class BranchRegistration:
    branch: Branch
    user: IssuedUser


def branch_snapshot(branch: Branch) -> dict[str, object]:
    return {
        "code": branch.code,
        "name": branch.name,
        "timezone": branch.timezone,
        "format_code": branch.format_code,
        "price_zone": branch.price_zone,
        "active": branch.active,
    }


@dataclass(frozen=True, slots=True)
class IssuedCredentials:
    user: IssuedUser
    # Public keys of the earlier credentials retired with this issue (NATS refuses
    # them once ``account_jwt`` is pushed; empty when they were kept), or revoked
    # before a reinstatement.
    retired: list[str]
    # The account JWT to push (None: nothing was retired, nothing to push).
    account_jwt: str | None


async def issue_branch_credentials(
    session: AsyncSession, issuer: NatsIssuer, code: str, *, retire_previous: bool = False
) -> IssuedCredentials:
    """New NATS credentials of an active branch. The earlier ones stay valid, unless
    ``retire_previous``: then they are revoked on NATS (the account JWT lists their
    keys: push it), a rotation after a leaked or lost credentials file."""
    branch = await session.get(Branch, code)
    if branch is None:
        raise NotFoundError(f"no branch {code!r}", field="code")
    if not branch.active:
        raise ConflictError(
            f"branch {code!r} is revoked (reinstate it to issue credentials)", field="code"
        )
    retired: list[str] = []
    if retire_previous:
        now = datetime.now(UTC)
        for credential in await session.scalars(
            select(BranchCredential).where(
                BranchCredential.branch == code, BranchCredential.revoked_at.is_(None)
            )
        ):
            credential.revoked_at = now
            retired.append(credential.public_key)
    user = issuer.branch_user(code)
    session.add(BranchCredential(branch=code, public_key=user.public_key))
    await session.flush()
    after: dict[str, object] = {"nats_user": user.public_key}
    if retire_previous:
        after["retired"] = retired
    await record_change(session, action="branch.credentials", target=f"branch:{code}", after=after)
    account_jwt = await account_jwt_from_db(session, issuer) if retired else None
    return IssuedCredentials(user=user, retired=retired, account_jwt=account_jwt)


class CredentialOut(msgspec.Struct, kw_only=True):
    public_key: str
    issued_at: datetime
    # When NATS stopped taking it (retired by a rotation, or the branch revoked).
    retired_at: datetime | None


async def list_branch_credentials(session: AsyncSession, code: str) -> list[CredentialOut]:
    """Every NATS credential issued to a branch, oldest first (keys only, no secrets)."""
    if await session.get(Branch, code) is None:
        raise NotFoundError(f"no branch {code!r}", field="code")
    rows = await session.scalars(
        select(BranchCredential)
        .where(BranchCredential.branch == code)
        .order_by(BranchCredential.id)
    )
    return [
        CredentialOut(public_key=c.public_key, issued_at=c.issued_at, retired_at=c.revoked_at)
        for c in rows
    ]


_RETIRED_FILE = "retired-keys.json"


def note_retired_keys(issuer: NatsIssuer, keys: list[str]) -> None:
    """Remember, beside the account JWT, keys revoked while their branch stays active
    (a rotation, a reinstatement): their revocation is not the branch's."""
    if not keys:
        return
    known = retired_keys(issuer)
    issuer.write_secret(_RETIRED_FILE, json.dumps(sorted(known | set(keys))))


def retired_keys(issuer: NatsIssuer) -> set[str]:
    path = issuer.directory / _RETIRED_FILE
    if not path.exists():
        return set()
    return {str(k) for k in json.loads(path.read_text() or "[]")}


async def reinstate_branch(
    session: AsyncSession, issuer: NatsIssuer, code: str
) -> IssuedCredentials:
    """Lift a branch's revocation (a mistaken or finished one): central takes its events
    again, and it gets new NATS credentials. The revoked ones stay revoked (the account
    JWT never un-revokes a key: a leaked file stays useless). Audited."""
    branch = await session.get(Branch, code)
    if branch is None:
        raise NotFoundError(f"no branch {code!r}", field="code")
    if branch.active:
        raise ConflictError(f"branch {code!r} is not revoked", field="code")
    before = branch_snapshot(branch)
    revoked_keys = list(
        await session.scalars(
            select(BranchCredential.public_key).where(BranchCredential.branch == code)
        )
    )
    branch.active = True
    branch.revoked_at = None
    await session.flush()
    await record_change(
        session,
        action="branch.reinstate",
        target=f"branch:{code}",
        before=before,
        after=branch_snapshot(branch),
    )
    issued = await issue_branch_credentials(session, issuer, code)
    # Its revoked keys now belong to a running branch, like rotated-away ones.
    return IssuedCredentials(user=issued.user, retired=revoked_keys, account_jwt=None)


async def settle_issued(
    issuer: NatsIssuer, issued: IssuedCredentials, nats_url: str, **tls: Any
) -> bool | None:
    """After the commit of an issue or a reinstatement: remember the keys retired while
    their branch runs on (a restored database that forgot the retirement must not take
    it for a revocation of the branch: ``carry_back_revocations``; written after the
    commit, so a failed one leaves no mark that could shield a later revocation), and
    push the account JWT if any. Whether the servers took it (None: nothing to push)."""
    note_retired_keys(issuer, issued.retired)
    if issued.account_jwt is None:
        return None
    return await push_account_jwt(issuer, nats_url, issued.account_jwt, **tls)


async def register_branch(
    session: AsyncSession,
    issuer: NatsIssuer,
    *,
    code: str,
    name: str,
    timezone: str = "UTC",
    format_code: str | None = None,
    price_zone: str | None = None,
) -> BranchRegistration:
    """The branch row and its first NATS credentials, in one transaction."""
    branch = await add_branch(
        session,
        code=code,
        name=name,
        timezone=timezone,
        format_code=format_code,
        price_zone=price_zone,
    )
    await record_change(
        session, action="branch.add", target=f"branch:{code}", after=branch_snapshot(branch)
    )
    issued = await issue_branch_credentials(session, issuer, code)
    return BranchRegistration(branch=branch, user=issued.user)


def stored_revocations(issuer: NatsIssuer) -> dict[str, int]:
    """The revocations of the account JWT last stored (and pushed) by central."""
    path = issuer.directory / "account.jwt"
    if not path.exists():
        return {}
    claims = _account_claims(path.read_text().strip()) or {}
    return {str(k): int(v) for k, v in (claims.get("revocations") or {}).items()}


async def account_jwt_from_db(session: AsyncSession, issuer: NatsIssuer) -> str:
    """The account JWT with every revoked branch user listed: those central's database
    holds, and those of the account JWT it stored last. A revocation is never undone
    (new credentials are a new key), so a database restored from a backup taken before
    a revocation does not let the revoked branch back in."""
    revoked = await session.scalars(
        select(BranchCredential).where(BranchCredential.revoked_at.is_not(None))
    )
    revocations = stored_revocations(issuer)
    for c in revoked:
        if c.revoked_at is not None:
            at = int(c.revoked_at.timestamp()) + 1
            revocations[c.public_key] = max(at, revocations.get(c.public_key, 0))
    return issuer.account_jwt(revocations)


async def carry_back_revocations(session: AsyncSession, issuer: NatsIssuer) -> list[str]:
    """Branches whose credentials the stored account JWT revokes while central's
    database still has them valid (the database restored from a backup taken before
    the revocation): revoked again in the database, audited; their codes."""
    revoked = stored_revocations(issuer)
    if not revoked:
        return []
    creds = (
        await session.scalars(
            select(BranchCredential).where(
                BranchCredential.public_key.in_(sorted(revoked)),
                BranchCredential.revoked_at.is_(None),
            )
        )
    ).all()
    codes: list[str] = []
    retired = retired_keys(issuer)
    for credential in creds:
        credential.revoked_at = datetime.fromtimestamp(revoked[credential.public_key], UTC)
        if credential.public_key in retired:
            continue  # rotated away, or revoked before a reinstatement: the branch runs
        branch = await session.get(Branch, credential.branch)
        if branch is None or not branch.active:
            continue
        before = branch_snapshot(branch)
        branch.active = False
        branch.revoked_at = credential.revoked_at
        codes.append(branch.code)
        await record_change(
            session,
            action="branch.revocation_restored",
            target=f"branch:{branch.code}",
            before=before,
            after=branch_snapshot(branch),
            actor=RequestAudit(actor="central", actor_role="system", method="start"),
        )
    await session.flush()
    return codes


async def revoke_branch(session: AsyncSession, issuer: NatsIssuer, code: str) -> str:
    """Mark the branch and its credentials revoked; return the account JWT to push."""
    branch = await session.get(Branch, code)
    if branch is None:
        raise NotFoundError(f"no branch {code!r}", field="code")
    before = branch_snapshot(branch)
    now = datetime.now(UTC)
    branch.active = False
    if branch.revoked_at is None:
        branch.revoked_at = now
    creds = await session.scalars(
        select(BranchCredential).where(
            BranchCredential.branch == code, BranchCredential.revoked_at.is_(None)
        )
    )
    for credential in creds:
        credential.revoked_at = now
    await session.flush()
    await record_change(
        session,
        action="branch.revoke",
        target=f"branch:{code}",
        before=before,
        after=branch_snapshot(branch),
    )
    return await account_jwt_from_db(session, issuer)


async def push_account_jwt(
    issuer: NatsIssuer, nats_url: str, account_jwt: str, *, timeout: float = 5.0, **tls: Any
) -> bool:
    """Store the account JWT for the next server start and push it to the running servers.

    False when no server could be reached (it is pushed on the next revocation, and
    a restarted embedded server preloads the stored one).
    """
    issuer.store_account_jwt(account_jwt)

    async def quiet(_exc: Exception) -> None:
        return None

    nc = NATS()
    try:
        # nats-py retries a refused first connect regardless of allow_reconnect: bound it.
        await asyncio.wait_for(
            connect_cancellably(
                nc,
                servers=[u.strip() for u in nats_url.split(",")],
                user_credentials=str(issuer.system_creds_file()),
                name="central-issuer",
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=max(1, int(timeout)),
                error_cb=quiet,
                **tls,
            ),
            timeout,
        )
    except Exception as exc:
        log.warning("account update not pushed to %s: %s", nats_url, exc)
        close_unconnected(nc)
        return False
    try:
        reply = await nc.request("$SYS.REQ.CLAIMS.UPDATE", account_jwt.encode(), timeout=timeout)
        account_claims_update(reply.data)
        return True
    except Exception as exc:
        # A server without operator auth has no system account to answer.
        log.warning("account update not taken by %s: %s", nats_url, exc)
        return False
    finally:
        await nc.close()


def _account_claims(token: str) -> Any:
    """What the servers enforce of an account JWT (not its iat/jti)."""
    return decode_jwt_claims(token).get("nats")


async def refresh_account_jwt(
    session: AsyncSession, issuer: NatsIssuer, nats_url: str, **tls: Any
) -> bool:
    """Push the account JWT when what it grants differs from the stored one.

    An upgrade that changes the branch permission template (e.g. a new subject the
    agent needs) must reach servers that run with the old account JWT; central calls
    this at start. False when nothing had to change or no server took it (the stored
    JWT is then left as it was, so the next start tries again).
    """
    current = await account_jwt_from_db(session, issuer)
    path = issuer.directory / "account.jwt"
    stored = path.read_text().strip() if path.exists() else ""
    if stored and _account_claims(stored) == _account_claims(current):
        return False
    pushed = await push_account_jwt(issuer, nats_url, current, **tls)
    if not pushed and stored:
        issuer.store_account_jwt(stored)
    return pushed


def write_branch_creds(issuer: NatsIssuer, code: str, user: IssuedUser) -> Path:
    """``<issuer dir>/branches/<code>.creds`` (0600): what the branch's agent is given."""
    (issuer.directory / "branches").mkdir(exist_ok=True)
    return issuer.write_secret(f"branches/{code}.creds", user.creds)
