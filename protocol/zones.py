"""Which IANA time zone names a store may be given: one named by place.

``EST``, ``MST``, ``HST``, ``EST5EDT``, ``Etc/GMT+5`` are valid IANA names, but a fixed
offset or old US rules, not a place: a technician in New York who types ``EST`` gets no
daylight saving time, and every local day, shift date and planned price is an hour off
half the year. Both sides use this check: the agent's ``timezone`` setting and central's
branch and price-zone time zones.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["PLACE_AREAS", "zone_problem"]

# The areas of the tz database's place names (Area/Location); the others (Etc/,
# SystemV/, US/, posix/, right/...) are offsets, aliases kept for old systems, or
# another clock (right/ counts leap seconds).
PLACE_AREAS = frozenset(
    {
        "Africa",
        "America",
        "Antarctica",
        "Arctic",
        "Asia",
        "Atlantic",
        "Australia",
        "Europe",
        "Indian",
        "Pacific",
    }
)
# Universal time is a proper choice (a store that keeps its days in UTC).
_UNIVERSAL = frozenset({"UTC", "Etc/UTC"})


def zone_problem(name: str) -> str | None:
    """Why ``name`` is no time zone for a store (None: it is one): unknown to this
    machine, or not named by place; the reason suggests a proper name."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r}"
    if name in _UNIVERSAL:
        return None
    area, slash, location = name.partition("/")
    if not slash or not location or area not in PLACE_AREAS:
        return (
            f"time zone {name!r} is not named by place (a fixed offset, US rules or an old"
            " alias: its clock need not follow the store's summer time); use a zone named"
            " by place, such as America/New_York or Europe/Berlin, or UTC"
        )
    return None
