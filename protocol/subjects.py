"""NATS subjects and stream names shared by central and the agents."""

from __future__ import annotations

import re

__all__ = [
    "COMMAND_KIND",
    "DOWN_STREAM",
    "HEARTBEAT_KIND",
    "INGEST_DURABLE",
    "UP_STREAM",
    "down_branch_subject",
    "down_consumer_name",
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
    return f"down.branch.{validate_branch_code(branch)}.{kind}.{key}"


def down_consumer_name(branch: str) -> str:
    """The durable consumer through which one branch reads its down stream."""
    return f"branch-{validate_branch_code(branch)}"
