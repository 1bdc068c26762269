"""Identities of facts: UUIDv7, time-ordered so indexes stay compact."""

from __future__ import annotations

import uuid

import uuid_utils.compat

__all__ = ["new_event_id"]


def new_event_id() -> uuid.UUID:
    return uuid_utils.compat.uuid7()
