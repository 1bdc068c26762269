"""Which price a branch sells at: one implementation for central and the agents.

Head office sets prices at four scopes: the chain (``all``), a store format, a
price zone and a single branch. Each price entry applies from its
``effective_at`` moment (UTC) on. The price of a product at a branch at a moment:

1. the most specific scope that has an entry already in effect wins
   (branch > zone > format > chain) — so a branch override scheduled for next
   week leaves the zone price in force until then;
2. within that scope, the entry with the latest ``effective_at`` not after the
   moment wins; equal moments are decided by the higher master-data version (the
   later decision of head office).

A moment head office gives in a branch's local time is turned into UTC with
``local_to_utc`` (and never before the entry's ``effective_at``, ``entry_moment``): an ambiguous time (clocks going back) is its first occurrence,
a time inside a gap (clocks going forward) lands the same distance after the gap
(PEP 495, ``fold=0``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

__all__ = [
    "SCOPE_RANK",
    "PriceCandidate",
    "branch_scopes",
    "entry_moment",
    "local_to_utc",
    "prune_schedule",
    "resolve_price",
]

SCOPE_RANK: dict[str, int] = {"all": 0, "format": 1, "zone": 2, "branch": 3}


@dataclass(frozen=True, slots=True)
class PriceCandidate:
    scope: str
    price: int
    effective_at: datetime
    version: int = 0
    scope_id: str | None = None
    effective_local: str | None = None


def _rank(candidate: PriceCandidate) -> tuple[int, datetime, int, int]:
    # Versions are unique at central; the price only settles malformed ties deterministically.
    return (
        SCOPE_RANK[candidate.scope],
        candidate.effective_at,
        candidate.version,
        -candidate.price,
    )


def resolve_price(candidates: Iterable[PriceCandidate], at: datetime) -> PriceCandidate | None:
    """The entry in force at ``at`` among one product's entries for one branch."""
    if at.tzinfo is None:
        raise ValueError("resolve_price needs an aware datetime")
    best: PriceCandidate | None = None
    for candidate in candidates:
        if candidate.effective_at > at:
            continue
        if best is None or _rank(candidate) > _rank(best):
            best = candidate
    return best


def prune_schedule(candidates: Iterable[PriceCandidate], now: datetime) -> list[PriceCandidate]:
    """Of one product's entries at one scope: the one in force at ``now`` and all later
    ones (history no branch can need again is dropped), ordered by effective moment."""
    current: PriceCandidate | None = None
    future: list[PriceCandidate] = []
    for candidate in candidates:
        if candidate.effective_at > now:
            future.append(candidate)
        elif current is None or (candidate.effective_at, candidate.version, -candidate.price) > (
            current.effective_at,
            current.version,
            -current.price,
        ):
            current = candidate
    future.sort(key=lambda c: (c.effective_at, c.version))
    return ([current] if current is not None else []) + future


def branch_scopes(
    branch: str, format_code: str | None, price_zone: str | None
) -> list[tuple[str, str | None]]:
    """The (scope, scope id) pairs whose prices reach a branch."""
    scopes: list[tuple[str, str | None]] = [("all", None)]
    if format_code:
        scopes.append(("format", format_code))
    if price_zone:
        scopes.append(("zone", price_zone))
    scopes.append(("branch", branch))
    return scopes


def local_to_utc(local: datetime, timezone: str) -> datetime:
    """A wall-clock time in ``timezone`` (naive, or aware in that zone) as aware UTC."""
    zone = ZoneInfo(timezone)
    if local.tzinfo is not None:
        return local.astimezone(UTC)
    return local.replace(tzinfo=zone).astimezone(UTC)


def entry_moment(effective_at: datetime, effective_local: str | None, timezone: str) -> datetime:
    """When an entry takes effect at a branch in ``timezone``: its local wall-clock time
    there if it was given as one, but never before its UTC moment (central stores the
    moment it was decided, or approved, if that is later: a late decision never
    backdates a price); else its UTC moment."""
    if effective_local:
        return max(local_to_utc(datetime.fromisoformat(effective_local), timezone), effective_at)
    return effective_at
