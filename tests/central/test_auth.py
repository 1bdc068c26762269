"""Head-office API authentication, roles per route group, audit log, request limits."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar import Litestar, post
from litestar.datastructures import State
from litestar.params import JSONBody
from sqlalchemy import func, select, update

from central.api.problems import exception_handlers
from central.app import create_app
from central.auth import ApiAuthMiddleware, Role, authorize, required_roles
from central.models import ApiToken, ApiUser, AuditEntry
from central.services.users import revoke_user
from tests.conftest import asgi_client, create_api_token

ADMIN = {"admin"}
WRITERS = {"admin", "merchandiser"}
EVERYONE = {"admin", "merchandiser", "analyst"}

# (method, path, body, roles allowed). Bodies are invalid on purpose: an allowed role
# gets a validation problem, a refused one 403 before the body is read; nothing changes.
ROUTE_TABLE: list[tuple[str, str, Any, set[str]]] = [
    ("GET", "/api/v1/receipts", None, EVERYONE),
    ("GET", "/api/v1/dead-letters", None, EVERYONE),
    ("GET", "/api/v1/branches", None, EVERYONE),
    ("POST", "/api/v1/branches", {"code": "bad code!"}, ADMIN),
    ("POST", "/api/v1/branches/NOPE/revoke", None, ADMIN),
    ("POST", "/api/v1/branches/NOPE/credentials", None, ADMIN),
    ("GET", "/api/v1/users", None, ADMIN),
    ("POST", "/api/v1/users", {"name": "x", "role": "boss"}, ADMIN),
    ("POST", "/api/v1/users/nobody/revoke", None, ADMIN),
    ("POST", "/api/v1/users/nobody/tokens", {}, ADMIN),
    ("GET", "/api/v1/audit", None, ADMIN),
]


async def test_every_role_against_every_route_group(central: Any, client_as: Any) -> None:
    clients = {role: await client_as(role) for role in EVERYONE}
    async with central.sessionmaker() as session:
        audit_before = await session.scalar(select(func.count()).select_from(AuditEntry))
    for (method, path, body, allowed), role in itertools.product(ROUTE_TABLE, sorted(EVERYONE)):
        client = clients[role]
        response = await client.request(method, path, json=body)
        if role in allowed:
            assert response.status_code not in (401, 403), (role, method, path, response.text)
            assert response.status_code < 500, (method, path, response.text)
        else:
            assert response.status_code == 403, (role, method, path, response.text)
            problem = response.json()
            assert problem["status"] == 403
            assert response.headers["content-type"].startswith("application/problem+json")
    async with central.sessionmaker() as session:
        audit_after = await session.scalar(select(func.count()).select_from(AuditEntry))
    # Every request above was refused or invalid: no change, no audit line.
    assert audit_after == audit_before


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        # The default table covers groups whose routes other parts add.
        ("GET", "/api/v1/products", EVERYONE),
        ("POST", "/api/v1/products", WRITERS),
        ("PUT", "/api/v1/prices/7", WRITERS),
        ("POST", "/api/v1/promotions", WRITERS),
        ("PATCH", "/api/v1/assortment/x", WRITERS),
        ("POST", "/api/v1/price-tags", WRITERS),
        ("POST", "/api/v1/categories", WRITERS),
        ("POST", "/api/v1/formats", WRITERS),
        ("POST", "/api/v1/zones", WRITERS),
        ("POST", "/api/v1/repricing", WRITERS),
        ("GET", "/api/v1/reports/sales", EVERYONE),
        ("GET", "/api/v1/stock", EVERYONE),
        # A write nobody declared: admin only (safe default).
        ("POST", "/api/v1/dead-letters/1/replay", ADMIN),
        ("DELETE", "/api/v1/whatever", ADMIN),
        ("GET", "/api/v1/users", ADMIN),
        ("GET", "/api/v1/audit", ADMIN),
        ("POST", "/api/v1/branches", ADMIN),
    ],
)
def test_default_policy_table(method: str, path: str, allowed: set[str]) -> None:
    assert {r.value for r in required_roles(method, path)} == allowed


def test_declared_roles_win_over_the_default() -> None:
    opt = {"roles": frozenset({Role.ANALYST})}
    assert required_roles("POST", "/api/v1/products", opt) == {Role.ANALYST}


async def test_every_route_of_the_app_needs_credentials_except_health_and_docs(
    central: Any, client_as: Any
) -> None:
    app = create_app(central.settings, runtime=central)
    anonymous = await client_as(None)
    checked = 0
    for route in app.routes:
        path = re.sub(r"\{[^}]*:int\}", "1", route.path)
        path = re.sub(r"\{[^}]*\}", "X1", path)
        for method in sorted(route.methods - {"OPTIONS", "HEAD"}):
            response = await anonymous.request(method, path)
            public = route.path.startswith(("/health", "/docs", "/schema"))
            if public:
                assert response.status_code != 401, (method, path)
            else:
                assert response.status_code == 401, (method, path, response.text)
                assert response.headers["www-authenticate"].startswith("Bearer")
                checked += 1
    assert checked >= len(ROUTE_TABLE)
    assert (await anonymous.get("/health")).status_code == 200
    assert (await anonymous.get("/docs/openapi.json")).status_code == 200


BAD_HEADERS = [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Basic dXNlcjpwYXNz",
    "Bearer not-a-token",
    "Bearer brt_" + "A" * 43,  # well-formed, unknown
    "Bearer brt_" + "A" * 42 + "!",
]


async def test_missing_malformed_or_unknown_tokens_get_401(client_as: Any) -> None:
    client = await client_as(None)
    for header in BAD_HEADERS:
        headers = {} if header is None else {"Authorization": header}
        response = await client.get("/api/v1/receipts", headers=headers)
        assert response.status_code == 401, header
        assert response.json()["title"] == "Unauthorized"


async def test_expired_and_revoked_tokens_get_401(central: Any, client_as: Any) -> None:
    expired = await client_as("analyst")
    revoked = await client_as("analyst")
    assert (await expired.get("/api/v1/receipts")).status_code == 200
    assert (await revoked.get("/api/v1/receipts")).status_code == 200
    expired_token = expired.headers["Authorization"].split()[1]
    revoked_token = revoked.headers["Authorization"].split()[1]
    from central.auth.tokens import hash_token

    async with central.sessionmaker() as session, session.begin():
        await session.execute(
            update(ApiToken)
            .where(ApiToken.token_hash == hash_token(expired_token))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        user_id = await session.scalar(
            select(ApiToken.user_id).where(ApiToken.token_hash == hash_token(revoked_token))
        )
        user = await session.get(ApiUser, user_id)
        assert user is not None
        await revoke_user(session, name=user.name)
    assert (await expired.get("/api/v1/receipts")).status_code == 401
    assert (await revoked.get("/api/v1/receipts")).status_code == 401


async def test_admin_manages_users_through_the_api_and_it_is_audited(
    central: Any, central_client: Any, client_as: Any
) -> None:
    created = await central_client.post(
        "/api/v1/users", json={"name": "mia", "role": "merchandiser", "expires_in_days": 30}
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    async with central.sessionmaker() as session:
        stored = (await session.scalars(select(ApiToken.token_hash))).all()
    assert token not in stored  # only its hash is kept
    mia = await client_as(None)
    mia.headers["Authorization"] = f"Bearer {token}"
    assert (await mia.get("/api/v1/receipts")).status_code == 200
    assert (await mia.get("/api/v1/users")).status_code == 403
    again = await central_client.post("/api/v1/users", json={"name": "mia", "role": "analyst"})
    assert again.status_code == 409
    revoked = await central_client.post("/api/v1/users/mia/revoke")
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert (await mia.get("/api/v1/receipts")).status_code == 401

    audit = (await central_client.get("/api/v1/audit", params={"target": "user:mia"})).json()
    actions = [(e["action"], e["method"]) for e in audit["items"]]
    assert actions == [("user.revoke", "POST"), ("user.add", "POST")]
    add = audit["items"][1]
    assert add["actor"].startswith("test-admin-")
    assert add["actor_role"] == "admin"
    assert add["path"] == "/api/v1/users"
    assert add["before"] is None
    assert add["after"]["role"] == "merchandiser"
    assert audit["items"][0]["before"]["revoked_at"] is None
    assert audit["items"][0]["after"]["revoked_at"] is not None


async def test_branch_registration_through_the_api_returns_credentials_once(
    central: Any, central_client: Any
) -> None:
    response = await central_client.post(
        "/api/v1/branches", json={"code": "B7", "name": "Harbour", "timezone": "Europe/Berlin"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["branch"] == "B7"
    assert "BEGIN NATS USER JWT" in body["creds"]
    assert body["nats_url"] == central.nats_url
    listed = (await central_client.get("/api/v1/branches")).json()
    assert [b["code"] for b in listed["items"]] == ["B7"]
    revoked = await central_client.post("/api/v1/branches/B7/revoke")
    assert revoked.status_code == 200
    # The test server runs without operator auth: nobody to push the revocation to.
    assert revoked.json()["pushed_to_nats"] is False
    branch = (await central_client.get("/api/v1/branches")).json()["items"][0]
    assert branch["active"] is False
    again = await central_client.post("/api/v1/branches/B7/credentials")
    assert again.status_code == 409
    audit = (await central_client.get("/api/v1/audit", params={"target": "branch:B7"})).json()
    assert [e["action"] for e in audit["items"]] == [
        "branch.revoke",
        "branch.credentials",
        "branch.add",
    ]


async def test_writes_no_service_audited_get_a_generic_entry(central: Any) -> None:
    @post("/api/v1/things", operation_id="addThing", tags=["test"])
    async def add_thing(data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
        return data

    @post("/api/v1/broken", operation_id="broken", tags=["test"])
    async def broken() -> None:
        raise ValueError("boom")

    app = Litestar(
        route_handlers=[add_thing, broken],
        middleware=[ApiAuthMiddleware()],
        guards=[authorize],
        state=State({"runtime": central}),
        exception_handlers=exception_handlers,
    )
    token = await create_api_token(central, "admin", name="generic-admin")
    async with asgi_client(app, headers={"Authorization": f"Bearer {token}"}) as client:
        assert (await client.post("/api/v1/things", json={"n": 1})).status_code == 201
        assert (await client.post("/api/v1/broken")).status_code == 500
    async with central.sessionmaker() as session:
        entries = (
            await session.scalars(select(AuditEntry).where(AuditEntry.actor == "generic-admin"))
        ).all()
    assert [(e.action, e.method, e.path, e.after) for e in entries] == [
        ("request", "POST", "/api/v1/things", {"n": 1})
    ]


async def test_oversize_body_gets_413_problem_and_changes_nothing(central: Any) -> None:
    settings = msgspec.structs.replace(central.settings, max_request_body=4096)
    token = await create_api_token(central, "admin")
    app = create_app(settings, runtime=central)
    async with asgi_client(app, headers={"Authorization": f"Bearer {token}"}) as client:
        response = await client.post(
            "/api/v1/users", json={"name": "big", "role": "analyst", "pad": "x" * 10000}
        )
        assert response.status_code == 413
        assert response.headers["content-type"].startswith("application/problem+json")
        assert (await client.get("/api/v1/users", params={"limit": 1001})).status_code in (
            400,
            422,
        )
        page = await client.get("/api/v1/receipts", params={"limit": 5000})
        assert page.status_code in (400, 422)
        assert page.json()["errors"][0]["field"] == "limit"
    async with central.sessionmaker() as session:
        assert await session.scalar(select(ApiUser).where(ApiUser.name == "big")) is None


def _cli(db_url: str, tmp_path: Path, *args: str) -> Any:
    env = {
        **os.environ,
        "BACKROOM_DATABASE_URL": db_url,
        "BACKROOM_DATA_DIR": str(tmp_path / "central"),
        "BACKROOM_NATS_URL": "nats://127.0.0.1:1",
        "BACKROOM_CENTRAL_CONFIG": "",
    }
    out = subprocess.run(
        [sys.executable, "-m", "central", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


async def test_cli_prints_a_token_once_and_branch_credentials(
    db_url: str, tmp_path: Path, central: Any
) -> None:
    user = _cli(db_url, tmp_path, "users", "add", "ops", "--role", "analyst")
    assert user["role"] == "analyst"
    token = user["token"]
    app = create_app(central.settings, runtime=central)
    async with asgi_client(app, headers={"Authorization": f"Bearer {token}"}) as client:
        assert (await client.get("/api/v1/receipts")).status_code == 200
        assert (await client.get("/api/v1/audit")).status_code == 403
    branch = _cli(db_url, tmp_path, "branches", "add", "B9", "--name", "Nine")
    assert set(branch) >= {"branch", "nats_url", "creds_file"}
    creds = Path(branch["creds_file"])
    text, mode = await asyncio.to_thread(lambda: (creds.read_text(), creds.stat().st_mode))
    assert "BEGIN USER NKEY SEED" in text
    assert oct(mode & 0o777) == "0o600"
    revoked = _cli(db_url, tmp_path, "branches", "revoke", "B9")
    assert revoked["revoked"] is True
    assert revoked["pushed_to_nats"] is False  # no server at nats://127.0.0.1:1
