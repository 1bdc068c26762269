"""Authentication and authorisation of the head-office API (tokens, roles, audit)."""

from central.auth.context import Principal, RequestAudit, current_request_audit
from central.auth.middleware import ApiAuthMiddleware, authorize
from central.auth.roles import PUBLIC, Role, allow, required_roles

__all__ = [
    "PUBLIC",
    "ApiAuthMiddleware",
    "Principal",
    "RequestAudit",
    "Role",
    "allow",
    "authorize",
    "current_request_audit",
    "required_roles",
]
