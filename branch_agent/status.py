"""What a technician needs to see of a running agent (``python -m branch_agent status``)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import func, select, text

from branch_agent.backup import RESTORED_UNANSWERED
from branch_agent.masterdata import (
    APPLIED_AT_MS,
    APPLIED_VERSION,
    LAST_STREAM_SEQ,
    from_epoch_ms,
)
from branch_agent.masterdata_snapshot import CLOCK_WARN_S
from branch_agent.models import Counter, CustomerReturn, OutboxEvent, RestoredRecord, Sale
from branch_agent.numbering import (
    AGENT_INSTANCE,
    EVENT_SEQ_SETTLED,
    RESTORE_UNCHECKED,
    RESTORE_UNKNOWN,
)
from branch_agent.outbox import EVENT_SEQ, backlog
from branch_agent.restored import RecordedAgainOut, recorded_again, recorded_again_line
from protocol.units import format_minor

if TYPE_CHECKING:
    from branch_agent.agent import Agent

__all__ = [
    "NOT_ANSWERING",
    "NOT_RUNNING",
    "AgentStatus",
    "DeviceStateOut",
    "build_status",
    "format_status",
    "local_time",
    "offline_status",
]


class DeviceStateOut(msgspec.Struct, kw_only=True):
    till: str
    device: str
    port: str
    state: str
    detail: str
    since: str


class AgentStatus(msgspec.Struct, kw_only=True):
    branch: str
    # connected | degraded (connected, but the NATS server denies the agent's operations:
    # see nats_denied) | disconnected
    link: str
    outbox_backlog: int
    last_recorded_seq: int
    last_acked_seq: int
    # The last exchange with central either way: the newest event central acknowledged,
    # or the last master data applied from it (the same running or not).
    last_sync_at: str | None
    last_sync_error: str
    applied_version: int
    pending_fiscal: int
    downstream_last_seq: int
    # Customer returns whose storno receipt waits for a fiscal printer.
    pending_fiscal_returns: int = 0
    # Outbox events bigger than the NATS server's max_payload, held (the rest still go).
    outbox_held: list[int] = []
    # False after each start until central has answered for the event numbering (a
    # new database: where its numbers start; events recorded since the start wait,
    # unsent); first_event_seq: the database's first number (0: not said yet).
    numbering_settled: bool = True
    first_event_seq: int = 0
    # This server's clock ahead of central's (ms; negative: behind), as last measured
    # on a request to central (None: not yet).
    clock_offset_ms: int | None = None
    # Why central does not confirm the numbering yet ("": it has, or has not said).
    numbering_refused: str = ""
    # Documents completed unfiscal that the printer had printed after all ("T1 sale u3:
    # fiscal number 18"), that the printer's state could not settle (a person checks
    # the journal), and how many still wait for their printer to answer.
    unfiscal_printed: list[str] = []
    unfiscal_unknown: list[str] = []
    unfiscal_to_check: int = 0
    # Cash refunds without receipt not paid out on their till's fiscal printer (failed,
    # or pending: not known yet), "T1 return nr-1: 2.38 failed: ...": the printer's cash
    # count stays above the drawer by them until the till posts the return again.
    payouts_not_printed: list[str] = []
    # Cash moves, opening float deposits and Z reports sent to a fiscal printer and not
    # settled with it yet ("T1 cash move out-1: 10.00 out", "T1 float of shift T1-3:
    # 50.00", "T1 Z report of shift T1-3"): nothing else prints on that till until the
    # printer answers for them, or a manager settles them (settle-pending).
    cash_not_settled: list[str] = []
    # While the link is down, the NATS client's last error; while it is degraded, the
    # latest permissions violation ("": none).
    nats_error: str = ""
    # Every operation the NATS server denies now (permissions violations, the latest
    # first), each until it succeeds again: wrong-branch or too narrow credentials.
    nats_denied: list[str] = []
    # Whether the agent has NATS credentials configured (nats_creds or nats_user): a
    # denial is then not "another branch's credentials".
    nats_credentials: bool = True
    devices: list[DeviceStateOut]
    # When master data from central was last applied (None: never).
    masterdata_applied_at: str | None = None
    # The agent's time zone (its timezone setting), and central's record of the
    # branch's, from its last answer to the position report ("": not known).
    timezone: str = "UTC"
    central_timezone: str = ""
    # A database put back by ``restore``, until central has listed the sales and
    # returns it lost: "holding" (sales and returns wait for that list, up to
    # restore_hold_s from the start), "expired" (they no longer wait: taken unchecked
    # until central answers), "" (nothing waits: answered, or not restored).
    restore_hold: str = ""
    # The sales and returns central listed (a till's retry of one is refused), and the
    # numbers of events after the backup central said it will never receive (a retry
    # of a sale among them could not be recognised).
    restored_records: int = 0
    restore_unknown: int = 0
    # Those of central's list this database recorded again before the list came (a
    # till's retry taken unchecked, printed again: the customer may have been charged
    # twice), each in words with the original beside it; the manager's route
    # GET /api/v1/manager/sales/recorded-again has them in fields.
    recorded_again: list[str] = []
    # With restore_unknown: the sales and returns recorded since the restore, before
    # central's answer, that central did not list (a retry of a sale central never
    # received may be among them; nothing tells which).
    restore_unchecked: int = 0


# ``link`` of the status ``python -m branch_agent status`` reads from the database
# when the agent does not answer.
NOT_RUNNING = "agent not running"
# ... when a process holds the agent's data directory but does not answer where the
# config says (another http_port, or hung).
NOT_ANSWERING = "agent running, not answering"
_OFFLINE = (NOT_RUNNING, NOT_ANSWERING)


def _latest(*moments: datetime | None) -> str | None:
    known = [m if m.tzinfo else m.replace(tzinfo=UTC) for m in moments if m is not None]
    return max(known).isoformat() if known else None


async def build_status(agent: Agent) -> AgentStatus:
    async with agent.sessionmaker() as session:
        pending = await backlog(session)
        last_sent = await session.scalar(select(func.max(OutboxEvent.sent_at)))
        pending_fiscal = await session.scalar(
            select(func.count()).select_from(Sale).where(Sale.status == "pending_fiscal")
        )
        pending_returns = await session.scalar(
            select(func.count())
            .select_from(CustomerReturn)
            .where(CustomerReturn.status == "pending_fiscal")
        )
        checked: dict[str, list[str]] = {"printed": [], "unknown": []}
        to_check = 0
        for kind, model, name in (
            ("sale", Sale, Sale.sale_id),
            ("return", CustomerReturn, CustomerReturn.return_id),
        ):
            rows = await session.execute(
                select(model.till, name, model.fiscal_number, model.unfiscal_check)
                .where(model.unfiscal_check.in_(("pending", "printed", "unknown")))
                .order_by(model.id)
            )
            for till, doc_id, number, check in rows:
                if check == "pending":
                    to_check += 1
                elif check == "printed":
                    checked["printed"].append(f"{till} {kind} {doc_id}: fiscal number {number}")
                else:
                    checked["unknown"].append(f"{till} {kind} {doc_id}")
        restored = await session.scalar(select(func.count()).select_from(RestoredRecord))
        unknown = await session.get(Counter, RESTORE_UNKNOWN)
        unchecked = await session.get(Counter, RESTORE_UNCHECKED)
        again = await recorded_again(session, open_only=True)
        payouts = [_payout_line(*row) for row in await session.execute(text(_PAYOUTS))]
        cash_rows: list[Any] = []
        for sql in _CASH_NOT_SETTLED:
            cash_rows += (await session.execute(text(sql))).all()
    link = agent.link_state()
    denied = agent.denials.current() if link == "degraded" else []
    return AgentStatus(
        branch=agent.settings.branch,
        link=link,
        outbox_backlog=pending,
        last_recorded_seq=await agent.last_recorded_seq(),
        last_acked_seq=await agent.last_acked_seq(),
        last_sync_at=_latest(last_sent, agent.masterdata.applied_at),
        masterdata_applied_at=_iso(agent.masterdata.applied_at),
        timezone=agent.settings.timezone,
        central_timezone=(
            agent.masterdata.requester.central_timezone if agent.masterdata.requester else ""
        ),
        last_sync_error=agent.sender.state.last_error,
        applied_version=agent.applied_version(),
        pending_fiscal=pending_fiscal or 0,
        pending_fiscal_returns=pending_returns or 0,
        outbox_held=sorted(agent.sender.state.held),
        numbering_settled=agent.numbering.settled,
        first_event_seq=agent.numbering.start,
        clock_offset_ms=agent.clock_offset_ms(),
        numbering_refused=agent.numbering.refused,
        restore_hold=agent.numbering.restore_hold(),
        restored_records=restored or 0,
        restore_unknown=unknown.value if unknown is not None else 0,
        recorded_again=[recorded_again_line(r) for r in again],
        restore_unchecked=unchecked.value if unchecked is not None else 0,
        unfiscal_printed=checked["printed"],
        unfiscal_unknown=checked["unknown"],
        unfiscal_to_check=to_check,
        payouts_not_printed=payouts,
        cash_not_settled=_cash_lines(cash_rows),
        nats_error=agent.nats_error if link == "disconnected" else (denied or [""])[0],
        nats_denied=denied,
        nats_credentials=bool(agent.settings.nats_creds or agent.settings.nats_user),
        downstream_last_seq=agent.downstream.state.last_stream_seq,
        devices=[
            DeviceStateOut(
                till=state.till,
                device=state.role,
                port=state.port,
                state=state.state,
                detail=state.detail,
                since=state.changed_at.isoformat(),
            )
            for state in agent.devices.states()
        ],
    )


def _payout_line(
    till: str, return_id: str, total: int, state: str | None, error: str | None
) -> str:
    """A pay-out not printed as status lists it: ``T1 return nr-1: 2.38 failed: ...``."""
    return f"{till} return {return_id}: {format_minor(total)} {state}" + (
        f": {error}" if error else ""
    )


# Pay-outs not printed, the same on the running agent's engine and offline.
_PAYOUTS = (
    "SELECT till, return_id, total, payout_status, payout_error FROM customer_returns"
    " WHERE payout_status IN ('pending', 'failed') ORDER BY id"
)


# What waits to be settled with a till's fiscal printer (besides pay-outs, listed on
# their own): one query per kind, the same on the running agent's engine and offline.
_CASH_NOT_SETTLED = (
    "SELECT till, 'cash move ' || move_id, amount, direction FROM cash_moves"
    " WHERE status = 'pending'",
    "SELECT till, 'float of shift ' || shift_id, opening_float, '' FROM shifts"
    " WHERE float_status = 'pending'",
    "SELECT till, 'Z report of shift ' || shift_id, NULL, '' FROM shifts"
    " WHERE z_status = 'pending' AND closed_at IS NULL",
)


def _offline_rows(db: sqlite3.Connection, queries: tuple[str, ...]) -> list[Any]:
    rows: list[Any] = []
    for sql in queries:
        try:
            rows += db.execute(sql).fetchall()
        except sqlite3.OperationalError:
            continue  # a database not upgraded yet has no such column: none of them
    return rows


def _cash_lines(rows: list[Any]) -> list[str]:
    """``T1 cash move out-1: 10.00 out``, ``T1 Z report of shift T1-3``."""
    lines = []
    for till, what, amount, direction in rows:
        money = "" if amount is None else f": {format_minor(amount)}"
        lines.append(f"{till} {what}{money}{f' {direction}' if direction else ''}")
    return lines


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def offline_status(
    path: Path, branch: str, timezone: str = "UTC", *, running: bool = False
) -> AgentStatus:
    """What the database of an agent that is not running says, read-only, as the
    running agent would say it: the same fields, the same meanings (its devices and
    its link are unknown; its event numbering is confirmed by central again at each
    start, so it is not settled until then)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:

        def one(sql: str, *params: object) -> Any:
            return db.execute(sql, params).fetchone()[0]

        counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        md_state = dict(db.execute("SELECT name, value FROM md_state").fetchall())
        first_unsent = one("SELECT min(seq) FROM outbox WHERE sent_at IS NULL")
        last_sent = one("SELECT max(sent_at) FROM outbox")
        applied_at = from_epoch_ms(md_state.get(APPLIED_AT_MS))
        payouts = [_payout_line(*row) for row in _offline_rows(db, (_PAYOUTS,))]
        status = AgentStatus(
            branch=branch,
            link=NOT_ANSWERING if running else NOT_RUNNING,
            outbox_backlog=one("SELECT count(*) FROM outbox WHERE sent_at IS NULL"),
            last_recorded_seq=counters.get(EVENT_SEQ, 0),
            last_acked_seq=(
                first_unsent - 1
                if first_unsent is not None
                else one("SELECT coalesce(max(seq), 0) FROM outbox")
            ),
            last_sync_at=_latest(
                datetime.fromisoformat(last_sent) if last_sent else None, applied_at
            ),
            last_sync_error="",
            applied_version=md_state.get(APPLIED_VERSION, 0),
            pending_fiscal=one("SELECT count(*) FROM sales WHERE status = 'pending_fiscal'"),
            pending_fiscal_returns=one(
                "SELECT count(*) FROM customer_returns WHERE status = 'pending_fiscal'"
            ),
            downstream_last_seq=md_state.get(LAST_STREAM_SEQ, 0),
            # As EventNumbering.settled right after a start: only a database without an
            # id has nothing to ask central.
            numbering_settled=AGENT_INSTANCE not in counters,
            first_event_seq=counters.get(EVENT_SEQ_SETTLED, 0),
            # Restored and not answered: the next start holds sales for central's list.
            restore_hold="holding" if RESTORED_UNANSWERED in counters else "",
            restored_records=_restored_count(db),
            restore_unknown=counters.get(RESTORE_UNKNOWN, 0),
            recorded_again=[recorded_again_line(r) for r in _recorded_again(db)],
            restore_unchecked=counters.get(RESTORE_UNCHECKED, 0),
            masterdata_applied_at=_iso(applied_at),
            timezone=timezone,
            payouts_not_printed=payouts,
            cash_not_settled=_cash_lines(_offline_rows(db, _CASH_NOT_SETTLED)),
            devices=[],
        )
    return status


