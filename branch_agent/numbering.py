"""Where this agent database's event numbers start, and go on.

Central keeps each branch's events by number and takes a number it holds already for
a duplicate. A new agent database (the store's server replaced, its disk lost) would
number from 1 again, so until central has said where to start (its answer to the
position report, ``SnapshotReply.event_seq_start``) its events wait in the outbox:
recorded as usual (the store keeps trading), not sent, no heartbeat, no resend taken.
Then, in one transaction under the write lock, they are renumbered from that start
(each payload re-encoded with its number) and the counter follows. A database that
numbered events before this existed is settled as it is (migration a1701).

A numbered database asks too, at every start: restored from a backup (or an earlier
server put back), it would reuse the numbers it gave after the backup, which central
holds with other sales. It reports the highest number it had given when it started
(kept in the database until answered, so a crash while asking asks the same); the
events recorded since wait as above, the earlier ones go; central's answer is the
number the first of them takes, and they move there if it is higher.

The numbers such a database skips (those it gave after the backup) are not in it: its
heartbeat lists them (``skipped_seqs``), so central, if it ever lacks them (its own
database restored to before then), gives them up instead of asking for a resend that
could only bring the events after them, again and again.

Shift ids (``<till>-<n>``) stand on the same answer: a shift central files keeps
its id, and a restored or new database counting its tills' shifts from its own
counters would give a number central holds from another shift (and central merged
them). A shift's number is never above its opening event's, so once central has
answered with a start past the numbers this database had (new, or gone back in
time), every till's shift numbers go on from ``start`` (``SHIFT_FLOOR``): past every
shift central can know of. A shift opened before the answer cannot know that floor;
its id carries a random tag (``T2-5-k7qz2``, see :mod:`branch_agent.shifts`).

An answer that moves a database's events on also says how many sales and returns
central holds in the numbers it lost (``held_records``): they are fetched and kept
(``keep_held``, :mod:`branch_agent.restored`) before the answer is taken, so a till's
retry of one is refused, not printed again, and receipt numbers go on past them.
Central lists those the old database sent that it has not stored yet too (read from
its ingest queue); until it could read them all it does not answer
(``numbering_wait``): the agent asks again every few seconds and keeps the restore
hold meanwhile, up to ``restore_hold_s`` from its start. The numbers central said it
will never receive (``held_unknown``) are kept (``RESTORE_UNKNOWN``) for the status:
a till's retry of a sale among them could not be checked.

With the link down after a restore, the hold expires and the store trades on
unchecked: a till's retry of a lost sale is recorded and printed again. The answer's
transaction compares central's list with what this database holds
(``flag_recorded_again``): each match is flagged there, once (a crash before that
commit asks central again and flags then), logged as an error and shown by the status
and the manager's route. With ``held_unknown`` it also counts the sales and returns
recorded since the restore that central did not list (``RESTORE_UNCHECKED``): a retry
of a sale central never received could be among them, and nothing here tells which.

Each report and heartbeat also names the server the agent runs on (``server_id``):
a copy of the database running on a second server at once (a cloned disk) has the
same id, and only the server tells them apart. A restart on the same server is not
a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from branch_agent.backup import RESTORED_UNANSWERED
from branch_agent.models import Counter, OutboxEvent
from branch_agent.outbox import EVENT_SEQ
from branch_agent.restored import (
    flag_recorded_again,
    keep_held_records,
    recorded_again,
    recorded_again_line,
    unchecked_since,
)
from protocol.codec import decode_envelope, encode
from protocol.masterdata import HeldRecordsReply

__all__ = [
    "AGENT_INSTANCE",
    "CRASH_EXIT_CODE",
    "CRASH_WHILE_FLAGGING",
    "EVENT_SEQ_CHECKED",
    "EVENT_SEQ_SETTLED",
    "RESTORE_UNCHECKED",
    "RESTORE_UNKNOWN",
    "SHIFT_FLOOR",
    "EventNumbering",
    "renumber_outbox",
    "server_id",
    "skipped_ranges",
]

log = logging.getLogger(__name__)

AGENT_INSTANCE = "agent_instance"
# The number of the database's first event, once central has said it.
EVENT_SEQ_SETTLED = "event_seq_settled"
# The highest number a numbered database had given when it started, until central has
# answered for it (then removed).
EVENT_SEQ_CHECKED = "event_seq_checked"

# How many of the numbers a restore skipped central said it neither holds nor will
# receive (a retry of a sale among them cannot be recognised), for the status.
RESTORE_UNKNOWN = "restore_unknown"
# With those: how many sales and returns were recorded since the restore, before the
# answer, that central did not list (a retry of one it never received may be among
# them), for the status.
RESTORE_UNCHECKED = "restore_unchecked"

# Shift numbers of every till go on above this one (central's start, less one, after
# the database was new or went back in time).
SHIFT_FLOOR = "shift_floor"

_BOOT_ID = "/proc/sys/kernel/random/boot_id"

# Fault injection (tests only): exit (status CRASH_EXIT_CODE) inside the transaction
# that takes central's answer, once records recorded again are flagged there.
CRASH_WHILE_FLAGGING = "BACKROOM_FAULT_CRASH_WHILE_FLAGGING"
CRASH_EXIT_CODE = 86


def server_id(configured: str = "") -> str:
    """This server as central tells agents apart: ``configured`` (the ``server_id``
    setting), else its host name and boot id (64 characters at most).

    The boot id is Linux's, new at every boot and never on disk, so a cloned disk
    does not carry it; a restart of the agent keeps it. Without one, the host name.
    """
    if configured:
        return configured[:64]
    try:
        with open(_BOOT_ID, encoding="ascii") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    host = socket.gethostname()
    return f"{host[: 63 - len(boot)]}/{boot}" if boot else host[:64]


async def renumber_outbox(session: AsyncSession, start: int, *, after: int = 0) -> int:
    """Shift the outbox events numbered above ``after`` (and the counter) so the first
    of them is numbered ``start``; how many moved. In the caller's transaction."""
    offset = start - (after + 1)
    if offset <= 0:
        return 0
    rows = (
        await session.execute(
            select(OutboxEvent.seq, OutboxEvent.payload)
            .where(OutboxEvent.seq > after)
            .order_by(OutboxEvent.seq.desc())
        )
    ).all()
    # Highest first: a number is free before the row below moves onto it.
    for seq, payload in rows:
        envelope = msgspec.structs.replace(decode_envelope(payload), seq=seq + offset)
        await session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.seq == seq)
            .values(seq=seq + offset, payload=encode(envelope))
        )
    counter = await session.get(Counter, EVENT_SEQ)
    if counter is None:
        session.add(Counter(name=EVENT_SEQ, value=after + offset))
    else:
        counter.value += offset
    return len(rows)


