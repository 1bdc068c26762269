"""What the NATS server refuses the agent: permissions violations, for status.

A connection with another branch's credentials (or credentials whose permissions
lack the branch's subjects) is accepted: the link looks up while every publish,
request and fetch is denied. The server reports each denial only through the
client's error callback (a denied request just times out), so the agent keeps
them here, per operation, until that operation succeeds again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["STALE_S", "NatsDenials", "is_permission_violation"]

_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"')
# Every operation the agent repeats while denied recurs well within this (a down-stream
# fetch every second, a position report every 12 s, an outbox retry every 15 s): a
# denial not seen again for longer, while others succeed, no longer happens.
STALE_S = 60.0


def is_permission_violation(text: str) -> bool:
    return "permissions violation" in text.lower()


@dataclass(slots=True)
class NatsDenials:
    clock: Callable[[], float] = time.monotonic
    stale_s: float = STALE_S
    # (operation, subject as the server names it, lower case) -> (text, last seen)
    _seen: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)

    def record(self, text: str) -> bool:
        """Keep a permissions violation; True when it is new (not denied just before)."""
        match = _VIOLATION.search(text.lower())
        key = (match.group(1), match.group(2)) if match else ("", text.lower())
        new = key not in self._seen
        self._seen[key] = (text, self.clock())
        return new

    def succeeded(self, subjects: Iterable[str] = ()) -> None:
        """Operations on ``subjects`` were answered: their denials are over, and so are
        those of the reply inboxes (the answer came through one)."""
        done = {s.lower() for s in subjects}
        oldest = self.clock() - self.stale_s
        for key, (_, at) in list(self._seen.items()):
            operation, subject = key
            answered = subject in done or (
                operation == "subscription" and subject.startswith("_inbox.")
            )
            if answered or at < oldest:
                del self._seen[key]

    def clear(self) -> None:
        """A new connection (reconnected, perhaps with other credentials): start over."""
        self._seen.clear()

    def current(self) -> list[str]:
        """The denials in force, the latest first."""
        return [text for text, _ in sorted(self._seen.values(), key=lambda v: -v[1])]