def _restored_count(db: sqlite3.Connection) -> int:
    try:
        return int(db.execute("SELECT count(*) FROM restored_records").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # a database from before the table (upgraded at the agent's start)


_AGAIN_COLUMNS = (
    "kind, till, record_id, number, shift_id, total, fiscal_number, seq, again_number,"
    " again_shift_id, again_total, again_fiscal_number, again_seq, again_at"
)


def _open_only(db: sqlite3.Connection) -> str:
    """The condition leaving out records the manager settled (none before a1911)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(restored_records)")}
    return " AND settled_at IS NULL" if "settled_at" in columns else ""


def _recorded_again(db: sqlite3.Connection) -> list[RecordedAgainOut]:
    try:
        rows = db.execute(
            f"SELECT {_AGAIN_COLUMNS} FROM restored_records WHERE again_at IS NOT NULL"
            + _open_only(db)
            + " ORDER BY again_at, again_seq, till, record_id"
        ).fetchall()
    except sqlite3.OperationalError:
        return []  # a database from before a1909 (upgraded at the agent's start)
    names = [name.strip() for name in _AGAIN_COLUMNS.split(",")]
    return [
        RecordedAgainOut(
            **{
                **dict(zip(names[:-1], row[:-1], strict=True)),
                "found_at": datetime.fromisoformat(row[-1]).replace(tzinfo=UTC),
            }
        )
        for row in rows
    ]


def _restore_lines(status: AgentStatus) -> list[str]:
    """The restore hold and what central listed, when there is anything to say."""
    lines = []
    if status.restore_hold == "holding":
        lines.append(
            "restore          database restored from a backup: sales and returns wait "
            "for central's list of those the restore lost (restore_hold_s)"
        )
    elif status.restore_hold == "expired":
        lines.append(
            "restore          CENTRAL HAS NOT LISTED what the restore lost: sales and "
            "returns are taken unchecked (a till's retry of a lost sale is printed again)"
        )
    if status.restored_records or status.restore_unknown:
        lines.append(
            f"restored records {status.restored_records} sale(s)/return(s) central holds "
            "from after the backup: a till's retry of one is refused"
            + (
                f"; {status.restore_unknown} event(s) after the backup never reached "
                "central: a retry of a sale among them could not be recognised"
                if status.restore_unknown
                else ""
            )
        )
    if status.restore_unchecked:
        lines.append(
            f"restore          {status.restore_unchecked} sale(s)/return(s) taken unchecked "
            "after the restore are not in central's list: a retry of a sale central never "
            "received may be among them (compare with the fiscal printer's journal)"
        )
    for line in status.recorded_again:
        lines.append(f"RECORDED AGAIN   {line}")
    return lines


def _clock_text(offset_ms: int | None) -> str:
    if offset_ms is None:
        return "not compared with central yet"
    if abs(offset_ms) <= CLOCK_WARN_S * 1000:
        return f"in step with central ({offset_ms / 1000:+.1f} s)"
    way = "ahead of" if offset_ms > 0 else "behind"
    return (
        f"{abs(offset_ms) / 1000:.0f} s {way} central: sales are dated by it, "
        "fix the server's time synchronisation (NTP)"
    )


def local_time(value: str | None, timezone: str) -> str:
    """A stored time (UTC; naive as SQLite keeps it) in the branch's local time with
    its offset: times shown to people are the store's wall clock."""
    if not value:
        return "never"
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(ZoneInfo(timezone)).isoformat(sep=" ", timespec="seconds")


def format_status(status: AgentStatus, timezone: str = "UTC") -> str:
    """A plain-text page for a person at the store PC (times in ``timezone``, the
    branch's)."""
    lines = [
        f"branch           {status.branch}",
        f"link to central  {status.link}"
        + (f"  (last error: {status.last_sync_error})" if status.last_sync_error else "")
        + (f"  (NATS: {status.nats_error})" if status.nats_error else ""),
        *(
            [
                f"                 the NATS server denies {len(status.nats_denied)} "
                + (
                    "operation(s): its credentials are not this branch's "
                    f"({status.branch}), or their permissions lack its subjects; "
                    if status.nats_credentials
                    else "operation(s): the agent has no NATS credentials configured "
                    "(nats_creds) and the server's default user may not use this "
                    f"branch's ({status.branch}) subjects; "
                )
                + "nothing reaches central meanwhile (sales wait in the outbox)"
            ]
            if status.nats_denied
            else []
        ),
        f"outbox backlog   {status.outbox_backlog} event(s) not yet acknowledged"
        + (
            f"; held, too big for the NATS server: seq {', '.join(map(str, status.outbox_held))}"
            if status.outbox_held
            else ""
        ),
        f"sequence         recorded {status.last_recorded_seq}, acked {status.last_acked_seq}"
        + (
            ""
            if status.numbering_settled
            else (
                "; central confirms the event numbering when the agent starts (events "
                "recorded from then on wait for it)"
                if status.link in _OFFLINE
                else "; waiting for central to confirm the event numbering (new events not "
                "sent yet)"
            )
            + (f": {status.numbering_refused}" if status.numbering_refused else "")
        ),
        *_restore_lines(status),
        f"last sync        {local_time(status.last_sync_at, timezone)}",
        f"clock            {_clock_text(status.clock_offset_ms)}",
        f"time zone        {status.timezone}"
        + (
            f"  CENTRAL HAS THE BRANCH AT {status.central_timezone}: local-time prices "
            "switch and local days end at other moments than central expects; correct "
            "this agent's timezone setting or the branch's record at central"
            if status.central_timezone and status.central_timezone != status.timezone
            else ""
        ),
        f"master data      version {status.applied_version}"
        + (
            f", last applied {local_time(status.masterdata_applied_at, timezone)}"
            if status.masterdata_applied_at
            else ""
        ),
        f"pending fiscal   {status.pending_fiscal} sale(s) and "
        f"{status.pending_fiscal_returns} return(s) waiting for a fiscal printer",
    ]
    if status.unfiscal_to_check:
        lines.append(
            f"unfiscal         {status.unfiscal_to_check} completed without printer, to "
            "compare with the printer when it answers"
        )
    lines += [f"printed after all  {d} (recorded unfiscal)" for d in status.unfiscal_printed]
    lines += [
        f"check journal    {d}: completed unfiscal, printer unclear"
        for d in status.unfiscal_unknown
    ]
    lines += [f"not paid out     {d}" for d in status.payouts_not_printed]
    lines += [f"not settled      {d} (with the fiscal printer)" for d in status.cash_not_settled]
    lines.append("devices:")
    if status.link in _OFFLINE:
        lines.append(
            "  (not known: the agent is not running)"
            if status.link == NOT_RUNNING
            else "  (not known: the agent does not answer)"
        )
    elif not status.devices:
        lines.append("  (none configured)")
    for device in status.devices:
        detail = f" - {device.detail}" if device.detail else ""
        lines.append(
            f"  {device.till:<6} {device.device:<8} {device.state:<16} {device.port}{detail}"
        )
    return "\n".join(lines)