async def _raise_shift_floor(session: AsyncSession, floor: int) -> None:
    row = await session.get(Counter, SHIFT_FLOOR)
    if row is None:
        session.add(Counter(name=SHIFT_FLOOR, value=floor))
    elif row.value < floor:
        row.value = floor


# Each run of numbers missing between two outbox events (from the database's first).
_HOLES = text(
    "SELECT prev + 1, seq - 1 FROM ("
    " SELECT seq, LAG(seq, 1, :start - 1) OVER (ORDER BY seq) AS prev"
    " FROM outbox WHERE seq >= :start"
    ") WHERE seq > prev + 1 ORDER BY seq"
)


async def skipped_ranges(session: AsyncSession, start: int) -> tuple[tuple[int, int], ...]:
    """The numbers from ``start`` to the counter that no event of this database has,
    as (first, last) ranges, lowest first. The outbox keeps every event, so a missing
    number was skipped: renumbered past after a restore from a backup."""
    if start < 1:
        return ()
    counter = await session.get(Counter, EVENT_SEQ)
    highest = await session.scalar(select(func.max(OutboxEvent.seq)))
    last = max(highest or 0, start - 1)
    # Every event is numbered from start on. As many as the numbers up to the highest:
    # no hole, and no need to read the whole outbox (count(*) reads an index).
    total = await session.scalar(select(func.count()).select_from(OutboxEvent)) or 0
    holes = (
        [(int(r[0]), int(r[1])) for r in await session.execute(_HOLES, {"start": start})]
        if total < last - start + 1
        else []
    )
    if counter is not None and counter.value > last:
        holes.append((last + 1, counter.value))
    return tuple(holes)


