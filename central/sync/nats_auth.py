"""NATS credentials issued by central: decentralised JWT auth (operator, accounts, users).

Why JWTs and not static users in the server config: adding a branch must not touch
the servers. One operator signs two accounts: ``BACKROOM`` (the streams, central and
every branch) and ``SYS`` (the system account central uses to push account updates).
The ``BACKROOM`` account carries a *scoped* signing key whose template confines any
user it signs to subjects named after the user (``{{name()}}`` = the branch code):
publish ``up.<branch>.>``, pull and ack from its own durable consumer
``branch-<branch>``, subscribe to its own inbox ``_INBOX.<branch>.>`` and nothing
else. A new branch is just a new user JWT signed by that key: no server change.

Revocation: the account JWT lists revoked user keys; central re-signs it and pushes
it to the running servers through ``$SYS.REQ.CLAIMS.UPDATE`` (full resolver), which
disconnects the branch at once and refuses it from then on, without a restart or
reload. Central also refuses events of a revoked branch (``Branch.active``).

The issuer's seeds live in one directory (``issuer.json``, mode 0600): whoever holds
it can mint credentials, so it belongs to central's hosts only (shared by all of them:
the database records its public keys, see ``central.services.nats_auth.chain_issuer``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

from protocol.subjects import DOWN_STREAM, validate_branch_code

__all__ = [
    "BRANCH_PERMISSION_TEMPLATE",
    "IssuedUser",
    "NatsIssuer",
    "account_claims_update",
    "decode_jwt_claims",
    "format_creds",
]

ISSUER_FILE = "issuer.json"
ACCOUNT_NAME = "BACKROOM"
SYSTEM_ACCOUNT_NAME = "SYS"

# What one branch may do; {{name()}} is the user's name, i.e. its branch code.
BRANCH_PERMISSION_TEMPLATE: dict[str, Any] = {
    "pub": {
        "allow": [
            "up.{{name()}}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{DOWN_STREAM}.branch-{{{{name()}}}}",
            f"$JS.API.CONSUMER.INFO.{DOWN_STREAM}.branch-{{{{name()}}}}",
            f"$JS.ACK.{DOWN_STREAM}.branch-{{{{name()}}}}.>",
            # Its master-data position report to central (request/reply, no stream).
            "rpc.{{name()}}.md_snapshot",
        ]
    },
    "sub": {"allow": ["_INBOX.{{name()}}.>"]},
    "subs": 1000,
    "data": -1,
    # The server's max_payload bounds it too; a branch message is far smaller.
    "payload": 1024 * 1024,
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _new_seed(prefix: int) -> bytes:
    seed: bytes = nkeys.encode_seed(secrets.token_bytes(32), prefix)
    return seed


def _public(seed: bytes) -> str:
    kp = nkeys.from_seed(bytearray(seed))
    public: bytes = kp.public_key
    return public.decode()


def _sign_jwt(issuer_seed: bytes, claims: dict[str, Any]) -> str:
    """A NATS JWT (v2): ed25519-nkey signature over ``header.payload``."""
    header = _b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = {**claims, "jti": ""}
    # The jti is the hash of the claims, as the Go library computes it.
    digest = hashlib.new("sha512_256", json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    kp = nkeys.from_seed(bytearray(issuer_seed))
    signature = kp.sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{_b64url(signature)}"


def decode_jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT (no verification: for display and tests)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT")
    claims: dict[str, Any] = json.loads(_b64url_decode(parts[1]))
    return claims


def format_creds(user_jwt: str, user_seed: bytes) -> str:
    """The ``.creds`` file format nats clients read (JWT plus the user's seed)."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed.decode()}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


@dataclass(frozen=True, slots=True)
class IssuedUser:
    name: str
    public_key: str
    jwt: str
    creds: str


_UNLIMITED_ACCOUNT = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}


