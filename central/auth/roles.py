"""Roles and the route policy: who may call which route of the head-office API.

Every route is covered. A route (or controller/router) may declare its roles with
``opt=allow(Role.ADMIN, ...)`` or be made public with ``opt=PUBLIC``; otherwise the
default table below decides, and its fallback for a write is admin only (safe when a
new route forgets to declare anything).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

__all__ = [
    "ADMIN_ONLY_GROUPS",
    "ALL_ROLES",
    "MASTER_DATA_GROUPS",
    "PUBLIC",
    "PUBLIC_PATH_PATTERNS",
    "READ_METHODS",
    "Role",
    "allow",
    "is_public_path",
    "required_roles",
    "route_group",
]


class Role(StrEnum):
    ADMIN = "admin"
    MERCHANDISER = "merchandiser"
    ANALYST = "analyst"


ALL_ROLES: frozenset[Role] = frozenset(Role)
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# /api/v1/<group>/...: every method admin only (people, credentials, the audit trail)
ADMIN_ONLY_GROUPS = frozenset({"users", "audit"})
# writes by merchandisers (and admins)
MASTER_DATA_GROUPS = frozenset(
    {
        "products",
        "prices",
        "promotions",
        "assortment",
        "price-tags",
        "categories",
        "formats",
        "zones",
        "repricing",
    }
)
# Liveness and the OpenAPI docs need no credentials.
PUBLIC_PATH_PATTERNS = ("^/health/?$", "^/docs(/|$)")
_PUBLIC_RE = re.compile("|".join(PUBLIC_PATH_PATTERNS))

PUBLIC: dict[str, Any] = {"public": True}


def allow(*roles: Role | str) -> dict[str, Any]:
    """``opt`` of a route, controller or router: exactly these roles may call it."""
    return {"roles": frozenset(Role(r) for r in roles)}


def is_public_path(path: str) -> bool:
    return _PUBLIC_RE.match(path) is not None


def route_group(path: str) -> str:
    """``/api/v1/prices/123`` -> ``prices``; "" outside ``/api/v1``."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api" and parts[1] == "v1":
        return parts[2]
    return ""


def required_roles(method: str, path: str, opt: Mapping[str, Any] | None = None) -> frozenset[Role]:
    """The roles allowed to call ``method path``; a declared ``opt["roles"]`` wins."""
    declared: Iterable[Role | str] | None = (opt or {}).get("roles")
    if declared is not None:
        return frozenset(Role(r) for r in declared)
    group = route_group(path)
    if group in ADMIN_ONLY_GROUPS:
        return frozenset({Role.ADMIN})
    if method.upper() in READ_METHODS:
        return ALL_ROLES
    if group in MASTER_DATA_GROUPS:
        return frozenset({Role.MERCHANDISER, Role.ADMIN})
    return frozenset({Role.ADMIN})
