"""Head-office API authentication, roles per route group, audit log, request limits."""

from __future__ import annotations

import asyncio
import itertools
import re
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
from tests.conftest import asgi_client, central_cli, create_api_token

ADMIN = {"admin"}
WRITERS = {"admin", "merchandiser"}
EVERYONE = {"admin", "merchandiser", "analyst"}

# (method, route as declared, path called, body, roles allowed): every route of the app.
# Bodies and ids are invalid on purpose: an allowed role gets a validation problem or
# a 404, a refused one 403 before the body is read; nothing changes.
_NOW = "2026-01-01T00:00:00+00:00"
ROUTE_TABLE: list[tuple[str, str, str, Any, set[str]]] = [
    # records: read by every role
    ("GET", "/api/v1/receipts", "/api/v1/receipts", None, EVERYONE),
    ("GET", "/api/v1/stock/balances", "/api/v1/stock/balances", None, EVERYONE),
    ("GET", "/api/v1/stock/ledger", "/api/v1/stock/ledger?branch=B&sku=S", None, EVERYONE),
    ("GET", "/api/v1/stock/transfers", "/api/v1/stock/transfers", None, EVERYONE),
    ("GET", "/api/v1/documents", "/api/v1/documents", None, EVERYONE),
    (
        "GET",
        "/api/v1/documents/{branch:str}/{document_id:str}",
        "/api/v1/documents/NOPE/NOPE",
        None,
        EVERYONE,
    ),
    ("GET", "/api/v1/customer-returns", "/api/v1/customer-returns", None, EVERYONE),
    ("GET", "/api/v1/shifts", "/api/v1/shifts", None, EVERYONE),
    ("GET", "/api/v1/shifts/closed-days", "/api/v1/shifts/closed-days", None, EVERYONE),
    ("GET", "/api/v1/fiscal-interventions", "/api/v1/fiscal-interventions", None, EVERYONE),
    ("GET", "/api/v1/sync/branches", "/api/v1/sync/branches", None, EVERYONE),
    ("GET", "/api/v1/sync/branches/{branch:str}", "/api/v1/sync/branches/NOPE", None, EVERYONE),
    ("GET", "/api/v1/dead-letters", "/api/v1/dead-letters", None, EVERYONE),
    (
        "GET",
        "/api/v1/dead-letters/{dead_letter_id:int}",
        "/api/v1/dead-letters/999999",
        None,
        EVERYONE,
    ),
    # operations on records: admin
    (
        "POST",
        "/api/v1/dead-letters/{dead_letter_id:int}/replay",
        "/api/v1/dead-letters/999999/replay",
        None,
        ADMIN,
    ),
    (
        "POST",
        "/api/v1/dead-letters/{dead_letter_id:int}/discard",
        "/api/v1/dead-letters/999999/discard",
        None,
        ADMIN,
    ),
    # Nothing open at branch NOPE: replays nothing (its summary is the one audit line).
    ("POST", "/api/v1/dead-letters/replay", "/api/v1/dead-letters/replay?branch=NOPE", None, ADMIN),
    (
        "POST",
        "/api/v1/shifts/closed-days",
        "/api/v1/shifts/closed-days",
        {"branch": "NOPE", "local_date": "2026-01-01"},
        ADMIN,
    ),
    # reports: read by every role
    *[
        ("GET", f"/api/v1/reports/{name}", f"/api/v1/reports/{name}", None, EVERYONE)
        for name in (
            "abc",
            "gross-margin",
            "loss-prevention",
            "sales",
            "shifts",
            "shrinkage",
            "stock-movement",
            "stock-on-hand",
            "sync-health",
            "write-offs",
        )
    ],
    # branches: read by every role, managed by admins
    ("GET", "/api/v1/branches", "/api/v1/branches", None, EVERYONE),
    ("POST", "/api/v1/branches", "/api/v1/branches", {"code": "bad code!"}, ADMIN),
    ("POST", "/api/v1/branches/{code:str}/revoke", "/api/v1/branches/NOPE/revoke", None, ADMIN),
    ("PATCH", "/api/v1/branches/{code:str}", "/api/v1/branches/NOPE", {"name": "x"}, ADMIN),
    (
        "POST",
        "/api/v1/branches/{code:str}/credentials",
        "/api/v1/branches/NOPE/credentials",
        None,
        ADMIN,
    ),
    (
        "GET",
        "/api/v1/branches/{code:str}/credentials",
        "/api/v1/branches/NOPE/credentials",
        None,
        ADMIN,
    ),
    (
        "POST",
        "/api/v1/branches/{code:str}/reinstate",
        "/api/v1/branches/NOPE/reinstate",
        None,
        ADMIN,
    ),
    # users and the audit log: admin only, reads included
    ("GET", "/api/v1/users", "/api/v1/users", None, ADMIN),
    ("POST", "/api/v1/users", "/api/v1/users", {"name": "x", "role": "boss"}, ADMIN),
    ("POST", "/api/v1/users/{name:str}/revoke", "/api/v1/users/nobody/revoke", None, ADMIN),
    ("POST", "/api/v1/users/{name:str}/tokens", "/api/v1/users/nobody/tokens", {}, ADMIN),
    ("GET", "/api/v1/audit", "/api/v1/audit", None, ADMIN),
    # catalog, assortment, prices, promotions: read by every role, written by merchandisers
    ("GET", "/api/v1/products", "/api/v1/products", None, EVERYONE),
    ("GET", "/api/v1/products/export.csv", "/api/v1/products/export.csv", None, EVERYONE),
    ("GET", "/api/v1/products/{sku:str}", "/api/v1/products/NOPE", None, EVERYONE),
    ("POST", "/api/v1/products", "/api/v1/products", {"sku": ""}, WRITERS),
    ("PATCH", "/api/v1/products/{sku:str}", "/api/v1/products/NOPE", {}, WRITERS),
    (
        "POST",
        "/api/v1/products/{sku:str}/archive",
        "/api/v1/products/NOPE/archive",
        None,
        WRITERS,
    ),
    ("GET", "/api/v1/categories", "/api/v1/categories", None, EVERYONE),
    (
        "POST",
        "/api/v1/categories",
        "/api/v1/categories",
        {"code": "bad code!", "name": "x"},
        WRITERS,
    ),
    ("GET", "/api/v1/vat-groups", "/api/v1/vat-groups", None, EVERYONE),
    # The VAT groups are tax configuration: admin only.
    ("PUT", "/api/v1/vat-groups", "/api/v1/vat-groups", {"groups": {"Z": 0}}, ADMIN),
    ("GET", "/api/v1/formats", "/api/v1/formats", None, EVERYONE),
    ("POST", "/api/v1/formats", "/api/v1/formats", {"code": "bad code!", "name": "x"}, WRITERS),
    (
        "POST",
        "/api/v1/formats/{format_code:str}/products",
        "/api/v1/formats/NOPE/products",
        {"add": []},
        WRITERS,
    ),
    (
        "GET",
        "/api/v1/assortment/branches/{branch:str}",
        "/api/v1/assortment/branches/NOPE",
        None,
        EVERYONE,
    ),
    (
        "PUT",
        "/api/v1/assortment/branches/{branch:str}/exceptions",
        "/api/v1/assortment/branches/NOPE/exceptions",
        {"sku": "X", "include": True},
        WRITERS,
    ),
    (
        "DELETE",
        "/api/v1/assortment/branches/{branch:str}/exceptions/{sku:str}",
        "/api/v1/assortment/branches/NOPE/exceptions/X",
        None,
        WRITERS,
    ),
    ("GET", "/api/v1/prices", "/api/v1/prices", None, EVERYONE),
    ("GET", "/api/v1/prices/branches", "/api/v1/prices/branches", None, EVERYONE),
    (
        "GET",
        "/api/v1/prices/branches/{branch:str}/mismatches",
        "/api/v1/prices/branches/NOPE/mismatches",
        None,
        EVERYONE,
    ),
    (
        "GET",
        "/api/v1/prices/branches/{branch:str}/products/{sku:str}",
        "/api/v1/prices/branches/NOPE/products/X",
        None,
        EVERYONE,
    ),
    ("POST", "/api/v1/prices", "/api/v1/prices", {"sku": "NOPE", "price": 1}, WRITERS),
    (
        "POST",
        "/api/v1/prices/withdraw",
        "/api/v1/prices/withdraw?scope=all&scope_id=x&sku=NOPE",
        None,
        WRITERS,
    ),
    ("GET", "/api/v1/zones", "/api/v1/zones", None, EVERYONE),
    ("POST", "/api/v1/zones", "/api/v1/zones", {"code": "bad code!", "name": "x"}, WRITERS),
    ("POST", "/api/v1/repricing", "/api/v1/repricing", {"lines": []}, WRITERS),
    (
        "GET",
        "/api/v1/repricing/{document_id:int}",
        "/api/v1/repricing/999999",
        None,
        EVERYONE,
    ),
    (
        "POST",
        "/api/v1/repricing/{document_id:int}/approve",
        "/api/v1/repricing/999999/approve",
        None,
        WRITERS,
    ),
    ("GET", "/api/v1/promotions", "/api/v1/promotions", None, EVERYONE),
    (
        "GET",
        "/api/v1/promotions/{promotion_id:str}",
        "/api/v1/promotions/NOPE",
        None,
        EVERYONE,
    ),
    (
        "POST",
        "/api/v1/promotions",
        "/api/v1/promotions",
        {"promotion_id": "bad id!", "type": "percent", "starts_at": _NOW, "ends_at": _NOW},
        WRITERS,
    ),
    (
        "POST",
        "/api/v1/promotions/{promotion_id:str}/withdraw",
        "/api/v1/promotions/NOPE/withdraw",
        None,
        WRITERS,
    ),
    ("GET", "/api/v1/price-tags/{branch:str}", "/api/v1/price-tags/NOPE", None, EVERYONE),
]


