"""NATS subjects and stream names shared by central and the agents."""

from __future__ import annotations

import re

__all__ = [
    "COMMAND_KIND",
    "DOWN_SCOPES",
    "DOWN_STREAM",
    "HEARTBEAT_KIND",
    "INGEST_DURABLE",
    "UP_STREAM",
    "down_branch_subject",
    "down_consumer_name",
    "down_subject",
    "parse_down_subject",
    "parse_up_subject",
    "up_subject",
    "validate_branch_code",
]

UP_STREAM = "BACKROOM_UP"
DOWN_STREAM = "BACKROOM_DOWN"
INGEST_DURABLE = "central-ingest"
HEARTBEAT_KIND = "heartbeat"
COMMAND_KIND = "command"

_BRANCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def validate_branch_code(code: str) -> str:
    """Branch codes become subject tokens: no dots, spaces or wildcards."""
    if not _BRANCH_RE.fullmatch(code):
        raise ValueError(
            f"invalid branch code {code!r}: 1-32 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return code


def up_subject(branch: str, kind: str) -> str:
    return f"up.{validate_branch_code(branch)}.{kind}"


def parse_up_subject(subject: str) -> tuple[str, str]:
    """``up.<branch>.<kind>`` -> (branch, kind); ValueError for anything else."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != "up":
        raise ValueError(f"not an up-stream subject: {subject!r}")
    branch, kind = parts[1], parts[2]
    validate_branch_code(branch)
    if not _TOKEN_RE.fullmatch(kind):
        raise ValueError(f"bad event kind in subject: {subject!r}")
    return branch, kind


def down_branch_subject(branch: str, kind: str, key: str) -> str:
    return down_subject("branch", validate_branch_code(branch), kind, key)


DOWN_SCOPES = ("all", "format", "zone", "branch")


def down_subject(scope: str, scope_id: str | None, kind: str, key: str) -> str:
    """``down.all.<kind>.<key>`` or ``down.<format|zone|branch>.<id>.<kind>.<key>``."""
    if scope not in DOWN_SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    for token in (kind, key, *([scope_id] if scope != "all" else [])):
        if not token or not _TOKEN_RE.fullmatch(token):
            raise ValueError(f"bad subject token {token!r}")
    if scope == "all":
        return f"down.all.{kind}.{key}"
    return f"down.{scope}.{scope_id}.{kind}.{key}"


def parse_down_subject(subject: str) -> tuple[str, str | None, str, str]:
    """-> (scope, scope_id or None for "all", kind, key); ValueError for anything else."""
    parts = subject.split(".")
    if len(parts) == 4 and parts[:2] == ["down", "all"]:
        return "all", None, parts[2], parts[3]
    if len(parts) == 5 and parts[0] == "down" and parts[1] in DOWN_SCOPES[1:]:
        return parts[1], parts[2], parts[3], parts[4]
    raise ValueError(f"not a down-stream subject: {subject!r}")


def down_consumer_name(branch: str) -> str:
    """The durable consumer through which one branch reads its down stream."""
    return f"branch-{validate_branch_code(branch)}"