class EventNumbering:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        write_lock: asyncio.Lock,
        on_settled: Callable[[], None],
        server: str = "",
        restore_hold_s: float = 0.0,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._write_lock = write_lock
        self._on_settled = on_settled
        self.instance = ""
        # The server this run is on (see server_id).
        self.server = server
        # The number of the database's first event once central has said it (0: not yet).
        self.start = 0
        # Events numbered up to this one were recorded before this run asked central;
        # those above it wait for the answer (a new database: all of them).
        self.checked = 0
        self.confirmed = False
        # Why central does not answer yet (another agent database of the branch runs,
        # or it is still reading what the branch sent: ``waiting``, asked again soon).
        self.refused = ""
        self.waiting = False
        # Numbers this database skipped (see skipped_ranges), for the heartbeat.
        self.skipped: tuple[tuple[int, int], ...] = ()
        # Restored from a backup (branch_agent.backup) and not answered yet: sales wait
        # for the answer until ``_hold_until`` (monotonic), see hold_after_restore.
        self.restored = False
        self._restore_hold_s = restore_hold_s
        self._hold_until = 0.0
        self._answered = asyncio.Event()
        self._hold_expired_logged = False

    @property
    def settled(self) -> bool:
        """Central has answered for this run's numbers (or the database has no id:
        nothing to ask): events, heartbeats and resends may go."""
        return self.confirmed or not self.instance

    @property
    def sendable_through(self) -> int | None:
        """The highest event number that may be sent now (None: any)."""
        return None if self.settled else self.checked

    async def load(self) -> None:
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            instance = await session.get(Counter, AGENT_INSTANCE)
            settled = await session.get(Counter, EVENT_SEQ_SETTLED)
            self.instance = f"{instance.value:016x}" if instance is not None else ""
            self.start = settled.value if settled is not None else 0
            self.confirmed = False
            self.restored = await session.get(Counter, RESTORED_UNANSWERED) is not None
            self._hold_until = time.monotonic() + self._restore_hold_s
            self.skipped = await skipped_ranges(session, self.start)
            # Said again at every start: a crash right after the answer's commit would
            # have lost the only log line, and the second charge is still to refund.
            for record in await recorded_again(session, open_only=True):
                log.error(
                    "found %s after the restore from a backup: %s",
                    record.found_at.isoformat(timespec="seconds"),
                    recorded_again_line(record),
                )
            if not self.instance or not self.start:
                self.checked = 0
                return
            checked = await session.get(Counter, EVENT_SEQ_CHECKED)
            if checked is None:
                counter = await session.get(Counter, EVENT_SEQ)
                checked = Counter(name=EVENT_SEQ_CHECKED, value=counter.value if counter else 0)
                session.add(checked)
            self.checked = checked.value

    def report(self) -> dict[str, Any]:
        """The position report's numbering fields while central has not answered."""
        if self.settled:
            return {}
        if not self.start:
            return {"anchor_instance": self.instance, "agent_server": self.server}
        return {
            "settled_instance": self.instance,
            "settled_last_seq": self.checked,
            "agent_server": self.server,
        }

    async def hold_after_restore(self) -> None:
        """A sale or return at a database restored from a backup waits for central's
        answer (the sales the restore lost), up to the restore hold from the start: a
        till's retry of a lost sale right after the restore is refused, not printed
        twice. Then, or with the link down, the store trades on unchecked."""
        if not self.restored or self.settled:
            return
        left = self._hold_until - time.monotonic()
        if left > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answered.wait(), left)
        if not self.settled and not self._hold_expired_logged:
            self._hold_expired_logged = True
            log.error(
                "the restore hold ended before central listed the sales this database "
                "lost (%s): sales and returns are taken unchecked now; a till's retry "
                "of a lost sale is recorded and printed again",
                self.refused or "central did not answer",
            )

    def restore_hold(self) -> str:
        """The restore hold for the status: "" (no restore waits for central),
        "holding" (sales wait for central's list), "expired" (they no longer wait:
        taken unchecked until central answers)."""
        if not self.restored or self.settled:
            return ""
        return "holding" if time.monotonic() < self._hold_until else "expired"

    async def keep_held(self, page: HeldRecordsReply) -> None:
        """Keep a page of the records this database lost (see branch_agent.restored)."""
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            await keep_held_records(session, page)

    async def settle(self, start: int, *, unknown: int = 0) -> None:
        """Central's answer: renumber what waits from ``start``, then let it go;
        ``unknown``: numbers skipped that central will never receive (kept for the status)."""
        if self.settled:
            return
        async with self._write_lock, self._sessionmaker() as session, session.begin():
            moved = await renumber_outbox(session, start, after=self.checked)
            # What was recorded again before this answer: flagged with it, once.
            again = await flag_recorded_again(session)
            if again and os.environ.get(CRASH_WHILE_FLAGGING) == "1":
                # Tests only: the process dies with the flags written, not committed.
                log.error("fault injection: exiting while flagging, before the commit")
                os._exit(CRASH_EXIT_CODE)
            marker = await session.get(Counter, RESTORED_UNANSWERED)
            if unknown:
                await session.merge(Counter(name=RESTORE_UNKNOWN, value=unknown))
                if marker is not None:
                    since = datetime.fromtimestamp(marker.value, UTC)
                    unchecked = await unchecked_since(session, since)
                    await session.merge(Counter(name=RESTORE_UNCHECKED, value=unchecked))
            await session.execute(delete(Counter).where(Counter.name == RESTORED_UNANSWERED))
            if self.start:
                await session.execute(delete(Counter).where(Counter.name == EVENT_SEQ_CHECKED))
            else:
                session.add(Counter(name=EVENT_SEQ_SETTLED, value=start))
            if not self.start or start > self.checked + 1:
                await _raise_shift_floor(session, start - 1)
            await session.flush()
            self.skipped = await skipped_ranges(session, self.start or start)
        if not self.start:
            self.start = start
            if start > 1:
                log.warning(
                    "new agent database: central numbers its events from %d (%d renumbered)",
                    start,
                    moved,
                )
        elif start > self.checked + 1:
            log.warning(
                "this agent database went back in time (restored from a backup?): central "
                "holds the branch's events to %d, it had numbered to %d; its events since "
                "continue from %d (%d renumbered)",
                start - 1,
                self.checked,
                start,
                moved,
            )
        for record in again:
            log.error(
                "a till's retry was recorded and printed again before central listed what "
                "the restore lost: %s (README: A till's retry of a sale the restore lost)",
                recorded_again_line(record),
            )
        self.confirmed = True
        self.refused = ""
        self.waiting = False
        self.restored = False
        self._answered.set()
        self._on_settled()
