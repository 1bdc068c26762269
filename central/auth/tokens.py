"""API tokens: 256-bit random, shown once, stored only as SHA-256."""

from __future__ import annotations

import hashlib
import re
import secrets

__all__ = ["TOKEN_PREFIX", "hash_token", "is_well_formed", "new_token"]

TOKEN_PREFIX = "brt_"
_TOKEN_RE = re.compile(r"^brt_[A-Za-z0-9_-]{43}$")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def is_well_formed(token: str) -> bool:
    return _TOKEN_RE.fullmatch(token) is not None


def hash_token(token: str) -> str:
    # A fast hash is right for high-entropy tokens: nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()