class NatsIssuer:
    """The operator, account and signing keys of one deployment, kept in ``directory``."""

    def __init__(self, directory: Path, seeds: dict[str, str]) -> None:
        self.directory = Path(directory)
        self._seeds = {k: v.encode() for k, v in seeds.items()}

    # --- keys -----------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path) -> NatsIssuer:
        """Generate a fresh operator and accounts (once per deployment)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        seeds = {
            "operator": _new_seed(nkeys.PREFIX_BYTE_OPERATOR),
            "account": _new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
            "branch_signing": _new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
            "system_account": _new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
        }
        path = directory / ISSUER_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({k: v.decode() for k, v in seeds.items()}, f, indent=2)
        return cls(directory, {k: v.decode() for k, v in seeds.items()})

    @classmethod
    def load(cls, directory: Path) -> NatsIssuer:
        data = json.loads((Path(directory) / ISSUER_FILE).read_text())
        return cls(directory, data)

    @classmethod
    def load_or_create(cls, directory: Path) -> NatsIssuer:
        if (Path(directory) / ISSUER_FILE).exists():
            return cls.load(directory)
        return cls.create(directory)

    @property
    def operator_public_key(self) -> str:
        return _public(self._seeds["operator"])

    @property
    def account_public_key(self) -> str:
        return _public(self._seeds["account"])

    @property
    def system_account_public_key(self) -> str:
        return _public(self._seeds["system_account"])

    @property
    def branch_signing_public_key(self) -> str:
        return _public(self._seeds["branch_signing"])

    # --- JWTs -----------------------------------------------------------------

    def operator_jwt(self) -> str:
        pub = self.operator_public_key
        return _sign_jwt(
            self._seeds["operator"],
            {
                "iat": 0,
                "iss": pub,
                "sub": pub,
                "name": "backroom",
                "nats": {
                    "system_account": self.system_account_public_key,
                    "type": "operator",
                    "version": 2,
                },
            },
        )

    def account_jwt(self, revocations: dict[str, int] | None = None) -> str:
        """The BACKROOM account; ``revocations`` maps user public keys to a unix time."""
        nats_claims: dict[str, Any] = {
            "limits": {
                **_UNLIMITED_ACCOUNT,
                # JetStream is on for an account whose storage limits are non-zero.
                "mem_storage": -1,
                "disk_storage": -1,
                "streams": -1,
                "consumer": -1,
            },
            "signing_keys": [
                {
                    "kind": "user_scope",
                    "key": self.branch_signing_public_key,
                    "role": "branch",
                    "template": BRANCH_PERMISSION_TEMPLATE,
                    "description": "branch agents: own subjects only",
                }
            ],
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account",
            "version": 2,
        }
        if revocations:
            nats_claims["revocations"] = dict(sorted(revocations.items()))
        return _sign_jwt(
            self._seeds["operator"],
            {
                # A later iat makes the server take this version over an older one.
                "iat": int(time.time()),
                "iss": self.operator_public_key,
                "sub": self.account_public_key,
                "name": ACCOUNT_NAME,
                "nats": nats_claims,
            },
        )

    def system_account_jwt(self) -> str:
        return _sign_jwt(
            self._seeds["operator"],
            {
                "iat": int(time.time()),
                "iss": self.operator_public_key,
                "sub": self.system_account_public_key,
                "name": SYSTEM_ACCOUNT_NAME,
                "nats": {
                    "limits": _UNLIMITED_ACCOUNT,
                    "default_permissions": {"pub": {}, "sub": {}},
                    "type": "account",
                    "version": 2,
                },
            },
        )

    def _user(
        self, name: str, signer: str, account: str, *, scoped: bool, permissions: dict[str, Any]
    ) -> IssuedUser:
        seed = _new_seed(nkeys.PREFIX_BYTE_USER)
        pub = _public(seed)
        nats_claims: dict[str, Any] = {"type": "user", "version": 2}
        if scoped:
            # A user signed by a scoped key carries no permissions of its own.
            nats_claims["issuer_account"] = account
        else:
            nats_claims.update({"subs": -1, "data": -1, "payload": -1, **permissions})
        token = _sign_jwt(
            self._seeds[signer],
            {
                "iat": int(time.time()),
                "iss": _public(self._seeds[signer]),
                "sub": pub,
                "name": name,
                "nats": nats_claims,
            },
        )
        return IssuedUser(name=name, public_key=pub, jwt=token, creds=format_creds(token, seed))

    def branch_user(self, branch: str) -> IssuedUser:
        """Credentials confined by the branch template to the branch's own subjects."""
        validate_branch_code(branch)
        return self._user(
            branch, "branch_signing", self.account_public_key, scoped=True, permissions={}
        )

    def central_user(self, name: str = "central") -> IssuedUser:
        """Central administers streams and consumers and publishes the down stream."""
        return self._user(
            name,
            "account",
            self.account_public_key,
            scoped=False,
            permissions={"pub": {}, "sub": {}},
        )

    def system_user(self, name: str = "central-sys") -> IssuedUser:
        """A system-account user: pushes account updates (revocations) to the servers."""
        return self._user(
            name,
            "system_account",
            self.system_account_public_key,
            scoped=False,
            permissions={"pub": {}, "sub": {}},
        )

    # --- files ----------------------------------------------------------------

    def write_secret(self, name: str, text: str) -> Path:
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def central_creds_file(self) -> Path:
        """``central.creds`` (made once, then reused)."""
        path = self.directory / "central.creds"
        if not path.exists():
            self.write_secret(path.name, self.central_user().creds)
        return path

    def system_creds_file(self) -> Path:
        path = self.directory / "system.creds"
        if not path.exists():
            self.write_secret(path.name, self.system_user().creds)
        return path

    def account_jwt_file(self) -> Path:
        """The newest account JWT (with revocations); written by ``store_account_jwt``."""
        path = self.directory / "account.jwt"
        if not path.exists():
            path.write_text(self.account_jwt())
        return path

    def store_account_jwt(self, token: str) -> Path:
        path = self.directory / "account.jwt"
        path.write_text(token)
        return path

    def server_config(self, resolver_dir: Path) -> str:
        """The nats-server config block that turns on this operator's auth.

        A ``full`` resolver keeps account JWTs in ``resolver_dir`` and accepts
        updates signed by the operator at run time (``$SYS.REQ.CLAIMS.UPDATE``).
        """
        preload = {
            self.account_public_key: self.account_jwt_file().read_text().strip(),
            self.system_account_public_key: self.system_account_jwt(),
        }
        lines = [
            f"operator: {self.operator_jwt()}",
            f"system_account: {self.system_account_public_key}",
            "resolver {",
            "  type: full",
            f'  dir: "{resolver_dir}"',
            "  allow_delete: false",
            '  interval: "2m"',
            '  timeout: "2s"',
            "}",
            "resolver_preload {",
            *(f"  {key}: {value}" for key, value in preload.items()),
            "}",
        ]
        return "\n".join(lines)


def account_claims_update(response: bytes) -> dict[str, Any]:
    """Parse the server's answer to ``$SYS.REQ.CLAIMS.UPDATE``; raise on an error."""
    data: dict[str, Any] = json.loads(response)
    if "error" in data:
        raise RuntimeError(f"account update refused: {data['error']}")
    return data