def test_the_role_table_covers_every_route_of_the_app(central: Any) -> None:
    """A new route must be added to ROUTE_TABLE (and so get its roles checked)."""
    app = create_app(central.settings, runtime=central)
    routes = {
        (method, route.path)
        for route in app.routes
        for method in route.methods - {"OPTIONS", "HEAD"}
        if not route.path.startswith(("/health", "/docs", "/schema"))
    }
    table = {(method, route) for method, route, _path, _body, _roles in ROUTE_TABLE}
    assert routes - table == set(), "routes without a row in ROUTE_TABLE"
    assert table - routes == set(), "rows of ROUTE_TABLE for no route"


async def test_every_role_against_every_route(central: Any, client_as: Any) -> None:
    clients = {role: await client_as(role) for role in EVERYONE}
    async with central.sessionmaker() as session:
        audit_before = await session.scalar(select(func.max(AuditEntry.id))) or 0
    for (method, _route, path, body, allowed), role in itertools.product(
        ROUTE_TABLE, sorted(EVERYONE)
    ):
        client = clients[role]
        response = await client.request(method, path, json=body)
        if role in allowed:
            assert response.status_code not in (401, 403), (role, method, path, response.text)
            assert response.status_code < 500, (method, path, response.text)
            if method != "GET" and path != "/api/v1/dead-letters/replay?branch=NOPE":
                assert response.status_code >= 400, (role, method, path, response.text)
        else:
            assert response.status_code == 403, (role, method, path, response.text)
            problem = response.json()
            assert problem["status"] == 403
            assert response.headers["content-type"].startswith("application/problem+json")
    async with central.sessionmaker() as session:
        actions = (
            await session.scalars(
                select(AuditEntry.action)
                .where(AuditEntry.id > audit_before)
                .order_by(AuditEntry.id)
            )
        ).all()
    # Every request above was refused or invalid: no change, no audit line, except the
    # admin's replay of nothing, which is on file as what it is.
    assert actions == ["dead_letter.replay_all"]


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
    assert checked == len(ROUTE_TABLE)
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


