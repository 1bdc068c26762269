"""Connecting and dropping a nats-py client so that stopping a host cannot hang on it.

The one module of ``protocol`` that does I/O: here because central and the branch
agent both hold NATS links and neither may import the other.
"""

import asyncio
import contextlib
import logging
from typing import Any

from nats.aio.client import Client

__all__ = ["close_unconnected", "connect_cancellably"]

log = logging.getLogger(__name__)

# How long a cancelled connect is pressed to end before it is left to itself.
_ABANDON_S = 5.0
_RECANCEL_S = 0.1


async def connect_cancellably(nc: Client, **options: Any) -> None:
    """``nc.connect(**options)``, ended for sure when the caller is cancelled.

    On Python 3.11 ``asyncio.wait_for`` turns a cancellation that lands just as its
    operation fails (a refused or reset connection) into that failure. nats-py's
    connect, retrying for ever, takes it for one more failed attempt and goes on, so
    a host stopping while its link was refused waited for ever. The attempt runs in
    a task of its own; a cancelled caller stops it from retrying and cancels it again
    until it has ended.
    """
    attempt = asyncio.ensure_future(nc.connect(**options))
    try:
        await asyncio.shield(attempt)
    except asyncio.CancelledError:
        await _abandon(nc, attempt)
        raise


async def _abandon(nc: Client, attempt: "asyncio.Future[None]") -> None:
    # A failure that swallowed a cancellation now raises instead of retrying.
    nc.options["allow_reconnect"] = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _ABANDON_S
    while not attempt.done() and loop.time() < deadline:
        attempt.cancel()
        await asyncio.wait({attempt}, timeout=_RECANCEL_S)
    if not attempt.done():
        log.warning("a cancelled NATS connect did not end in %.0f s; left behind", _ABANDON_S)
        close_unconnected(nc)
        return
    if attempt.cancelled() or attempt.exception() is not None:
        close_unconnected(nc)
        return
    # The attempt connected as it was being cancelled: a real client to close.
    closing = asyncio.ensure_future(nc.close())
    await asyncio.wait({closing}, timeout=_ABANDON_S)
    if not closing.done():
        closing.cancel()
    close_unconnected(nc)


def close_unconnected(nc: Client) -> None:
    """Close the socket of a client whose first connect did not finish (no reading or
    flushing task runs yet: the socket is all it holds). nats-py's own close can wait
    for ever on such a client and swallows the cancellation a timeout sends it."""
    transport = getattr(nc, "_transport", None)
    with contextlib.suppress(Exception):
        if transport is not None:
            transport.close()