async def test_cli_prints_a_token_once_and_branch_credentials(
    db_url: str, tmp_path: Path, central: Any
) -> None:
    user = central_cli(db_url, tmp_path, "users", "add", "ops", "--role", "analyst")
    assert user["role"] == "analyst"
    token = user["token"]
    app = create_app(central.settings, runtime=central)
    async with asgi_client(app, headers={"Authorization": f"Bearer {token}"}) as client:
        assert (await client.get("/api/v1/receipts")).status_code == 200
        assert (await client.get("/api/v1/audit")).status_code == 403
    branch = central_cli(db_url, tmp_path, "branches", "add", "B9", "--name", "Nine")
    assert set(branch) >= {"branch", "nats_url", "creds_file"}
    creds = Path(branch["creds_file"])
    text, mode = await asyncio.to_thread(lambda: (creds.read_text(), creds.stat().st_mode))
    assert "BEGIN USER NKEY SEED" in text
    assert oct(mode & 0o777) == "0o600"
    revoked = central_cli(db_url, tmp_path, "branches", "revoke", "B9")
    assert revoked["revoked"] is True
    assert revoked["pushed_to_nats"] is False  # no server at nats://127.0.0.1:1


async def test_nul_characters_are_refused_with_the_field_named(
    central: Any, client_as: Any
) -> None:
    """PostgreSQL text cannot hold U+0000: refused up front as 422, never a 500."""
    merch = await client_as("merchandiser")
    cases: list[tuple[str, str, Any, str]] = [
        ("GET", "/api/v1/stock/ledger?branch=B%00&sku=S", None, "branch"),
        ("GET", "/api/v1/products/A%00B", None, "sku"),
        ("POST", "/api/v1/categories", {"code": "a\x00", "name": "x"}, "code"),
        (
            "POST",
            "/api/v1/products",
            {"sku": "S", "name": "n", "vat_rate_bp": 0, "barcodes": [{"code": "1\x002"}]},
            "barcodes[0].code",
        ),
    ]
    for method, path, body, field in cases:
        response = await merch.request(method, path, json=body)
        assert response.status_code == 422, (path, response.text)
        problem = response.json()
        assert [e["field"] for e in problem["errors"]] == [field], problem
    # A backslash-u0000 written out as text (escaped backslash) is ordinary text.
    ok = await merch.post("/api/v1/categories", json={"code": "c1", "name": "not \\u0000 NUL"})
    assert ok.status_code == 201, ok.text
    async with central.sessionmaker() as session:
        actions = (await session.scalars(select(AuditEntry.action))).all()
    assert "request" not in actions
    assert actions.count("category.create") == 1
